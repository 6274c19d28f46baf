"""Hypercall numbers and the msgpack hypercall envelope.

A domain calls its host's hypervisor the way a Xen guest does: a hypercall number, a sub-op
(``cmd``) number, and the IN fields of the argument struct; the answer is Xen's return
value, negative Xen errno on failure (``xen/include/public/xen.h``). On the wire a call is
the msgpack array ``[op, subop, args]`` and a result is ``[rc, result]``.

:func:`decode_call` is the hypervisor's first line against a hostile guest: any byte string
either decodes to a well-typed :class:`HypercallRequest` or raises :class:`XenError` with
``-EINVAL`` (malformed) or ``-ENOSYS`` (a hypercall or sub-op this emulator does not serve,
as Xen answers unknown ops). Argument shapes live in :data:`SCHEMA`
(``protocols/hypercall_args.py``).

Enum member names are Xen's, without the ``__HYPERVISOR_``/``EVTCHNOP_``/... prefixes;
``SCHEDOP_yield`` is ``SchedOp.yield_`` because ``yield`` is a Python keyword.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import msgpack

from protocols import hypercall_args
from protocols.errno import Errno, XenError
from protocols.hypercall_args import MAX_BLOB_BYTES, MAX_EXTENTS, Struct

# --- xen/include/public/xen.h (reference section 1) ---------------------------------------
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_ANY = 0x7FF5
DOMID_IDLE = 0x7FFF
DOMID_MASK = 0x7FFF
XEN_LEGACY_MAX_VCPUS = 32  # arch-x86/xen.h: vcpu_info slots in shared_info
MAX_GUEST_CMDLINE = 1024
XEN_DOMCTL_INTERFACE_VERSION = 0x18
NR_VIRQS = 24


class Hypercall(enum.IntEnum):
    """``__HYPERVISOR_*`` (reference section 2)."""

    set_trap_table = 0
    mmu_update = 1
    set_gdt = 2
    stack_switch = 3
    set_callbacks = 4
    fpu_taskswitch = 5
    sched_op_compat = 6
    platform_op = 7
    set_debugreg = 8
    get_debugreg = 9
    update_descriptor = 10
    memory_op = 12
    multicall = 13
    update_va_mapping = 14
    set_timer_op = 15
    event_channel_op_compat = 16
    xen_version = 17
    console_io = 18
    physdev_op_compat = 19
    grant_table_op = 20
    vm_assist = 21
    update_va_mapping_otherdomain = 22
    iret = 23
    vcpu_op = 24
    set_segment_base = 25
    mmuext_op = 26
    xsm_op = 27
    nmi_op = 28
    sched_op = 29
    callback_op = 30
    xenoprof_op = 31
    event_channel_op = 32
    physdev_op = 33
    hvm_op = 34
    sysctl = 35
    domctl = 36
    kexec_op = 37
    tmem_op = 38
    argo_op = 39
    xenpmu_op = 40
    dm_op = 41
    hypfs_op = 42
    arch_0 = 48
    arch_1 = 49
    arch_2 = 50
    arch_3 = 51
    arch_4 = 52
    arch_5 = 53
    arch_6 = 54
    arch_7 = 55


class EvtchnOp(enum.IntEnum):
    """``EVTCHNOP_*``, ``xen/include/public/event_channel.h`` (reference section 5)."""

    bind_interdomain = 0
    bind_virq = 1
    bind_pirq = 2
    close = 3
    send = 4
    status = 5
    alloc_unbound = 6
    bind_ipi = 7
    bind_vcpu = 8
    unmask = 9
    reset = 10
    init_control = 11
    expand_array = 12
    set_priority = 13


class GnttabOp(enum.IntEnum):
    """``GNTTABOP_*``, ``xen/include/public/grant_table.h`` (reference section 6.2)."""

    map_grant_ref = 0
    unmap_grant_ref = 1
    setup_table = 2
    dump_table = 3
    transfer = 4
    copy = 5
    query_size = 6
    unmap_and_replace = 7
    set_version = 8
    get_status_frames = 9
    get_version = 10
    swap_grant_ref = 11
    cache_flush = 12


class SchedOp(enum.IntEnum):
    """``SCHEDOP_*``, ``xen/include/public/sched.h`` (reference section 12.1)."""

    yield_ = 0
    block = 1
    shutdown = 2
    poll = 3
    remote_shutdown = 4
    shutdown_code = 5
    watchdog = 6
    pin_override = 7


class TimerOp(enum.IntEnum):
    """``set_timer_op`` has no sub-op in Xen; xenray's wire carries this one."""

    set = 0


