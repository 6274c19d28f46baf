"""Xen's block device protocol (``xen/include/public/io/blkif.h``), x86_64 ABI.

Blkfront puts requests into a shared ring (:mod:`protocols.ring`) and grants the data frames;
blkback copies each request out of the ring, checks it, does the I/O and answers in the same
ring. This module is the wire format (byte-exact ``x86_64-abi`` layouts, xen-reference.md 8.2),
the checks a backend owes a hostile frontend, the vdev numbering and the xenstore keys.

Startup (blkif.h state diagram, reference 8.4; numbers are XenbusState values, section 10)::

    front                                    back
    1 Initialising                           1 Initialising   (toolstack creates both)
                                               open the device, publish features
                                             2 InitWait
    read features, grant the ring, allocate
    an unbound evtchn, write ring-ref,
    event-channel, protocol
    3 Initialised
                                               map the ring, bind the evtchn,
                                               write sectors, info, sector-size
                                             4 Connected
    read the disk properties
    4 Connected

Either side may skip a state and must then do the skipped state's work; a backend that
writes ``state`` = 4 again while Connected signals a capacity change (19.6).

Who writes which key (8.3; "be" is ``/local/domain/<B>/backend/vbd/<D>/<devid>``, "fe" is
``/local/domain/<D>/device/vbd/<devid>``; all values decimal strings)::

    writer     dir  when                        keys
    toolstack  be   device add (one txn)        TOOLSTACK_BACKEND_KEYS
    toolstack  fe   device add (one txn)        TOOLSTACK_FRONTEND_KEYS
    hotplug    be   after InitWait              HOTPLUG_BACKEND_KEYS
    backend    be   before InitWait             BACKEND_FEATURE_KEYS
    backend    be   before Connected            BACKEND_CONNECT_KEYS
    frontend   fe   before Initialised          FRONTEND_KEYS (multi-page: FRONTEND_MULTI_PAGE_KEYS)

Sector numbers are always 512-byte units, whatever ``sector-size`` says (19.11).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import struct
from collections.abc import Iterable, Sequence
from typing import ClassVar

from protocols.errno import Errno, XenError
from protocols.page import PAGE_SIZE
from protocols.ring import ring_size

SECTOR_SIZE = 512  # sector fields are in 512-byte units whatever ``sector-size`` says (19.11)
SECTORS_PER_PAGE = PAGE_SIZE // SECTOR_SIZE  # first_sect/last_sect range over 0..7

_SIZE = re.compile(r"\s*([0-9]+)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes in ``"4096"``, ``"512K"``, ``"64M"``, ``"1G"``, ``"2T"`` (binary units; a
    trailing ``B``/``iB`` is accepted). The size must be a positive multiple of 512."""
    if isinstance(text, int):
        size = text
    else:
        m = _SIZE.fullmatch(text)
        if m is None:
            raise ValueError(f"bad size {text!r}: want a number with an optional K, M, G or T")
        size = int(m[1]) * _UNITS[m[2].lower()]
    if size <= 0 or size % SECTOR_SIZE:
        raise ValueError(f"bad size {text!r}: must be a positive multiple of {SECTOR_SIZE} bytes")
    return size


class BlkifOp(enum.IntEnum):
    """``BLKIF_OP_*`` (reference 8.1)."""

    READ = 0
    WRITE = 1
    WRITE_BARRIER = 2  # needs feature-barrier
    FLUSH_DISKCACHE = 3  # needs feature-flush-cache
    RESERVED_1 = 4  # SLES device-specific packets; never valid here
    DISCARD = 5  # needs feature-discard
    INDIRECT = 6  # needs feature-max-indirect-segments


BLKIF_OP_READ = BlkifOp.READ
BLKIF_OP_WRITE = BlkifOp.WRITE
BLKIF_OP_WRITE_BARRIER = BlkifOp.WRITE_BARRIER
BLKIF_OP_FLUSH_DISKCACHE = BlkifOp.FLUSH_DISKCACHE
BLKIF_OP_RESERVED_1 = BlkifOp.RESERVED_1
BLKIF_OP_DISCARD = BlkifOp.DISCARD
BLKIF_OP_INDIRECT = BlkifOp.INDIRECT

