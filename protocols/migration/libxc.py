"""The libxc migration stream, version 3: what ``xc_domain_save`` writes and
``xc_domain_restore`` reads (``docs/specs/libxc-migration-stream.pandoc``).

Layout (``tools/libs/guest/xg_sr_stream_format.h``)::

    image header  (24 bytes, big-endian)  u64 marker ~0, u32 id "XENF", u32 version 3,
                                          u16 options (bit 0 big-endian), 6 reserved
    domain header (16 bytes)              u32 type (1 x86 PV, 2 x86 HVM), u16 page_shift 12,
                                          u16 reserved, u32 xen_major, u32 xen_minor
    records       (:mod:`.record` framing) until END

Everything after the image header is in the stream's byte order: little-endian (x86).
The encoders here return ``bytes`` (or a list of buffers, ``*_parts``, for a single join or
writev); the record bodies decode here, and :class:`~.libxc_reader.StreamReader` reads a
stream incrementally, refusing with ``XenError(EINVAL)``
whatever Xen's restorer (``xg_sr_restore.c``, ``xg_sr_restore_x86_pv.c``,
``xg_sr_common_x86.c``) or its verifier (``tools/python/xen/migration/libxc.py``) refuses,
plus out-of-order records and oversized ones (:mod:`.libxc_reader`).
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Iterator, Sequence

import numpy as np

from protocols.migration import vcpu as _vcpu
from protocols.migration.record import RHDR, err, record, record_parts

# Image header (xg_sr_stream_format.h struct xc_sr_ihdr), always big-endian.
IHDR = struct.Struct(">QIIHHI")
IHDR_MARKER = 0xFFFFFFFFFFFFFFFF
IHDR_ID = 0x58454E46  # "XENF"
IHDR_VERSION = 3
IHDR_OPT_BIG_ENDIAN = 1 << 0

# Domain header (struct xc_sr_dhdr).
DHDR = struct.Struct("<IHHII")
DHDR_TYPE_X86_PV = 1
DHDR_TYPE_X86_HVM = 2
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# xg_save_restore.h: the saver sends at most this many pages per PAGE_DATA record.
MAX_BATCH_SIZE = 1024
# x86_64 PV: guest_width 8, 4-level page tables; a p2m frame holds 512 entries.
GUEST_WIDTH = 8
PT_LEVELS = 4
P2M_FPP = PAGE_SIZE // GUEST_WIDTH

# Our caps on records Xen bounds only by REC_LENGTH_MAX (a hostile sender could otherwise
# make us buffer 128 MiB for a record that is a few KiB in practice).
EXT_VCPUCONTEXT_MAX = 128       # xen_domctl_ext_vcpucontext, "up to 128 bytes"
XSAVE_MIN = 16                  # xcr0 + xcr0_accum (restore: "too short")
XSAVE_MAX = 64 << 10            # the largest XSAVE area today is ~11 KiB (AMX)
VCPU_MSRS_MAX = 1024            # xen_domctl_vcpu_msr_t entries per vCPU
CPUID_POLICY_MAX = 4096         # xen_cpuid_leaf_t entries
MSR_POLICY_MAX = 4096           # xen_msr_entry_t entries
HVM_CONTEXT_MAX = 4 << 20
HVM_PARAMS_MAX = 1024


class RecType(enum.IntEnum):
    """``REC_TYPE_*`` (xg_sr_stream_format.h)."""

    END = 0x00
    PAGE_DATA = 0x01
    X86_PV_INFO = 0x02
    X86_PV_P2M_FRAMES = 0x03
    X86_PV_VCPU_BASIC = 0x04
    X86_PV_VCPU_EXTENDED = 0x05
    X86_PV_VCPU_XSAVE = 0x06
    SHARED_INFO = 0x07
    X86_TSC_INFO = 0x08
    HVM_CONTEXT = 0x09
    HVM_PARAMS = 0x0A
    TOOLSTACK = 0x0B
    X86_PV_VCPU_MSRS = 0x0C
    VERIFY = 0x0D
    CHECKPOINT = 0x0E
    CHECKPOINT_DIRTY_PFN_LIST = 0x0F
    STATIC_DATA_END = 0x10
    X86_CPUID_POLICY = 0x11
    X86_MSR_POLICY = 0x12


class PageType(enum.IntEnum):
    """Bits 63..60 of a PAGE_DATA pfn: ``XEN_DOMCTL_PFINFO_*`` (``public/domctl.h``)
    shifted right by 28; 5..8 are reserved."""

    NOTAB = 0x0
    L1TAB = 0x1
    L2TAB = 0x2
    L3TAB = 0x3
    L4TAB = 0x4
    L1TAB_PIN = 0x9
    L2TAB_PIN = 0xA
    L3TAB_PIN = 0xB
    L4TAB_PIN = 0xC
    BROKEN = 0xD
    XALLOC = 0xE
    XTAB = 0xF


# xg_sr_common.h page_type_has_stream_data(): NOTAB and the (pinned) page tables.
_HAS_DATA = tuple(t in (0, 1, 2, 3, 4, 9, 10, 11, 12) for t in range(16))
_HAS_DATA_ARRAY = np.array(_HAS_DATA)
_KNOWN_TYPE = tuple(t not in (5, 6, 7, 8) for t in range(16))
PFN_MASK = (1 << 52) - 1
PFN_RESERVED_MASK = ((1 << 60) - 1) & ~PFN_MASK
TYPE_SHIFT = 60


def page_type_has_data(t: int) -> bool:
    return _HAS_DATA[t]


def page_types_have_data(types: Sequence[int] | np.ndarray) -> np.ndarray:
    """:func:`page_type_has_data` of each type at once (a batch's, 1024 at a time)."""
    return _HAS_DATA_ARRAY[np.asarray(types, dtype=np.intp)]


# ----------------------------------------------------------------------------------------
# Values of decoded records

@dataclasses.dataclass(frozen=True, slots=True)
class ImageHeader:
    version: int
    options: int


@dataclasses.dataclass(frozen=True, slots=True)
class DomainHeader:
    type: int
    page_shift: int
    xen_major: int
    xen_minor: int


@dataclasses.dataclass(frozen=True, slots=True)
class PageData:
    """A PAGE_DATA record: ``pfns[i]`` has type ``types[i]``; ``data`` holds one page for
    each pfn whose type carries data, in order."""

    pfns: tuple[int, ...]
    types: tuple[int, ...]
    data: memoryview

    def pages(self) -> Iterator[tuple[int, int, memoryview | None]]:
        """``(pfn, type, page)`` for each entry; ``page`` is None for a type with no data."""
        off = 0
        for pfn, t in zip(self.pfns, self.types):
            if _HAS_DATA[t]:
                yield pfn, t, self.data[off:off + PAGE_SIZE]
                off += PAGE_SIZE
            else:
                yield pfn, t, None


@dataclasses.dataclass(frozen=True, slots=True)
class X86PvInfo:
    guest_width: int
    pt_levels: int


@dataclasses.dataclass(frozen=True, slots=True)
class P2mFrames:
    """X86_PV_P2M_FRAMES: the pfns of the p2m frames covering pfns start_pfn..end_pfn
    (inclusive; frame ``i`` holds the p2m entries of pfns 512*i .. 512*i+511)."""

    start_pfn: int
    end_pfn: int
    frames: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class TscInfo:
    """X86_TSC_INFO (``XEN_DOMCTL_{get,set}tscinfo``)."""

    mode: int
    khz: int
    nsec: int
    incarnation: int


@dataclasses.dataclass(frozen=True, slots=True)
class VcpuMsr:
    """``xen_domctl_vcpu_msr_t`` (``public/domctl.h``): u32 index, u32 reserved, u64 value."""

    index: int
    value: int


@dataclasses.dataclass(frozen=True, slots=True)
class VcpuBlob:
    """X86_PV_VCPU_{BASIC,EXTENDED,XSAVE,MSRS}: ``u32 vcpu_id; u32 reserved; blob``."""

    vcpu_id: int
    blob: bytes

    def context(self) -> _vcpu.VcpuContext:
        """The BASIC blob as a ``vcpu_guest_context``."""
        return _vcpu.VcpuContext.unpack(self.blob)

    def msrs(self) -> list[VcpuMsr]:
        """The MSRS blob as its ``xen_domctl_vcpu_msr_t`` entries."""
        return [VcpuMsr(i, v) for i, _r, v in _VCPU_MSR.iter_unpack(self.blob)]


@dataclasses.dataclass(frozen=True, slots=True)
class CpuidLeaf:
    """``xen_cpuid_leaf_t`` (``public/arch-x86/xen.h``)."""

    leaf: int
    subleaf: int
    a: int
    b: int
    c: int
    d: int


XEN_CPUID_NO_SUBLEAF = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True, slots=True)
class MsrEntry:
    """``xen_msr_entry_t`` (``public/arch-x86/xen.h``); ``flags`` is reserved, must be 0."""

    idx: int
    val: int
    flags: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One decoded record: its type (a :class:`RecType`, or a ``LibxlRecType`` for a libxl
    record: ``rec.type.name`` names it), raw body, and decoded value (None for empty
    records, ``bytes`` for SHARED_INFO and HVM_CONTEXT). ``layer`` is "libxc" or "libxl"."""

    type: enum.IntEnum
    body: bytes
    value: object = None
    layer: str = "libxc"


# ----------------------------------------------------------------------------------------
# Encoders

_U32 = struct.Struct("<I")
_PAGE_DATA_HDR = struct.Struct("<II")
_PV_INFO = struct.Struct("<BBHI")
_P2M_HDR = struct.Struct("<II")
_VCPU_HDR = struct.Struct("<II")
_TSC = struct.Struct("<IIQII")
_VCPU_MSR = struct.Struct("<IIQ")
_CPUID_LEAF = struct.Struct("<6I")
_MSR_ENTRY = struct.Struct("<IIQ")
_HVM_PARAM = struct.Struct("<QQ")


def image_header(*, version: int = IHDR_VERSION, options: int = 0) -> bytes:
    """The 24-byte image header (always big-endian)."""
    return IHDR.pack(IHDR_MARKER, IHDR_ID, version, options, 0, 0)


def domain_header(dtype: int = DHDR_TYPE_X86_PV, *, xen_major: int = 4, xen_minor: int = 17,
                  page_shift: int = PAGE_SHIFT) -> bytes:
    """The 16-byte domain header."""
    return DHDR.pack(dtype, page_shift, 0, xen_major, xen_minor)


def stream_start(dtype: int = DHDR_TYPE_X86_PV, *, xen_major: int = 4,
                 xen_minor: int = 17) -> bytes:
    """Image header + domain header."""
    return image_header() + domain_header(dtype, xen_major=xen_major, xen_minor=xen_minor)


def _empty(rtype: RecType) -> bytes:
    return record(rtype)


def end() -> bytes:
    return _empty(RecType.END)


def static_data_end() -> bytes:
    return _empty(RecType.STATIC_DATA_END)


def verify() -> bytes:
    return _empty(RecType.VERIFY)


def checkpoint() -> bytes:
    return _empty(RecType.CHECKPOINT)


def page_data_parts(pfns: Sequence[int], data, types: Sequence[int] | None = None) -> list:
    """PAGE_DATA as a list of buffers (the page data is passed through, not copied).

    ``types`` (default: all NOTAB) are :class:`PageType` values; ``data`` is the pages of
    the pfns whose type carries data, in order (``len(data) == 4096 * that count``).
    """
    count = len(pfns)
    if not 1 <= count <= MAX_BATCH_SIZE:
        raise err(f"PAGE_DATA needs 1..{MAX_BATCH_SIZE} pfns, got {count}")
    if min(pfns) < 0 or max(pfns) > PFN_MASK:
        raise err("PAGE_DATA pfn out of range (52 bits)")
    if types is None:
        words = pfns
        nr_data = count
    else:
        if len(types) != count:
            raise err(f"PAGE_DATA has {count} pfns but {len(types)} types")
        try:
            if not all(_KNOWN_TYPE[t] for t in types):
                raise err("PAGE_DATA page type 5..8 is reserved")
            nr_data = sum(_HAS_DATA[t] for t in types)
        except (IndexError, TypeError) as e:
            raise err("PAGE_DATA page type must be 0..15") from e
        words = [p | (t << TYPE_SHIFT) for p, t in zip(pfns, types)]
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size != nr_data * PAGE_SIZE:
        raise err(f"PAGE_DATA: {nr_data} pages carry data, but {size} bytes "
                  f"given (need {nr_data * PAGE_SIZE})")
    return record_parts(RecType.PAGE_DATA, _PAGE_DATA_HDR.pack(count, 0),
                        struct.pack(f"<{count}Q", *words), data)


def page_data(pfns: Sequence[int], data, types: Sequence[int] | None = None) -> bytes:
    """One PAGE_DATA record (see :func:`page_data_parts`)."""
    return b"".join(page_data_parts(pfns, data, types))


def page_data_gather(pages: np.ndarray, pfns: np.ndarray,
                     types: np.ndarray | None = None) -> np.ndarray:
    """The PAGE_DATA record of pages ``pfns`` of ``pages`` (a ``(nr_pages, 4096)`` uint8
    array over guest memory), built in one buffer with one copy of the data: what a saver
    sends, 4 MiB at a time, as fast as memory copies. ``types`` (default: all NOTAB) are
    :class:`PageType` values; a pfn whose type carries no data (XTAB) sends none."""
    count = len(pfns)
    if not 1 <= count <= MAX_BATCH_SIZE:
        raise err(f"PAGE_DATA needs 1..{MAX_BATCH_SIZE} pfns, got {count}")
    with_data = pfns if types is None else pfns[page_types_have_data(types)]
    head = RHDR.size + _PAGE_DATA_HDR.size + 8 * count
    out = np.empty(head + len(with_data) * PAGE_SIZE, dtype=np.uint8)
    RHDR.pack_into(out, 0, RecType.PAGE_DATA, len(out) - RHDR.size)
    _PAGE_DATA_HDR.pack_into(out, RHDR.size, count, 0)
    words = out[RHDR.size + _PAGE_DATA_HDR.size:head].view("<u8")
    words[:] = pfns
    if types is not None:
        words |= np.asarray(types, dtype=np.uint64) << np.uint64(TYPE_SHIFT)
    np.take(pages, with_data, axis=0, out=out[head:].reshape(len(with_data), PAGE_SIZE))
    return out


def x86_pv_info(guest_width: int = GUEST_WIDTH, pt_levels: int = PT_LEVELS) -> bytes:
    return record(RecType.X86_PV_INFO, _PV_INFO.pack(guest_width, pt_levels, 0, 0))


def p2m_frame_count(start_pfn: int, end_pfn: int) -> int:
    """How many p2m frames cover pfns start_pfn..end_pfn (``xg_sr_restore_x86_pv.c``)."""
    return end_pfn // P2M_FPP - start_pfn // P2M_FPP + 1


def p2m_frames_length(start_pfn: int, end_pfn: int) -> int:
    """The body length of an X86_PV_P2M_FRAMES record for pfns start_pfn..end_pfn."""
    return _P2M_HDR.size + 8 * p2m_frame_count(start_pfn, end_pfn)


def x86_pv_p2m_frames(end_pfn: int, frames: Sequence[int], start_pfn: int = 0) -> bytes:
    """X86_PV_P2M_FRAMES; the saver writes ``start_pfn`` 0 and ``end_pfn`` = max_pfn."""
    if not 0 <= start_pfn <= end_pfn <= 0xFFFFFFFF:
        raise err(f"X86_PV_P2M_FRAMES bad range {start_pfn}..{end_pfn}")
    need = p2m_frame_count(start_pfn, end_pfn)
    if len(frames) != need:
        raise err(f"X86_PV_P2M_FRAMES {start_pfn}..{end_pfn} needs {need} frames, "
                  f"got {len(frames)}")
    return record(RecType.X86_PV_P2M_FRAMES, _P2M_HDR.pack(start_pfn, end_pfn),
                  struct.pack(f"<{need}Q", *frames))


def x86_tsc_info(mode: int = 0, khz: int = 0, nsec: int = 0, incarnation: int = 0) -> bytes:
    return record(RecType.X86_TSC_INFO, _TSC.pack(mode, khz, nsec, incarnation, 0))


def shared_info(page) -> bytes:
    if len(page) != PAGE_SIZE:
        raise err(f"SHARED_INFO must be {PAGE_SIZE} bytes, got {len(page)}")
    return record(RecType.SHARED_INFO, page)


def _vcpu_record(rtype: RecType, vcpu_id: int, blob) -> bytes:
    if not blob:
        raise err(f"{rtype.name}: empty blob (the saver leaves the record out)")
    return record(rtype, _VCPU_HDR.pack(vcpu_id, 0), blob)


def x86_pv_vcpu_basic(vcpu_id: int, ctx) -> bytes:
    """``ctx``: a :class:`~protocols.migration.vcpu.VcpuContext` or its 5168 bytes."""
    blob = ctx.pack() if isinstance(ctx, _vcpu.VcpuContext) else bytes(ctx)
    if len(blob) != _vcpu.SIZE:
        raise err(f"X86_PV_VCPU_BASIC needs a {_vcpu.SIZE}-byte context, got {len(blob)}")
    return _vcpu_record(RecType.X86_PV_VCPU_BASIC, vcpu_id, blob)


def x86_pv_vcpu_extended(vcpu_id: int, blob: bytes) -> bytes:
    if len(blob) > EXT_VCPUCONTEXT_MAX:
        raise err(f"X86_PV_VCPU_EXTENDED blob over {EXT_VCPUCONTEXT_MAX} bytes")
    return _vcpu_record(RecType.X86_PV_VCPU_EXTENDED, vcpu_id, blob)


def x86_pv_vcpu_xsave(vcpu_id: int, blob: bytes) -> bytes:
    if not XSAVE_MIN <= len(blob) <= XSAVE_MAX:
        raise err(f"X86_PV_VCPU_XSAVE blob must be {XSAVE_MIN}..{XSAVE_MAX} bytes")
    return _vcpu_record(RecType.X86_PV_VCPU_XSAVE, vcpu_id, blob)


def x86_pv_vcpu_msrs(vcpu_id: int, msrs: Sequence[VcpuMsr]) -> bytes:
    if len(msrs) > VCPU_MSRS_MAX:
        raise err(f"X86_PV_VCPU_MSRS: more than {VCPU_MSRS_MAX} MSRs")
    return _vcpu_record(RecType.X86_PV_VCPU_MSRS, vcpu_id,
                        b"".join(_VCPU_MSR.pack(m.index, 0, m.value) for m in msrs))


def x86_cpuid_policy(leaves: Sequence[CpuidLeaf]) -> bytes:
    """X86_CPUID_POLICY; Xen's restorer refuses an empty one (the saver omits it)."""
    if not 1 <= len(leaves) <= CPUID_POLICY_MAX:
        raise err(f"X86_CPUID_POLICY needs 1..{CPUID_POLICY_MAX} leaves")
    return record(RecType.X86_CPUID_POLICY,
                  b"".join(_CPUID_LEAF.pack(x.leaf, x.subleaf, x.a, x.b, x.c, x.d)
                           for x in leaves))


