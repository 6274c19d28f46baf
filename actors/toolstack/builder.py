"""Building a PV domain, in the order libxl and libxc do it (``libxl_create.c``, ``xc_dom``).

Written in chronological order (libxl's CODING_STYLE): create the domain paused, size its
memory, allocate the console event channel, write the start-info page and the console page
into the guest's memory (a fresh page is zero, which is XENCONSOLE_CONNECTED), lay out its xenstore directories in one transaction with libxl's
permissions (reference 11.5), and return what the caller needs to start the vCPUs. A failure
at any step destroys the half-built domain, so a bad create leaves nothing behind.

The PV memory map (pfn 0 start_info, 3 the console ring, 16.. free for the guest) is in
:mod:`protocols.pv_layout`.
"""

from __future__ import annotations

import dataclasses
import time
import uuid as uuidlib

from actors.memory import Mapping
from protocols import start_info as si
from protocols.errno import Errno, XenError
from protocols.hypercall import DOMID_ANY, Domctl, EvtchnOp, Hypercall, MemoryOp, XenMapSpace
from protocols.libxl_types import DomainConfig
from protocols.netif import DEFAULT_MTU
from protocols.pv_layout import PFN_CONSOLE, PFN_FIRST_FREE, PFN_START_INFO


@dataclasses.dataclass(frozen=True)
class BuiltDomain:
    domid: int
    secret: str
    uuid: str
    memory_path: str
    console_port: int


def build_pv_domain(hv, xs, cfg: DomainConfig, *, name: str | None = None) -> BuiltDomain:
    """Create ``cfg``'s domain, paused, with memory, start info, console and xenstore."""
    dom_uuid = cfg.uuid or str(uuidlib.uuid4())
    created = hv(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                 handle=uuidlib.UUID(dom_uuid).bytes, flags=0, max_vcpus=cfg.maxvcpus,
                 max_evtchn_port=cfg.max_event_channels,
                 max_grant_frames=cfg.max_grant_frames,
                 max_maptrack_frames=cfg.max_maptrack_frames)
    domid = created["domain"]
    try:
        path = _populate(hv, domid, cfg)
        port = hv(Hypercall.event_channel_op, EvtchnOp.alloc_unbound, dom=domid,
                  remote_dom=0)["port"]
        _write_boot_pages(path, cfg, port)
        _write_xenstore(xs, domid, dom_uuid, name or cfg.name, cfg, port)
    except BaseException:
        destroy_domain(hv, xs, domid)
        raise
    return BuiltDomain(domid, created["secret"], dom_uuid, path, port)


def _populate(hv, domid: int, cfg: DomainConfig) -> str:
    """``XEN_DOMCTL_max_mem`` then ``populate_physmap``: short of memory is -ENOMEM."""
    hv(Hypercall.domctl, Domctl.max_mem, domain=domid, max_memkb=cfg.maxmem * 1024)
    want = cfg.memory * 256
    done = hv(Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
              nr_extents=want, extent_order=0, mem_flags=0, domid=domid)
    if done < want:
        raise XenError(Errno.ENOMEM, f"host has memory for {done // 256} of the "
                                     f"{cfg.memory} MiB domain {cfg.name!r} asks for")
    return hv(Hypercall.memory_op, MemoryOp.add_to_physmap_batch, domid=0,
              space=XenMapSpace.gmfn_foreign, size=1, foreign_domid=domid,
              idxs=[PFN_START_INFO], gpfns=[0])["path"]


def _write_boot_pages(path: str, cfg: DomainConfig, console_port: int) -> None:
    mapping = Mapping(path, 0, PFN_FIRST_FREE)
    try:
        info = si.StartInfo(nr_pages=cfg.memory * 256, shared_info=0, flags=0,
                            store_mfn=0, store_evtchn=0, console_mfn=PFN_CONSOLE,
                            console_evtchn=console_port, cmd_line=cfg.cmdline or "")
        mapping.page(PFN_START_INFO)[:si.SIZE] = info.pack()
    finally:
        mapping.close()


def _write_xenstore(xs, domid: int, dom_uuid: str, name: str, cfg: DomainConfig,
                    console_port: int) -> None:
    """libxl's layout and permissions (reference 11.5), in one transaction."""
    dom = f"/local/domain/{domid}"
    vm = f"/vm/{dom_uuid}"
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
            f"{vm}/start_time": f"{time.time():.2f}", f"/libxl/{domid}": "",
            f"/libxl/{domid}/type": cfg.type,
        }
        for vcpu in range(cfg.maxvcpus):
            nodes[f"{dom}/cpu/{vcpu}/availability"] = "online" if vcpu < cfg.vcpus else "offline"
        for path in (dom, f"{dom}/cpu", f"{dom}/memory", f"{dom}/control", f"{dom}/device",
                     f"{dom}/console", vm):  # libxl__xs_mknod first: the keys inherit these
            xs.write(path, "", tx_id=t)
            xs.set_perms(path, dom0_owns, tx_id=t)
        for path, value in nodes.items():
            xs.write(path, value, tx_id=t)
        xs.set_perms(f"/libxl/{domid}", ["n0"], tx_id=t)
        for leaf in ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                     "control/feature-suspend", "control/sysrq", "data"):
            xs.write(f"{dom}/{leaf}", "", tx_id=t)
            xs.set_perms(f"{dom}/{leaf}", guest_owns, tx_id=t)
        for disk in cfg.disk:
            add_vbd(xs, t, domid, disk)
        for vif in cfg.vif:
            add_vif(xs, t, domid, vif)

    xs.transact(body)


