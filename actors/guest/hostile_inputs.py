"""What a hostile guest sends, and what Xen answers to each (``init=hostile``, issue 12).

Structure-aware inputs for each target of :data:`TARGETS`: a valid envelope, message or
request with one thing wrong (a type, a size, an op, a length, a tx id, a path out of its
tree, a gref, a segment, an index), or an operation on refs and ports that are not the
guest's own. Each :class:`Input` carries the answers Xen gives it, by Xen's names: an errno
(``EINVAL``), a grant status (``GNTST_general_error``), a ring response status
(``BLKIF_RSP_ERROR``), or ``none`` where Xen gives no answer (:data:`NO_ANSWER` says why).
The expectations follow ``xen-reference.md`` (5, 6.2, 8, 9, 11, 19) and the Xen and Linux
sources it cites; :mod:`actors.guest.hostile` sends the inputs and compares.

Deterministic for a seed: :func:`generate` is a pure function of (target, count, seed,
:class:`Context`), input ``i`` drawn from its own RNG, so an input is replayed from its
target, seed and index alone. The context is what the guest knows of itself (its domid,
ports, grant table, disk) and the domids it guesses are others'.

An input after which Xen stops serving that interface (a xenstore header announcing more
than XENSTORE_PAYLOAD_MAX, a message never completed, a ring producer index that jumps, a
tx chain netback calls malicious) is always the last of its target, so the inputs before
it are answered.

Pure: no kernel, no transport; the unit tests and the init share it.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from protocols.blkif import (BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_READ, BLKIF_OP_WRITE,
                             BlkifRequest, BlkifRequestDiscard, BlkifRequestSegment, pack_slot)
from protocols.blkif import RING_SIZE as BLKIF_RING_SIZE
from protocols.gnttab import GNTMAP, GNTCOPY_dest_gref, GNTCOPY_source_gref
from protocols.hypercall import (DOMID_SELF, SCHEMA, SUBOPS, EvtchnOp, GnttabOp, Hypercall,
                                 MemoryOp, SchedOp, VcpuOp, XenVersion, encode_call)
from protocols.hypercall_args import Array, Bytes, Int, Struct
from protocols.netif import (FATAL_SKB_SLOTS, TX_RING_SIZE, XEN_NETIF_EXTRA_TYPE_MAX,
                             XEN_NETIF_NR_SLOTS_MIN, NetifTxRequest, NetTxFlag)
from protocols.page import PAGE_SIZE
from protocols.xenstore.paths import XENSTORE_ABS_PATH_MAX, backend_path, domain_path
from protocols.xenstore.wire import HEADER, XENSTORE_PAYLOAD_MAX, XsType, make_request

TARGETS = ("hypercall", "grant", "evtchn", "xenstore", "blkif", "netif")  # ``all``'s order
NO_ANSWER = {
    "xenstore": "xenstored answers a message only once all the bytes its header announces "
                "have come (xs_wire has no other framing), and drops a connection whose "
                "header announces more than XENSTORE_PAYLOAD_MAX bytes",
    "blkif": "blkback stops serving a ring whose req_prod claims more than RING_SIZE "
             "unanswered requests (RING_REQUEST_PROD_OVERFLOW) and the vbd is disconnected",
    "netif": "netback disables a vif whose tx ring overflows or carries a chain it calls "
             "malicious (xenvif_fatal_tx_err): nothing on it is answered any more",
}
"""Why Xen gives some inputs no answer, per target (the others always answer)."""

XS_REQ_BASE = 0x48000000  # the fuzzer's xs_wire req_ids: apart from the kernel's (from 1)
XS_INVALID_TYPE = 0x00FFFF00  # a type no xenstored serves (ENOSYS): the resync message's
XVDA = 51712  # the vbd the ring inputs use (xvda)


# -- what the guest knows, what it sends ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Context:
    """What the hostile guest knows of itself, and the domids it guesses are others'."""

    domid: int
    others: tuple[int, ...]  # Dom0, its neighbours' domids, and one no domain has
    own_ports: tuple[int, ...]  # its ports in use: never closed or sent on
    nr_ports: int  # ports in its table; a port from here on is out of range
    nr_grefs: int  # entries in its grant table
    bad_grefs: tuple[int, ...]  # entries of its own table that grant nothing
    foreign_gref: int  # a page of its own granted to a domain that is not its backend
    ro_gref: int  # a page of its own granted read-only to its backend
    scratch_pfn: int  # a page of its own, for grant copies
    nr_pages: int
    sectors: int = 0  # its disk's size (0: none)