BLKIF_RSP_OKAY = 0
BLKIF_RSP_ERROR = -1
BLKIF_RSP_EOPNOTSUPP = -2

VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4

BLKIF_DISCARD_SECURE = 1 << 0
BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8

_SEG = struct.Struct("<IBB2x")  # gref, first_sect, last_sect
_REQ = struct.Struct("<BBH4xQQ")  # operation, nr_segments, handle, id, sector_number; seg[] @24
_DISCARD = struct.Struct("<BBH4xQQQ")  # operation, flag, handle, id, sector_number, nr_sectors
_INDIRECT = struct.Struct("<BBH4xQQH2x8I4x")  # op, indirect_op, nr_segments, id, sector, handle, grefs
_RSP = struct.Struct("<QBxh4x")  # id, operation, status

SEGMENT_SIZE = _SEG.size
REQUEST_SIZE = _REQ.size + BLKIF_MAX_SEGMENTS_PER_REQUEST * SEGMENT_SIZE
DISCARD_SIZE = _DISCARD.size
INDIRECT_SIZE = _INDIRECT.size
RESPONSE_SIZE = _RSP.size
SEGMENTS_PER_INDIRECT_PAGE = PAGE_SIZE // SEGMENT_SIZE
BLKIF_MAX_INDIRECT_SEGMENTS = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE
RING_SIZE = ring_size(max(REQUEST_SIZE, RESPONSE_SIZE))  # 32 per page; ring_size(.., 4096 << order)
assert (SEGMENT_SIZE, REQUEST_SIZE, DISCARD_SIZE, INDIRECT_SIZE, RESPONSE_SIZE) == (8, 112, 32, 64, 16)

# Ops whose nr_segments counts the seg[] array of struct blkif_request.
_SEGMENTED_OPS = frozenset({BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
                            BLKIF_OP_FLUSH_DISKCACHE})


def _check_len(data, sizes: tuple[int, ...], what: str) -> None:
    if len(data) not in sizes:
        want = " or ".join(map(str, sizes))
        raise XenError(Errno.EINVAL, f"{what} needs {want} bytes, got {len(data)}")


def _segments(data, offset: int, n: int) -> tuple[BlkifRequestSegment, ...]:
    mv = memoryview(data)[offset:offset + n * SEGMENT_SIZE]
    return tuple(BlkifRequestSegment(*f) for f in _SEG.iter_unpack(mv))


@dataclasses.dataclass(frozen=True, slots=True)
class BlkifRequestSegment:
    """``struct blkif_request_segment`` (``io/blkif.h``): sectors ``first_sect..last_sect``
    (inclusive, 512-byte units) of the 4 KiB frame granted as ``gref``."""

    gref: int
    first_sect: int
    last_sect: int

    def pack(self) -> bytes:
        return _SEG.pack(self.gref, self.first_sect, self.last_sect)

    @classmethod
    def unpack(cls, data) -> BlkifRequestSegment:
        _check_len(data, (SEGMENT_SIZE,), "blkif_request_segment")
        return cls(*_SEG.unpack(data))


