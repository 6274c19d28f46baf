"""The same-host fast path: a duplex message pipe in ``/dev/shm`` with FIFO doorbells.

DESIGN.md "The transport seam": a Ray call costs about 1 ms, a message through shared memory
plus a doorbell tens of microseconds. A pipe joins one client process (a domain's kernel,
a Dom0 daemon) to its host's hypervisor, which creates and owns it as Xen owns every
guest-hypervisor resource: the client asks for one over Ray once, then its hypercalls go up
and its upcalls and vCPU gates come down through the pipe.

Layout of the pipe file (one header page, then one data area per direction)::

    header page   0: magic u32   4: closed u32 (set by the hypervisor: it dropped the pipe)
                 64: up cons u32    68: up prod u32      (client -> hypervisor)
                128: down cons u32 132: down prod u32    (hypervisor -> client)
    page 1 ...     up ring   (RING_BYTES)
    then           down ring (RING_BYTES)

Each direction is a :class:`protocols.flexring.ByteRing` (Xen's flex ring arithmetic, free
running u32 indices, checked against the size). A message is a frame: a little-endian u32
length and that many bytes of msgpack. A frame bigger than the free space goes in pieces and
the reader reassembles it. The reader parses defensively, since the other process can write
anything into the page: a length over ``MAX_FRAME``, bytes that are not msgpack or corrupt
ring indices raise :class:`HvPipeBroken`.

Doorbells are two FIFOs (``<path>.up``, ``<path>.down``) that both sides open ``O_RDWR``, so
neither ever blocks on open or sees EOF when the peer dies. After publishing a frame the
writer writes one byte to the reader's FIFO (non-blocking: a full FIFO already holds a wake
up). The reader empties its FIFO *before* reading the ring; the pipe's lock orders the
writer's ``prod`` store before the reader's load, so no wake-up is lost without any
``mb()``, which Python cannot issue.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
from typing import Any

import msgpack

from protocols.errno import XenError
from protocols.flexring import ByteRing
from protocols.page import PAGE_SIZE

RING_BYTES = 64 * 1024
MAX_FRAME = 16 << 20  # bigger than any reply (a domain list); larger frames are cut
MAGIC = 0x58524348  # "XRCH"
_LEN = struct.Struct("<I")
_UP = (64, 68)  # cons, prod offsets in the header page
_DOWN = (128, 132)
FILE_BYTES = PAGE_SIZE + 2 * RING_BYTES


class HvPipeBroken(Exception):
    """The peer wrote something that is not a frame: the pipe cannot be trusted again."""


def create(path: str) -> None:
    """Create the pipe file and its two FIFOs (the hypervisor's side does this)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, FILE_BYTES)
        os.pwrite(fd, struct.pack("<I", MAGIC), 0)
    finally:
        os.close(fd)
    for suffix in (".up", ".down"):
        os.mkfifo(path + suffix, 0o600)


def unlink(path: str) -> None:
    for p in (path, path + ".up", path + ".down"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


class HvPipe:
    """One end of a pipe: ``hypervisor=True`` reads the up ring and writes the down ring.

    Not thread-safe on either direction: one thread reads (:meth:`receive`), and writers
    serialise :meth:`write` themselves (a frame's pieces must not interleave with another's).
    """

    def __init__(self, path: str, *, hypervisor: bool) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size != FILE_BYTES:
                raise ValueError(f"{path} is not a pipe file")
            self._mm = mmap.mmap(fd, FILE_BYTES, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.path = path
        view = memoryview(self._mm)
        if view[:4].cast("I")[0] != MAGIC:
            view.release()
            self._mm.close()
            raise ValueError(f"{path} is not a pipe file")
        up = ByteRing(view, PAGE_SIZE, RING_BYTES, *_UP)
        down = ByteRing(view, PAGE_SIZE + RING_BYTES, RING_BYTES, *_DOWN)
        self._closed = view[4:8].cast("I")
        view.release()
        self._in, self._out = (up, down) if hypervisor else (down, up)
        bell_in, bell_out = (".up", ".down") if hypervisor else (".down", ".up")
        self._bell_in = os.open(path + bell_in, os.O_RDWR | os.O_NONBLOCK)
        self._bell_out = os.open(path + bell_out, os.O_RDWR | os.O_NONBLOCK)
        self._partial = b""
        self._packer = msgpack.Packer(use_bin_type=True)

    def fileno(self) -> int:
        """The inbound doorbell: readable when the peer has posted (for select/epoll)."""
        return self._bell_in

    # -- writing --------------------------------------------------------------------------

    def frame(self, message: Any) -> bytes:
        body = self._packer.pack(message)
        if len(body) > MAX_FRAME:
            raise ValueError(f"a {len(body)}-byte message is over the pipe's {MAX_FRAME}")
        return _LEN.pack(len(body)) + body

    def write(self, data: bytes | memoryview) -> int:
        """Publish as much of ``data`` (frames, or the rest of one) as fits, and ring the peer
        if anything moved; returns the bytes written. A frame may go in several writes: the
        reader reassembles it."""
        try:
            n = self._out.write(data)
        except XenError as e:  # the peer corrupted our ring's indices
            raise HvPipeBroken(str(e)) from e
        if n:
            try:
                os.write(self._bell_out, b"\0")
            except BlockingIOError:
                pass  # the FIFO is full of wake-ups already
        return n

    # -- reading --------------------------------------------------------------------------

    def receive(self) -> list[Any]:
        """Empty the doorbell, then return every whole message queued (maybe none)."""
        try:
            while len(os.read(self._bell_in, 4096)) == 4096:
                pass
        except BlockingIOError:
            pass
        try:
            data = self._partial + self._in.read()
        except XenError as e:
            raise HvPipeBroken(str(e)) from e
        messages, pos = [], 0
        while len(data) - pos >= _LEN.size:
            (n,) = _LEN.unpack_from(data, pos)
            if n > MAX_FRAME:
                raise HvPipeBroken(f"a frame of {n} bytes (at most {MAX_FRAME})")
            if len(data) - pos - _LEN.size < n:
                break
            body = data[pos + _LEN.size:pos + _LEN.size + n]
            pos += _LEN.size + n
            try:
                messages.append(msgpack.unpackb(body, raw=False, strict_map_key=False))
            except Exception as e:  # msgpack raises several types on garbage
                raise HvPipeBroken(f"a frame that is not msgpack: {e}") from e
        self._partial = data[pos:]
        return messages

    def wait(self, timeout: float | None) -> bool:
        """Block until the doorbell rings (True) or ``timeout`` passes (False)."""
        while True:
            try:
                return bool(select.select([self._bell_in], [], [], timeout)[0])
            except InterruptedError:
                continue

    # -- the closed flag ------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return bool(self._closed[0])

    def mark_closed(self) -> None:
        """The hypervisor dropped the pipe: a client still using it is told so."""
        self._closed[0] = 1
        try:
            os.write(self._bell_out, b"\0")
        except BlockingIOError:
            pass

    def wake_reader(self) -> None:
        """Ring this end's own inbound doorbell: a thread of this process blocked in
        :meth:`wait` returns (the pipe was discarded under it)."""
        try:
            os.write(self._bell_in, b"\0")
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self._bell_in, self._bell_out):
            try:
                os.close(fd)
            except OSError:
                pass
        for ring in (self._in, self._out):
            ring.release()
        self._closed.release()
        try:
            self._mm.close()
        except BufferError:
            pass
