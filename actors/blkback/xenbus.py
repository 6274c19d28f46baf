"""blkback's control path: the vbd's own part of the xenbus handshake.

Linux ``drivers/block/xen-blkback/xenbus.c`` (``xen_blkbk_probe``, ``connect_ring``,
``connect``) as a :class:`~actors.xenbus.backend.XenbusDriver` of the xenbus backend core
(actors/xenbus/backend.py: discovery by a watch on ``backend/vbd``, restart recovery,
transactional node writes, ``xenbus_dev_fatal``). Pure: what a vbd is made of, what probe
publishes, what ``connect_ring`` reads and refuses, what ``connect`` publishes. Opening the
image and serving the ring are the data path's (ring.py). Reference sections 8.3, 8.4, 10,
19.4, 19.6.

Decisions:

* An image that cannot be opened gets ``hotplug-error`` and ``hotplug-status``=error (the
  hotplug script's nodes) and state Closed; the device is refused (not watched).
* A bad ring (unknown ``protocol``, unmappable ``ring-ref``, unbindable port) is fatal:
  ``error`` and Closing. A frontend that overflows its ring is disconnected at once.
* Frontend Closing: no new requests are taken; the ring stays until the frontend is Closed.
* No indirect segments, one ring page, one queue: ``max-ring-page-order``=0 is published and
  ``feature-max-indirect-segments`` / ``multi-queue-max-queues`` are not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from actors.xenbus.backend_driver import Nodes, RingRequest, XenbusDriver
from protocols.blkif import (SECTOR_SIZE, VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE,
                             XEN_IO_PROTO_ABI_X86_64)
from protocols.errno import Errno, XenError


@dataclasses.dataclass(frozen=True, slots=True)
class VbdConfig:
    """What the toolstack wrote for one vbd (Linux ``struct backend_info``'s view of it)."""

    params: str  # the image
    readonly: bool  # ``mode`` r
    discard: bool = True  # ``discard-enable`` not 0
    removable: bool = False
    cdrom: bool = False  # ``device-type`` cdrom


@dataclasses.dataclass(frozen=True, slots=True)
class BlkifParams:
    """What ``connect_ring`` read that the ring needs (the frontend's ``feature-persistent``)."""

    persistent: bool
    discard: bool


class BlkbackDriver(XenbusDriver):
    devicetype = "vbd"
    config_keys = ("params", "mode", "discard-enable", "removable", "device-type")
    ring_frontend_keys = ("ring-ref", "event-channel", "protocol", "feature-persistent")

    def device_config(self, domid: int, devid: int, backend: Nodes) -> VbdConfig | None:
        params = backend.get("params")
        if params is None:
            return None
        return VbdConfig(params, readonly=not (backend.get("mode") or "w").startswith("w"),
                         discard=backend.get("discard-enable") != "0",
                         removable=backend.get("removable") == "1",
                         cdrom=backend.get("device-type") == "cdrom")

    def features(self, config: VbdConfig) -> dict[str, str]:
        """``xen_blkbk_probe``'s nodes (``xen_blkbk_discard``, ``xen_blkbk_flush_diskcache``)."""
        nodes = {"feature-flush-cache": "1", "feature-persistent": "1", "feature-barrier": "0",
                 "max-ring-page-order": "0"}
        if config.discard:
            return nodes | {"feature-discard": "1", "discard-granularity": str(SECTOR_SIZE),
                            "discard-alignment": "0", "discard-secure": "0"}
        return nodes | {"feature-discard": "0"}

    def refused(self, config: VbdConfig, error: str) -> dict[str, str]:
        """What the hotplug script reports for an image it cannot use."""
        return {"hotplug-error": f"{config.params}: {error}", "hotplug-status": "error"}

    def connect_ring(self, config: VbdConfig, backend: Nodes, frontend: Nodes) -> RingRequest:
        """``connect_ring``: one ring page, the port, the ABI, persistent grants."""
        ring_ref, evtchn = frontend.get("ring-ref", ""), frontend.get("event-channel", "")
        if not ring_ref.isdigit() or not evtchn.isdigit():
            raise XenError(Errno.EINVAL, "reading ring-ref and event-channel")
        protocol = frontend.get("protocol") or XEN_IO_PROTO_ABI_X86_64
        if protocol != XEN_IO_PROTO_ABI_X86_64:
            raise XenError(Errno.ENOSYS, f"unknown fe protocol {protocol}")
        return RingRequest((int(ring_ref),), int(evtchn),
                           BlkifParams(frontend.get("feature-persistent") == "1",
                                       config.discard))

    def connected_nodes(self, config: VbdConfig, info: Mapping[str, Any]) -> dict[str, str]:
        """``connect``: the disk's size and properties."""
        vdisk = (VDISK_READONLY * config.readonly) | (VDISK_CDROM * config.cdrom) | \
            (VDISK_REMOVABLE * config.removable)
        return {"sectors": str(info["sectors"]), "info": str(vdisk),
                "sector-size": str(SECTOR_SIZE), "physical-sector-size": str(SECTOR_SIZE)}

    def describe(self, config: VbdConfig, info: Mapping[str, Any]) -> dict[str, Any]:
        return {"params": config.params, "mode": "r" if config.readonly else "w",
                "sectors": info.get("sectors", 0)}