@dataclasses.dataclass(frozen=True, slots=True)
class BlkifRequest:
    """``struct blkif_request`` (``io/blkif.h``), 112 bytes: read, write, barrier, flush, and
    any operation this module does not know (kept raw so the backend can refuse it).

    ``segments`` holds the first ``nr_segments`` (at most 11) entries of ``seg[]``.
    """

    operation: int
    nr_segments: int
    handle: int
    id: int
    sector_number: int
    segments: tuple[BlkifRequestSegment, ...] = ()

    SIZE: ClassVar[int] = REQUEST_SIZE

    def pack(self) -> bytes:
        """The 112-byte slot image; unused ``seg[]`` entries are zero."""
        if len(self.segments) > BLKIF_MAX_SEGMENTS_PER_REQUEST:
            raise XenError(Errno.EINVAL, f"{len(self.segments)} segments, at most "
                                         f"{BLKIF_MAX_SEGMENTS_PER_REQUEST}")
        buf = bytearray(REQUEST_SIZE)
        _REQ.pack_into(buf, 0, self.operation, self.nr_segments, self.handle, self.id,
                       self.sector_number)
        off = _REQ.size
        for s in self.segments:
            _SEG.pack_into(buf, off, s.gref, s.first_sect, s.last_sect)
            off += SEGMENT_SIZE
        return bytes(buf)

    @classmethod
    def unpack(cls, data) -> BlkifRequest:
        """Decode a slot. EINVAL: not 112 bytes, or over 11 segments on a segmented op."""
        _check_len(data, (REQUEST_SIZE,), "blkif_request")
        op, nr, handle, id_, sector = _REQ.unpack_from(data)
        if nr > BLKIF_MAX_SEGMENTS_PER_REQUEST and op in _SEGMENTED_OPS:
            raise XenError(Errno.EINVAL, f"op {op} with {nr} segments, at most "
                                         f"{BLKIF_MAX_SEGMENTS_PER_REQUEST}")
        segs = _segments(data, _REQ.size, min(nr, BLKIF_MAX_SEGMENTS_PER_REQUEST))
        return cls(op, nr, handle, id_, sector, segs)


@dataclasses.dataclass(frozen=True, slots=True)
class BlkifRequestDiscard:
    """``struct blkif_request_discard`` (``io/blkif.h``), 32 bytes in a 112-byte slot:
    discard ``nr_sectors`` sectors from ``sector_number`` (``flag``: BLKIF_DISCARD_SECURE)."""

    flag: int
    handle: int
    id: int
    sector_number: int
    nr_sectors: int

    operation: ClassVar[int] = BLKIF_OP_DISCARD
    SIZE: ClassVar[int] = DISCARD_SIZE

    def pack(self) -> bytes:
        """The 32 meaningful bytes (:func:`pack_slot` pads to a slot)."""
        return _DISCARD.pack(BLKIF_OP_DISCARD, self.flag, self.handle, self.id,
                             self.sector_number, self.nr_sectors)

    @classmethod
    def unpack(cls, data) -> BlkifRequestDiscard:
        """Decode 32 bytes or a whole slot; the operation byte must be BLKIF_OP_DISCARD."""
        _check_len(data, (DISCARD_SIZE, REQUEST_SIZE), "blkif_request_discard")
        op, flag, handle, id_, sector, nr_sectors = _DISCARD.unpack_from(data)
        if op != BLKIF_OP_DISCARD:
            raise XenError(Errno.EINVAL, f"op {op} is not BLKIF_OP_DISCARD")
        return cls(flag, handle, id_, sector, nr_sectors)