@dataclasses.dataclass(frozen=True)
class Input:
    """One input: ``data`` is what the target's sender puts on the wire; ``expect`` the
    answers Xen gives, in order (most inputs have one answer)."""

    target: str
    index: int
    what: str
    data: Any
    expect: tuple[frozenset[str], ...]


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A hypercall as bytes; ``claim``: the (domid, secret) it says it comes from (None:
    its own secret)."""

    raw: bytes
    claim: tuple[int, str | None] | None = None


@dataclasses.dataclass(frozen=True)
class XsSend:
    """xs_wire bytes sent in ``chunks`` (no reply may come before the last), the req_ids
    whose replies then come, in order; ``claim``: the domid it says it comes from."""

    chunks: tuple[bytes, ...]
    req_ids: tuple[int, ...]
    claim: int | None = None


@dataclasses.dataclass(frozen=True)
class RingSend:
    """Request slots published on one of its rings, or (``jump``) ``req_prod`` moved that
    far from ``rsp_prod`` with nothing written."""

    slots: tuple[bytes, ...] = ()
    jump: int = 0


def _one(*labels: str) -> tuple[frozenset[str], ...]:
    return (frozenset(labels),)


def generate(target: str, count: int, seed: int, ctx: Context) -> list[Input]:
    """The campaign's inputs for ``target``: input ``i`` from its own RNG, the last one of a
    target with a fatal kind always fatal (module docstring)."""
    make, fatal = _GENERATORS[target]
    out = []
    for i in range(count):
        rng = random.Random(f"hostile/{target}/{seed}/{i}")
        kinds = fatal if fatal and i == count - 1 else make
        what, data, expect = rng.choice(kinds)(rng, ctx)
        out.append(Input(target, i, what, data, expect))
    return out


# -- hypercall envelopes --------------------------------------------------------------------

_WRONG_TYPES = (None, True, 1.5, "1", b"\x01", [1], {"x": 1})
_HARMLESS = ((Hypercall.xen_version, XenVersion.version, {}),
             (Hypercall.vcpu_op, VcpuOp.is_up, {"vcpuid": 0}),
             (Hypercall.memory_op, MemoryOp.current_reservation, {"domid": DOMID_SELF}),
             (Hypercall.event_channel_op, EvtchnOp.status, {"dom": DOMID_SELF, "port": 0}))
_SERVED = sorted(SCHEMA)  # every (op, sub-op) the hypervisor decodes


def _valid(rng: random.Random, spec: Any) -> Any:
    """A value of ``spec`` (a field or a whole argument struct), small where it may be."""
    if isinstance(spec, Int):
        return rng.randint(max(spec.lo, 0), min(spec.hi, 0xFFFF))
    if isinstance(spec, Bytes):
        return rng.randbytes(rng.randint(spec.min_len, min(spec.max_len, max(spec.min_len, 16))))
    if isinstance(spec, Array):
        return [_valid(rng, spec.elem) for _ in range(rng.randint(0, min(spec.max_len, 2)))]
    return {name: _valid(rng, field) for name, field in spec.fields.items()}


def _invalid(rng: random.Random, spec: Any) -> Any:
    """A value no field of ``spec`` takes: another type, or an integer out of its C type."""
    wrong: list[Any] = [v for v in _WRONG_TYPES if not (isinstance(spec, Bytes) and
                                                       isinstance(v, bytes))]
    if isinstance(spec, Int):
        wrong = [v for v in wrong if type(v) is not int]
        if spec.lo > -(1 << 63):
            wrong.append(spec.lo - 1 - rng.randrange(1 << 16))
        if spec.hi < (1 << 64) - 1:
            wrong.append(spec.hi + 1 + rng.randrange(1 << 16))
    elif isinstance(spec, Bytes) and spec.min_len == spec.max_len:
        wrong.append(bytes(spec.max_len + 1))
    elif isinstance(spec, Array | Struct):
        wrong = [v for v in wrong if not isinstance(v, list | dict)]
    return rng.choice(wrong)


def _hc_args(rng: random.Random, ctx: Context):
    """Valid op and sub-op, arguments with one field of another type, out of range,
    missing or extra: EINVAL."""
    op, subop = rng.choice(_SERVED)
    args = _valid(rng, SCHEMA[(op, subop)])
    names = sorted(args)
    how = rng.choice(("wrong", "missing", "extra") if names else ("extra",))
    if how == "extra":
        args["xenray"] = 0
        name = "xenray"
    else:
        name = rng.choice(names)
        if how == "missing":
            del args[name]
        else:
            args[name] = _invalid(rng, SCHEMA[(op, subop)].fields[name])
    return (f"{Hypercall(op).name}.{SUBOPS[op](subop).name} {how} {name}",
            Envelope(encode_call(op, subop, args)), _one("EINVAL"))


def _hc_malformed(rng: random.Random, ctx: Context):
    """Bytes that are no ``[op, subop, args]``: EINVAL."""
    op, subop, args = rng.choice(_HARMLESS)
    good = encode_call(op, subop, args)
    forms = {
        "not msgpack": b"\xc1" + rng.randbytes(rng.randrange(16)),
        "truncated": good[:rng.randrange(1, len(good))],
        "trailing bytes": good + rng.randbytes(rng.randint(1, 8)),
        "two items": msgpack.packb([int(op), int(subop)]),
        "four items": msgpack.packb([int(op), int(subop), args, 0]),
        "a map": msgpack.packb({"op": int(op), "subop": int(subop), "args": args}),
        "float op": msgpack.packb([float(op), int(subop), args]),
        "bool op": msgpack.packb([True, int(subop), args]),
        "args a list": msgpack.packb([int(op), int(subop), [1]]),
        "int keys": msgpack.packb([int(op), int(subop), {1: 1}]),
        "too deep": b"\x91" * 5000,
        "huge claims": b"\xdd\x00\x0f\xff\xff" * rng.randint(1, 64),
    }
    form = rng.choice(sorted(forms))
    return f"envelope {form}", Envelope(forms[form]), _one("EINVAL")


def _hc_unknown(rng: random.Random, ctx: Context):
    """A hypercall or sub-op the hypervisor does not serve: ENOSYS."""
    if rng.random() < 0.5:
        op = rng.choice([n for n in range(64) if n not in SUBOPS] +
                        [rng.randrange(64, 1 << 32), -rng.randrange(1, 1 << 31)])
        subop = rng.randrange(16)
    else:
        op = rng.choice(sorted(SUBOPS))
        subop = rng.choice([n for n in range(32) if (op, n) not in SCHEMA] +
                           [rng.randrange(32, 1 << 16)])
    return f"hypercall {op} sub-op {subop}", Envelope(encode_call(op, subop, {})), _one("ENOSYS")


_PRIVILEGED = sorted(key for key in SCHEMA if key[0] in (Hypercall.domctl, Hypercall.sysctl)) + [
    (Hypercall.sched_op, SchedOp.remote_shutdown),
    (Hypercall.memory_op, MemoryOp.add_to_physmap_batch),
    (Hypercall.memory_op, MemoryOp.current_reservation),
    (Hypercall.memory_op, MemoryOp.maximum_reservation),
    (Hypercall.memory_op, MemoryOp.set_memory_map)]
# (not populate_physmap and decrease_reservation: Xen answers another domain's with 0
# extents done, no error; tests/unit/test_memory_balloon.py checks them)
_TARGET_FIELDS = ("domain", "domain_id", "domid", "foreign_domid")


def _hc_privileged(rng: random.Random, ctx: Context):
    """A well-formed privileged call (domctl, sysctl, remote shutdown, another domain's
    memory) aimed at another domain: EPERM."""
    op, subop = rng.choice(_PRIVILEGED)
    args = _valid(rng, SCHEMA[(op, subop)])
    other = rng.choice(ctx.others)
    for name in _TARGET_FIELDS:
        if name in args:
            args[name] = other
    if "reason" in args:
        args["reason"] = rng.randrange(6)
    return (f"{Hypercall(op).name}.{SUBOPS[op](subop).name} on domain {other}",
            Envelope(encode_call(op, subop, args)), _one("EPERM"))


def _hc_claim(rng: random.Random, ctx: Context):
    """A harmless call claiming to come from another domain (its own secret), or from
    itself with a wrong secret: EPERM."""
    op, subop, args = rng.choice(_HARMLESS)
    if rng.random() < 0.5:
        domid = rng.choice(ctx.others)
        return (f"claims to be domain {domid}",
                Envelope(encode_call(op, subop, args), (domid, None)), _one("EPERM"))
    secret = rng.randbytes(8).hex()
    return ("a wrong secret", Envelope(encode_call(op, subop, args), (ctx.domid, secret)),
            _one("EPERM"))


def _hc_vcpu(rng: random.Random, ctx: Context):
    """A vCPU no domain has (XEN_LEGACY_MAX_VCPUS and up): ENOENT."""
    vcpu = rng.choice((32, 33, rng.randrange(34, 1 << 32)))
    sub = rng.choice((VcpuOp.up, VcpuOp.down, VcpuOp.is_up, VcpuOp.get_runstate_info))
    return (f"vcpu_op.{sub.name} vcpu {vcpu}",
            Envelope(encode_call(Hypercall.vcpu_op, sub, {"vcpuid": vcpu})), _one("ENOENT"))


# -- grant-table operations on refs that are not its own -----------------------------------

_MAP_FLAGS = (int(GNTMAP.host_map), int(GNTMAP.host_map | GNTMAP.readonly),
              int(GNTMAP.device_map), int(GNTMAP.host_map | GNTMAP.device_map))
_NOT_GRANTED = frozenset({"GNTST_general_error", "GNTST_bad_gntref", "GNTST_bad_domain"})


def _foreign_ref(rng: random.Random, ctx: Context) -> tuple[int, int]:
    """Another domain and one of its refs: the low ones (rings, first data pages) mostly."""
    return rng.choice(ctx.others), rng.choice((rng.randrange(64), rng.randrange(1 << 12)))


def _gnt_map(rng: random.Random, ctx: Context):
    """map_grant_ref of another domain's ref, of its own (granted to its backend), of
    DOMID_SELF, of a ref out of range, or with no map kind: never a mapping."""
    dom, ref = _foreign_ref(rng, ctx)
    flags = rng.choice(_MAP_FLAGS)
    expect = _NOT_GRANTED
    form = rng.choice(("foreign", "foreign", "own", "self", "out of range", "no kind"))
    if form == "own":
        dom, ref = ctx.domid, rng.randrange(64)
    elif form == "self":
        dom, expect = DOMID_SELF, frozenset({"GNTST_bad_domain"})
    elif form == "out of range":
        ref, expect = rng.randrange(ctx.nr_grefs, 1 << 32), frozenset(
            {"GNTST_bad_gntref", "GNTST_bad_domain"})
    elif form == "no kind":
        flags, expect = int(GNTMAP.readonly), frozenset({"GNTST_bad_gntref"})
    elem = {"host_addr": rng.randrange(1 << 47), "flags": flags, "ref": ref, "dom": dom}
    return (f"map_grant_ref {form} dom {dom} ref {ref} flags {flags:#x}",
            (GnttabOp.map_grant_ref, elem), (expect,))


def _gnt_unmap(rng: random.Random, ctx: Context):
    """unmap_grant_ref of a handle it was never given (maybe another domain's): bad_handle."""
    handle = rng.choice((rng.randrange(16), rng.randrange(1 << 32)))
    elem = {"host_addr": rng.randrange(1 << 47), "dev_bus_addr": rng.choice((0, 1 << 12)),
            "handle": handle}
    return (f"unmap_grant_ref handle {handle}", (GnttabOp.unmap_grant_ref, elem),
            _one("GNTST_bad_handle"))


def _gnt_copy(rng: random.Random, ctx: Context):
    """grant copy from or to another domain's ref, from or to another domain's frame, past
    a page, or from a frame it does not have: never a byte moved."""
    own = {"u": ctx.scratch_pfn, "domid": DOMID_SELF, "offset": 0}
    dom, ref = _foreign_ref(rng, ctx)
    length = rng.randint(1, PAGE_SIZE)
    form = rng.choice(("from foreign ref", "to foreign ref", "from foreign frame",
                       "to foreign frame", "past a page", "no such frame"))
    if form == "from foreign ref":
        src, dst, flags, expect = {"u": ref, "domid": dom, "offset": 0}, own, \
            GNTCOPY_source_gref, _NOT_GRANTED
    elif form == "to foreign ref":
        src, dst, flags, expect = own, {"u": ref, "domid": dom, "offset": 0}, \
            GNTCOPY_dest_gref, _NOT_GRANTED
    elif form == "from foreign frame":
        src, dst, flags, expect = {"u": rng.randrange(1 << 16), "domid": dom, "offset": 0}, \
            own, 0, frozenset({"GNTST_permission_denied"})
    elif form == "to foreign frame":
        src, dst, flags, expect = own, {"u": rng.randrange(1 << 16), "domid": dom,
                                        "offset": 0}, 0, frozenset({"GNTST_permission_denied"})
    elif form == "past a page":
        offset = rng.randint(1, PAGE_SIZE - 1)
        src, dst, flags, expect = own, {**own, "offset": offset}, 0, \
            frozenset({"GNTST_bad_copy_arg"})
        length = rng.randint(PAGE_SIZE - offset + 1, PAGE_SIZE)
    else:
        src, dst, flags, expect = {**own, "u": ctx.nr_pages + rng.randrange(1 << 20)}, own, 0, \
            frozenset({"GNTST_bad_page"})
    elem = {"source": src, "dest": dst, "len": length, "flags": flags}
    return (f"copy {form} (dom {dom} ref {ref})", (GnttabOp.copy, elem), (expect,))


def _gnt_table(rng: random.Random, ctx: Context):
    """setup_table or query_size of another domain's table: permission denied."""
    dom = rng.choice(ctx.others)
    sub = rng.choice((GnttabOp.setup_table, GnttabOp.query_size))
    elem = {"dom": dom, "nr_frames": rng.randint(1, 8)} if sub == GnttabOp.setup_table else \
        {"dom": dom}
    return (f"{sub.name} of domain {dom}", (sub, elem),
            _one("GNTST_permission_denied", "GNTST_bad_domain"))


# -- event channels on ports it does not own ------------------------------------------------

def _free_port(rng: random.Random, ctx: Context) -> int:
    """A port number that names no channel of its own: free, reserved (0) or out of range."""
    free = [p for p in range(ctx.nr_ports) if p not in ctx.own_ports]
    return rng.choice(free + [rng.randrange(ctx.nr_ports, 1 << 32)])


def _ev_port_op(rng: random.Random, ctx: Context):
    """send, close or bind_vcpu on a port it does not own: EINVAL."""
    port = _free_port(rng, ctx)
    sub = rng.choice((EvtchnOp.send, EvtchnOp.close, EvtchnOp.bind_vcpu))
    args = {"port": port, **({"vcpu": 0} if sub == EvtchnOp.bind_vcpu else {})}
    return f"{sub.name} port {port}", (sub, args), _one("EINVAL")


def _ev_unmask(rng: random.Random, ctx: Context):
    """unmask of a port out of its table's range (in range, Xen unmasks even a free port
    of its own): EINVAL."""
    port = rng.randrange(ctx.nr_ports, 1 << 32)
    return f"unmask port {port}", (EvtchnOp.unmask, {"port": port}), _one("EINVAL")


def _ev_foreign(rng: random.Random, ctx: Context):
    """Operations on another domain's ports: bind one, allocate one, read its status,
    reset them all: EINVAL/ESRCH, or EPERM (XSM_TARGET)."""
    other = rng.choice(ctx.others)
    port = rng.randrange(64)
    sub = rng.choice((EvtchnOp.bind_interdomain, EvtchnOp.alloc_unbound, EvtchnOp.status,
                      EvtchnOp.reset))
    if sub == EvtchnOp.bind_interdomain:
        args, expect = {"remote_dom": other, "remote_port": port}, _one("EINVAL", "ESRCH")
    elif sub == EvtchnOp.alloc_unbound:
        args = {"dom": other, "remote_dom": rng.choice((ctx.domid, DOMID_SELF, other))}
        expect = _one("EPERM", "ESRCH", "ENOSPC")
    elif sub == EvtchnOp.status:
        args, expect = {"dom": other, "port": port}, _one("EPERM", "ESRCH", "EINVAL")
    else:
        args, expect = {"dom": other}, _one("EPERM", "ESRCH")
    return f"{sub.name} {args}", (sub, args), expect


def _ev_bind(rng: random.Random, ctx: Context):
    """bind_virq of a virq out of range, of a global virq it does not handle, or on a vCPU
    it lacks; bind_ipi on a vCPU it lacks."""
    form = rng.choice(("virq out of range", "global virq", "no such vcpu", "ipi"))
    if form == "virq out of range":
        args, expect = {"virq": rng.randrange(24, 1 << 32), "vcpu": 0}, _one("EINVAL")
    elif form == "global virq":
        args, expect = {"virq": rng.choice((2, 3, 4, 8)), "vcpu": 0}, _one("EBUSY", "EPERM")
    elif form == "no such vcpu":
        args, expect = {"virq": 0, "vcpu": rng.randrange(32, 1 << 32)}, _one("ENOENT")
    else:
        return ("bind_ipi on a vCPU it lacks",
                (EvtchnOp.bind_ipi, {"vcpu": rng.randrange(32, 1 << 32)}), _one("ENOENT"))
    return f"bind_virq {form} {args}", (EvtchnOp.bind_virq, args), expect


# -- xs_wire on its xenstore connection ----------------------------------------------------

def _xs_paths(rng: random.Random, ctx: Context, *, own_backend: bool = False) -> str:
    """A path out of its tree: another domain's (its control node too), Dom0's, the
    toolstack's, the root; with ``own_backend``, also its own vbd's backend directory, which
    it may read (libxl gives the frontend ``r<domid>``) but not write."""
    other = rng.choice(ctx.others)
    paths = [f"{domain_path(other)}/name", f"{domain_path(other)}/control/shutdown",
             f"{domain_path(other)}/device/vbd/{XVDA}/ring-ref", f"{domain_path(other)}/data/x",
             domain_path(0), "/local/domain", backend_path("vif", other, 0, 0),
             f"/libxl/{other}", "/tool/xenstored", "/vm", "/"]
    if own_backend:
        paths.append(backend_path("vbd", ctx.domid, XVDA, 0) + "/params")
    return rng.choice(paths)


def _xs_message(rng: random.Random, ctx: Context, req_id: int):
    """One erroneous message, whole: (what, its bytes, the answers Xen gives it)."""
    form = rng.choice(("read out of tree", "write out of tree", "write its own Dom0 node",
                       "privileged", "unknown type", "malformed", "bad path", "wrong tx id",
                       "give a node away", "over quota"))
    tx = 0
    if form == "read out of tree":
        type_ = rng.choice((XsType.READ, XsType.DIRECTORY, XsType.GET_PERMS))
        path = _xs_paths(rng, ctx)
        payload, expect = path.encode() + b"\0", {"EACCES", "ENOENT"}
    elif form in ("write out of tree", "write its own Dom0 node"):
        path = _xs_paths(rng, ctx, own_backend=True) if form == "write out of tree" else \
            rng.choice(("name", "domid", "vm", "memory/target", "device", "cpu", "console/port"))
        type_ = rng.choice((XsType.WRITE, XsType.MKDIR, XsType.RM, XsType.SET_PERMS))
        args = {XsType.WRITE: (path, b"poweroff"), XsType.MKDIR: (path,), XsType.RM: (path,),
                XsType.SET_PERMS: (path, (f"b{ctx.domid}",))}[type_]
        payload, expect = make_request(type_, *args).payload, {"EACCES"}
        if type_ == XsType.RM:
            expect.add("ENOENT")  # a missing node whose parent is missing too (11.1)
    elif form == "privileged":
        other = rng.choice(ctx.others)
        type_, args = rng.choice((
            (XsType.INTRODUCE, (other, 1, 1)), (XsType.RELEASE, (other,)),
            (XsType.RESUME, (other,)), (XsType.SET_TARGET, (ctx.domid, other)),
            (XsType.IS_DOMAIN_INTRODUCED, (other,)), (XsType.GET_FEATURE, (other,)),
            (XsType.SET_FEATURE, (other, 0)), (XsType.GET_QUOTA, (None, "nodes")),
            (XsType.SET_QUOTA, (None, "nodes", 1 << 20)), (XsType.CONTROL, ("print", b"x"))))
        payload, expect = make_request(type_, *args).payload, {"EACCES"}
    elif form == "unknown type":
        type_ = rng.choice((XsType.WATCH_EVENT, XsType.ERROR, XsType.RESTRICT, XsType.INVALID,
                            rng.randrange(27, 1 << 32)))
        payload, expect = rng.choice((b"", b"\0", b"name\0")), {"ENOSYS"}
    elif form == "malformed":
        type_, payload = rng.choice((
            (XsType.READ, b"name"), (XsType.READ, b"name\0domid\0"), (XsType.WRITE, b"data"),
            (XsType.WATCH, b"data\0"), (XsType.TRANSACTION_END, b"X\0"),
            (XsType.SET_PERMS, b"data\0"), (XsType.GET_DOMAIN_PATH, b"one\0"),
            (XsType.DIRECTORY_PART, b"data\0-1\0"), (XsType.READ, b"n\xe4me\0")))
        expect = {"EINVAL"}
    elif form == "bad path":
        type_ = rng.choice((XsType.READ, XsType.WRITE, XsType.MKDIR, XsType.DIRECTORY))
        path = rng.choice(("data/", "data//x", "../0/name", "/local/domain/0/../1", "da ta",
                           "data/*", "", "/local/domain/" + "x" * XENSTORE_ABS_PATH_MAX))
        payload, expect = path.encode() + b"\0" + (b"v" if type_ == XsType.WRITE else b""), \
            {"EINVAL"}
    elif form == "wrong tx id":
        tx = rng.choice((rng.randint(1, 64), rng.randrange(1 << 32)))
        type_ = rng.choice((XsType.READ, XsType.TRANSACTION_END, XsType.WRITE))
        payload = {XsType.READ: b"name\0", XsType.TRANSACTION_END: b"T\0",
                   XsType.WRITE: b"data/hostile\0x"}[type_]
        expect = {"ENOENT"}
    elif form == "give a node away":
        type_, payload = XsType.SET_PERMS, make_request(
            XsType.SET_PERMS, "data/hostile", (f"n{rng.choice(ctx.others)}",)).payload
        expect = {"EPERM"}
    else:
        type_ = XsType.WRITE
        payload = b"data/hostile\0" + b"q" * rng.randint(3000, XENSTORE_PAYLOAD_MAX - 13)
        expect = {"ENOSPC"}
    msg = HEADER.pack(type_, req_id, tx, len(payload)) + payload
    return f"{form}: {_type_name(type_)} {payload[:48]!r}", msg, frozenset(expect)


def _type_name(type_: int) -> str:
    try:
        return XsType(type_).name
    except ValueError:
        return str(type_)


def _xs_plain(rng: random.Random, ctx: Context):
    req = XS_REQ_BASE + rng.randrange(1 << 20)
    what, msg, expect = _xs_message(rng, ctx, req)
    return what, XsSend((msg,), (req,)), (expect,)


def _xs_split(rng: random.Random, ctx: Context):
    """One message in two sends, cut anywhere: no answer until it is whole."""
    req = XS_REQ_BASE + rng.randrange(1 << 20)
    what, msg, expect = _xs_message(rng, ctx, req)
    cut = rng.randrange(1, len(msg))
    return f"split at {cut}: {what}", XsSend((msg[:cut], msg[cut:]), (req,)), (expect,)


def _xs_short(rng: random.Random, ctx: Context):
    """A one-path request whose header's len leaves out the path's NUL: the path has no
    terminator (EINVAL), and the NUL left over starts the next header, which the guest
    completes as a message of a type nobody serves (ENOSYS), so the stream is in step."""
    req, resync = (XS_REQ_BASE + rng.randrange(1 << 20) for _ in range(2))
    type_ = rng.choice((XsType.READ, XsType.DIRECTORY, XsType.GET_PERMS, XsType.MKDIR))
    payload = rng.choice(("name", "data", _xs_paths(rng, ctx))).encode() + b"\0"
    rest = HEADER.pack(XS_INVALID_TYPE, resync, 0, 0)[1:]  # the leftover NUL is byte 0
    msg = HEADER.pack(type_, req, 0, len(payload) - 1) + payload + rest
    return (f"len one short: {type_.name} {payload!r}", XsSend((msg,), (req, resync)),
            (frozenset({"EINVAL"}), frozenset({"ENOSYS"})))


def _xs_claim(rng: random.Random, ctx: Context):
    """A READ on the connection of another domain (it claims that domid): EACCES."""
    req = XS_REQ_BASE + rng.randrange(1 << 20)
    domid = rng.choice(ctx.others)
    msg = HEADER.pack(XsType.READ, req, 0, 5) + b"name\0"
    return f"claims to be domain {domid}", XsSend((msg,), (req,), claim=domid), _one("EACCES")


def _xs_truncated(rng: random.Random, ctx: Context):
    """Fatal: a message never completed. xenstored waits for the rest."""
    req = XS_REQ_BASE + rng.randrange(1 << 20)
    what, msg, _ = _xs_message(rng, ctx, req)
    cut = rng.randrange(1, len(msg))
    return f"truncated at {cut}: {what}", XsSend((msg[:cut],), (req,)), _one("none")


def _xs_oversize(rng: random.Random, ctx: Context):
    """Fatal: a header announcing more than XENSTORE_PAYLOAD_MAX: the connection is dropped."""
    req = XS_REQ_BASE + rng.randrange(1 << 20)
    length = rng.randrange(XENSTORE_PAYLOAD_MAX + 1, 1 << 32)
    msg = HEADER.pack(XsType.READ, req, 0, length) + b"name\0"
    return f"header len {length}", XsSend((msg,), (req,)), _one("none")


# -- ring contents: blkif ------------------------------------------------------------------

def _bad_gref(rng: random.Random, ctx: Context) -> int:
    return rng.choice((*ctx.bad_grefs, ctx.foreign_gref, rng.randrange(ctx.nr_grefs, 1 << 32)))


def _sector(rng: random.Random, ctx: Context) -> int:
    return rng.randrange(max(ctx.sectors - 8, 1))


def _blk_request(rng: random.Random, ctx: Context):
    """One request with one thing wrong: BLKIF_RSP_ERROR, or EOPNOTSUPP for an op."""
    op = rng.choice((BLKIF_OP_READ, BLKIF_OP_WRITE))
    segs = [BlkifRequestSegment(_bad_gref(rng, ctx), 0, 7)]
    sector, nr = _sector(rng, ctx), None
    expect = {"BLKIF_RSP_ERROR"}
    form = rng.choice(("bad gref", "read into a read-only grant", "no segments",
                       "too many segments", "bad segment sectors", "past the end", "bad op",
                       "discard past the end", "garbage"))
    if form == "read into a read-only grant":
        op, segs = BLKIF_OP_READ, [BlkifRequestSegment(ctx.ro_gref, 0, 7)]
    elif form == "no segments":
        segs = []
    elif form == "too many segments":
        segs = segs * BLKIF_MAX_SEGMENTS_PER_REQUEST
        nr = rng.randint(BLKIF_MAX_SEGMENTS_PER_REQUEST + 1, 255)
    elif form == "bad segment sectors":
        first = rng.randrange(8)
        segs = [BlkifRequestSegment(ctx.ro_gref, first, rng.choice(
            (rng.randrange(first) if first else 8, rng.randint(8, 255))))]
    elif form == "past the end":
        sector = rng.choice((ctx.sectors, ctx.sectors - 1, rng.randrange(1 << 63, 1 << 64)))
    elif form == "bad op":
        op, expect = rng.choice((2, 4, 6, *range(7, 256))), {"BLKIF_RSP_EOPNOTSUPP",
                                                            "BLKIF_RSP_ERROR"}
    elif form == "discard past the end":
        req = BlkifRequestDiscard(0, XVDA & 0xFFFF, rng.randrange(1 << 32),
                                  rng.choice((ctx.sectors, rng.randrange(1 << 63, 1 << 64))),
                                  rng.randint(1, 1 << 20))
        return f"blkif {form}", RingSend((pack_slot(req),)), _one("BLKIF_RSP_ERROR",
                                                                 "BLKIF_RSP_EOPNOTSUPP")
    elif form == "garbage":  # an op nobody serves, or read/write far past any disk
        slot = bytearray(rng.randbytes(BlkifRequest.SIZE))
        slot[0] = rng.choice((BLKIF_OP_READ, BLKIF_OP_WRITE, 2, 4, *range(7, 256)))
        struct.pack_into("<Q", slot, 16, rng.randrange(1 << 63, 1 << 64))
        return f"blkif {form} op {slot[0]}", RingSend((bytes(slot),)), _one(
            "BLKIF_RSP_ERROR", "BLKIF_RSP_EOPNOTSUPP")
    req = BlkifRequest(op, len(segs) if nr is None else nr, XVDA & 0xFFFF,
                       rng.randrange(1 << 32), sector, tuple(segs))
    return (f"blkif {form}: op {op} sector {sector} segs {len(segs) if nr is None else nr}",
            RingSend((req.pack(),)), (frozenset(expect),))


def _blk_jump(rng: random.Random, ctx: Context):
    """Fatal: req_prod more than a ring ahead of the responses, or behind them."""
    jump = rng.choice((BLKIF_RING_SIZE + rng.randint(1, 1 << 16), -rng.randint(1, 1 << 16)))
    return f"blkif req_prod jumps {jump:+d}", RingSend(jump=jump), _one("none")


# -- ring contents: netif tx ---------------------------------------------------------------

_MORE, _EXTRA = int(NetTxFlag.more_data), int(NetTxFlag.extra_info)


def _tx(gref: int, offset: int, flags: int, id_: int, size: int) -> bytes:
    return NetifTxRequest(gref, offset, flags, id_ & 0xFFFF, size).pack()


def _tx_chain(rng: random.Random, ctx: Context, n: int, first_size: int | None = None,
              last_more: bool = False) -> tuple[bytes, ...]:
    """A packet of ``n`` data slots of small fragments on refs that grant nothing."""
    frags = [rng.randint(1, 64) for _ in range(n - 1)]
    total = first_size if first_size is not None else sum(frags) + rng.randint(14, 64)
    slots = [_tx(_bad_gref(rng, ctx), 0, _MORE if n > 1 else 0, 0, total)]
    for i, size in enumerate(frags, 1):
        more = _MORE if i < n - 1 or last_more else 0
        slots.append(_tx(_bad_gref(rng, ctx), 0, more, i, size))
    return tuple(slots)


def _net_request(rng: random.Random, ctx: Context):
    """A tx packet with one thing wrong, answered NETIF_RSP_ERROR in every slot."""
    form = rng.choice(("bad gref", "runt", "too many slots", "fragment over the total"))
    if form == "bad gref":
        size = rng.randint(14, 1514)
        slots = (_tx(_bad_gref(rng, ctx), rng.randrange(PAGE_SIZE - size), 0,
                     rng.randrange(TX_RING_SIZE), size),)
    elif form == "runt":
        slots = (_tx(_bad_gref(rng, ctx), 0, 0, rng.randrange(TX_RING_SIZE),
                     rng.randrange(14)),)
    elif form == "too many slots":
        slots = _tx_chain(rng, ctx, rng.randint(XEN_NETIF_NR_SLOTS_MIN + 1, FATAL_SKB_SLOTS))
    else:
        slots = _tx_chain(rng, ctx, rng.randint(2, 8), first_size=rng.randint(14, 40))
        slots = (*slots[:-1], _tx(_bad_gref(rng, ctx), 0, 0, 99, 2000))
    return f"netif {form}: {len(slots)} slots", RingSend(slots), _one("NETIF_RSP_ERROR")


def _net_fatal(rng: random.Random, ctx: Context):
    """Fatal: a fragment crossing its page, a bad extra, a chain over FATAL_SKB_SLOTS or
    running past req_prod, or req_prod more than a ring ahead."""
    form = rng.choice(("crosses its page", "bad extra", "chain too long",
                       "chain past req_prod", "req_prod jump"))
    if form == "crosses its page":
        size = rng.randint(64, 1514)
        slots = (_tx(_bad_gref(rng, ctx), PAGE_SIZE - rng.randint(1, size - 1), 0, 0, size),)
    elif form == "bad extra":
        extra = bytes([rng.choice((0, *range(XEN_NETIF_EXTRA_TYPE_MAX, 256))), 0]) + bytes(10)
        slots = (_tx(_bad_gref(rng, ctx), 0, _EXTRA, 0, 60), extra)
    elif form == "chain too long":
        slots = _tx_chain(rng, ctx, rng.randint(FATAL_SKB_SLOTS + 1, 64))
    elif form == "chain past req_prod":
        slots = _tx_chain(rng, ctx, rng.randint(1, 4), last_more=True)
        if len(slots) == 1:
            slots = (_tx(_bad_gref(rng, ctx), 0, _MORE, 0, 100),)
    else:
        jump = TX_RING_SIZE + rng.randint(1, 1 << 16)
        return f"netif req_prod jumps +{jump}", RingSend(jump=jump), _one("none")
    return f"netif {form}: {len(slots)} slots", RingSend(slots), _one("none")


_GENERATORS: dict[str, tuple[tuple[Callable, ...], tuple[Callable, ...]]] = {
    "hypercall": ((_hc_args, _hc_args, _hc_malformed, _hc_unknown, _hc_privileged,
                   _hc_privileged, _hc_claim, _hc_vcpu), ()),
    "grant": ((_gnt_map, _gnt_map, _gnt_unmap, _gnt_copy, _gnt_copy, _gnt_table), ()),
    "evtchn": ((_ev_port_op, _ev_port_op, _ev_unmask, _ev_foreign, _ev_foreign, _ev_bind), ()),
    "xenstore": ((_xs_plain, _xs_plain, _xs_plain, _xs_split, _xs_short, _xs_claim),
                 (_xs_truncated, _xs_oversize)),
    "blkif": ((_blk_request,), (_blk_jump,)),
    "netif": ((_net_request,), (_net_fatal,)),
}
"""Per target: the kinds of input (repeated to weigh them), and the fatal ones."""