class SchedulerId(enum.IntEnum):
    """``XEN_SCHEDULER_*`` (``xen/include/public/domctl.h``)."""

    CREDIT = 5
    CREDIT2 = 6
    ARINC653 = 7
    RTDS = 8
    NULL = 9


class SchedCmd(enum.IntEnum):
    """``XEN_DOMCTL_SCHEDOP_*`` / ``XEN_SYSCTL_SCHEDOP_*``."""

    putinfo = 0
    getinfo = 1
    putvcpuinfo = 2
    getvcpuinfo = 3


class ShutdownReason(enum.IntEnum):
    """``SHUTDOWN_*``, ``xen/include/public/sched.h``."""

    poweroff = 0
    reboot = 1
    suspend = 2
    crash = 3
    watchdog = 4
    soft_reset = 5


class MemoryOp(enum.IntEnum):
    """``XENMEM_*``, ``xen/include/public/memory.h`` (reference section 13)."""

    increase_reservation = 0
    decrease_reservation = 1
    maximum_ram_page = 2
    current_reservation = 3
    maximum_reservation = 4
    machphys_mfn_list = 5
    populate_physmap = 6
    add_to_physmap = 7
    memory_map = 9
    machine_memory_map = 10
    exchange = 11
    machphys_mapping = 12
    set_memory_map = 13
    maximum_gpfn = 14
    remove_from_physmap = 15
    set_pod_target = 16
    get_pod_target = 17
    get_sharing_freed_pages = 18
    get_sharing_shared_pages = 19
    paging_op = 20
    access_op = 21
    sharing_op = 22
    add_to_physmap_batch = 23
    claim_pages = 24
    machphys_compat_mfn_list = 25
    get_vnumainfo = 26
    reserved_device_memory_map = 27
    acquire_resource = 28


class XenMapSpace(enum.IntEnum):
    """``XENMAPSPACE_*``: what ``add_to_physmap(_batch)`` maps (``memory.h``, reference 13)."""

    shared_info = 0
    grant_table = 1
    gmfn = 2
    gmfn_range = 3
    gmfn_foreign = 4
    dev_mmio = 5


class VcpuOp(enum.IntEnum):
    """``VCPUOP_*``, ``xen/include/public/vcpu.h``."""

    initialise = 0
    up = 1
    down = 2
    is_up = 3
    get_runstate_info = 4
    register_runstate_memory_area = 5
    set_periodic_timer = 6
    stop_periodic_timer = 7
    set_singleshot_timer = 8
    stop_singleshot_timer = 9
    register_vcpu_info = 10
    send_nmi = 11
    get_physid = 12
    register_vcpu_time_memory_area = 13
    register_runstate_phys_area = 14
    register_vcpu_time_phys_area = 15


class Runstate(enum.IntEnum):
    """``RUNSTATE_*``, ``xen/include/public/vcpu.h`` (``get_runstate_info``)."""

    running = 0
    runnable = 1
    blocked = 2
    offline = 3


class XenVersion(enum.IntEnum):
    """``XENVER_*``, ``xen/include/public/version.h``."""

    version = 0
    extraversion = 1
    compile_info = 2
    capabilities = 3
    changeset = 4
    platform_parameters = 5
    get_features = 6
    pagesize = 7
    guest_handle = 8
    commandline = 9
    build_id = 10


class ConsoleIO(enum.IntEnum):
    """``CONSOLEIO_*``, ``xen/include/public/xen.h``."""

    write = 0
    read = 1


class Domctl(enum.IntEnum):
    """``XEN_DOMCTL_*``, ``xen/include/public/domctl.h`` (reference section 14)."""

    createdomain = 1
    destroydomain = 2
    pausedomain = 3
    unpausedomain = 4
    getdomaininfo = 5
    setvcpuaffinity = 9
    shadow_op = 10
    max_mem = 11
    setvcpucontext = 12
    getvcpucontext = 13
    getvcpuinfo = 14
    max_vcpus = 15
    scheduler_op = 16
    setdomainhandle = 17
    settimeoffset = 24
    getvcpuaffinity = 25
    resumedomain = 27
    subscribe = 29
    gethvmcontext = 33
    sethvmcontext = 34
    set_target = 46
    gettscinfo = 59
    settscinfo = 60
    getpageframeinfo3 = 61
    setvcpuextstate = 62
    getvcpuextstate = 63
    set_virq_handler = 66
    soft_reset = 79
    get_cpu_policy = 82
    set_cpu_policy = 83
    get_domain_state = 90


