"""Record framing shared by the libxc and libxl streams, and the input buffer they read.

Both streams frame a record the same way (``tools/libs/guest/xg_sr_stream_format.h``
``struct xc_sr_rhdr``, ``tools/libs/light/libxl_sr_stream_format.h``
``libxl__sr_rec_hdr``)::

    u32 type; u32 body_length; body[body_length]; zero padding to a multiple of 8

in the stream's byte order (little-endian: we neither write nor accept big-endian streams,
as Xen's restorers refuse them too). Records with bit 31 of the type set are optional.

:class:`Input` is the byte queue of one incoming stream. The libxl stream carries the
libxc stream inline, so the two readers of a save stream share one :class:`Input`: each
consumes its records from the front and leaves the rest for the other. A reader asks for
exactly the bytes it needs; nothing is copied more than once.
"""

from __future__ import annotations

import struct

from protocols.errno import Errno, XenError

REC_ALIGN = 8
REC_LENGTH_MAX = 128 << 20  # xg_sr_stream_format.h: "Somewhat arbitrary - 128MB"
REC_TYPE_OPTIONAL = 0x80000000

RHDR = struct.Struct("<II")
_PAD = (b"", b"\0" * 7, b"\0" * 6, b"\0" * 5, b"\0" * 4, b"\0" * 3, b"\0" * 2, b"\0")


def padded(length: int) -> int:
    """``ROUNDUP(length, REC_ALIGN)``."""
    return (length + REC_ALIGN - 1) & ~(REC_ALIGN - 1)


def record_parts(rtype: int, *parts) -> list:
    """A record as a list of buffers (header, body parts, padding), for one join or writev."""
    length = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
    if length > REC_LENGTH_MAX:
        raise XenError(Errno.EINVAL, f"record 0x{rtype:x} body of {length} bytes exceeds "
                       f"{REC_LENGTH_MAX}")
    out = [RHDR.pack(rtype, length), *parts]
    pad = _PAD[length % REC_ALIGN]
    if pad:
        out.append(pad)
    return out


def record(rtype: int, *parts) -> bytes:
    """One framed record: header, the body (the concatenated ``parts``), zero padding."""
    return b"".join(record_parts(rtype, *parts))


def err(detail: str) -> XenError:
    return XenError(Errno.EINVAL, detail)


class Input:
    """The received, not yet consumed bytes of one stream.

    ``skip(n)`` drops the next ``n`` bytes even before they arrive, so an optional record
    we do not know is passed over without being buffered.
    """

    __slots__ = ("_buf", "_skip", "consumed")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0
        self.consumed = 0  # stream offset of the first byte of the buffer (for messages)

    def feed(self, data) -> None:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            self.consumed += n
            data = memoryview(data)[n:]
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def peek(self, n: int) -> bytes | None:
        """The next ``n`` bytes without consuming them, or None while fewer have arrived."""
        if len(self._buf) < n:
            return None
        return bytes(self._buf[:n])

    def take(self, n: int) -> bytes | None:
        """Consume and return the next ``n`` bytes, or None while fewer have arrived."""
        if len(self._buf) < n:
            return None
        out = bytes(self._buf[:n])
        del self._buf[:n]  # O(1) amortised: bytearray moves its start on a front delete
        self.consumed += n
        return out

    def skip(self, n: int) -> None:
        have = min(n, len(self._buf))
        del self._buf[:have]
        self.consumed += have
        self._skip += n - have

    @property
    def pending(self) -> int:
        """Bytes still owed: buffered plus announced-but-skipped ones not yet arrived."""
        return len(self._buf) + self._skip


class RecordFramer:
    """Reads framed records from an :class:`Input`, checking each header as soon as it
    arrives: ``limit(rtype, length)`` returns the record's largest allowed body, or
    None to skip an optional record; it raises for a type or length it refuses. So a
    hostile length is refused before its body is buffered.
    """

    __slots__ = ("_hdr", "_input", "_limit", "_what", "skipped")

    SKIPPED = object()

    def __init__(self, inp: Input, limit, what: str) -> None:
        self._input = inp
        self._limit = limit
        self._what = what
        self._hdr: tuple[int, int] | None = None
        self.skipped = 0

    @property
    def mid_record(self) -> bool:
        return self._hdr is not None

    def next(self):
        """``(rtype, body)``, :attr:`SKIPPED` for a skipped optional record, or None
        while the record is incomplete."""
        if self._hdr is None:
            raw = self._input.peek(RHDR.size)
            if raw is None:
                return None
            rtype, length = RHDR.unpack(raw)
            if length > REC_LENGTH_MAX:
                raise err(f"{self._what} record 0x{rtype:x}: length {length} exceeds "
                          f"{REC_LENGTH_MAX}")
            cap = self._limit(rtype, length)
            self._input.take(RHDR.size)
            if cap is None:
                self._input.skip(padded(length))
                self.skipped += 1
                return self.SKIPPED
            if length > cap:
                raise err(f"{self._what} record 0x{rtype:x}: length {length} exceeds "
                          f"its limit {cap}")
            self._hdr = (rtype, length)
        rtype, length = self._hdr
        raw = self._input.take(padded(length))
        if raw is None:
            return None
        self._hdr = None
        if raw[length:].count(0) != len(raw) - length:
            raise err(f"{self._what} record 0x{rtype:x}: non-zero padding")
        return rtype, (raw[:length] if len(raw) != length else raw)


class StreamDecoder:
    """What both streams' readers share: ``feed(chunk)`` returns the records it completed,
    ``close()`` refuses a stream that stopped early, and the first error sticks (every later
    call raises it again: a broken stream stays broken). A subclass sets ``_input`` and
    ``done``, names its stream in ``_what``, and provides ``_poll`` and ``_truncated``."""

    _what = "stream"

    def __init__(self) -> None:
        self.done = False
        self._error: XenError | None = None

    def feed(self, data) -> list:
        self._check()
        if self.done and len(data):
            self._fail(err(f"{self._what}: data after END"))
        self._input.feed(data)
        return self._guarded()

    def close(self) -> None:
        self._check()
        if not self.done:
            self._fail(err(self._truncated()))

    def _guarded(self) -> list:
        self._check()
        try:
            return self._poll()
        except XenError as e:
            self._error = e
            raise

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, e: XenError) -> None:
        self._error = e
        raise e

    def _poll(self) -> list:
        raise NotImplementedError

    def _truncated(self) -> str:
        """Where the stream stopped, for the error of a stream cut short."""
        raise NotImplementedError