def vbd_backend_path(domid: int, devid: int) -> str:
    return f"/local/domain/0/backend/vbd/{domid}/{devid}"


def add_vbd(xs, t: int, domid: int, disk) -> None:
    """A vbd's directories (reference 8.3): libxl's keys for blkback and blkfront."""
    fe = f"/local/domain/{domid}/device/vbd/{disk.devid}"
    backend = {"frontend": fe, "frontend-id": str(domid), "online": "1", "state": "1",
               "removable": "0", "bootable": "1", "dev": disk.vdev, "type": "file",
               "mode": disk.mode, "device-type": disk.device_type, "params": disk.target,
               "discard-enable": "0" if disk.discard is False else "1"}
    frontend = {"backend": vbd_backend_path(domid, disk.devid), "backend-id": "0",
                "state": "1", "virtual-device": str(disk.devid),
                "device-type": disk.device_type, "trusted": "1"}
    _add_device(xs, t, domid, "vbd", disk.devid, backend, frontend)


def vif_backend_path(domid: int, devid: int) -> str:
    return f"/local/domain/0/backend/vif/{domid}/{devid}"


def add_vif(xs, t: int, domid: int, vif) -> None:
    """A vif's directories (``libxl_nic.c``, reference 9): ``hotplug-status`` starts empty;
    the hotplug step (netback attaching the vif to its bridge) sets it to "connected"."""
    fe = f"/local/domain/{domid}/device/vif/{vif.devid}"
    backend = {"frontend": fe, "frontend-id": str(domid), "online": "1", "state": "1",
               "script": vif.script, "mac": vif.mac, "bridge": vif.bridge,
               "handle": str(vif.devid), "type": vif.type or "vif", "hotplug-status": ""}
    if vif.mtu != DEFAULT_MTU:  # libxl writes the backend's mtu only when it is not 1500
        backend["mtu"] = str(vif.mtu)
    if vif.ip:
        backend["ip"] = vif.ip
    if vif.rate:
        backend["rate"] = vif.rate.xenstore
    frontend = {"backend": vif_backend_path(domid, vif.devid), "backend-id": "0",
                "state": "1", "handle": str(vif.devid), "mac": vif.mac, "mtu": str(vif.mtu),
                "trusted": "1" if vif.trusted is not False else "0"}
    _add_device(xs, t, domid, "vif", vif.devid, backend, frontend)


def _add_device(xs, t: int, domid: int, kind: str, devid: int, backend: dict[str, str],
                frontend: dict[str, str]) -> None:
    """``libxl__device_generic_add`` (reference 10): both directories, each side owning its
    own and the other allowed to read it, and libxl's own record of the pair."""
    fe = f"/local/domain/{domid}/device/{kind}/{devid}"
    be = f"/local/domain/0/backend/{kind}/{domid}/{devid}"
    for base, keys, perms in ((be, backend, ["n0", f"r{domid}"]),
                              (fe, frontend, [f"n{domid}", "r0"])):
        xs.write(base, "", tx_id=t)
        xs.set_perms(base, perms, tx_id=t)  # first: the keys inherit these permissions
        for key, value in keys.items():
            xs.write(f"{base}/{key}", value, tx_id=t)
    libxl = f"/libxl/{domid}/device/{kind}/{devid}"
    xs.write(f"{libxl}/frontend", fe, tx_id=t)
    xs.write(f"{libxl}/backend", be, tx_id=t)


def destroy_domain(hv, xs, domid: int) -> None:
    """``libxl_domain_destroy``: destroydomain, then remove its xenstore directories."""
    try:
        vm = xs.read_str(f"/local/domain/{domid}/vm", default="")
    except XenError:
        vm = ""
    try:
        hv(Hypercall.domctl, Domctl.destroydomain, domain=domid)
    except XenError as e:
        if e.errno != Errno.ESRCH:
            raise
    for path in (f"/local/domain/0/backend/vbd/{domid}",
                 f"/local/domain/0/backend/vif/{domid}", f"/local/domain/{domid}",
                 f"/libxl/{domid}", vm):
        if path:
            try:
                xs.rm(path)
            except XenError:
                pass
