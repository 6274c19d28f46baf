"""The steps of building and destroying a PV domain, as libxl and libxc do them
(``libxl_create.c`` ``domcreate_*``, ``xc_dom_*``, ``libxl_domain.c`` ``libxl_domain_destroy``).

Written in chronological order (libxl's CODING_STYLE). Each function is one step of
:class:`actors.toolstack.state.Step` and talks to the hypervisor and xenstored only through the
clients it is given (``hv``, a :class:`~actors.transport.hypercall_client.HypercallClient`;
``xs``, an :class:`~actors.transport.xs_client.XsClient`), so the in-process test host drives
the same code. Which steps run, in which order, and what undoes a failed one is the core's
business (:mod:`actors.toolstack.state`), not this module's.

The PV memory map (pfn 0 start_info, 3 the console ring, 16.. free for the guest) is
:mod:`protocols.pv_layout`; the xenstore layout and permissions are reference 11.5's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any, TypeVar

from actors.memory import Mapping
from actors.toolstack.devices import DEVICE_TYPES, DeviceType, devices_of
from protocols import start_info as si
from protocols.errno import Errno, XenError
from protocols.cpumap import parse_cpulist, to_bitmap
from protocols.hypercall import (DOMID_ANY, Domctl, DomInfoFlag, EvtchnOp, Hypercall, MemoryOp,
                                 SchedCmd, ShutdownReason, Sysctl, XenMapSpace,
                                 dominf_shutdown_code)
from protocols.libxl_types import DomainConfig
from protocols.page import PAGES_PER_MIB
from protocols.pv_layout import PFN_CONSOLE, PFN_FIRST_FREE, PFN_START_INFO
from protocols.xenstore.paths import (INIT_STATUS, RELEASE_DOMAIN, backend_path, domain_path,
                                      frontend_path, libxl_device_path, libxl_path, pool_path,
                                      vm_path)
from protocols.xenstore.wire import XsType

XEN_LEGACY_MAX_VCPUS = 32  # vcpu_info slots in the shared-info page (xen.h)
LIBXL_MAXMEM_CONSTANT = 1024  # KiB above the target in max_mem (libxl__arch_extra_memory, x86)
PV_SLACK_MEMKB = 0  # b_info->u.pv.slack_memkb's default (libxl_create.c)
SUPERPAGE_ORDER = 9  # 2 MiB extents (SUPERPAGE_2MB_SHIFT)
E820_RAM = 1
HOTPLUG_TIMEOUT_S = 40.0  # LIBXL_HOTPLUG_TIMEOUT
INIT_TIMEOUT_S = 30.0  # how long create waits for the guest's init to start

T = TypeVar("T")


# -- xen-init-dom0 --------------------------------------------------------------------------

def init_dom0(xs: Any) -> None:
    """What ``tools/helpers/xen-init-dom0.c`` writes once xenstored is up (reference 11.5):
    Dom0's ``domid`` and ``name``, and the name of the one cpupool."""
    def body(t: int) -> None:
        xs.write(f"{domain_path(0)}/domid", "0", tx_id=t)
        xs.write(f"{domain_path(0)}/name", "Domain-0", tx_id=t)
        xs.write(f"{pool_path(0)}/name", "Pool-0", tx_id=t)

    xs.transact(body)


# -- creation ---------------------------------------------------------------------------------

def check_config(cfg: DomainConfig) -> None:
    """What the hypervisor would refuse, said in the config's words before anything is built."""
    if cfg.maxvcpus > XEN_LEGACY_MAX_VCPUS:
        raise XenError(Errno.EINVAL, f"maxvcpus {cfg.maxvcpus}: a PV domain here has at most "
                                     f"{XEN_LEGACY_MAX_VCPUS} vCPUs (the vcpu_info slots of its "
                                     "shared-info page)")
    avail = cfg.avail_vcpus
    if avail is not None and not (
            isinstance(avail, tuple) and all(type(v) is int and 0 <= v < cfg.maxvcpus
                                             for v in avail)
            and len(set(avail)) == len(avail) == cfg.vcpus):
        raise XenError(Errno.EINVAL, f"avail_vcpus {avail!r}: {cfg.vcpus} distinct vCPUs "
                                     f"below maxvcpus {cfg.maxvcpus} expected")
    for dtype, dev in devices_of(cfg):
        dtype.check(dev)


