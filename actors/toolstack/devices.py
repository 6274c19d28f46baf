"""The device types the toolstack knows: one table entry each, as libxl's ``device_type_tbl``.

``tools/libs/light/libxl_internal.h`` describes each kind of device with a
``libxl__device_type`` (``DEFINE_DEVICE_TYPE_STRUCT(disk, VBD, disks, ...)``) and the generic
code in ``libxl_create.c`` / ``libxl_device.c`` walks the table instead of branching on the
kind. Here a :class:`DeviceType` says, for one kind: which list of the domain config holds its
devices, how to check one before anything is built, the backend and frontend xenstore keys
libxl writes (``libxl__device_generic_add``, reference 8.3 and 9), which Dom0 backend serves
it, and how to name it in messages. A third kind of device is one more entry in
:data:`DEVICE_TYPES`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from protocols.errno import Errno, XenError
from protocols.libxl_types import DiskSpec, DomainConfig, VifSpec
from protocols.netif import DEFAULT_MTU, xen_mac
from protocols.xenstore.paths import backend_path, frontend_path

Keys = dict[str, str]


@dataclasses.dataclass(frozen=True)
class DeviceType:
    """One kind of PV device (``libxl__device_type``)."""

    kind: str  # the xenstore directory name: "vbd", "vif"
    backend: str  # the Dom0 daemon that serves it (its actor's component name)
    devices: Callable[[DomainConfig], tuple[Any, ...]]  # the config's list of them
    describe: Callable[[Any], str]  # "disk xvda", "vif 0": how messages name one
    check: Callable[[Any], None]  # refuse (XenError) what this host cannot back
    backend_keys: Callable[[int, Any], Keys]  # (domid, device) -> the backend's nodes
    frontend_keys: Callable[[int, Any], Keys]  # (domid, device) -> the frontend's nodes


def _check_disk(disk: DiskSpec) -> None:
    where = f"disk {disk.vdev}"
    if not disk.target or not os.path.exists(disk.target):
        raise XenError(Errno.ENOENT, f"{where}: target {disk.target} does not exist on this host")
    if (reason := disk.unsupported_reason()) is not None:
        raise XenError(Errno.EOPNOTSUPP, f"{where}: {reason}")
    if disk.mode == "w" and not os.stat(disk.target).st_mode & 0o222:
        raise XenError(Errno.EROFS, f"{where}: {disk.target} is read-only but the disk asks "
                                    "for write access (use access=ro)")


def _vbd_backend(domid: int, disk: DiskSpec) -> Keys:
    """libxl_disk.c's backend nodes (reference 8.3)."""
    return {"frontend": frontend_path("vbd", domid, disk.devid), "frontend-id": str(domid),
            "online": "1", "state": "1", "removable": "0", "bootable": "1", "dev": disk.vdev,
            "type": "file", "mode": disk.mode, "device-type": disk.device_type,
            "params": disk.target or "", "discard-enable": "0" if disk.discard is False else "1"}


def _vbd_frontend(domid: int, disk: DiskSpec) -> Keys:
    return {"backend": backend_path("vbd", domid, disk.devid), "backend-id": "0", "state": "1",
            "virtual-device": str(disk.devid), "device-type": disk.device_type, "trusted": "1"}


def _check_vif(vif: VifSpec) -> None:
    if vif.backend not in (None, "0", "Domain-0"):
        raise XenError(Errno.EOPNOTSUPP, f"vif {vif.devid}: backend {vif.backend}: driver "
                                         "domains are not emulated; netback runs in Dom0")


def _vif_backend(domid: int, vif: VifSpec) -> Keys:
    """libxl_nic.c's backend nodes (reference 9): ``hotplug-status`` starts empty; the hotplug
    step (netback attaching the vif to its bridge) sets it to "connected"."""
    keys = {"frontend": frontend_path("vif", domid, vif.devid), "frontend-id": str(domid),
            "online": "1", "state": "1", "script": vif.script, "mac": vif.mac or "",
            "bridge": vif.bridge, "handle": str(vif.devid), "type": vif.type or "vif",
            "hotplug-status": ""}
    if vif.mtu != DEFAULT_MTU:  # libxl writes the backend's mtu only when it is not 1500
        keys["mtu"] = str(vif.mtu)
    if vif.ip:
        keys["ip"] = vif.ip
    if vif.rate:
        keys["rate"] = vif.rate.xenstore
    return keys


def _vif_frontend(domid: int, vif: VifSpec) -> Keys:
    return {"backend": backend_path("vif", domid, vif.devid), "backend-id": "0", "state": "1",
            "handle": str(vif.devid), "mac": vif.mac or "", "mtu": str(vif.mtu),
            "trusted": "1" if vif.trusted is not False else "0"}


VBD = DeviceType("vbd", "blkback", lambda cfg: cfg.disk, lambda d: f"disk {d.vdev}",
                 _check_disk, _vbd_backend, _vbd_frontend)
VIF = DeviceType("vif", "netback", lambda cfg: cfg.vif, lambda v: f"vif {v.devid}",
                 _check_vif, _vif_backend, _vif_frontend)

DEVICE_TYPES: tuple[DeviceType, ...] = (VBD, VIF)


def devices_of(cfg: DomainConfig) -> list[tuple[DeviceType, Any]]:
    """Every device of the config with its type, in table order."""
    return [(dtype, dev) for dtype in DEVICE_TYPES for dev in dtype.devices(cfg)]


def with_macs(cfg: DomainConfig) -> DomainConfig:
    """Give every vif without a ``mac`` one under Xen's OUI, at create (libxl does), so the
    domain keeps it across reboots: the record holds the config with the MACs in it."""
    return dataclasses.replace(cfg, vif=tuple(v if v.mac else v.with_mac(xen_mac(os.urandom(3)))
                                              for v in cfg.vif))