def x86_msr_policy(entries: Sequence[MsrEntry]) -> bytes:
    """X86_MSR_POLICY; Xen's restorer refuses an empty one (the saver omits it)."""
    if not 1 <= len(entries) <= MSR_POLICY_MAX:
        raise err(f"X86_MSR_POLICY needs 1..{MSR_POLICY_MAX} entries")
    return record(RecType.X86_MSR_POLICY,
                  b"".join(_MSR_ENTRY.pack(e.idx, e.flags, e.val) for e in entries))


def hvm_context(blob: bytes) -> bytes:
    if not 1 <= len(blob) <= HVM_CONTEXT_MAX:
        raise err(f"HVM_CONTEXT must be 1..{HVM_CONTEXT_MAX} bytes")
    return record(RecType.HVM_CONTEXT, blob)


def hvm_params(params: Sequence[tuple[int, int]]) -> bytes:
    if len(params) > HVM_PARAMS_MAX:
        raise err(f"HVM_PARAMS: more than {HVM_PARAMS_MAX} parameters")
    return record(RecType.HVM_PARAMS, _PAGE_DATA_HDR.pack(len(params), 0),
                  *(_HVM_PARAM.pack(i, v) for i, v in params))


# ----------------------------------------------------------------------------------------
# Decoding

def parse_image_header(raw: bytes) -> ImageHeader:
    marker, ident, version, options, res1, res2 = IHDR.unpack(raw)
    if marker != IHDR_MARKER:
        raise err(f"libxc image header: bad marker 0x{marker:016x} (a legacy stream?)")
    if ident != IHDR_ID:
        raise err(f"libxc image header: bad id 0x{ident:08x}, expected 0x{IHDR_ID:08x}")
    if version != IHDR_VERSION:
        raise err(f"libxc image header: version {version} unsupported, expected "
                  f"{IHDR_VERSION}")
    if options & IHDR_OPT_BIG_ENDIAN:
        raise err("libxc image header: big-endian streams are not supported")
    if options & ~IHDR_OPT_BIG_ENDIAN or res1 or res2:
        raise err("libxc image header: reserved bits set")
    return ImageHeader(version, options)


