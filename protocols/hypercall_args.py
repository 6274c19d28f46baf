"""Hypercall argument schemas: the IN fields of Xen's argument structs, with their C types.

A hypercall's ``args`` map carries the IN part of the Xen struct the real call would point
at, under Xen's field names (``evtchn_alloc_unbound`` -> ``{"dom", "remote_dom"}``). A C
struct has every field, so every field is required and no other is allowed; each value must
fit its C type. This is what lets the hypervisor treat a decoded request as trusted-shaped
(a hostile guest gets ``-EINVAL``, never a crash), while the semantics stay its own business.

Where Xen passes a guest handle plus a count (``SCHEDOP_poll`` ports, ``xen_memory_reservation``
extents, a batch of grant-table ops) the handle becomes a list and the count is its length,
unless Xen also keeps the count as a separate field (``nr_extents``). Opaque buffers
(``xen_domain_handle_t``, vCPU contexts, console text) are ``bytes``.

The tables below are keyed by Xen's sub-op names; ``protocols.hypercall.SCHEMA`` turns them
into ``(Hypercall, sub-op)`` keys. A sub-op absent here is not served: ``-ENOSYS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from protocols.errno import Errno, XenError

# Bounds for the emulator (Xen's own limits where it has one).
MAX_POLL_PORTS = 128  # xen/common/sched/core.c do_poll: nr_ports > 128 -> -EINVAL
MAX_GNTTAB_BATCH = 1 << 16  # grant-table ops per call (Xen: u32 count, preempted)
MAX_EXTENTS = 1 << 20  # memory_op extents per call (4 GiB of 4 KiB pages)
MAX_CPUMAP_BYTES = 512  # a cpumap for 4096 pCPUs
MAX_BLOB_BYTES = 1 << 20  # vCPU / HVM context, console text
E820MAX = 1024  # xen/arch/x86/include/asm/e820.h: entries of a memory map


def _invalid(where: str, why: str) -> XenError:
    return XenError(Errno.EINVAL, f"{where}: {why}")


@dataclass(frozen=True, slots=True)
class Int:
    """A C integer type (``uint16_t`` is ``Int("u16", 0, 0xFFFF)``)."""

    ctype: str
    lo: int
    hi: int

    def check(self, value: object, where: str) -> None:
        # bool is an int subclass, and msgpack decodes true/false to bool: not a C integer.
        if type(value) is not int:
            raise _invalid(where, f"expected {self.ctype}, got {type(value).__name__}")
        if not self.lo <= value <= self.hi:
            raise _invalid(where, f"{value} out of range for {self.ctype}")


@dataclass(frozen=True, slots=True)
class Bytes:
    """An opaque byte buffer of ``min_len``..``max_len`` bytes (a ``uint8_t[]`` or char handle)."""

    min_len: int
    max_len: int

    def check(self, value: object, where: str) -> None:
        if type(value) is not bytes:
            raise _invalid(where, f"expected bytes, got {type(value).__name__}")
        if not self.min_len <= len(value) <= self.max_len:
            raise _invalid(where, f"{len(value)} bytes, expected {self.min_len}..{self.max_len}")


@dataclass(frozen=True, slots=True)
class Array:
    """A guest handle to ``max_len`` or fewer elements of one type."""

    elem: Int | Struct
    max_len: int

    def check(self, value: object, where: str) -> None:
        if type(value) is not list:
            raise _invalid(where, f"expected a list, got {type(value).__name__}")
        if len(value) > self.max_len:
            raise _invalid(where, f"{len(value)} elements, at most {self.max_len}")
        for i, item in enumerate(value):
            self.elem.check(item, f"{where}[{i}]")


@dataclass(frozen=True, slots=True)
class Struct:
    """The IN fields of a Xen struct: exactly these str keys, each value of its type."""

    fields: Mapping[str, Int | Bytes | Array | Struct]

    def check(self, value: object, where: str = "args") -> None:
        if type(value) is not dict:
            raise _invalid(where, f"expected a map, got {type(value).__name__}")
        if value.keys() != self.fields.keys():
            missing = sorted(self.fields.keys() - value.keys())
            unexpected = sorted(map(repr, value.keys() - self.fields.keys()))
            raise _invalid(where, f"missing fields {missing}, unexpected fields {unexpected}")
        for name, spec in self.fields.items():
            spec.check(value[name], f"{where}.{name}")


def struct(**fields: Int | Bytes | Array | Struct) -> Struct:
    return Struct(MappingProxyType(fields))


def _int(bits: int, signed: bool = False) -> Int:
    if signed:
        return Int(f"s{bits}", -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return Int(f"u{bits}", 0, (1 << bits) - 1)


U8, U16, U32, U64 = _int(8), _int(16), _int(32), _int(64)
S16, S32, S64 = _int(16, True), _int(32, True), _int(64, True)
DOMID = U16  # domid_t
PORT = U32  # evtchn_port_t
GREF = U32  # grant_ref_t
HANDLE = Bytes(16, 16)  # xen_domain_handle_t: uint8_t[16], a UUID
NO_ARGS = struct()


def _batch(**fields: Int | Bytes | Array | Struct) -> Struct:
    """``grant_table_op(cmd, ops, count)``: a batch of ``count`` structs."""
    return struct(ops=Array(struct(**fields), MAX_GNTTAB_BATCH))


def _domctl(**fields: Int | Bytes | Array | Struct) -> Struct:
    """``struct xen_domctl``: ``domain`` plus the IN fields of the union member."""
    return struct(domain=DOMID, **fields)


_COPY_PTR = struct(u=U64, domid=DOMID, offset=U16)  # union {ref; gmfn} u; domid; offset
_RESERVATION = struct(  # struct xen_memory_reservation
    extent_start=Array(U64, MAX_EXTENTS),
    nr_extents=U64,
    extent_order=U32,
    mem_flags=U32,
    domid=DOMID,
)
_VCPU = struct(vcpuid=U32)  # vcpu_op(cmd, vcpuid, NULL)
_E820_ENTRY = struct(addr=U64, size=U64, type=U32)  # struct e820entry

# xen/include/public/event_channel.h. The FIFO ABI (init_control, expand_array,
# set_priority) is not served: -ENOSYS, as from a Xen without it, and guests fall back to
# the 2-level ABI (reference section 5).
EVENT_CHANNEL_OP = {
    "bind_interdomain": struct(remote_dom=DOMID, remote_port=PORT),
    "bind_virq": struct(virq=U32, vcpu=U32),
    "bind_pirq": struct(pirq=U32, flags=U32),
    "close": struct(port=PORT),
    "send": struct(port=PORT),
    "status": struct(dom=DOMID, port=PORT),
    "alloc_unbound": struct(dom=DOMID, remote_dom=DOMID),
    "bind_ipi": struct(vcpu=U32),
    "bind_vcpu": struct(port=PORT, vcpu=U32),
    "unmask": struct(port=PORT),
    "reset": struct(dom=DOMID),
}

# xen/include/public/grant_table.h (v1 only; reference section 6.2).
GRANT_TABLE_OP = {
    "map_grant_ref": _batch(host_addr=U64, flags=U32, ref=GREF, dom=DOMID),
    "unmap_grant_ref": _batch(host_addr=U64, dev_bus_addr=U64, handle=U32),
    "setup_table": _batch(dom=DOMID, nr_frames=U32),
    "copy": _batch(source=_COPY_PTR, dest=_COPY_PTR, len=U16, flags=U16),
    "query_size": _batch(dom=DOMID),
}

# xen/include/public/sched.h (reference section 12.1).
# A hypercall here has no current vCPU, so the ops that act on the caller's vCPU name it
# (``vcpu``); ``events`` in block is the upcalls the guest has taken (what Xen reads from
# ``vcpu_info.evtchn_upcall_pending`` for block's atomic "events pending?" check).
SCHED_OP = {
    "yield_": struct(vcpu=U32),
    "block": struct(vcpu=U32, events=U64),
    "shutdown": struct(reason=U32),
    "poll": struct(vcpu=U32, events=U64, ports=Array(PORT, MAX_POLL_PORTS), timeout=U64),
    "remote_shutdown": struct(domain_id=DOMID, reason=U32),
    "shutdown_code": struct(reason=U32),
}

# xen/include/public/memory.h (reference section 13).
MEMORY_OP = {
    "increase_reservation": _RESERVATION,
    "decrease_reservation": _RESERVATION,
    "populate_physmap": _RESERVATION,
    "current_reservation": struct(domid=DOMID),
    "maximum_reservation": struct(domid=DOMID),
    "maximum_gpfn": struct(domid=DOMID),
    # struct xen_add_to_physmap_batch: Dom0 tools map a guest's frames with
    # space = XENMAPSPACE_gmfn_foreign (4); the emulator answers with the memory file.
    "add_to_physmap_batch": struct(
        domid=DOMID, space=U32, size=U16, foreign_domid=DOMID,
        idxs=Array(U64, MAX_EXTENTS), gpfns=Array(U64, MAX_EXTENTS)),
    # struct xen_memory_map (the caller's own; IN: how many entries its buffer takes) and
    # struct xen_foreign_memory_map (the toolstack sets a domain's: libxl's
    # xc_domain_set_memmap_limit). Entries are struct e820entry (E820_RAM is type 1).
    "memory_map": struct(nr_entries=U32),
    "set_memory_map": struct(domid=DOMID, map=Array(_E820_ENTRY, E820MAX)),
}

# xen/include/public/vcpu.h.
VCPU_OP = {"up": _VCPU, "down": _VCPU, "is_up": _VCPU, "get_runstate_info": _VCPU,
           "set_singleshot_timer": struct(vcpuid=U32, timeout_abs_ns=U64, flags=U32),
           "stop_singleshot_timer": _VCPU}

# set_timer_op(u64 timeout): no sub-op in Xen; the wire carries 0, and the vCPU.
TIMER_OP = {"set": struct(vcpu=U32, timeout=U64)}

# xen/include/public/version.h: every XENVER_* sub-op only has OUT data.
XEN_VERSION = {
    name: NO_ARGS
    for name in (
        "version", "extraversion", "compile_info", "capabilities", "changeset",
        "platform_parameters", "get_features", "pagesize", "guest_handle", "commandline",
        "build_id",
    )
}  # fmt: skip

# xen/include/public/xen.h: console_io(cmd, count, buffer).
CONSOLE_IO = {"write": struct(buf=Bytes(0, MAX_BLOB_BYTES)), "read": struct(count=U32)}

_AFFINITY = {"vcpu": U32, "flags": U32}
_CPUMAP = Bytes(0, MAX_CPUMAP_BYTES)
_BLOB = Bytes(0, MAX_BLOB_BYTES)

# xen/include/public/domctl.h (reference section 14). createdomain carries no memory size:
# as in Xen, the toolstack sets it with max_mem.
DOMCTL = {
    "createdomain": _domctl(
        ssidref=U32, handle=HANDLE, flags=U32, max_vcpus=U32, max_evtchn_port=U32,
        max_grant_frames=S32, max_maptrack_frames=S32,
    ),
    "destroydomain": _domctl(),
    "pausedomain": _domctl(),
    "unpausedomain": _domctl(),
    "getdomaininfo": _domctl(),
    "setvcpuaffinity": _domctl(**_AFFINITY, cpumap_hard=_CPUMAP, cpumap_soft=_CPUMAP),
    "getvcpuaffinity": _domctl(**_AFFINITY),
    # The bitmap comes back in the result; ``mb`` (shadow memory of the allocation ops, which
    # are not emulated) is not carried.
    "shadow_op": _domctl(op=U32, mode=U32, pages=U64),
    "max_mem": _domctl(max_memkb=U64),
    "setvcpucontext": _domctl(vcpu=U32, ctxt=_BLOB),
    "getvcpucontext": _domctl(vcpu=U32),
    "getvcpuinfo": _domctl(vcpu=U32),
    "max_vcpus": _domctl(max=U32),
    # The credit/credit2 member of the union is always present (getinfo ignores it).
    "scheduler_op": _domctl(sched_id=U32, cmd=U32, weight=U16, cap=U16),
    "setdomainhandle": _domctl(handle=HANDLE),
    "settimeoffset": _domctl(time_offset_seconds=S64),
    "resumedomain": _domctl(),
    "subscribe": _domctl(port=PORT),
    "gethvmcontext": _domctl(),
    "sethvmcontext": _domctl(buffer=_BLOB),
    "set_target": _domctl(target=DOMID),
    "gettscinfo": _domctl(),
    # struct xen_domctl_getpageframeinfo3: IN the gfns, OUT each one's XEN_DOMCTL_PFINFO_*
    "getpageframeinfo3": _domctl(num=U64, array=Array(U64, MAX_EXTENTS)),
    "soft_reset": _domctl(),
    "get_domain_state": _domctl(),
}  # fmt: skip

# xen/include/public/sysctl.h.
SYSCTL = {
    "physinfo": NO_ARGS,
    "getdomaininfolist": struct(first_domain=DOMID, max_domains=U32),
    # struct xen_sysctl_scheduler_op: the pool's global parameters (cmd putinfo 0, getinfo 1)
    "scheduler_op": struct(cpupool_id=U32, sched_id=U32, cmd=U32, tslice_ms=U32,
                           ratelimit_us=U32),
    "sched_id": NO_ARGS,
}
