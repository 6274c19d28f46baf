"""The migration stream codec (protocols/migration): Xen's vcpu_guest_context, the libxc v3
and libxl v2 streams, xl's save-file header.

Expected bytes are written from Xen's headers and specs, not from our encoder. The judge is
Xen's own stream verifier, ``verify-stream-v2`` (Debian package ``xen-utils-4.17``: the
script in /usr/lib/xen-4.17/bin, its ``xen.migration`` modules in /usr/lib/xen-4.17/lib/python):
every stream we write must pass it, and a reader that accepts a mutated stream implies the
verifier accepts it too.
"""

from __future__ import annotations

import io
import random
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errno import Errno, XenError
from protocols.migration import libxc as xc
from protocols.migration import libxc_reader as xr
from protocols.migration import libxl as xl
from protocols.migration import savefile
from protocols.migration.libxc import PageType, RecType
from protocols.migration.libxl import LibxlRecType
from protocols.migration.record import REC_TYPE_OPTIONAL
from protocols.migration.vcpu import (SIZE, VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_I387_VALID,
                                      VGCF_IN_KERNEL, VGCF_ONLINE, VGCF_SYSCALL_DISABLES_EVENTS,
                                      TrapInfo, VcpuContext)
from tests.xen_tools import verify_stream_v2

PAGE = 4096


def _einval(fn, *args, **kwargs) -> XenError:
    with pytest.raises(XenError) as e:
        fn(*args, **kwargs)
    assert e.value.errno == Errno.EINVAL
    return e.value


# ------------------------------------------------------------------------------------------
# A small synthetic x86 PV domain, written the way xc_domain_save writes one