def parse_domain_header(raw: bytes) -> DomainHeader:
    dtype, page_shift, res, major, minor = DHDR.unpack(raw)
    if dtype not in (DHDR_TYPE_X86_PV, DHDR_TYPE_X86_HVM):
        raise err(f"libxc domain header: unknown domain type {dtype}")
    if page_shift != PAGE_SHIFT:
        raise err(f"libxc domain header: page_shift {page_shift}, expected {PAGE_SHIFT}")
    if res:
        raise err("libxc domain header: reserved bits set")
    return DomainHeader(dtype, page_shift, major, minor)


def parse_page_data(body, p2m_size: int | None = None) -> PageData:
    """Decode and check a PAGE_DATA body (``handle_page_data``); pfns must be below
    ``p2m_size`` when it is given."""
    if len(body) < _PAGE_DATA_HDR.size:
        raise err("PAGE_DATA truncated header")
    count, res = _PAGE_DATA_HDR.unpack_from(body, 0)
    if res:
        raise err("PAGE_DATA reserved field set")
    if not 1 <= count <= MAX_BATCH_SIZE:
        raise err(f"PAGE_DATA count {count}, expected 1..{MAX_BATCH_SIZE}")
    end_pfns = _PAGE_DATA_HDR.size + 8 * count
    if len(body) < end_pfns:
        raise err(f"PAGE_DATA of {len(body)} bytes too short for {count} pfns")
    words = struct.unpack_from(f"<{count}Q", body, _PAGE_DATA_HDR.size)
    types = tuple(w >> TYPE_SHIFT for w in words)
    pfns = tuple(w & PFN_MASK for w in words)
    if any(w & PFN_RESERVED_MASK for w in words):
        raise err("PAGE_DATA pfn reserved bits 52..59 set")
    if not all(_KNOWN_TYPE[t] for t in types):
        raise err("PAGE_DATA unknown page type (5..8)")
    if p2m_size is not None and max(pfns) >= p2m_size:
        raise err(f"PAGE_DATA pfn 0x{max(pfns):x} beyond the p2m size 0x{p2m_size:x}")
    nr_data = sum(_HAS_DATA[t] for t in types)
    if len(body) != end_pfns + nr_data * PAGE_SIZE:
        raise err(f"PAGE_DATA length {len(body)}, expected {end_pfns} + "
                  f"{nr_data} pages of data")
    return PageData(pfns, types, memoryview(body)[end_pfns:])