def create_domain(hv: Any, cfg: DomainConfig) -> tuple[int, str, str]:
    """``XEN_DOMCTL_createdomain``: a new domain, paused once; its (domid, secret, uuid)."""
    dom_uuid = cfg.uuid or str(uuidlib.uuid4())
    created = hv(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                 handle=uuidlib.UUID(dom_uuid).bytes, flags=0, max_vcpus=cfg.maxvcpus,
                 max_evtchn_port=cfg.max_event_channels,
                 max_grant_frames=cfg.max_grant_frames,
                 max_maptrack_frames=cfg.max_maptrack_frames)
    set_sched_params(hv, created["domain"], cfg)
    return created["domain"], created["secret"], dom_uuid


def set_sched_params(hv: Any, domid: int, cfg: DomainConfig) -> None:
    """``libxl__sched_set_params`` and ``libxl_set_vcpuaffinity_all``: ``cpu_weight`` and
    ``cap`` to the host's scheduler, ``cpus`` (one list for all vCPUs, or one per vCPU) as
    each vCPU's hard affinity. A list the host cannot meet is -EINVAL, in xl's words."""
    sched_id = hv(Hypercall.sysctl, Sysctl.sched_id)["sched_id"]
    hv(Hypercall.domctl, Domctl.scheduler_op, domain=domid, sched_id=sched_id,
       cmd=SchedCmd.putinfo, weight=cfg.cpu_weight, cap=cfg.cap)
    if cfg.cpus is None:
        return
    nr_cpus = hv(Hypercall.sysctl, Sysctl.physinfo)["nr_cpus"]
    lists = [cfg.cpus] * cfg.maxvcpus if isinstance(cfg.cpus, str) else list(cfg.cpus)
    for vcpu, text in enumerate(lists[:cfg.maxvcpus]):
        try:
            cpus = parse_cpulist(text, nr_cpus)
        except ValueError as e:
            raise XenError(Errno.EINVAL, f"cpus: {e}") from None
        hv(Hypercall.domctl, Domctl.setvcpuaffinity, domain=domid, vcpu=vcpu, flags=1,
           cpumap_hard=to_bitmap(cpus, nr_cpus), cpumap_soft=to_bitmap(None, nr_cpus))


def populate(hv: Any, domid: int, cfg: DomainConfig, name: str) -> str:
    """libxl's memory steps for a PV domain, with its numbers: ``XEN_DOMCTL_max_mem`` of
    ``memory`` plus :data:`LIBXL_MAXMEM_CONSTANT` (``libxl__build_pre``: the balloon may not
    grow past the target until ``mem-set`` raises it), the memory map up to ``maxmem`` (plus
    PV ``slack_memkb``, 0: ``xc_domain_set_memmap_limit``; the guest's address space and
    memory file), then ``populate_physmap`` of pfns 0 .. ``memory``, in 2 MiB extents and the
    rest in pages (libxc's PV ``meminit``). Short of memory is -ENOMEM. Returns the domain's
    memory file (what a foreign map of its first page answers)."""
    set_memory_limits(hv, domid, cfg, cfg.memory * 1024)
    want = cfg.memory * PAGES_PER_MIB
    supers = want >> SUPERPAGE_ORDER << SUPERPAGE_ORDER
    done = _populate(hv, domid, range(0, supers, 1 << SUPERPAGE_ORDER), SUPERPAGE_ORDER)
    # the rest in pages (or, short of memory, what is left of it: the error's count is exact)
    done += _populate(hv, domid, range(done, min(want, done + (1 << SUPERPAGE_ORDER))), 0)
    if done < want:
        raise XenError(Errno.ENOMEM, f"host has memory for {done // PAGES_PER_MIB} of the "
                                     f"{cfg.memory} MiB domain {name!r} asks for")
    return memory_path(hv, domid)


def set_memory_limits(hv: Any, domid: int, cfg: DomainConfig, max_kib: int) -> None:
    """``max_mem`` (``max_kib`` plus :data:`LIBXL_MAXMEM_CONSTANT`) and the memory map up to
    ``maxmem`` (static-max), with nothing populated yet."""
    hv(Hypercall.domctl, Domctl.max_mem, domain=domid,
       max_memkb=max_kib + LIBXL_MAXMEM_CONSTANT)
    limit_kib = cfg.maxmem * 1024 + PV_SLACK_MEMKB
    hv(Hypercall.memory_op, MemoryOp.set_memory_map, domid=domid,
       map=[{"addr": 0, "size": limit_kib * 1024, "type": E820_RAM}])