def _page(pfn: int) -> bytes:
    return struct.pack("<Q", pfn) * (PAGE // 8)


def _libxc_records(nr_pages: int = 48, vcpus=(0, 1), *, policy: bool = True,
                   verify: bool = False, batch: int = 16) -> list[bytes]:
    recs = [xc.stream_start(), xc.x86_pv_info()]
    if policy:
        recs += [xc.x86_cpuid_policy([xc.CpuidLeaf(0, xc.XEN_CPUID_NO_SUBLEAF, 0xD, 1, 2, 3)]),
                 xc.x86_msr_policy([xc.MsrEntry(0xCE, 0)])]
    recs += [xc.static_data_end(), xc.x86_pv_p2m_frames(
        nr_pages - 1, [nr_pages + i for i in range(xc.p2m_frame_count(0, nr_pages - 1))])]
    for base in range(0, nr_pages, batch):
        pfns = list(range(base, min(base + batch, nr_pages)))
        recs.append(xc.page_data(pfns, b"".join(_page(p) for p in pfns)))
    if verify:
        recs += [xc.verify(), xc.page_data([0], _page(0))]
    recs += [xc.x86_tsc_info(0, 2_000_000, 123_456_789, 0), xc.shared_info(bytes(PAGE))]
    for v in vcpus:
        ctx = VcpuContext(flags=VGCF_ONLINE | VGCF_IN_KERNEL, rip=0x1000 + v, rsp=0x8000,
                          ctrlreg=(0, 0, 0, 5 << 12, 0, 0, 0, 0))
        recs += [xc.x86_pv_vcpu_basic(v, ctx), xc.x86_pv_vcpu_extended(v, bytes(24)),
                 xc.x86_pv_vcpu_xsave(v, bytes(64)),
                 xc.x86_pv_vcpu_msrs(v, [xc.VcpuMsr(0xC0000080, 0x501)])]
    recs.append(xc.end())
    return recs


def _libxc_stream(**kwargs) -> bytes:
    return b"".join(_libxc_records(**kwargs))


def _save_file(**kwargs) -> bytes:
    return savefile.encode('name = "guest"\nmemory = 64\n') + xl.wrap(_libxc_stream(**kwargs))


def _read(data: bytes, **kwargs):
    return xr.read_stream(data, **kwargs)


def _read_save(data: bytes, **kwargs):
    r = xl.SaveStreamReader(**kwargs)
    out = r.feed(data)
    r.close()
    return out


# ------------------------------------------------------------------------------------------
# vcpu_guest_context

def test_vcpu_context_layout_matches_xen_headers():
    """Offsets as gcc lays out arch-x86/xen.h + xen-x86_64.h (checked with offsetof)."""
    ctx = VcpuContext(flags=VGCF_ONLINE, rax=0xA1, rip=0xB2, rsp=0xC3, cs=0xE033,
                      saved_upcall_mask=1, rflags=0x202, gs=0x2B, ldt_ents=7,
                      gdt_frames=(9,) + (0,) * 15, gdt_ents=14, kernel_ss=0xE02B,
                      ctrlreg=(0, 0, 0, 0x5000, 0, 0, 0, 0), debugreg=(0,) * 7 + (0x400,),
                      event_callback_eip=0xE1, syscall_callback_eip=0xE3, vm_assist=0x10,
                      fs_base=0xF0, gs_base_user=0xF2, r15=0x15)
    raw = ctx.pack()
    assert len(raw) == SIZE == 5168

    def q(off):
        return struct.unpack_from("<Q", raw, off)[0]
    assert q(512) == 32                                    # flags
    assert q(520) == 0x15                                  # user_regs.r15
    assert q(600) == 0xA1                                  # user_regs.rax
    assert q(648) == 0xB2                                  # user_regs.rip
    assert struct.unpack_from("<H", raw, 656)[0] == 0xE033  # user_regs.cs
    assert raw[660] == 1                                   # saved_upcall_mask
    assert q(664) == 0x202 and q(672) == 0xC3              # rflags, rsp
    assert struct.unpack_from("<H", raw, 712)[0] == 0x2B   # user_regs.gs
    assert q(4824) == 7 and q(4832) == 9 and q(4960) == 14  # ldt_ents, gdt_frames[0], gdt_ents
    assert q(4968) == 0xE02B                               # kernel_ss
    assert q(4984 + 3 * 8) == 0x5000                       # ctrlreg[3]
    assert q(5048 + 7 * 8) == 0x400                        # debugreg[7]
    assert q(5112) == 0xE1 and q(5128) == 0xE3             # event/syscall callback
    assert q(5136) == 0x10 and q(5144) == 0xF0 and q(5160) == 0xF2
    assert VcpuContext.unpack(raw) == ctx
    assert ctx.online and ctx.cr3 == 0x5000


def test_vgcf_flags_are_xens():
    assert (VGCF_I387_VALID, VGCF_IN_KERNEL, VGCF_FAILSAFE_DISABLES_EVENTS,
            VGCF_SYSCALL_DISABLES_EVENTS, VGCF_ONLINE) == (1, 4, 8, 16, 32)


@given(st.integers(0, 2**64), st.binary(max_size=64))
def test_vcpu_context_round_trips_every_byte(seed, head):
    raw = (head + random.Random(seed).randbytes(SIZE))[:SIZE]
    assert VcpuContext.unpack(raw).pack() == raw


@given(st.integers(0, 3 * SIZE).filter(lambda n: n != SIZE))
def test_vcpu_context_wrong_size_is_einval(n):
    _einval(VcpuContext.unpack, bytes(n))


def test_vcpu_context_bad_fields_are_einval():
    _einval(VcpuContext(rip=1 << 64).pack)
    _einval(VcpuContext(rax=-1).pack)
    _einval(VcpuContext(ctrlreg=(0,) * 7).pack)
    _einval(VcpuContext(fpu_ctxt=bytes(511)).pack)


def test_vcpu_trap_table_round_trip():
    traps = [TrapInfo(3, 3, 0xE033, 0xFFFF800000001000), TrapInfo(14, 0, 0xE033, 0x2000)]
    ctx = VcpuContext(trap_ctxt=VcpuContext.pack_traps(traps))
    raw = ctx.pack()
    assert struct.unpack_from("<BBH4xQ", raw, 720 + 14 * 16) == (14, 0, 0xE033, 0x2000)
    assert VcpuContext.unpack(raw).traps() == sorted(traps, key=lambda t: t.vector)


# ------------------------------------------------------------------------------------------
# libxc stream: exact bytes from the spec

def test_image_header_bytes():
    assert xc.image_header() == bytes.fromhex(
        "ffffffffffffffff" "58454e46" "00000003" "0000" "000000000000")


def test_domain_header_bytes():
    assert xc.domain_header(xc.DHDR_TYPE_X86_PV, xen_major=4, xen_minor=17) == bytes.fromhex(
        "01000000" "0c00" "0000" "04000000" "11000000")
    assert xc.domain_header(xc.DHDR_TYPE_X86_HVM)[:4] == b"\x02\0\0\0"


def test_record_type_numbers_are_xens():
    assert [(t.name, t.value) for t in RecType] == [
        ("END", 0), ("PAGE_DATA", 1), ("X86_PV_INFO", 2), ("X86_PV_P2M_FRAMES", 3),
        ("X86_PV_VCPU_BASIC", 4), ("X86_PV_VCPU_EXTENDED", 5), ("X86_PV_VCPU_XSAVE", 6),
        ("SHARED_INFO", 7), ("X86_TSC_INFO", 8), ("HVM_CONTEXT", 9), ("HVM_PARAMS", 10),
        ("TOOLSTACK", 11), ("X86_PV_VCPU_MSRS", 12), ("VERIFY", 13), ("CHECKPOINT", 14),
        ("CHECKPOINT_DIRTY_PFN_LIST", 15), ("STATIC_DATA_END", 16),
        ("X86_CPUID_POLICY", 17), ("X86_MSR_POLICY", 18)]
    assert xc.MAX_BATCH_SIZE == 1024


def test_empty_records_bytes():
    assert xc.end() == bytes(8)
    assert xc.static_data_end() == bytes.fromhex("10000000" "00000000")
    assert xc.verify() == bytes.fromhex("0d000000" "00000000")
    assert xc.checkpoint() == bytes.fromhex("0e000000" "00000000")


def test_fixed_records_bytes():
    assert xc.x86_pv_info() == bytes.fromhex("02000000" "08000000" "08" "04" "0000" "00000000")
    assert xc.x86_tsc_info(1, 2, 3, 4) == bytes.fromhex(
        "08000000" "18000000" "01000000" "02000000" "0300000000000000" "04000000" "00000000")
    assert xc.x86_pv_p2m_frames(1023, [0x10, 0x11]) == bytes.fromhex(
        "03000000" "18000000" "00000000" "ff030000" "1000000000000000" "1100000000000000")
    assert xc.x86_pv_vcpu_msrs(2, [xc.VcpuMsr(0xC0000080, 5)]) == bytes.fromhex(
        "0c000000" "18000000" "02000000" "00000000" "800000c0" "00000000" "0500000000000000")
    assert xc.x86_cpuid_policy([xc.CpuidLeaf(7, 0, 1, 2, 3, 4)]) == bytes.fromhex(
        "11000000" "18000000" "07000000" "00000000" "01000000" "02000000" "03000000"
        "04000000")
    assert xc.x86_msr_policy([xc.MsrEntry(0xCE, 9)]) == bytes.fromhex(
        "12000000" "10000000" "ce000000" "00000000" "0900000000000000")
    shinfo = xc.shared_info(b"\xAB" * PAGE)
    assert shinfo[:8] == bytes.fromhex("07000000" "00100000") and len(shinfo) == 8 + PAGE


def test_page_data_bytes_type_in_top_nibble():
    rec = xc.page_data([5, 6, 7], b"\x11" * PAGE + b"\x22" * PAGE,
                       types=[PageType.L1TAB, PageType.XTAB, PageType.L4TAB_PIN])
    assert rec[:32] == bytes.fromhex("01000000" "20200000" "03000000" "00000000"
                                     "0500000000000010" "06000000000000f0")
    assert rec[32:40] == bytes.fromhex("07000000000000c0")
    assert rec[40:40 + PAGE] == b"\x11" * PAGE and rec[40 + PAGE:] == b"\x22" * PAGE


def test_page_types_are_xens_pfinfo_values():
    # XEN_DOMCTL_PFINFO_* (domctl.h) >> 28; the pinned ones carry LPINTAB (1 << 31) = 8.
    assert {t.name: t.value for t in PageType} == {
        "NOTAB": 0, "L1TAB": 1, "L2TAB": 2, "L3TAB": 3, "L4TAB": 4, "L1TAB_PIN": 9,
        "L2TAB_PIN": 10, "L3TAB_PIN": 11, "L4TAB_PIN": 12, "BROKEN": 13, "XALLOC": 14,
        "XTAB": 15}
    assert [t for t in range(16) if xc.page_type_has_data(t)] == [0, 1, 2, 3, 4, 9, 10, 11, 12]


def test_vcpu_basic_record_carries_the_context():
    ctx = VcpuContext(flags=VGCF_ONLINE, rip=0x42)
    rec = xc.x86_pv_vcpu_basic(3, ctx)
    assert rec[:16] == bytes.fromhex("04000000" "38140000" "03000000" "00000000")
    assert rec[16:] == ctx.pack()


# ------------------------------------------------------------------------------------------
# libxc encoders refuse what Xen would

def test_page_data_batch_limit():
    assert len(xc.page_data(list(range(1024)), bytes(1024 * PAGE))) == 16 + 1024 * (8 + PAGE)
    _einval(xc.page_data, list(range(1025)), bytes(1025 * PAGE))
    _einval(xc.page_data, [], b"")


def test_page_data_encoder_checks():
    _einval(xc.page_data, [1, 2], bytes(PAGE))                       # too little data
    _einval(xc.page_data, [1], bytes(PAGE), types=[5])               # reserved type
    _einval(xc.page_data, [1], bytes(PAGE), types=[16])
    _einval(xc.page_data, [1 << 52], bytes(PAGE))                    # pfn > 52 bits
    _einval(xc.page_data, [1, 2], bytes(PAGE), types=[0])            # types length
    assert len(xc.page_data([1], b"", types=[PageType.XTAB])) == 24  # no data: fine


def test_page_data_parts_pass_the_data_through():
    data = bytes(range(256)) * 16 * 4
    parts = xc.page_data_parts([1, 2, 3, 4], data)
    assert any(p is data for p in parts)
    assert b"".join(parts) == xc.page_data([1, 2, 3, 4], data)


def test_other_encoders_refuse_bad_input():
    _einval(xc.x86_cpuid_policy, [])        # restore refuses an empty policy record
    _einval(xc.x86_msr_policy, [])
    _einval(xc.shared_info, bytes(PAGE - 1))
    _einval(xc.x86_pv_p2m_frames, 1023, [1])  # 1023 needs 2 frames
    _einval(xc.x86_pv_p2m_frames, 5, [1], start_pfn=6)
    _einval(xc.x86_pv_vcpu_basic, 0, bytes(100))
    _einval(xc.x86_pv_vcpu_extended, 0, bytes(129))
    _einval(xc.x86_pv_vcpu_xsave, 0, bytes(8))
    _einval(xc.x86_pv_vcpu_msrs, 0, [])


# ------------------------------------------------------------------------------------------
# libxc reader

def test_reader_round_trip():
    reader, recs = _read(_libxc_stream(), p2m_size=48, max_vcpus=2)
    assert reader.domain_header == xc.DomainHeader(xc.DHDR_TYPE_X86_PV, 12, 4, 17)
    names = [r.type.name for r in recs]
    assert names[:5] == ["X86_PV_INFO", "X86_CPUID_POLICY", "X86_MSR_POLICY",
                         "STATIC_DATA_END", "X86_PV_P2M_FRAMES"]
    assert names[-1] == "END" and names.count("PAGE_DATA") == 3
    pages = {pfn: bytes(page) for r in recs if r.type == RecType.PAGE_DATA
             for pfn, _t, page in r.value.pages()}
    assert pages == {p: _page(p) for p in range(48)}
    basic = [r.value for r in recs if r.type == RecType.X86_PV_VCPU_BASIC]
    assert [b.vcpu_id for b in basic] == [0, 1]
    assert basic[1].context().rip == 0x1001 and basic[1].context().online
    msrs = next(r.value for r in recs if r.type == RecType.X86_PV_VCPU_MSRS)
    assert msrs.msrs() == [xc.VcpuMsr(0xC0000080, 0x501)]
    tsc = next(r.value for r in recs if r.type == RecType.X86_TSC_INFO)
    assert tsc == xc.TscInfo(0, 2_000_000, 123_456_789, 0)
    assert recs[1].value == (xc.CpuidLeaf(0, 0xFFFFFFFF, 0xD, 1, 2, 3),)


def test_reader_full_batch_of_1024_pages():
    data = bytes(range(256)) * 16 * 1024
    recs = [xc.stream_start(), xc.x86_pv_info(), xc.static_data_end(),
            xc.x86_pv_p2m_frames(2047, [7, 8, 9, 10]), xc.page_data(range(1024, 2048), data),
            xc.x86_tsc_info(), xc.shared_info(bytes(PAGE)),
            xc.x86_pv_vcpu_basic(0, VcpuContext()), xc.end()]
    _, out = _read(b"".join(recs))
    pd = out[3].value
    assert pd.pfns == tuple(range(1024, 2048)) and bytes(pd.data) == data


@settings(deadline=None, max_examples=30)
@given(st.lists(st.integers(1, 9000), min_size=1, max_size=40))
def test_reader_any_chunking_gives_the_same_records(cuts):
    stream = _libxc_stream(nr_pages=8, vcpus=(0,))
    want = [(r.type, r.body) for r in _read(stream)[1]]
    reader, got, pos = xr.StreamReader(), [], 0
    for n in cuts:
        got += reader.feed(stream[pos:pos + n])
        pos += n
    got += reader.feed(stream[pos:])
    reader.close()
    assert [(r.type, r.body) for r in got] == want


def test_reader_byte_by_byte():
    stream = _libxc_stream(nr_pages=2, vcpus=(0,), batch=2)
    reader = xr.StreamReader()
    got = [r for i in range(len(stream)) for r in reader.feed(stream[i:i + 1])]
    reader.close()
    assert [r.type for r in got] == [r.type for r in _read(stream)[1]]


@pytest.mark.parametrize("mutate, what", [
    (lambda s: b"\0" + s[1:], "marker"),
    (lambda s: s[:8] + b"XENG" + s[12:], "id"),
    (lambda s: s[:12] + struct.pack(">I", 2) + s[16:], "version"),
    (lambda s: s[:16] + struct.pack(">H", 1) + s[18:], "big-endian"),
    (lambda s: s[:16] + struct.pack(">H", 4) + s[18:], "reserved"),
    (lambda s: s[:18] + b"\0\1" + s[20:], "reserved"),
    (lambda s: s[:24] + struct.pack("<I", 3) + s[28:], "domain type"),
    (lambda s: s[:28] + struct.pack("<H", 13) + s[30:], "page_shift"),
    (lambda s: s[:30] + b"\1\0" + s[32:], "reserved"),
])
def test_reader_refuses_bad_headers(mutate, what):
    e = _einval(_read, mutate(_libxc_stream(nr_pages=2, vcpus=(0,))))
    assert what in str(e)


def test_reader_expected_domain_type():
    stream = _libxc_stream(nr_pages=2, vcpus=(0,))
    _read(stream, domain_type=xc.DHDR_TYPE_X86_PV)
    _einval(_read, stream, domain_type=xc.DHDR_TYPE_X86_HVM)


def _prefix() -> bytes:
    return xc.stream_start() + xc.x86_pv_info() + xc.static_data_end()


def test_unknown_mandatory_record_refused_on_its_header():
    reader = xr.StreamReader()
    reader.feed(_prefix())
    e = _einval(reader.feed, struct.pack("<II", 0x13, 64))   # body not even sent
    assert "unknown mandatory record type 0x00000013" in str(e)
    _einval(reader.feed, b"more")                            # stays failed
    _einval(reader.close)


def test_unknown_optional_record_is_skipped_without_buffering():
    reader = xr.StreamReader()
    reader.feed(_prefix())
    reader.feed(struct.pack("<II", REC_TYPE_OPTIONAL | 0x42, 100 << 20))  # 100 MiB announced
    assert reader.skipped == 1 and len(reader._input) == 0
    for _ in range(100):
        reader.feed(bytes(1 << 20))
    assert len(reader._input) == 0
    rest = xc.x86_pv_p2m_frames(0, [1]) + xc.x86_tsc_info() + xc.shared_info(bytes(PAGE)) \
        + xc.x86_pv_vcpu_basic(0, VcpuContext()) + xc.end()
    assert [r.type for r in reader.feed(rest)][-1] == RecType.END
    reader.close()


@pytest.mark.parametrize("rtype, length", [
    (RecType.PAGE_DATA, 8 + 1024 * (8 + PAGE) + 8),
    (RecType.SHARED_INFO, PAGE - 8), (RecType.SHARED_INFO, PAGE + 8),
    (RecType.X86_PV_INFO, 16), (RecType.END, 8), (RecType.STATIC_DATA_END, 8),
    (RecType.X86_TSC_INFO, 32), (RecType.X86_PV_VCPU_BASIC, 8 + SIZE + 8),
    (RecType.X86_PV_VCPU_EXTENDED, 8 + 136), (RecType.X86_PV_VCPU_XSAVE, 8 + (64 << 10) + 8),
    (RecType.X86_CPUID_POLICY, 24 * 4097), (RecType.X86_PV_P2M_FRAMES, 128 << 20),
    (RecType.TOOLSTACK, 8), (RecType.CHECKPOINT_DIRTY_PFN_LIST, 8),
    (RecType.X86_PV_INFO, (128 << 20) + 8),
])
def test_record_length_caps_refused_on_the_header(rtype, length):
    reader = xr.StreamReader()
    reader.feed(xc.stream_start())
    _einval(reader.feed, struct.pack("<II", rtype, length))


def test_p2m_frames_cap_follows_p2m_size():
    reader = xr.StreamReader(p2m_size=1024)
    reader.feed(_prefix())
    _einval(reader.feed, struct.pack("<II", RecType.X86_PV_P2M_FRAMES, 8 + 3 * 8))


def test_non_zero_padding_refused():
    good = xl.checkpoint_state(1)
    assert good == bytes.fromhex("05000000" "04000000" "01000000" "00000000")
    stream = xl.header() + xl.libxc_context() + _libxc_stream(nr_pages=2, vcpus=(0,))
    r = xl.SaveStreamReader(checkpointed=True)
    r.feed(stream)
    _einval(r.feed, good[:12] + b"\0\0\0\1")


def _page_data_body(count, words, data=b"", res=0):
    body = struct.pack("<II", count, res) + struct.pack(f"<{len(words)}Q", *words) + data
    return struct.pack("<II", RecType.PAGE_DATA, len(body)) + body + bytes(-len(body) % 8)


def _after_p2m(p2m_end=63) -> xr.StreamReader:
    reader = xr.StreamReader()
    reader.feed(_prefix() + xc.x86_pv_p2m_frames(p2m_end, [1]))
    return reader


@pytest.mark.parametrize("record, what", [
    (_page_data_body(0, []), "count 0"),
    (_page_data_body(1025, list(range(1025))), "count 1025"),
    (_page_data_body(1, [1], bytes(PAGE), res=1), "reserved"),
    (_page_data_body(1, [1 | (1 << 55)], bytes(PAGE)), "reserved bits"),
    (_page_data_body(1, [1 | (5 << 60)], bytes(PAGE)), "type"),
    (_page_data_body(1, [1 | (8 << 60)], bytes(PAGE)), "type"),
    (_page_data_body(1, [64], bytes(PAGE)), "beyond"),
    (_page_data_body(2, [1, 2], bytes(PAGE)), "length"),
    (_page_data_body(1, [1 | (0xF << 60)], bytes(PAGE)), "length"),   # XTAB has no data
    (_page_data_body(2, [1]), "too short"),
])
def test_page_data_refusals(record, what):
    e = _einval(_after_p2m().feed, record)
    assert what in str(e)


def test_page_data_pfn_limit_from_p2m_size():
    reader = xr.StreamReader(p2m_size=32)
    reader.feed(_prefix())
    _einval(reader.feed, xc.x86_pv_p2m_frames(63, [1]))     # end_pfn beyond the domain
    reader = xr.StreamReader(p2m_size=32)
    reader.feed(_prefix() + xc.x86_pv_p2m_frames(31, [1]))
    reader.feed(xc.page_data([31], _page(31)))
    _einval(reader.feed, xc.page_data([32], _page(32)))


def test_page_types_without_data_are_accepted():
    reader = _after_p2m()
    (rec,) = reader.feed(xc.page_data([1, 2, 3, 4], _page(4), types=[
        PageType.XTAB, PageType.BROKEN, PageType.XALLOC, PageType.L2TAB_PIN]))
    assert [(p, t, page is None) for p, t, page in rec.value.pages()] == [
        (1, 15, True), (2, 13, True), (3, 14, True), (4, 10, False)]


@pytest.mark.parametrize("body, what", [
    (xc.record(RecType.X86_PV_INFO, struct.pack("<BBHI", 4, 3, 0, 0)), "64-bit"),
    (xc.record(RecType.X86_PV_INFO, struct.pack("<BBHI", 8, 4, 1, 0)), "reserved"),
])
def test_pv_info_refusals(body, what):
    reader = xr.StreamReader()
    reader.feed(xc.stream_start())
    assert what in str(_einval(reader.feed, body))


def test_policy_records_must_not_be_empty():
    reader = xr.StreamReader()
    reader.feed(xc.stream_start() + xc.x86_pv_info())
    _einval(reader.feed, xc.record(RecType.X86_CPUID_POLICY))
    reader = xr.StreamReader()
    reader.feed(xc.stream_start() + xc.x86_pv_info())
    _einval(reader.feed, xc.record(RecType.X86_MSR_POLICY, struct.pack("<IIQ", 1, 1, 0)))


def _to_vcpus() -> bytes:
    return (_prefix() + xc.x86_pv_p2m_frames(63, [1]) + xc.x86_tsc_info()
            + xc.shared_info(bytes(PAGE)))


def test_vcpu_record_checks():
    reader = xr.StreamReader(max_vcpus=2)
    reader.feed(_to_vcpus())
    _einval(reader.feed, xc.x86_pv_vcpu_basic(2, VcpuContext()))
    reader = xr.StreamReader()
    reader.feed(_to_vcpus())
    _einval(reader.feed, xc.record(RecType.X86_PV_VCPU_BASIC, struct.pack("<II", 0, 0)))
    reader = xr.StreamReader()
    reader.feed(_to_vcpus() + xc.x86_pv_vcpu_basic(0, VcpuContext()))
    _einval(reader.feed, xc.record(RecType.X86_PV_VCPU_MSRS, struct.pack("<II", 0, 0),
                                   bytes(24)))


def test_truncated_stream_refused_at_close():
    stream = _libxc_stream(nr_pages=2, vcpus=(0,))
    for cut in (0, 10, 24, 30, 40, len(stream) // 2, len(stream) - 8, len(stream) - 1):
        reader = xr.StreamReader()
        reader.feed(stream[:cut])
        assert "truncated" in str(_einval(reader.close))


def test_data_after_end_refused():
    stream = _libxc_stream(nr_pages=2, vcpus=(0,))
    _einval(_read, stream + xc.end())
    reader = xr.StreamReader()
    reader.feed(stream)
    _einval(reader.feed, b"\0")


# ------------------------------------------------------------------------------------------
# Record order (x86 PV)

def _vb(v):
    return xc.x86_pv_vcpu_basic(v, VcpuContext())


_BAD_ORDERS = {
    "pages before p2m": [xc.x86_pv_info(), xc.static_data_end(), xc.page_data([0], _page(0))],
    "p2m before static end": [xc.x86_pv_info(), xc.x86_pv_p2m_frames(63, [1])],
    "no pv info first": [xc.static_data_end()],
    "cpuid after msr": [xc.x86_pv_info(), xc.x86_msr_policy([xc.MsrEntry(1, 0)]),
                        xc.x86_cpuid_policy([xc.CpuidLeaf(0, 0, 0, 0, 0, 0)])],
    "two static ends": [xc.x86_pv_info(), xc.static_data_end(), xc.static_data_end()],
    "vcpu before shared info": [xc.x86_pv_info(), xc.static_data_end(),
                                xc.x86_pv_p2m_frames(63, [1]), xc.x86_tsc_info(), _vb(0)],
    "shared info before tsc": [xc.x86_pv_info(), xc.static_data_end(),
                               xc.x86_pv_p2m_frames(63, [1]), xc.shared_info(bytes(PAGE))],
}
_TAIL = [xc.x86_pv_info(), xc.static_data_end(), xc.x86_pv_p2m_frames(63, [1]),
         xc.x86_tsc_info(), xc.shared_info(bytes(PAGE))]
_BAD_ORDERS.update({
    "vcpus not increasing": _TAIL + [_vb(1), _vb(0)],
    "same vcpu twice": _TAIL + [_vb(0), _vb(0)],
    "extended of another vcpu": _TAIL + [_vb(0), xc.x86_pv_vcpu_extended(1, bytes(8))],
    "xsave before extended": _TAIL + [_vb(0), xc.x86_pv_vcpu_xsave(0, bytes(16)),
                                      xc.x86_pv_vcpu_extended(0, bytes(8))],
    "extended before basic": _TAIL + [xc.x86_pv_vcpu_extended(0, bytes(8))],
    "end without vcpu 0": _TAIL + [_vb(1), xc.end()],
    "end without vcpus": _TAIL + [xc.end()],
    "end right after p2m": _TAIL[:3] + [xc.end()],
    "checkpoint in a plain stream": _TAIL + [_vb(0), xc.checkpoint()],
    "two verify records": _TAIL[:3] + [xc.verify(), xc.verify()],
    "pages after tsc": _TAIL[:4] + [xc.page_data([0], _page(0))],
    "hvm record in pv stream": _TAIL + [xc.hvm_context(b"x")],
})


@pytest.mark.parametrize("name", sorted(_BAD_ORDERS))
def test_out_of_order_records_refused(name):
    reader = xr.StreamReader()
    reader.feed(xc.stream_start())
    recs = _BAD_ORDERS[name]
    for rec in recs[:-1]:
        reader.feed(rec)
    _einval(reader.feed, recs[-1])


def test_legal_variations_of_order():
    # no policy records; VERIFY pass; vCPU 1 offline; vCPU 2 with BASIC only.
    recs = _libxc_records(nr_pages=4, vcpus=(), policy=False, verify=True)[:-1]
    recs += [_vb(0), xc.x86_pv_vcpu_msrs(0, [xc.VcpuMsr(1, 2)]), _vb(2), xc.end()]
    _, out = _read(b"".join(recs))
    assert out[-1].type == RecType.END
    _read(b"".join(_libxc_records(vcpus=(0,), policy=False)))


def test_checkpointed_libxc_stream():
    recs = _libxc_records(nr_pages=4, vcpus=(0,))[:-1] + [
        xc.checkpoint(), xc.page_data([1], _page(1)), xc.x86_tsc_info(),
        xc.shared_info(bytes(PAGE)), _vb(0), xc.end()]
    _, out = _read(b"".join(recs), checkpointed=True)
    assert [r.type for r in out].count(RecType.CHECKPOINT) == 1


def test_hvm_order():
    start = [xc.stream_start(xc.DHDR_TYPE_X86_HVM), xc.static_data_end(),
             xc.page_data([0], _page(0)), xc.x86_tsc_info()]
    for tail in ([xc.hvm_context(b"ctx"), xc.hvm_params([(1, 2)])],
                 [xc.hvm_params([(1, 2)]), xc.hvm_context(b"ctx")]):
        _read(b"".join(start + tail + [xc.end()]))
    _einval(_read, b"".join(start + [xc.hvm_params([(1, 2)]), xc.end()]))
    _einval(_read, b"".join(start[:1] + [xc.x86_pv_info()]))


# ------------------------------------------------------------------------------------------
# libxl stream

def test_libxl_header_and_records_bytes():
    assert xl.header() == bytes.fromhex("4c6962786c466d74" "00000002" "00000000")
    assert xl.libxc_context() == bytes.fromhex("01000000" "00000000")
    assert xl.end() == bytes(8)
    assert xl.checkpoint_end() == bytes.fromhex("04000000" "00000000")
    assert xl.emulator_xenstore_data(2, 0, [("a", "bc")]) == bytes.fromhex(
        "02000000" "0d000000" "02000000" "00000000" "6100" "626300" "000000")
    assert [(t.name, t.value) for t in LibxlRecType] == [
        ("END", 0), ("LIBXC_CONTEXT", 1), ("EMULATOR_XENSTORE_DATA", 2),
        ("EMULATOR_CONTEXT", 3), ("CHECKPOINT_END", 4), ("CHECKPOINT_STATE", 5)]


def test_save_stream_reader_tags_both_layers():
    out = _read_save(xl.wrap(_libxc_stream(nr_pages=4, vcpus=(0,))), p2m_size=4)
    assert (out[0].layer, out[0].type) == ("libxl", LibxlRecType.LIBXC_CONTEXT)
    assert (out[-2].layer, out[-2].type) == ("libxc", RecType.END)
    assert (out[-1].layer, out[-1].type) == ("libxl", LibxlRecType.END)
    assert all(r.layer == "libxc" for r in out[1:-1])


def test_save_stream_reader_byte_by_byte():
    stream = xl.wrap(_libxc_stream(nr_pages=1, vcpus=(0,)))
    r = xl.SaveStreamReader()
    got = [x for i in range(len(stream)) for x in r.feed(stream[i:i + 1])]
    r.close()
    assert [(x.layer, x.type) for x in got] == [(x.layer, x.type) for x in _read_save(stream)]


@pytest.mark.parametrize("head, what", [
    (struct.pack(">QII", 0x4C6962786C466D75, 2, 0), "ident"),
    (struct.pack(">QII", xl.IDENT, 1, 0), "version"),
    (struct.pack(">QII", xl.IDENT, 2, 1), "big-endian"),
    (struct.pack(">QII", xl.IDENT, 2, 2), "legacy"),
    (struct.pack(">QII", xl.IDENT, 2, 4), "reserved"),
])
def test_libxl_header_refusals(head, what):
    assert what in str(_einval(_read_save, head + xl.libxc_context()))


def test_libxl_record_refusals():
    libxc_stream = _libxc_stream(nr_pages=1, vcpus=(0,))
    h = xl.header()
    _einval(_read_save, h + xl.end())                                    # no libxc stream
    _einval(_read_save, h + xc.record(REC_TYPE_OPTIONAL | 9))             # libxl knows no optional
    _einval(_read_save, h + xc.record(6))
    _einval(_read_save, h + xl.libxc_context() + libxc_stream + xl.libxc_context())
    _einval(_read_save, h + xl.libxc_context() + libxc_stream
            + xl.emulator_context(2, 0, b"qemu"))                         # PV has no emulator
    _einval(_read_save, h + xl.libxc_context() + libxc_stream + xl.checkpoint_end())
    _einval(_read_save, h + xl.libxc_context() + libxc_stream + xl.end() + b"\0")
    assert "libxc" in str(_einval(_read_save, h + xl.libxc_context() + libxc_stream[:-8]))


def test_libxl_hvm_emulator_records():
    hvm = b"".join([xc.stream_start(xc.DHDR_TYPE_X86_HVM), xc.static_data_end(),
                    xc.x86_tsc_info(), xc.hvm_context(b"ctx"), xc.end()])
    out = _read_save(xl.header() + xl.libxc_context() + hvm
                     + xl.emulator_xenstore_data(2, 0, [("physmap/1/size", "800")])
                     + xl.emulator_context(2, 0, b"QEVM") + xl.end(), hvm=True)
    assert out[-3].value == (2, 0, (("physmap/1/size", "800"),))
    assert out[-2].value == (2, 0, b"QEVM")
    bad = xc.record(LibxlRecType.EMULATOR_XENSTORE_DATA, struct.pack("<II", 2, 0), b"k\0v")
    _einval(_read_save, xl.header() + xl.libxc_context() + hvm + bad, hvm=True)


def test_checkpointed_save_stream_hands_back_to_libxl():
    first = _libxc_records(nr_pages=2, vcpus=(0,))[:-1]
    round2 = [xc.page_data([1], _page(1)), xc.x86_tsc_info(), xc.shared_info(bytes(PAGE)),
              _vb(0)]
    stream = b"".join([xl.header(), xl.libxc_context(), *first, xc.checkpoint(),
                       xl.checkpoint_end(), *round2, xc.end(), xl.end()])
    out = _read_save(stream, checkpointed=True)
    seq = [(r.layer, r.type.name) for r in out]
    i = seq.index(("libxc", "CHECKPOINT"))
    assert seq[i + 1] == ("libxl", "CHECKPOINT_END") and seq[i + 2] == ("libxc", "PAGE_DATA")
    assert seq[-2:] == [("libxc", "END"), ("libxl", "END")]


# ------------------------------------------------------------------------------------------
# xl save-file header

def test_savefile_header_bytes():
    hdr = savefile.encode("memory = 64\n")
    assert hdr == (b"Xen saved domain, xl format\n \0 \r" + bytes.fromhex(
        "04030201" "02000000" "00000000" "10000000" "0c000000") + b"memory = 64\n")
    assert savefile.header_size(hdr[:48]) == len(hdr) and savefile.header_size(hdr[:47]) is None


def test_savefile_round_trips():
    h = savefile.decode(savefile.encode('name = "g"\n') + b"LibxlFmt...")
    assert (h.config_text, h.json, h.mandatory_flags, h.size) == ('name = "g"\n', False, 2,
                                                                  48 + 4 + 11)
    raw = savefile.encode('{"c_info": {}}', json=True)
    assert raw[36:40] == b"\x03\0\0\0" and raw.endswith(b"}\0")   # JSON flag, NUL as xl does
    assert savefile.decode(raw).config == b'{"c_info": {}}' and savefile.decode(raw).json
    empty = savefile.encode()
    assert empty[44:] == bytes.fromhex("04000000" "00000000")
    assert savefile.decode(empty).config == b""


def test_savefile_refusals():
    good = savefile.encode("x = 1\n")
    _einval(savefile.decode, b"Xen saved domain, xl format\n \0 \n" + good[32:])
    _einval(savefile.decode, good[:32] + b"\1\2\3\4" + good[36:])
    _einval(savefile.decode, good[:36] + b"\x06\0\0\0" + good[40:])    # unknown mandatory
    _einval(savefile.decode, good[:36] + b"\x01\0\0\0" + good[40:])    # not a v2 stream
    _einval(savefile.decode, good[:44] + struct.pack("<I", 1 << 30) + good[48:])
    _einval(savefile.decode, good[:-1])
    _einval(savefile.decode, good[:47])
    _einval(savefile.decode, good[:44] + struct.pack("<I", 2) + b"\0\0")
    _einval(savefile.decode, good[:48] + struct.pack("<I", 99) + good[52:])
    assert savefile.decode(good[:44] + struct.pack("<I", 14) + good[48:] + b"tail").config \
        == b"x = 1\n"                                                  # extra data skipped


@given(st.binary(max_size=200))
def test_savefile_hostile_bytes_only_einval(data):
    for raw in (data, savefile.MAGIC + data):
        try:
            savefile.decode(raw)
        except XenError as e:
            assert e.errno == Errno.EINVAL


# ------------------------------------------------------------------------------------------
# Fuzzing: nothing but XenError(EINVAL), whatever arrives

_SMALL = xl.wrap(_libxc_stream(nr_pages=1, vcpus=(0,), policy=True))


def _feed_all(reader, chunks):
    try:
        for c in chunks:
            reader.feed(c)
        reader.close()
        return True
    except XenError as e:
        assert e.errno == Errno.EINVAL and str(e).count("\n") == 0
        return False


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_random_bytes(chunks):
    _feed_all(xr.StreamReader(), [xc.stream_start()] + chunks)
    _feed_all(xr.StreamReader(), chunks)
    _feed_all(xl.SaveStreamReader(), [xl.header() + xl.libxc_context() + xc.stream_start()]
              + chunks)


_mutation = st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
                      st.integers(0, len(_SMALL) - 1), st.integers(0, 255))


def _mutate(data: bytes, muts) -> bytes:
    buf = bytearray(data)
    for kind, pos, val in muts:
        pos %= max(len(buf), 1)
        if kind == "flip":
            buf[pos] ^= 1 << (val % 8)
        elif kind == "set":
            buf[pos] = val
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = bytes([val]) * (val % 9)
        else:
            del buf[pos:pos + 1 + val % 16]
        if not buf:
            break
    return bytes(buf)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mutation, min_size=1, max_size=4), st.integers(1, 5000))