def parse_x86_pv_info(body) -> X86PvInfo:
    width, levels, res1, res2 = _PV_INFO.unpack(body)
    if res1 or res2:
        raise err("X86_PV_INFO reserved bits set")
    if (width, levels) != (GUEST_WIDTH, PT_LEVELS):
        raise err(f"X86_PV_INFO width {width}/levels {levels}: only 64-bit PV "
                  f"({GUEST_WIDTH}/{PT_LEVELS}) is supported")
    return X86PvInfo(width, levels)


def parse_x86_pv_p2m_frames(body, p2m_size: int | None = None) -> P2mFrames:
    if len(body) < _P2M_HDR.size:
        raise err("X86_PV_P2M_FRAMES truncated")
    start, end_pfn = _P2M_HDR.unpack_from(body, 0)
    if start > end_pfn:
        raise err(f"X86_PV_P2M_FRAMES start_pfn 0x{start:x} after end_pfn 0x{end_pfn:x}")
    if p2m_size is not None and end_pfn >= p2m_size:
        raise err(f"X86_PV_P2M_FRAMES end_pfn 0x{end_pfn:x} beyond the p2m size "
                  f"0x{p2m_size:x}")
    n = p2m_frame_count(start, end_pfn)
    if len(body) != p2m_frames_length(start, end_pfn):
        raise err(f"X86_PV_P2M_FRAMES length {len(body)}, expected "
                  f"{p2m_frames_length(start, end_pfn)} "
                  f"for pfns 0x{start:x}..0x{end_pfn:x}")
    return P2mFrames(start, end_pfn, struct.unpack_from(f"<{n}Q", body, _P2M_HDR.size))