class Sysctl(enum.IntEnum):
    """``XEN_SYSCTL_*``, ``xen/include/public/sysctl.h``."""

    readconsole = 1
    tbuf_op = 2
    physinfo = 3
    sched_id = 4
    perfc_op = 5
    getdomaininfolist = 6
    debug_keys = 7
    getcpuinfo = 8
    availheap = 9
    get_pmstat = 10
    cpu_hotplug = 11
    pm_op = 12
    page_offline_op = 14
    lockprof_op = 15
    cpupool_op = 18
    scheduler_op = 19


class Virq(enum.IntEnum):
    """``VIRQ_*``, ``xen/include/public/xen.h`` (reference section 3)."""

    TIMER = 0
    DEBUG = 1
    CONSOLE = 2
    DOM_EXC = 3
    TBUF = 4
    DEBUGGER = 6
    XENOPROF = 7
    CON_RING = 8
    PCPU_STATE = 9
    MEM_EVENT = 10
    ARGO = 11
    ENOMEM = 12
    XENPMU = 13
    ARCH_0 = 16
    ARCH_1 = 17
    ARCH_2 = 18
    ARCH_3 = 19
    ARCH_4 = 20
    ARCH_5 = 21
    ARCH_6 = 22
    ARCH_7 = 23


class DomInfoFlag(enum.IntFlag):
    """``XEN_DOMINF_*``: getdomaininfo ``flags``; bits 16..23 hold the shutdown code (§12.2)."""

    dying = 1 << 0
    hvm_guest = 1 << 1
    shutdown = 1 << 2
    paused = 1 << 3
    blocked = 1 << 4
    running = 1 << 5
    debugged = 1 << 6
    xs_domain = 1 << 7
    hap = 1 << 8


DOMINF_SHUTDOWNSHIFT = 16
DOMINF_SHUTDOWNMASK = 0xFF


def dominf_flags(flags: DomInfoFlag, shutdown_code: int = 0) -> int:
    """The ``flags`` word of ``xen_domctl_getdomaininfo``, shutdown code included."""
    return int(flags) | (shutdown_code & DOMINF_SHUTDOWNMASK) << DOMINF_SHUTDOWNSHIFT


def dominf_shutdown_code(flags: int) -> int:
    """``(flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask``."""
    return (flags >> DOMINF_SHUTDOWNSHIFT) & DOMINF_SHUTDOWNMASK


class CreateDomainFlag(enum.IntFlag):
    """``XEN_DOMCTL_CDF_*``: createdomain ``flags`` (reference section 14)."""

    hvm = 1 << 0
    hap = 1 << 1
    s3_integrity = 1 << 2
    oos_off = 1 << 3
    xs_domain = 1 << 4
    iommu = 1 << 5
    nested_virt = 1 << 6
    vpmu = 1 << 7
    trap_unmapped = 1 << 8


class ShadowOp(enum.IntEnum):
    """``XEN_DOMCTL_SHADOW_OP_*``: shadow_op ``op`` (reference section 14)."""

    OFF = 0
    ENABLE_TEST = 1
    ENABLE_LOGDIRTY = 2
    CLEAN = 11
    PEEK = 12
    GET_ALLOCATION = 30
    SET_ALLOCATION = 31
    ENABLE = 32


class ShadowMode(enum.IntFlag):
    """``XEN_DOMCTL_SHADOW_ENABLE_*`` mode bits for ``ShadowOp.ENABLE``."""

    REFCOUNT = 1 << 1
    LOG_DIRTY = 1 << 2
    TRANSLATE = 1 << 3
    EXTERNAL = 1 << 4


SHADOW_LOGDIRTY_FINAL = 1 << 0  # mode for CLEAN/PEEK: the last pass of a migration

# XEN_DOMCTL_PFINFO_*: getpageframeinfo3's page types, in bits 31..28 of each entry
PFINFO_LTAB_SHIFT = 28
PFINFO_NOTAB = 0x0 << PFINFO_LTAB_SHIFT
PFINFO_XTAB = 0xF << PFINFO_LTAB_SHIFT  # invalid page: no frame at that gfn
PFINFO_BATCH = 1024  # arch_do_domctl: more gfns in one call is -E2BIG

# --- the schema ------------------------------------------------------------------------------

SUBOPS: Mapping[Hypercall, type[enum.IntEnum]] = MappingProxyType({
    Hypercall.event_channel_op: EvtchnOp,
    Hypercall.grant_table_op: GnttabOp,
    Hypercall.sched_op: SchedOp,
    Hypercall.set_timer_op: TimerOp,
    Hypercall.memory_op: MemoryOp,
    Hypercall.vcpu_op: VcpuOp,
    Hypercall.xen_version: XenVersion,
    Hypercall.console_io: ConsoleIO,
    Hypercall.domctl: Domctl,
    Hypercall.sysctl: Sysctl,
})
"""The sub-op enum of each hypercall the emulator serves."""