def indirect_pages(nr_segments: int) -> int:
    """Indirect pages that hold ``nr_segments`` segments (512 per page)."""
    return -(-nr_segments // SEGMENTS_PER_INDIRECT_PAGE)


@dataclasses.dataclass(frozen=True, slots=True)
class BlkifRequestIndirect:
    """``struct blkif_request_indirect`` (``io/blkif.h``), 64 bytes in a 112-byte slot: a
    read or write (``indirect_op``) whose segments live in granted indirect pages.

    ``indirect_grefs`` holds the ``indirect_pages(nr_segments)`` grefs in use (at most 8).
    """

    indirect_op: int
    nr_segments: int
    id: int
    sector_number: int
    handle: int
    indirect_grefs: tuple[int, ...]

    operation: ClassVar[int] = BLKIF_OP_INDIRECT
    SIZE: ClassVar[int] = INDIRECT_SIZE

    def pack(self) -> bytes:
        """The 64 meaningful bytes (:func:`pack_slot` pads to a slot); unused grefs are 0."""
        grefs = self.indirect_grefs
        if len(grefs) > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST:
            raise XenError(Errno.EINVAL, f"{len(grefs)} indirect pages, at most "
                                         f"{BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST}")
        padded = (*grefs, *(0,) * (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST - len(grefs)))
        return _INDIRECT.pack(BLKIF_OP_INDIRECT, self.indirect_op, self.nr_segments, self.id,
                              self.sector_number, self.handle, *padded)

    @classmethod
    def unpack(cls, data) -> BlkifRequestIndirect:
        """Decode 64 bytes or a whole slot. EINVAL: wrong op, or more segments than 8 pages hold."""
        _check_len(data, (INDIRECT_SIZE, REQUEST_SIZE), "blkif_request_indirect")
        op, indirect_op, nr, id_, sector, handle, *grefs = _INDIRECT.unpack_from(data)
        if op != BLKIF_OP_INDIRECT:
            raise XenError(Errno.EINVAL, f"op {op} is not BLKIF_OP_INDIRECT")
        if nr > BLKIF_MAX_INDIRECT_SEGMENTS:
            raise XenError(Errno.EINVAL, f"{nr} indirect segments, at most "
                                         f"{BLKIF_MAX_INDIRECT_SEGMENTS}")
        return cls(indirect_op, nr, id_, sector, handle, tuple(grefs[:indirect_pages(nr)]))


Request = BlkifRequest | BlkifRequestDiscard | BlkifRequestIndirect

_DECODERS = {BLKIF_OP_DISCARD: BlkifRequestDiscard.unpack,
             BLKIF_OP_INDIRECT: BlkifRequestIndirect.unpack}


def unpack_request(data) -> Request:
    """Decode one 112-byte ring slot by its operation byte.

    An unknown operation is not a decode error: it comes back as a :class:`BlkifRequest`
    with the raw op, and :func:`validate_request` answers it BLKIF_RSP_EOPNOTSUPP, as Linux
    blkback's ``dispatch_other_io`` does. EINVAL (wrong length, over 11 segments on a
    segmented op, an impossible indirect count) means the slot has no meaning; the backend
    still answers it BLKIF_RSP_ERROR using :func:`peek_request`.
    """
    _check_len(data, (REQUEST_SIZE,), "blkif ring slot")
    return _DECODERS.get(data[0], BlkifRequest.unpack)(data)


def peek_request(data) -> tuple[int, int]:
    """``(operation, id)`` of any slot, decodable or not: every request layout has
    ``u8 operation @0`` and ``u64 id @8``, enough to answer it."""
    if len(data) < 16:
        raise XenError(Errno.EINVAL, f"a request slot has at least 16 bytes, got {len(data)}")
    return data[0], int.from_bytes(data[8:16], "little")


def pack_slot(req: Request) -> bytes:
    """``req`` as a whole 112-byte slot image, zero after its own bytes.

    ``pack()`` returns each struct's own size (112, 32 or 64 bytes), which is all a ring put
    needs: the peer reads only those bytes. Use this when the whole slot must be defined.
    """
    return req.pack().ljust(REQUEST_SIZE, b"\0")


@dataclasses.dataclass(frozen=True, slots=True)
class BlkifResponse:
    """``struct blkif_response`` (``io/blkif.h``), 16 bytes: ``id`` and ``operation`` echo
    the request; ``status`` is a BLKIF_RSP_* value."""

    id: int
    operation: int
    status: int

    SIZE: ClassVar[int] = RESPONSE_SIZE

    def pack(self) -> bytes:
        return _RSP.pack(self.id, self.operation, self.status)

    @classmethod
    def unpack(cls, data) -> BlkifResponse:
        """Decode 16 bytes or a whole 112-byte slot."""
        _check_len(data, (RESPONSE_SIZE, REQUEST_SIZE), "blkif_response")
        return cls(*_RSP.unpack_from(data))


def unpack_indirect_segments(pages: Sequence[bytes], nr_segments: int
                             ) -> tuple[BlkifRequestSegment, ...]:
    """The ``nr_segments`` segments of an indirect request, read from its mapped indirect
    pages (512 ``blkif_request_segment`` per 4 KiB page, in ``indirect_grefs`` order)."""
    if not 0 <= nr_segments <= BLKIF_MAX_INDIRECT_SEGMENTS:
        raise XenError(Errno.EINVAL, f"{nr_segments} indirect segments")
    need = indirect_pages(nr_segments)
    if len(pages) < need or any(len(p) != PAGE_SIZE for p in pages[:need]):
        raise XenError(Errno.EINVAL, f"{nr_segments} segments need {need} whole pages")
    out: list[BlkifRequestSegment] = []
    for i in range(need):
        n = min(SEGMENTS_PER_INDIRECT_PAGE, nr_segments - i * SEGMENTS_PER_INDIRECT_PAGE)
        out.extend(_segments(pages[i], 0, n))
    return tuple(out)


def pack_indirect_segments(segments: Sequence[BlkifRequestSegment]) -> list[bytes]:
    """The frontend side: the indirect pages (4 KiB each, zero-padded) holding ``segments``."""
    if len(segments) > BLKIF_MAX_INDIRECT_SEGMENTS:
        raise XenError(Errno.EINVAL, f"{len(segments)} indirect segments, at most "
                                     f"{BLKIF_MAX_INDIRECT_SEGMENTS}")
    raw = b"".join(s.pack() for s in segments)
    return [raw[i:i + PAGE_SIZE].ljust(PAGE_SIZE, b"\0") for i in range(0, len(raw), PAGE_SIZE)]


def segment_bytes(seg: BlkifRequestSegment) -> int:
    """Bytes a segment carries: ``(last_sect - first_sect + 1) * 512``."""
    return (seg.last_sect - seg.first_sect + 1) * SECTOR_SIZE


def request_bytes(segments: Iterable[BlkifRequestSegment]) -> int:
    """Bytes a read or write moves (``req.segments``, or an indirect request's segments)."""
    return sum((s.last_sect - s.first_sect + 1) for s in segments) * SECTOR_SIZE


# -- what a backend owes a hostile frontend ------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The BLKIF_RSP_* status a request deserves, and why when it is not OKAY."""

    status: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == BLKIF_RSP_OKAY


OKAY = Verdict(BLKIF_RSP_OKAY)


def _error(reason: str) -> Verdict:
    return Verdict(BLKIF_RSP_ERROR, reason)


def _unsupported(reason: str) -> Verdict:
    return Verdict(BLKIF_RSP_EOPNOTSUPP, reason)


def validate_request(req: Request, sectors: int, *, readonly: bool,
                     feature_barrier: bool = False, feature_flush_cache: bool = False,
                     feature_discard: bool = False, discard_secure: bool = False,
                     max_indirect_segments: int = 0, sector_size: int = SECTOR_SIZE,
                     indirect_segments: Sequence[BlkifRequestSegment] = ()) -> Verdict:
    """The status ``req`` deserves on a disk of ``sectors`` 512-byte sectors, before any I/O.

    The rules are Linux blkback's (``dispatch_rw_block_io``, ``dispatch_discard_io``,
    ``xen_vbd_translate``, ``dispatch_other_io``):

    * EOPNOTSUPP: an unknown op, or an op whose feature the backend did not advertise
      (barrier, flush, discard, indirect), or a secure discard without ``discard-secure``.
    * ERROR: read/write with nr_segments outside 1..11 (barrier and flush may carry 0), a
      segment without ``first_sect <= last_sect <= 7``, any write, flush, barrier or
      discard on a read-only disk, a range past the end of the disk, a range not aligned to
      ``sector_size``, an indirect op other than read/write or over ``max_indirect_segments``.

    ``indirect_segments``: for BLKIF_OP_INDIRECT, the segments read from its indirect pages
    (:func:`unpack_indirect_segments`).
    """
    if isinstance(req, BlkifRequest):
        op = req.operation
        if op not in _SEGMENTED_OPS:
            return _unsupported(f"unknown operation {op}")
        if op == BLKIF_OP_WRITE_BARRIER and not feature_barrier:
            return _unsupported("write barrier without feature-barrier")
        if op == BLKIF_OP_FLUSH_DISKCACHE and not feature_flush_cache:
            return _unsupported("flush without feature-flush-cache")
        least = 1 if op in (BLKIF_OP_READ, BLKIF_OP_WRITE) else 0
        if not least <= req.nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
            return _error(f"{req.nr_segments} segments, want {least}..11")
        if len(req.segments) != req.nr_segments:
            return _error(f"nr_segments {req.nr_segments} with {len(req.segments)} segments")
        return _check_io(op != BLKIF_OP_READ, req.sector_number, req.segments, sectors,
                         readonly, sector_size)
    if isinstance(req, BlkifRequestDiscard):
        if not feature_discard:
            return _unsupported("discard without feature-discard")
        if req.flag & BLKIF_DISCARD_SECURE and not discard_secure:
            return _unsupported("secure discard without discard-secure")
        if readonly:
            return _error("discard on a read-only disk")
        return _check_range(req.sector_number, req.nr_sectors, sectors)
    if not max_indirect_segments:
        return _unsupported("indirect request without feature-max-indirect-segments")
    if req.indirect_op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
        return _error(f"indirect op {req.indirect_op} is not read or write")
    if not 1 <= req.nr_segments <= min(max_indirect_segments, BLKIF_MAX_INDIRECT_SEGMENTS):
        return _error(f"{req.nr_segments} indirect segments, want 1..{max_indirect_segments}")
    if len(indirect_segments) != req.nr_segments:
        return _error(f"nr_segments {req.nr_segments} with {len(indirect_segments)} segments")
    return _check_io(req.indirect_op == BLKIF_OP_WRITE, req.sector_number, indirect_segments,
                     sectors, readonly, sector_size)


def _check_io(write: bool, start: int, segments: Iterable[BlkifRequestSegment], sectors: int,
              readonly: bool, sector_size: int) -> Verdict:
    if write and readonly:
        return _error("write to a read-only disk")
    align = max(sector_size // SECTOR_SIZE, 1)
    count = 0
    for s in segments:
        if not s.first_sect <= s.last_sect < SECTORS_PER_PAGE:
            return _error(f"segment sectors {s.first_sect}..{s.last_sect} outside 0..7")
        n = s.last_sect - s.first_sect + 1
        if (start | n) % align:  # blkback: "Misaligned I/O request"
            return _error(f"sector {start} or {n}-sector segment not aligned to {sector_size}")
        count += n
    return _check_range(start, count, sectors)


def _check_range(start: int, count: int, sectors: int) -> Verdict:
    if count and start + count > sectors:
        return _error(f"sectors {start}+{count} past the end of a {sectors}-sector disk")
    return OKAY


# -- vdev numbers (docs/man/xen-vbd-interface.7.pandoc, reference 8.3) ---------------------

_EXTENDED = 1 << 28
_NAME = re.compile(r"(xvd|sd|hd)([a-z]{1,5})([1-9][0-9]{0,3})?")
_DP = re.compile(r"d([0-9]{1,8})p([0-9]{1,4})")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]{1,8}|0[0-7]{0,11}|[1-9][0-9]{0,9}")
_LIMITS = {"xvd": ((1 << 20) - 1, 255), "sd": (15, 15), "hd": (3, 63)}  # max disk, partition


def _encode(kind: str, disk: int, part: int) -> int:
    if kind == "xvd":
        if disk <= 15 and part <= 15:
            return 202 << 8 | disk << 4 | part
        return _EXTENDED | disk << 8 | part
    if kind == "sd":
        return 8 << 8 | disk << 4 | part
    return (3 if disk < 2 else 22) << 8 | (disk & 1) << 6 | part


def vdev_to_devid(vdev: str) -> int:
    """The ``virtual-device`` number of a disk name, as libxl's
    ``libxl__device_disk_dev_number``: ``xvd<letters>[part]``, ``d<disk>p<part>``, a bare
    number (hex, octal or decimal, written as is), ``hd``/``sd`` names. Disk letters count
    a=0..z=25, aa=26 (xvdtq = disk 536); a partition has no leading zero. EINVAL otherwise.
    """
    dp = _DP.fullmatch(vdev)
    if dp and int(dp[1]) < 1 << 20 and int(dp[2]) < 256:
        return _encode("xvd", int(dp[1]), int(dp[2]))
    name = _NAME.fullmatch(vdev)
    if name and name[1] == "xvd":
        return _from_name(name, vdev)
    if _NUMBER.fullmatch(vdev):
        base = 16 if vdev[:2] in ("0x", "0X") else 8 if vdev[:1] == "0" else 10
        if (number := int(vdev, base)) <= 0x7FFFFFFF:
            return number
    if name:
        return _from_name(name, vdev)
    raise XenError(Errno.EINVAL, f"invalid virtual disk name {vdev!r:.40}")


def _from_name(m: re.Match, vdev: str) -> int:
    kind, letters, part = m[1], m[2], int(m[3] or 0)
    disk = -1
    for c in letters:  # bijective base 26
        disk = (disk + 1) * 26 + ord(c) - ord("a")
    max_disk, max_part = _LIMITS[kind]
    if disk > max_disk or part > max_part:
        raise XenError(Errno.EINVAL, f"invalid virtual disk name {vdev!r}: disk {disk} "
                                     f"partition {part} beyond {kind}'s {max_disk}/{max_part}")
    return _encode(kind, disk, part)


def _disk_letters(n: int) -> str:
    """``encode_disk_name`` (libxl, Linux): 0 -> a, 25 -> z, 26 -> aa."""
    out = ""
    while True:
        out = chr(ord("a") + n % 26) + out
        n = n // 26 - 1
        if n < 0:
            return out


def devid_to_vdev(devid: int) -> str:
    """The nominal disk name of a ``virtual-device`` number (xvd, sd or hd form).

    libxl's ``libxl__devid_to_vdev`` names everything xvd (Linux maps hd/sd to xvd); this keeps
    the type the number encodes. Reserved and deprecated numbers are EINVAL.
    """
    if _EXTENDED <= devid < 2 << 28:
        kind, disk, part = "xvd", devid >> 8 & 0xFFFFF, devid & 0xFF
    elif 0 <= devid < _EXTENDED:
        major, minor = devid >> 8, devid & 0xFF
        if major == 202:
            kind, disk, part = "xvd", minor >> 4, minor & 15
        elif major == 8:
            kind, disk, part = "sd", minor >> 4, minor & 15
        elif major in (3, 22) and not minor & 0x80:
            kind, disk, part = "hd", (minor >> 6) + (2 if major == 22 else 0), minor & 63
        else:
            raise XenError(Errno.EINVAL, f"virtual-device {devid} is deprecated or reserved")
    else:
        raise XenError(Errno.EINVAL, f"virtual-device {devid} is reserved")
    return f"{kind}{_disk_letters(disk)}{part or ''}"


# -- xenstore (reference 8.3) ---------------------------------------------------------------

XEN_IO_PROTO_ABI_X86_32 = "x86_32-abi"
XEN_IO_PROTO_ABI_X86_64 = "x86_64-abi"
XEN_IO_PROTO_ABI_ARM = "arm-abi"
XEN_IO_PROTO_ABI_NATIVE = XEN_IO_PROTO_ABI_X86_64  # the only layout this module speaks

TOOLSTACK_BACKEND_KEYS = ("frontend", "frontend-id", "online", "state", "removable", "bootable",
                          "dev", "type", "mode", "device-type", "params", "discard-enable",
                          "specification")
TOOLSTACK_FRONTEND_KEYS = ("backend", "backend-id", "state", "virtual-device", "device-type",
                           "trusted", "protocol")  # protocol: PV guests only
HOTPLUG_BACKEND_KEYS = ("physical-device",)  # "MAJOR:MINOR"
BACKEND_FEATURE_KEYS = ("feature-barrier", "feature-flush-cache", "feature-discard",
                        "discard-granularity", "discard-alignment", "discard-secure",
                        "feature-persistent", "feature-max-indirect-segments",
                        "max-ring-page-order", "max-ring-pages", "multi-queue-max-queues")
BACKEND_CONNECT_KEYS = ("sectors", "info", "sector-size", "physical-sector-size")
FRONTEND_KEYS = ("ring-ref", "event-channel", "protocol", "feature-persistent")
# A multi-page ring writes ring-page-order and ring-ref0..N instead of ring-ref; several
# queues write multi-queue-num-queues and queue-N/{ring-ref,event-channel}.
FRONTEND_MULTI_PAGE_KEYS = ("ring-page-order", "ring-ref%u")
FRONTEND_MULTI_QUEUE_KEYS = ("multi-queue-num-queues", "queue-%u/ring-ref",
                             "queue-%u/event-channel")
