"""protocols.hypercall: Xen's hypercall numbers (reference sections 1-3, 5, 6.2, 12-14) and
the msgpack envelope, which must turn any byte string into a request or a XenError."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errno import Errno, XenError
from protocols.hypercall import (DOMID_ANY, DOMID_COW, DOMID_FIRST_RESERVED, DOMID_IDLE,
                                 DOMID_INVALID, DOMID_IO, DOMID_SELF, DOMID_XEN, MAX_GUEST_CMDLINE,
                                 SCHEMA, SUBOPS, XEN_DOMCTL_INTERFACE_VERSION, XEN_LEGACY_MAX_VCPUS,
                                 ConsoleIO, Domctl, DomInfoFlag, EvtchnOp, GnttabOp, Hypercall,
                                 HypercallRequest, HypercallResult, MemoryOp, SchedOp, ShadowOp,
                                 ShutdownReason, Sysctl, TimerOp, VcpuOp, Virq, XenVersion, decode_call,
                                 decode_result, dominf_flags, dominf_shutdown_code, encode_call,
                                 encode_result)
from protocols.hypercall_args import MAX_POLL_PORTS, Array, Bytes, Int, Struct

# --- numbers against the reference tables -------------------------------------------------

NUMBERS = [
    # section 2
    (Hypercall.set_trap_table, 0), (Hypercall.mmu_update, 1), (Hypercall.memory_op, 12),
    (Hypercall.multicall, 13), (Hypercall.xen_version, 17), (Hypercall.console_io, 18),
    (Hypercall.grant_table_op, 20), (Hypercall.vcpu_op, 24), (Hypercall.sched_op, 29),
    (Hypercall.event_channel_op, 32), (Hypercall.physdev_op, 33), (Hypercall.hvm_op, 34),
    (Hypercall.sysctl, 35), (Hypercall.domctl, 36), (Hypercall.hypfs_op, 42),
    (Hypercall.arch_0, 48), (Hypercall.arch_7, 55),
    (XenVersion.version, 0), (XenVersion.extraversion, 1), (XenVersion.pagesize, 7),
    (XenVersion.build_id, 10), (ConsoleIO.write, 0), (ConsoleIO.read, 1),
    (VcpuOp.initialise, 0), (VcpuOp.up, 1), (VcpuOp.down, 2), (VcpuOp.is_up, 3),
    (VcpuOp.get_runstate_info, 4), (VcpuOp.register_vcpu_time_phys_area, 15),
    # section 3
    (Virq.TIMER, 0), (Virq.CONSOLE, 2), (Virq.DOM_EXC, 3), (Virq.DEBUGGER, 6),
    (Virq.XENPMU, 13), (Virq.ARCH_0, 16), (Virq.ARCH_7, 23),
    # section 5
    (EvtchnOp.bind_interdomain, 0), (EvtchnOp.bind_virq, 1), (EvtchnOp.bind_pirq, 2),
    (EvtchnOp.close, 3), (EvtchnOp.send, 4), (EvtchnOp.status, 5),
    (EvtchnOp.alloc_unbound, 6), (EvtchnOp.bind_ipi, 7), (EvtchnOp.bind_vcpu, 8),
    (EvtchnOp.unmask, 9), (EvtchnOp.reset, 10), (EvtchnOp.init_control, 11),
    (EvtchnOp.expand_array, 12), (EvtchnOp.set_priority, 13),
    # section 6.2
    (GnttabOp.map_grant_ref, 0), (GnttabOp.unmap_grant_ref, 1), (GnttabOp.setup_table, 2),
    (GnttabOp.dump_table, 3), (GnttabOp.transfer, 4), (GnttabOp.copy, 5),
    (GnttabOp.query_size, 6), (GnttabOp.unmap_and_replace, 7), (GnttabOp.set_version, 8),
    (GnttabOp.get_status_frames, 9), (GnttabOp.get_version, 10),
    (GnttabOp.swap_grant_ref, 11), (GnttabOp.cache_flush, 12),
    # section 12.1
    (SchedOp.yield_, 0), (SchedOp.block, 1), (SchedOp.shutdown, 2), (SchedOp.poll, 3),
    (SchedOp.remote_shutdown, 4), (SchedOp.shutdown_code, 5), (SchedOp.watchdog, 6),
    (ShutdownReason.poweroff, 0), (ShutdownReason.reboot, 1), (ShutdownReason.suspend, 2),
    (ShutdownReason.crash, 3), (ShutdownReason.watchdog, 4), (ShutdownReason.soft_reset, 5),
    # section 12.2
    (DomInfoFlag.dying, 1 << 0), (DomInfoFlag.hvm_guest, 1 << 1), (DomInfoFlag.shutdown, 1 << 2),
    (DomInfoFlag.paused, 1 << 3), (DomInfoFlag.blocked, 1 << 4), (DomInfoFlag.running, 1 << 5),
    (DomInfoFlag.debugged, 1 << 6), (DomInfoFlag.xs_domain, 1 << 7), (DomInfoFlag.hap, 1 << 8),
    # section 13
    (MemoryOp.increase_reservation, 0), (MemoryOp.decrease_reservation, 1),
    (MemoryOp.current_reservation, 3), (MemoryOp.maximum_reservation, 4),
    (MemoryOp.populate_physmap, 6), (MemoryOp.add_to_physmap, 7), (MemoryOp.exchange, 11),
    (MemoryOp.claim_pages, 24), (MemoryOp.acquire_resource, 28),
    # section 14
    (Domctl.createdomain, 1), (Domctl.destroydomain, 2), (Domctl.pausedomain, 3),
    (Domctl.unpausedomain, 4), (Domctl.getdomaininfo, 5), (Domctl.setvcpuaffinity, 9),
    (Domctl.shadow_op, 10), (Domctl.max_mem, 11), (Domctl.setvcpucontext, 12),
    (Domctl.getvcpucontext, 13), (Domctl.getvcpuinfo, 14), (Domctl.max_vcpus, 15),
    (Domctl.scheduler_op, 16), (Domctl.setdomainhandle, 17), (Domctl.settimeoffset, 24),
    (Domctl.getvcpuaffinity, 25), (Domctl.resumedomain, 27), (Domctl.subscribe, 29),
    (Domctl.gethvmcontext, 33), (Domctl.sethvmcontext, 34), (Domctl.set_target, 46),
    (Domctl.soft_reset, 79), (Domctl.get_domain_state, 90),
    (ShadowOp.OFF, 0), (ShadowOp.ENABLE_TEST, 1), (ShadowOp.ENABLE_LOGDIRTY, 2),
    (ShadowOp.CLEAN, 11), (ShadowOp.PEEK, 12), (ShadowOp.GET_ALLOCATION, 30),
    (ShadowOp.SET_ALLOCATION, 31), (ShadowOp.ENABLE, 32),
    # xen/include/public/sysctl.h
    (Sysctl.readconsole, 1), (Sysctl.tbuf_op, 2), (Sysctl.physinfo, 3), (Sysctl.sched_id, 4),
    (Sysctl.perfc_op, 5), (Sysctl.getdomaininfolist, 6),
]  # fmt: skip


@pytest.mark.parametrize(("member", "value"), NUMBERS, ids=lambda x: getattr(x, "name", ""))
def test_hypercall_numbers_match_the_reference(member, value):
    assert member == value


# xen/include/public/domctl.h, "#define XEN_DOMCTL_<name> <number>", for every Domctl member.
DOMCTL_H = {
    "createdomain": 1, "destroydomain": 2, "pausedomain": 3, "unpausedomain": 4,
    "getdomaininfo": 5, "setvcpuaffinity": 9, "shadow_op": 10, "max_mem": 11,
    "setvcpucontext": 12, "getvcpucontext": 13, "getvcpuinfo": 14, "max_vcpus": 15,
    "scheduler_op": 16, "setdomainhandle": 17, "settimeoffset": 24, "getvcpuaffinity": 25,
    "resumedomain": 27, "subscribe": 29, "gethvmcontext": 33, "sethvmcontext": 34,
    "set_target": 46, "gettscinfo": 59, "settscinfo": 60, "getpageframeinfo3": 61,
    "setvcpuextstate": 62, "getvcpuextstate": 63, "set_virq_handler": 66, "soft_reset": 79,
    "get_cpu_policy": 82, "set_cpu_policy": 83, "get_domain_state": 90,
}  # fmt: skip


def test_domctl_h_setvcpuextstate_is_62_and_getvcpuextstate_is_63():
    """domctl.h: ``XEN_DOMCTL_setvcpuextstate 62``, ``XEN_DOMCTL_getvcpuextstate 63`` (set
    first, unlike the reference's section 14 table)."""
    assert (Domctl.setvcpuextstate, Domctl.getvcpuextstate) == (62, 63)


def test_domctl_h_every_domctl_member_has_its_domctl_h_number():
    assert {m.name: m.value for m in Domctl} == DOMCTL_H


def test_hypercall_2_number_11_is_unused():
    assert 11 not in Hypercall._value2member_map_


def test_hypercall_1_special_domids_and_limits():
    assert (DOMID_FIRST_RESERVED, DOMID_SELF, DOMID_IO) == (0x7FF0, 0x7FF0, 0x7FF1)
    assert (DOMID_XEN, DOMID_COW, DOMID_INVALID) == (0x7FF2, 0x7FF3, 0x7FF4)
    assert (DOMID_ANY, DOMID_IDLE) == (0x7FF5, 0x7FFF)
    assert (XEN_LEGACY_MAX_VCPUS, MAX_GUEST_CMDLINE) == (32, 1024)
    assert XEN_DOMCTL_INTERFACE_VERSION == 0x18


def test_hypercall_12_2_shutdown_code_lives_in_flag_bits_16_to_23():
    word = dominf_flags(DomInfoFlag.shutdown | DomInfoFlag.paused, ShutdownReason.crash)
    assert word == 0b1100 | 3 << 16
    assert dominf_shutdown_code(word) == ShutdownReason.crash
    assert DomInfoFlag(word) & DomInfoFlag.shutdown
    assert dominf_shutdown_code(dominf_flags(DomInfoFlag.dying)) == 0


# --- the schema -----------------------------------------------------------------------------

SERVED = {
    Hypercall.event_channel_op: set(EvtchnOp) - {
        EvtchnOp.init_control, EvtchnOp.expand_array, EvtchnOp.set_priority
    },
    Hypercall.grant_table_op: {
        GnttabOp.map_grant_ref, GnttabOp.unmap_grant_ref, GnttabOp.copy,
        GnttabOp.setup_table, GnttabOp.query_size,
    },
    Hypercall.sched_op: {
        SchedOp.yield_, SchedOp.block, SchedOp.shutdown, SchedOp.poll,
        SchedOp.remote_shutdown, SchedOp.shutdown_code,
    },
    Hypercall.memory_op: {
        MemoryOp.increase_reservation, MemoryOp.decrease_reservation,
        MemoryOp.populate_physmap, MemoryOp.current_reservation, MemoryOp.maximum_reservation,
        MemoryOp.maximum_gpfn, MemoryOp.add_to_physmap_batch, MemoryOp.memory_map,
        MemoryOp.set_memory_map,
    },
    Hypercall.vcpu_op: {VcpuOp.up, VcpuOp.down, VcpuOp.is_up, VcpuOp.get_runstate_info,
                        VcpuOp.set_singleshot_timer, VcpuOp.stop_singleshot_timer},
    Hypercall.xen_version: set(XenVersion),
    Hypercall.console_io: set(ConsoleIO),
    Hypercall.domctl: {
        Domctl.createdomain, Domctl.destroydomain, Domctl.pausedomain, Domctl.unpausedomain,
        Domctl.getdomaininfo, Domctl.setvcpuaffinity, Domctl.shadow_op, Domctl.max_mem,
        Domctl.setvcpucontext, Domctl.getvcpucontext, Domctl.getvcpuinfo, Domctl.max_vcpus,
        Domctl.scheduler_op, Domctl.setdomainhandle, Domctl.settimeoffset,
        Domctl.getvcpuaffinity, Domctl.resumedomain, Domctl.subscribe, Domctl.gethvmcontext,
        Domctl.sethvmcontext, Domctl.set_target, Domctl.gettscinfo, Domctl.soft_reset,
        Domctl.get_domain_state, Domctl.getpageframeinfo3,
    },
    Hypercall.sysctl: {Sysctl.getdomaininfolist, Sysctl.physinfo, Sysctl.scheduler_op,
                       Sysctl.sched_id},
    Hypercall.set_timer_op: {TimerOp.set},
}  # fmt: skip


def test_hypercall_schema_serves_exactly_the_listed_sub_ops():
    assert {(op, sub) for op, subs in SERVED.items() for sub in subs} == set(SCHEMA)
    assert all(type(sub) is SUBOPS[op] for op, sub in SCHEMA)


def test_hypercall_schema_fields_are_xens():
    assert SCHEMA[Hypercall.event_channel_op, EvtchnOp.alloc_unbound].fields.keys() == {
        "dom", "remote_dom"
    }
    gnt_map = SCHEMA[Hypercall.grant_table_op, GnttabOp.map_grant_ref].fields["ops"].elem
    assert gnt_map.fields.keys() == {"host_addr", "flags", "ref", "dom"}
    assert SCHEMA[Hypercall.domctl, Domctl.createdomain].fields.keys() == {
        "domain", "ssidref", "handle", "flags", "max_vcpus", "max_evtchn_port",
        "max_grant_frames", "max_maptrack_frames",
    }  # fmt: skip
    assert all("domain" in SCHEMA[key].fields for key in SCHEMA if key[0] == Hypercall.domctl)


def _strategy(spec):
    """Valid values for a field spec (sizes capped to keep examples small)."""
    match spec:
        case Int(lo=lo, hi=hi):
            return st.integers(lo, hi)
        case Bytes(min_len=lo, max_len=hi):
            return st.binary(min_size=lo, max_size=min(hi, max(lo, 64)))
        case Array(elem=elem, max_len=hi):
            return st.lists(_strategy(elem), max_size=min(hi, 8))
        case Struct(fields=fields):
            return st.fixed_dictionaries({k: _strategy(v) for k, v in fields.items()})
    raise AssertionError(spec)


@pytest.mark.parametrize("key", sorted(SCHEMA), ids=lambda k: f"{k[0].name}.{k[1].name}")
@settings(max_examples=15)
@given(data=st.data())
def test_hypercall_envelope_round_trips_every_schema_entry(key, data):
    op, subop = key
    args = data.draw(_strategy(SCHEMA[key]))
    request = decode_call(encode_call(op, subop, args))
    assert request == HypercallRequest(op, subop, args)
    assert type(request.op) is Hypercall and type(request.subop) is SUBOPS[op]


def test_hypercall_decode_gives_the_sub_op_enum():
    request = decode_call(encode_call(Hypercall.sched_op, 2, {"reason": 3}))
    assert request.subop is SchedOp.shutdown
    assert request.args == {"reason": ShutdownReason.crash}


# --- hostile input --------------------------------------------------------------------------

EVTCHN_SEND = (Hypercall.event_channel_op, EvtchnOp.send)
ALLOC_UNBOUND = (Hypercall.event_channel_op, EvtchnOp.alloc_unbound)
POLL = (Hypercall.sched_op, SchedOp.poll)


def _errno(data: bytes) -> Errno:
    with pytest.raises(XenError) as info:
        decode_call(data)
    return info.value.errno


@pytest.mark.parametrize("op", [11, 43, 56, 999, -1, 2**64 - 1, int(Hypercall.mmu_update)])
def test_hypercall_unknown_or_unserved_op_is_enosys(op):
    assert _errno(encode_call(op, 0, {})) == Errno.ENOSYS


@pytest.mark.parametrize(
    ("op", "subop"),
    [
        (Hypercall.event_channel_op, 14),
        (Hypercall.event_channel_op, EvtchnOp.init_control),  # FIFO ABI: not served
        (Hypercall.grant_table_op, GnttabOp.transfer),
        (Hypercall.domctl, 0),
        (Hypercall.domctl, Domctl.settscinfo),
        (Hypercall.sched_op, -1),
        (Hypercall.sysctl, Sysctl.readconsole),
    ],
)
def test_hypercall_unknown_sub_op_is_enosys(op, subop):
    assert _errno(encode_call(op, subop, {})) == Errno.ENOSYS


@pytest.mark.parametrize(
    ("key", "args"),
    [
        (ALLOC_UNBOUND, {"dom": DOMID_SELF}),  # missing field
        (ALLOC_UNBOUND, {"dom": 0, "remote_dom": 0, "port": 1}),  # unexpected field
        (ALLOC_UNBOUND, {"dom": 70000, "remote_dom": 0}),  # u16 out of range
        (ALLOC_UNBOUND, {"dom": -1, "remote_dom": 0}),
        (EVTCHN_SEND, {"port": 2**32}),  # u32 out of range
        (EVTCHN_SEND, {"port": True}),  # bool is not a C integer
        (EVTCHN_SEND, {"port": 1.0}),
        (EVTCHN_SEND, {"port": "1"}),
        (EVTCHN_SEND, {b"port": 1}),  # keys must be str
        (EVTCHN_SEND, {"port": None}),
        (POLL, {"ports": list(range(MAX_POLL_PORTS + 1)), "timeout": 0}),
        (POLL, {"ports": 5, "timeout": 0}),
        ((Hypercall.sched_op, SchedOp.yield_), {"x": 1}),
        ((Hypercall.domctl, Domctl.setdomainhandle), {"domain": 1, "handle": b"\0" * 15}),
        ((Hypercall.domctl, Domctl.setdomainhandle), {"domain": 1, "handle": "0" * 16}),
        ((Hypercall.domctl, Domctl.settimeoffset), {"domain": 1, "time_offset_seconds": 2**63}),
        ((Hypercall.grant_table_op, GnttabOp.query_size), {"ops": [{"dom": 1}, {"dom": 1 << 16}]}),
        ((Hypercall.grant_table_op, GnttabOp.query_size), {"ops": [{"dom": 1}, [1]]}),
        ((Hypercall.grant_table_op, GnttabOp.copy), {"ops": [{}]}),
    ],
)
def test_hypercall_bad_arguments_are_einval(key, args):
    assert _errno(encode_call(*key, args)) == Errno.EINVAL


def _outside(spec):
    """Values a field of this spec must refuse."""
    wrong_type = st.none() | st.booleans() | st.floats() | st.text(max_size=3)
    match spec:
        case Int(lo=lo, hi=hi):
            out = [st.integers(-(2**63), lo - 1)] if lo > -(2**63) else []
            out += [st.integers(hi + 1, 2**64 - 1)] if hi < 2**64 - 1 else []
            return st.one_of(wrong_type, *out)
        case Bytes(min_len=lo, max_len=hi) if lo == hi:
            return wrong_type | st.binary(max_size=hi + 2).filter(lambda b: len(b) != hi)
        case Bytes():
            return wrong_type | MSGPACK_INTS
        case Array():
            return wrong_type | st.binary(max_size=3) | st.dictionaries(st.text(), st.none())
        case Struct():
            return wrong_type | st.lists(st.none(), max_size=2)
    raise AssertionError(spec)


@given(st.sampled_from(sorted(key for key, spec in SCHEMA.items() if spec.fields)), st.data())
def test_hypercall_any_field_outside_its_c_type_is_einval(key, data):
    spec = SCHEMA[key]
    args = data.draw(_strategy(spec))
    name = data.draw(st.sampled_from(sorted(spec.fields)))
    args[name] = data.draw(_outside(spec.fields[name]))
    assert _errno(encode_call(*key, args)) == Errno.EINVAL


def test_hypercall_signed_fields_take_negative_values():
    args = {"domain": 3, "time_offset_seconds": -(2**63)}
    assert decode_call(encode_call(Hypercall.domctl, Domctl.settimeoffset, args)).args == args


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        encode_call(*EVTCHN_SEND, {"port": 1}) + b"\x00",  # trailing garbage
        msgpack.packb([32, 4]),
        msgpack.packb([32, 4, {"port": 1}, None]),
        msgpack.packb({"op": 32}),
        msgpack.packb([32.0, 4, {"port": 1}]),
        msgpack.packb([True, 4, {"port": 1}]),
        msgpack.packb([32, 4, [1]]),
        msgpack.packb([32, 4, None]),
        msgpack.packb([32, 4, {1: 1}], strict_types=False),
        msgpack.packb([32, 4, {"port": msgpack.ExtType(1, b"x")}]),
        b"\x93\x20\x04\x81\xa4po\xffl\x01",  # invalid UTF-8 key
        b"\x91" * 5000,  # deeper than the unpacker's stack
        b"\xdd\x00\x0f\xff\xff" * 200,  # arrays that claim a million elements
    ],
)
def test_hypercall_malformed_envelope_is_einval(data):
    assert _errno(data) == Errno.EINVAL