def parse_x86_tsc_info(body) -> TscInfo:
    mode, khz, nsec, incarnation, res = _TSC.unpack(body)
    if res:
        raise err("X86_TSC_INFO reserved field set")
    return TscInfo(mode, khz, nsec, incarnation)


def parse_vcpu_blob(rtype: int, body, max_vcpus: int | None = None) -> VcpuBlob:
    name = RecType(rtype).name
    if len(body) <= _VCPU_HDR.size:
        raise err(f"{name} without a blob")
    vcpu_id, res = _VCPU_HDR.unpack_from(body, 0)
    if res:
        raise err(f"{name} reserved field set")
    if max_vcpus is not None and vcpu_id >= max_vcpus:
        raise err(f"{name} vcpu_id {vcpu_id} beyond the domain's {max_vcpus} vCPUs")
    blob = bytes(body[_VCPU_HDR.size:])
    if rtype == RecType.X86_PV_VCPU_BASIC and len(blob) != _vcpu.SIZE:
        raise err(f"X86_PV_VCPU_BASIC blob {len(blob)} bytes, expected {_vcpu.SIZE}")
    if rtype == RecType.X86_PV_VCPU_XSAVE and len(blob) < XSAVE_MIN:
        raise err(f"X86_PV_VCPU_XSAVE blob shorter than {XSAVE_MIN} bytes")
    if rtype == RecType.X86_PV_VCPU_MSRS and len(blob) % _VCPU_MSR.size:
        raise err(f"X86_PV_VCPU_MSRS blob not a multiple of {_VCPU_MSR.size} bytes")
    return VcpuBlob(vcpu_id, blob)