def prepare_restore(hv: Any, domid: int, cfg: DomainConfig, name: str) -> str:
    """A restore's memory: ``max_mem`` of static-max (newer libxl's ``libxl__build_pre``: a
    guest saved while ballooning down may hold more than its target) and the memory map,
    and only the fixed pages below ``PFN_FIRST_FREE`` populated (the stream populates the
    rest as it brings them), since xenconsoled maps the console ring as soon as the domain
    is introduced, before the stream's end. Returns the domain's memory file."""
    set_memory_limits(hv, domid, cfg, cfg.maxmem * 1024)
    if _populate(hv, domid, range(PFN_FIRST_FREE), 0) < PFN_FIRST_FREE:
        raise XenError(Errno.ENOMEM, f"host has no memory for domain {name!r}")
    return memory_path(hv, domid)


def _populate(hv: Any, domid: int, gpfns: range, order: int) -> int:
    """``populate_physmap`` of these extents; the pages populated."""
    if not gpfns:
        return 0
    return hv(Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=list(gpfns),
              nr_extents=len(gpfns), extent_order=order, mem_flags=0, domid=domid) << order


def memory_path(hv: Any, domid: int) -> str:
    """A domain's memory file: what a foreign map of its first page answers."""
    return hv(Hypercall.memory_op, MemoryOp.add_to_physmap_batch, domid=0,
              space=XenMapSpace.gmfn_foreign, size=1, foreign_domid=domid,
              idxs=[PFN_START_INFO], gpfns=[0])["path"]


# -- the domain's userdata (libxl_internal.c libxl__userdata_store, "libxl-json") ----------

def userdata_path(memory_path: str) -> str:
    """Beside the domain's memory, so that whatever removes a host's memory files removes
    it too."""
    return f"{memory_path}.libxl-json"


def store_userdata(memory_path: str, data: dict[str, Any]) -> str:
    """Write the record a restarted agent adopts, atomically (a crash mid-write leaves the
    old one) and 0600 (it holds the domain's credential); its path."""
    path = userdata_path(memory_path)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return path