def _decodes_or_xen_error(data: bytes, allowed: set[Errno]) -> None:
    try:
        request = decode_call(data)
    except XenError as e:
        assert e.errno in allowed
    else:
        assert isinstance(request, HypercallRequest)
        SCHEMA[request.op, request.subop].check(request.args)


@given(st.binary(max_size=256))
def test_hypercall_any_bytes_decode_or_raise_xen_error(data):
    _decodes_or_xen_error(data, {Errno.EINVAL, Errno.ENOSYS})
    try:
        assert isinstance(decode_result(data), HypercallResult)
    except XenError as e:
        assert e.errno == Errno.EINVAL


MSGPACK_INTS = st.integers(-(2**63), 2**64 - 1)
MSGPACK_KEYS = st.text(max_size=8) | MSGPACK_INTS | st.binary(max_size=4)
MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | MSGPACK_INTS | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(MSGPACK_KEYS, inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
OP_NUMBERS = st.sampled_from(sorted({int(op) for op, _ in SCHEMA})) | st.integers(-5, 60)
SUBOP_NUMBERS = st.sampled_from(sorted({int(sub) for _, sub in SCHEMA})) | st.integers(-5, 100)


@given(MSGPACK_VALUES)
def test_hypercall_any_msgpack_value_decodes_or_raises_xen_error(value):
    _decodes_or_xen_error(msgpack.packb(value), {Errno.EINVAL, Errno.ENOSYS})


@given(OP_NUMBERS, SUBOP_NUMBERS, MSGPACK_VALUES)
def test_hypercall_any_envelope_decodes_or_raises_xen_error(op, subop, args):
    _decodes_or_xen_error(msgpack.packb([op, subop, args]), {Errno.EINVAL, Errno.ENOSYS})


@given(
    st.sampled_from(sorted(SCHEMA)),
    st.dictionaries(st.text(max_size=12), MSGPACK_VALUES, max_size=6),
)
def test_hypercall_served_op_with_random_args_is_request_or_einval(key, args):
    _decodes_or_xen_error(encode_call(*key, args), {Errno.EINVAL})


# --- results --------------------------------------------------------------------------------


@given(st.integers(-(2**63), 2**63 - 1), MSGPACK_VALUES)
def test_hypercall_result_round_trips(rc, result):
    decoded = decode_result(encode_result(rc, result))
    assert decoded.rc == rc
    assert msgpack.packb(decoded.result) == msgpack.packb(result)


def test_hypercall_result_defaults_to_nil():
    assert decode_result(encode_result(-Errno.ESRCH)) == HypercallResult(-3, None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        encode_result(0) + b"\x90",
        msgpack.packb([0]),
        msgpack.packb([0, None, None]),
        msgpack.packb([True, None]),
        msgpack.packb([0.0, None]),
        msgpack.packb([2**63, None]),
        msgpack.packb(0),
    ],
)
def test_hypercall_malformed_result_is_einval(data):
    with pytest.raises(XenError) as info:
        decode_result(data)
    assert info.value.errno == Errno.EINVAL