def parse_x86_cpuid_policy(body) -> tuple[CpuidLeaf, ...]:
    if not body or len(body) % _CPUID_LEAF.size:
        raise err(f"X86_CPUID_POLICY length {len(body)} not a non-zero multiple of "
                  f"{_CPUID_LEAF.size}")
    return tuple(CpuidLeaf(*x) for x in _CPUID_LEAF.iter_unpack(body))


def parse_x86_msr_policy(body) -> tuple[MsrEntry, ...]:
    if not body or len(body) % _MSR_ENTRY.size:
        raise err(f"X86_MSR_POLICY length {len(body)} not a non-zero multiple of "
                  f"{_MSR_ENTRY.size}")
    out = tuple(MsrEntry(idx, val, flags) for idx, flags, val in _MSR_ENTRY.iter_unpack(body))
    if any(e.flags for e in out):
        raise err("X86_MSR_POLICY entry flags (reserved) set")
    return out


def parse_hvm_params(body) -> tuple[tuple[int, int], ...]:
    if len(body) < 8:
        raise err("HVM_PARAMS truncated")
    count, res = _PAGE_DATA_HDR.unpack_from(body, 0)
    if res:
        raise err("HVM_PARAMS reserved field set")
    if len(body) != 8 + 16 * count:
        raise err(f"HVM_PARAMS length {len(body)} does not match count {count}")
    return tuple(_HVM_PARAM.iter_unpack(memoryview(body)[8:]))