def test_fuzz_mutated_streams(muts, chunk):
    data = _mutate(_SMALL, muts)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    _feed_all(xl.SaveStreamReader(p2m_size=1, max_vcpus=1), chunks)


# ------------------------------------------------------------------------------------------
# The judge: Xen's verify-stream-v2

def test_xen_verifier_accepts_our_save_file(xen_tools, tmp_path):
    result = verify_stream_v2(xen_tools, _save_file(nr_pages=1100, batch=1024, verify=True),
                               "xl", tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("Processed xl header", "Libxl Header: little endian",
                 "Libxl Record: Libxc context, length 0",
                 "Libxc Image Header: Version 3, little endian",
                 "Domain Header: x86 PV from Xen 4.17", "64bit guest, 4 levels of pagetables",
                 "Libxc Record: x86 CPUID policy, length 24",
                 "Libxc Record: Static data end, length 0", "Start pfn 0x0, End 0x44b",
                 "Squashed 2 Page Data records together", "Libxc Record: Verify, length 0",
                 "Mode 0, 2000000 kHz, 123456789 ns, incarnation 0",
                 "Libxc Record: Shared info, length 4096", "vcpu0 basic context, 5168 bytes",
                 "vcpu1 msrs context, 16 bytes", "Libxc Record: End, length 0",
                 "Libxl Record: End, length 0"):
        assert line in out, out


def test_xen_verifier_accepts_our_libxc_stream(xen_tools, tmp_path):
    recs = _libxc_records(nr_pages=3, vcpus=(0,))
    recs.insert(-6, xc.page_data([0, 1, 2, 3], _page(0) + _page(3), types=[
        PageType.L4TAB_PIN, PageType.XTAB, PageType.BROKEN, PageType.L1TAB]))
    result = verify_stream_v2(xen_tools, b"".join(recs), "libxc", tmp_path)
    assert result.returncode == 0, result.stderr


def test_xen_verifier_catches_what_we_refuse(xen_tools, tmp_path):
    """The judge is not blind: a stream with non-zero padding fails it, as it fails us."""
    stream = bytearray(xl.wrap(_libxc_stream(nr_pages=1, vcpus=(0,))))
    pos = stream.index(xc.x86_cpuid_policy([xc.CpuidLeaf(0, 0xFFFFFFFF, 0xD, 1, 2, 3)]))
    stream[pos + 4] = 20                               # body_length 24 -> 20: 4 bytes padding
    stream[pos + 8 + 20] = 1
    assert verify_stream_v2(xen_tools, bytes(stream), "libxl", tmp_path).returncode == 1
    _einval(_read_save, bytes(stream))


@pytest.fixture(scope="module")
def xen_verify_module(xen_tools):
    """Xen's ``xen.migration.libxl`` verifier, imported in-process for the differential fuzz."""
    sys.path.insert(0, xen_tools[1])
    try:
        from xen.migration.libxl import VerifyLibxl
        from xen.migration.verify import RecordError, StreamError
        yield VerifyLibxl, (IOError, StreamError, RecordError)
    finally:
        sys.path.remove(xen_tools[1])
        for name in [m for m in sys.modules if m == "xen" or m.startswith("xen.")]:
            del sys.modules[name]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(_mutation, min_size=1, max_size=3))
def test_we_accept_only_what_xens_verifier_accepts(xen_verify_module, muts):
    verify_cls, errors = xen_verify_module
    data = _mutate(_SMALL, muts)
    reader = xl.SaveStreamReader()
    if not _feed_all(reader, [data]) or reader.libxc.skipped:
        return
    stream = io.BytesIO(data)
    try:
        verify_cls(lambda *a: None, stream.read).verify()
    except errors as e:  # pragma: no cover - a failure here is the finding
        pytest.fail(f"we accepted a stream Xen's verifier refuses: {e}")
    assert stream.read() == b""