SCHEMA: Mapping[tuple[Hypercall, enum.IntEnum], Struct] = MappingProxyType({
    (op, SUBOPS[op][name]): spec
    for op, table in (
        (Hypercall.event_channel_op, hypercall_args.EVENT_CHANNEL_OP),
        (Hypercall.grant_table_op, hypercall_args.GRANT_TABLE_OP),
        (Hypercall.sched_op, hypercall_args.SCHED_OP),
        (Hypercall.set_timer_op, hypercall_args.TIMER_OP),
        (Hypercall.memory_op, hypercall_args.MEMORY_OP),
        (Hypercall.vcpu_op, hypercall_args.VCPU_OP),
        (Hypercall.xen_version, hypercall_args.XEN_VERSION),
        (Hypercall.console_io, hypercall_args.CONSOLE_IO),
        (Hypercall.domctl, hypercall_args.DOMCTL),
        (Hypercall.sysctl, hypercall_args.SYSCTL),
    )
    for name, spec in table.items()
})
"""Every ``(hypercall, sub-op)`` the emulator serves, with its argument struct. Anything
else is ``-ENOSYS``. Look-ups work with plain ints too (IntEnum hashes as its value)."""

# --- the envelope --------------------------------------------------------------------------

# msgpack preallocates a container from its header, so every bound is also capped by the
# input's length: hostile bytes can't make the unpacker allocate much more than they weigh.
_MAX_STR = 4096  # str only appears as field names
_MAX_MAP = 64
_UNPACK_ERRORS = (
    ValueError, TypeError, RecursionError, OverflowError, MemoryError, msgpack.UnpackException,
)  # fmt: skip
_S64 = hypercall_args.S64


@dataclass(frozen=True, slots=True)
class HypercallRequest:
    """A decoded, schema-checked call: ``subop`` is a member of ``SUBOPS[op]``."""

    op: Hypercall
    subop: int
    args: dict


@dataclass(frozen=True, slots=True)
class HypercallResult:
    """A hypercall's answer: ``rc`` >= 0 on success, ``-errno`` on failure."""

    rc: int
    result: object


def _unpack(data: bytes, what: str, call: bool) -> object:
    try:
        n = len(data)
        if call:
            bounds = dict(
                max_bin_len=min(n, MAX_BLOB_BYTES),
                max_str_len=min(n, _MAX_STR),
                max_array_len=min(n, MAX_EXTENTS),
                max_map_len=min(n // 2, _MAX_MAP),
            )
        else:  # any msgpack value, int map keys included; msgpack caps its bounds by n
            bounds = dict(strict_map_key=False)
        return msgpack.unpackb(data, raw=False, use_list=True, max_ext_len=0, **bounds)
    except _UNPACK_ERRORS as e:
        raise XenError(Errno.EINVAL, f"{what}: not a msgpack value ({type(e).__name__})") from None


def encode_call(op: int, subop: int, args: dict) -> bytes:
    """``[op, subop, args]``. Not validated here: the hypervisor's decode_call does that."""
    return msgpack.packb([int(op), int(subop), args], use_bin_type=True)


def decode_call(data: bytes) -> HypercallRequest:
    """Decode and check a call; raises only XenError (EINVAL or ENOSYS)."""
    call = _unpack(data, "call", call=True)
    if type(call) is not list or len(call) != 3:
        raise XenError(Errno.EINVAL, "call: expected [op, subop, args]")
    op, subop, args = call
    if type(op) is not int or type(subop) is not int:
        raise XenError(Errno.EINVAL, "call: op and subop must be integers")
    if type(args) is not dict:
        raise XenError(Errno.EINVAL, "call: args must be a map")
    spec = SCHEMA.get((op, subop))
    if spec is None:
        if op not in SUBOPS:
            raise XenError(Errno.ENOSYS, f"hypercall {op} not served")
        raise XenError(Errno.ENOSYS, f"{Hypercall(op).name} sub-op {subop} not served")
    spec.check(args)
    kind = SUBOPS[op]
    return HypercallRequest(Hypercall(op), kind(subop), args)


def encode_result(rc: int, result: object = None) -> bytes:
    """``[rc, result]``."""
    return msgpack.packb([int(rc), result], use_bin_type=True)


def decode_result(data: bytes) -> HypercallResult:
    """Decode an answer; raises only XenError(EINVAL)."""
    answer = _unpack(data, "result", call=False)
    if type(answer) is not list or len(answer) != 2:
        raise XenError(Errno.EINVAL, "result: expected [rc, result]")
    rc, result = answer
    _S64.check(rc, "result.rc")
    return HypercallResult(rc, result)