def load_userdata(memory_path: str) -> dict[str, Any] | None:
    try:
        with open(userdata_path(memory_path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def alloc_console_port(hv: Any, domid: int) -> int:
    """The console's event channel, unbound, for xenconsoled in Dom0 to bind."""
    return hv(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=domid,
              remote_dom=0)["port"]


def write_boot_pages(hv: Any, domid: int, memory_path: str, cfg: DomainConfig) -> int:
    """The console event channel, then the start-info page and the console page in the
    guest's memory (a fresh page is zero, which is XENCONSOLE_CONNECTED). Returns the port."""
    port = alloc_console_port(hv, domid)
    info = si.StartInfo(nr_pages=cfg.memory * PAGES_PER_MIB, shared_info=0, flags=0,
                        store_mfn=0, store_evtchn=0, console_mfn=PFN_CONSOLE,
                        console_evtchn=port, cmd_line=cfg.cmdline or "")
    _write_start_info(memory_path, info)
    return port


def rewrite_start_info(memory_path: str, console_port: int, p2m_size: int) -> si.StartInfo:
    """A restore's start_info (it came in the stream): the new domain's console port, as
    libxc's ``process_start_info`` (``xg_sr_restore_x86_pv.c``) rewrites the store and console
    fields; EINVAL if the stream's page 0 is no start_info of a domain whose boot pages fit
    in the stream's ``p2m_size`` pfns (its ``nr_pages`` is what it booted with: a balloon
    may since have moved its pages, even above it)."""
    mapping = Mapping(memory_path, 0, PFN_FIRST_FREE)
    try:
        info = si.StartInfo.unpack(bytes(mapping.page(PFN_START_INFO)[:si.SIZE]))
    except XenError as e:
        raise XenError(Errno.EINVAL, f"the stream's start_info page: {e.detail}") from None
    finally:
        mapping.close()
    if not PFN_FIRST_FREE <= info.nr_pages <= p2m_size:
        raise XenError(Errno.EINVAL, f"the stream's start_info is of a {info.nr_pages}-page "
                                     f"domain, not of this {p2m_size}-pfn one")
    info = dataclasses.replace(info, console_mfn=PFN_CONSOLE, console_evtchn=console_port,
                               store_mfn=0, store_evtchn=0)
    _write_start_info(memory_path, info)
    return info


def _write_start_info(memory_path: str, info: si.StartInfo) -> None:
    mapping = Mapping(memory_path, 0, PFN_FIRST_FREE)
    try:
        mapping.page(PFN_START_INFO)[:si.SIZE] = info.pack()
    finally:
        mapping.close()


def write_xenstore(xs: Any, domid: int, dom_uuid: str, name: str, cfg: DomainConfig,
                   console_port: int) -> None:
    """libxl's layout and permissions (reference 11.5) and every device's directories, in one
    transaction."""
    dom = domain_path(domid)
    vm = vm_path(dom_uuid)
    dom0_owns = ["n0", f"r{domid}"]
    guest_owns = [f"n{domid}"]

    def body(t: int) -> None:
        nodes = {
            dom: "", f"{dom}/name": name, f"{dom}/domid": str(domid), f"{dom}/vm": vm,
            f"{dom}/memory": "", f"{dom}/memory/static-max": str(cfg.maxmem * 1024),
            f"{dom}/memory/target": str(cfg.memory * 1024),
            f"{dom}/cpu": "", f"{dom}/control": "", f"{dom}/device": "",
            f"{dom}/console": "", f"{dom}/console/ring-ref": str(PFN_CONSOLE),
            f"{dom}/console/port": str(console_port), f"{dom}/console/type": "xenconsoled",
            f"{dom}/console/output": "pty",
            vm: "", f"{vm}/uuid": dom_uuid, f"{vm}/name": name,
            f"{vm}/start_time": f"{time.time():.2f}", libxl_path(domid): "",
            f"{libxl_path(domid)}/type": cfg.type,
        }
        for vcpu in range(cfg.maxvcpus):
            nodes[f"{dom}/cpu/{vcpu}/availability"] = ("online" if vcpu in cfg.online_vcpus
                                                       else "offline")
        ops: list[tuple[XsType, tuple[Any, ...]]] = []
        for path in (dom, f"{dom}/cpu", f"{dom}/memory", f"{dom}/control", f"{dom}/device",
                     f"{dom}/console", vm):  # libxl__xs_mknod first: the keys inherit these
            ops += [_write(path, ""), _perms(path, dom0_owns)]
        ops += [_write(path, value) for path, value in nodes.items()]
        ops.append(_perms(libxl_path(domid), ["n0"]))
        for leaf in ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                     "control/feature-suspend", "control/sysrq", "data"):
            ops += [_write(f"{dom}/{leaf}", ""), _perms(f"{dom}/{leaf}", guest_owns)]
        for dtype, dev in devices_of(cfg):
            ops += device_ops(domid, dtype, dev)
        xs.pipeline(ops, tx_id=t)  # one round trip: xenstored serves them in order

    xs.transact(body)


def _write(path: str, value: str) -> tuple[XsType, tuple[Any, ...]]:
    return XsType.WRITE, (path, value.encode())


def _perms(path: str, perms: list[str]) -> tuple[XsType, tuple[Any, ...]]:
    return XsType.SET_PERMS, (path, tuple(perms))


def device_ops(domid: int, dtype: DeviceType, dev: Any) -> list[tuple[XsType, tuple[Any, ...]]]:
    """``libxl__device_generic_add`` (reference 10), as xenstore requests: both
    directories, each side owning its own and the other allowed to read it, and libxl's own
    record of the pair."""
    fe, be = frontend_path(dtype.kind, domid, dev.devid), backend_path(dtype.kind, domid,
                                                                       dev.devid)
    ops = []
    for base, keys, perms in ((be, dtype.backend_keys(domid, dev), ["n0", f"r{domid}"]),
                              (fe, dtype.frontend_keys(domid, dev), [f"n{domid}", "r0"])):
        ops += [_write(base, ""), _perms(base, perms)]  # first: the keys inherit these
        ops += [_write(f"{base}/{key}", value) for key, value in keys.items()]
    libxl = libxl_device_path(domid, dtype.kind, dev.devid)
    return ops + [_write(f"{libxl}/frontend", fe), _write(f"{libxl}/backend", be)]


def wait_backends(xs: Any, domid: int, cfg: DomainConfig,
                  timeout: float = HOTPLUG_TIMEOUT_S) -> None:
    """libxl waits for each backend to reach InitWait, or report an error, before unpausing;
    here a xenstore watch on each backend directory wakes the wait (no polling)."""
    devices = [(backend_path(dtype.kind, domid, dev.devid), dtype.describe(dev), dtype.backend)
               for dtype, dev in devices_of(cfg)]
    if not devices:
        return

    def ready() -> bool | None:
        for be, what, backend in devices:
            state = xs.read_str(f"{be}/state", default="0")
            error = xs.read_str(f"{be}/hotplug-error", default="") or \
                xs.read_str(f"{be}/error", default="")
            if error or state == "6":
                raise XenError(Errno.EIO, f"{what}: {backend} refused it: "
                                          f"{error or 'backend closed'}")
            if state != "2":
                return None
        return True

    pending = ", ".join(f"{what} ({backend})" for _, what, backend in devices)
    wait_xenstore(xs, [be for be, _, _ in devices], ready, timeout,
                  f"{pending} to reach InitWait")


def wait_init(xs: Any, hv: Any, domid: int, timeout: float = INIT_TIMEOUT_S) -> str:
    """Wait until the guest's kernel has started its init program; its ``data/init`` line.

    The kernel writes ``running NAME`` just before it runs the init, or ``panic: ...`` when it
    cannot (an unknown init); a domain that shuts down first never started it."""
    node = f"{domain_path(domid)}/{INIT_STATUS}"

    def ready() -> str | None:
        status = xs.read_str(node, default="")
        if status.startswith("running"):
            return status
        if status.startswith("panic"):
            raise XenError(Errno.ENOENT, f"the guest could not start its init: "
                                         f"{status.removeprefix('panic: ')}")
        info = hv(Hypercall.domctl, Domctl.getdomaininfo, domain=domid)
        if info["flags"] & DomInfoFlag.shutdown:
            raise XenError(Errno.EIO, "the guest shut down before its init started")
        return None

    return wait_xenstore(xs, [node, RELEASE_DOMAIN], ready, timeout, "the guest's init")


def wait_xenstore(xs: Any, paths: list[str], ready: Callable[[], T | None], timeout: float,
                  what: str) -> T:
    """Return ``ready()``'s first non-None value, re-checking each time a watch on one of
    ``paths`` fires (each fires once at registration too); ETIMEDOUT after ``timeout`` s."""
    fired = threading.Event()
    tokens = [(path, f"wait-{uuidlib.uuid4().hex}") for path in paths]
    for path, token in tokens:
        xs.watch(path, token, lambda p, t: fired.set())
    try:
        deadline = time.monotonic() + timeout
        while True:
            fired.clear()  # before the check: a change after it wakes the wait below
            value = ready()
            if value is not None:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise XenError(Errno.ETIMEDOUT, f"timed out after {timeout:.0f} s waiting "
                                                f"for {what}")
            fired.wait(left)
    finally:
        for path, token in tokens:
            try:
                xs.unwatch(path, token)
            except XenError:
                pass


# -- the memory target and maximum (libxl_mem.c) ------------------------------------------

def set_memory_target(hv: Any, xs: Any, domid: int, target_kib: int) -> int:
    """``libxl_set_memory_target(domid, target, relative=0, enforce=1)``, what ``xl mem-set``
    calls, in one xenstore transaction: a target above ``memory/static-max`` is EINVAL
    (libxl's words); ``max_mem`` becomes the target plus :data:`LIBXL_MAXMEM_CONSTANT`, so
    Xen gives the balloon no more than that; then ``memory/target`` (KiB: the guest's balloon
    driver watches it) and ``/vm/<uuid>/memory`` (MiB). Returns the target (KiB)."""
    dom = domain_path(domid)

    def body(t: int) -> None:
        _read_kib(xs, f"{dom}/memory/target", t)
        static_max = _read_kib(xs, f"{dom}/memory/static-max", t)
        if not 0 <= target_kib <= static_max:
            raise XenError(Errno.EINVAL, "memory_dynamic_max must be less than or equal to "
                                         f"memory_static_max ({target_kib} KiB > "
                                         f"{static_max} KiB)")
        hv(Hypercall.domctl, Domctl.max_mem, domain=domid,
           max_memkb=target_kib + LIBXL_MAXMEM_CONSTANT)
        xs.write(f"{dom}/memory/target", str(target_kib), tx_id=t)
        vm = xs.read_str(f"{dom}/vm", default="", tx_id=t)
        if vm:
            xs.write(f"{vm}/memory", str(target_kib // 1024), tx_id=t)

    xs.transact(body)
    return target_kib


def set_max_memory(hv: Any, xs: Any, domid: int, max_kib: int) -> int:
    """``libxl_domain_setmaxmem``, what ``xl mem-max`` calls: a maximum below the current
    ``memory/target`` is EINVAL (libxl's words); ``max_mem`` becomes it plus
    :data:`LIBXL_MAXMEM_CONSTANT`, and ``memory/static-max`` it, so a later ``mem-set`` may
    go up to it (the guest's address space stays what ``maxmem`` made it at create). Returns
    the maximum (KiB)."""
    dom = domain_path(domid)

    def body(t: int) -> None:
        target = _read_kib(xs, f"{dom}/memory/target", t)
        if max_kib < target:
            raise XenError(Errno.EINVAL, "memory_static_max must be greater than or equal to "
                                         f"memory_dynamic_max ({max_kib} KiB < {target} KiB)")
        hv(Hypercall.domctl, Domctl.max_mem, domain=domid,
           max_memkb=max_kib + LIBXL_MAXMEM_CONSTANT)
        xs.write(f"{dom}/memory/static-max", str(max_kib), tx_id=t)

    xs.transact(body)
    return max_kib


def _read_kib(xs: Any, path: str, tx_id: int) -> int:
    """A KiB count the toolstack wrote (EINVAL if it is not one, ENOENT if none)."""
    text = xs.read_str(path, tx_id=tx_id)
    if not text.isdigit():
        raise XenError(Errno.EINVAL, f"invalid memory {text!r} in {path}")
    return int(text)


# -- suspend (libxl_dom_suspend.c) ---------------------------------------------------------

SUSPEND_ACK_TIMEOUT_S = 60.0  # libxl's suspend_common_wait_guest and the ack wait


def suspend_domain(xs: Any, hv: Any, domid: int,
                   timeout: float = SUSPEND_ACK_TIMEOUT_S) -> None:
    """libxl's ``domain_suspend_callback_common`` for a PV guest: write ``suspend`` to
    ``control/shutdown``, wait for the guest to ack it (it writes ""), then for the domain to
    shut down with reason suspend (a watch on ``@releaseDomain``). A guest that never acks
    has the request taken back (libxl: "guest didn't acknowledge suspend, cancelling
    request") and the save fails; one that shuts down otherwise fails it too."""
    node = f"{domain_path(domid)}/control/shutdown"
    xs.write(node, "suspend")

    def acked() -> bool | None:
        return True if xs.read_str(node, default="") != "suspend" else None

    try:
        wait_xenstore(xs, [node], acked, timeout, "the guest to acknowledge the suspend")
    except XenError:
        def take_back(t: int) -> None:
            if xs.read_str(node, default="", tx_id=t) == "suspend":
                xs.write(node, "", tx_id=t)

        xs.transact(take_back)
        raise

    def suspended() -> bool | None:
        flags = hv(Hypercall.domctl, Domctl.getdomaininfo, domain=domid)["flags"]
        if not flags & DomInfoFlag.shutdown:
            return None
        reason = dominf_shutdown_code(flags)
        if reason != ShutdownReason.suspend:
            raise XenError(Errno.EIO, f"the guest shut down ({ShutdownReason(reason).name}) "
                                      "instead of suspending")
        return True

    wait_xenstore(xs, [RELEASE_DOMAIN], suspended, timeout, "the guest to suspend")


# -- destruction ------------------------------------------------------------------------------

def destroy_domain(hv: Any, xs: Any, domid: int) -> None:
    """``libxl_domain_destroy``: destroydomain, then remove its xenstore directories (each
    backend's, the domain's home, libxl's record, its /vm entry)."""
    try:
        vm = xs.read_str(f"{domain_path(domid)}/vm", default="")
    except XenError:
        vm = ""
    try:
        hv(Hypercall.domctl, Domctl.destroydomain, domain=domid)
    except XenError as e:
        if e.errno != Errno.ESRCH:
            raise
    paths = [backend_path(dtype.kind, domid) for dtype in DEVICE_TYPES]
    for path in (*paths, domain_path(domid), libxl_path(domid), vm):
        if path:
            try:
                xs.rm(path)
            except XenError:
                pass
