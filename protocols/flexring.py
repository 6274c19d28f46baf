"""Xen's byte-stream ("flex") rings (reference 7.4; ``xen/include/public/io/ring.h``
``DEFINE_XEN_FLEX_RING``, ``docs/misc/xenstore-ring.txt``, ``io/console.h``).

The console, xenstore, pvcalls and 9pfs exchange streams of bytes rather than fixed-size slots:
each direction is a power-of-two circular buffer with a free-running u32 ``cons``/``prod`` pair.
Byte ``x`` of the stream lives at ``x mod size``; ``prod - cons`` (mod 2^32) bytes are queued,
and a writer may only overwrite bytes the consumer has consumed. The arithmetic is the same for
every such interface, so there is one class, given the layout of the page it works on.

How it is written, and why:

* Both indices are read from the shared page on every call, as xenstored's ``readchn`` /
  ``writechn`` and Linux's ``xb_read`` / ``xb_write`` do. No private copy can disagree with the
  page, and a side (or a restarted actor) can attach to a live ring at any time.
* The peer can write anything into the page. ``prod - cons > size`` is a hostile or corrupt ring
  (xenstored's ``check_indexes``, which then reports ``XENSTORE_ERROR_RINGIDX``): it raises
  ``XenError(EIO)`` before a byte moves.
* Index stores are single aligned 32-bit stores through ``memoryview.cast("I")`` (DESIGN.md:
  never ``struct.pack_into`` on a live index). Data is copied in before ``prod`` is published
  and copied out before ``cons`` advances; CPython issues the stores in program order and x86
  keeps stores (and loads) in order, which stands in for Xen's ``wmb``/``rmb``.
* Signalling the event channel after an update is the caller's job ("signal after every
  update", xenstore-ring.txt): :meth:`ByteRing.write` and :meth:`ByteRing.read` return what moved.
"""

from __future__ import annotations

from protocols.errno import Errno, XenError

_U32 = 0xFFFFFFFF


def flex_ring_size(order: int) -> int:
    """``XEN_FLEX_RING_SIZE(order)``: bytes per direction of a ring of ``2**order`` pages."""
    return 1 << (order + 12 - 1)


class ByteRing:
    """One direction of a flex ring: ``size`` data bytes at ``data_offset`` of ``buf``, indexed by
    the u32 ``cons`` at ``cons_offset`` and ``prod`` at ``prod_offset`` (both 4-byte aligned).

    Only the producer calls :meth:`write`; only the consumer calls :meth:`read`. Each side builds
    its own ByteRing over its own mapping of the page. ``buf`` must be writable (a mapped page,
    a ``bytearray``); call :meth:`release` before unmapping it.
    """

    __slots__ = ("size", "_mask", "_data", "_cons", "_prod")

    def __init__(self, buf, data_offset: int, size: int, cons_offset: int,
                 prod_offset: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring size {size} is not a power of two")
        if cons_offset % 4 or prod_offset % 4:
            raise ValueError("ring indices must be 4-byte aligned")
        page = memoryview(buf).cast("B")
        if page.readonly:
            raise ValueError("a ring needs a writable buffer")
        if max(data_offset + size, cons_offset + 4, prod_offset + 4) > len(page):
            raise ValueError(f"ring layout does not fit in a {len(page)}-byte buffer")
        self.size = size
        self._mask = size - 1
        self._data = page[data_offset:data_offset + size]
        self._cons = page[cons_offset:cons_offset + 4].cast("I")
        self._prod = page[prod_offset:prod_offset + 4].cast("I")
        page.release()

    @property
    def cons(self) -> int:
        return self._cons[0]

    @property
    def prod(self) -> int:
        return self._prod[0]

    def _queued(self) -> tuple[int, int, int]:
        """``(cons, prod, prod - cons)`` as the page holds them now, checked against ``size``."""
        cons = self._cons[0]
        prod = self._prod[0]
        queued = (prod - cons) & _U32
        if queued > self.size:
            raise XenError(Errno.EIO, f"ring indices cons={cons:#x} prod={prod:#x} "
                                      f"exceed the {self.size}-byte ring")
        return cons, prod, queued

    def available(self) -> int:
        """Bytes queued and not yet consumed."""
        return self._queued()[2]

    def space(self) -> int:
        """Bytes the producer may write now."""
        return self.size - self._queued()[2]

    def write(self, data) -> int:
        """Queue as much of ``data`` as fits; return the number of bytes accepted (producer)."""
        cons, prod, queued = self._queued()
        with memoryview(data).cast("B") as src:
            n = min(len(src), self.size - queued)
            if n == 0:
                return 0
            start = prod & self._mask
            first = min(n, self.size - start)
            self._data[start:start + first] = src[:first]
            if n > first:
                self._data[:n - first] = src[first:n]
        self._prod[0] = (prod + n) & _U32
        return n

    def read(self, max_bytes: int | None = None) -> bytes:
        """Consume and return up to ``max_bytes`` queued bytes (all of them if None) (consumer)."""
        cons, prod, queued = self._queued()
        n = queued if max_bytes is None else min(queued, max_bytes)
        if n <= 0:
            return b""
        start = cons & self._mask
        first = min(n, self.size - start)
        out = self._data[start:start + first].tobytes()
        if n > first:
            out += self._data[:n - first].tobytes()
        self._cons[0] = (cons + n) & _U32
        return out

    def reset(self, index: int = 0) -> None:
        """Empty the ring by setting both indices to ``index``. Only while the peer does not use
        the ring: xenstored's ``domain_conn_reset`` on a reconnect, or ring set-up."""
        self._cons[0] = index & _U32
        self._prod[0] = index & _U32

    def release(self) -> None:
        """Drop the views on ``buf`` so that it can be unmapped; the ring is unusable after."""
        for view in (self._data, self._cons, self._prod):
            view.release()