# Fixed body lengths, and caps for the rest (checked on the record header, before the body
# is buffered).
BODY_EXACT = {
    RecType.END: 0, RecType.STATIC_DATA_END: 0, RecType.VERIFY: 0, RecType.CHECKPOINT: 0,
    RecType.X86_PV_INFO: _PV_INFO.size, RecType.X86_TSC_INFO: _TSC.size,
    RecType.SHARED_INFO: PAGE_SIZE, RecType.X86_PV_VCPU_BASIC: _VCPU_HDR.size + _vcpu.SIZE,
}
BODY_CAP = {
    RecType.PAGE_DATA: _PAGE_DATA_HDR.size + MAX_BATCH_SIZE * (8 + PAGE_SIZE),
    RecType.X86_PV_VCPU_EXTENDED: _VCPU_HDR.size + EXT_VCPUCONTEXT_MAX,
    RecType.X86_PV_VCPU_XSAVE: _VCPU_HDR.size + XSAVE_MAX,
    RecType.X86_PV_VCPU_MSRS: _VCPU_HDR.size + VCPU_MSRS_MAX * _VCPU_MSR.size,
    RecType.X86_CPUID_POLICY: CPUID_POLICY_MAX * _CPUID_LEAF.size,
    RecType.X86_MSR_POLICY: MSR_POLICY_MAX * _MSR_ENTRY.size,
    RecType.HVM_CONTEXT: HVM_CONTEXT_MAX,
    RecType.HVM_PARAMS: 8 + HVM_PARAMS_MAX * _HVM_PARAM.size,
}
# Types that never belong in a forward stream: Xen's restorer leaves them unprocessed,
# which fails a mandatory record (TOOLSTACK is deprecated; the dirty pfn list only flows
# back from a COLO secondary).
REFUSED = frozenset({RecType.TOOLSTACK, RecType.CHECKPOINT_DIRTY_PFN_LIST})
