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
from protocols.hypercall import (DOMID_ANY, Domctl, DomInfoFlag, EvtchnOp, Hypercall, MemoryOp,
                                 ShutdownReason, XenMapSpace, dominf_shutdown_code)
from protocols.libxl_types import DomainConfig
from protocols.page import PAGES_PER_MIB
from protocols.pv_layout import PFN_CONSOLE, PFN_FIRST_FREE, PFN_START_INFO
from protocols.xenstore.paths import (INIT_STATUS, RELEASE_DOMAIN, backend_path, domain_path,
                                      frontend_path, libxl_device_path, libxl_path, pool_path,
                                      vm_path)
from protocols.xenstore.wire import XsType

XEN_LEGACY_MAX_VCPUS = 32  # vcpu_info slots in the shared-info page (xen.h)
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
    return created["domain"], created["secret"], dom_uuid


def populate(hv: Any, domid: int, cfg: DomainConfig, name: str) -> str:
    """``XEN_DOMCTL_max_mem`` then ``populate_physmap``: short of memory is -ENOMEM. Returns
    the domain's memory file (what a foreign map of its first page answers)."""
    hv(Hypercall.domctl, Domctl.max_mem, domain=domid, max_memkb=cfg.maxmem * 1024)
    want = cfg.memory * PAGES_PER_MIB
    done = hv(Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
              nr_extents=want, extent_order=0, mem_flags=0, domid=domid)
    if done < want:
        raise XenError(Errno.ENOMEM, f"host has memory for {done // PAGES_PER_MIB} of the "
                                     f"{cfg.memory} MiB domain {name!r} asks for")
    return memory_path(hv, domid)


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


def rewrite_start_info(memory_path: str, console_port: int, nr_pages: int) -> si.StartInfo:
    """A restore's start_info (it came in the stream): the new domain's console port, as
    libxc's ``process_start_info`` (``xg_sr_restore_x86_pv.c``) rewrites the store and console
    fields; EINVAL if the stream's page 0 is no start_info of a domain this size."""
    mapping = Mapping(memory_path, 0, PFN_FIRST_FREE)
    try:
        info = si.StartInfo.unpack(bytes(mapping.page(PFN_START_INFO)[:si.SIZE]))
    except XenError as e:
        raise XenError(Errno.EINVAL, f"the stream's start_info page: {e.detail}") from None
    finally:
        mapping.close()
    if info.nr_pages != nr_pages:
        raise XenError(Errno.EINVAL, f"the stream's start_info is of a {info.nr_pages}-page "
                                     f"domain, not of this {nr_pages}-page one")
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
            nodes[f"{dom}/cpu/{vcpu}/availability"] = "online" if vcpu < cfg.vcpus else "offline"
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
