"""blkback's control path: the vbd's own part of the xenbus handshake.

Linux ``drivers/block/xen-blkback/xenbus.c`` (``xen_blkbk_probe``, ``connect_ring``,
``connect``, ``xen_blkif_disconnect``) on the xenbus backend core (actors/xenbus/backend.py:
discovery by a watch on ``backend/vbd``, restart recovery, transactional node writes,
``xenbus_dev_fatal``). Reference sections 8.3, 8.4, 10, 19.4, 19.6.

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

from actors.blkback.ring import BlkbackRing
from actors.blkback.vbd import Vbd
from actors.xenbus.backend import XenbusBackend, XenbusDevice
from protocols.blkif import (SECTOR_SIZE, VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE,
                             XEN_IO_PROTO_ABI_X86_64)
from protocols.errno import Errno, XenError
from protocols.hypercall import EvtchnOp, Hypercall
from protocols.xenbus import XenbusState


@dataclasses.dataclass(eq=False)
class Device(XenbusDevice):
    """One vbd (Linux ``struct backend_info`` + ``xen_blkif``)."""

    readonly: bool
    params: str  # the image, as the toolstack wrote it
    vbd: Vbd | None = None
    ring: BlkbackRing | None = None
    closing: bool = False  # Closing: no new requests are taken


class Blkback(XenbusBackend):
    """blkback for one host. Call :meth:`start` once; feed :meth:`upcall` with Dom0's ports."""

    devicetype = "vbd"

    def _new_device(self, domid: int, devid: int, nodename: str, frontend: str
                    ) -> Device | None:
        params = self._read(f"{nodename}/params")
        if params is None:
            return None
        mode = self._read(f"{nodename}/mode") or "w"
        return Device(domid, devid, nodename, frontend, readonly=not mode.startswith("w"),
                      params=params)

    def _probe(self, dev: Device) -> dict[str, str] | None:
        """``xen_blkbk_probe``: open the image; the features."""
        try:
            dev.vbd = Vbd(dev.params, readonly=dev.readonly)
        except (OSError, ValueError) as e:
            self.log.warning("cannot open vbd", domid=dev.domid, devid=dev.devid,
                             params=dev.params, error=str(e))
            self.stats["errors"] += 1
            self._switch_state(dev, XenbusState.CLOSED, {
                "hotplug-error": f"{dev.params}: {e}", "hotplug-status": "error"})
            return None
        nodes = {"feature-flush-cache": "1", "feature-persistent": "1", "feature-barrier": "0",
                 "max-ring-page-order": "0"}
        if self._read(f"{dev.nodename}/discard-enable") != "0":
            nodes |= {"feature-discard": "1", "discard-granularity": str(SECTOR_SIZE),
                      "discard-alignment": "0", "discard-secure": "0"}
        else:
            nodes["feature-discard"] = "0"
        return nodes

    def _connect(self, dev: Device) -> dict[str, str]:
        """``connect_ring`` + ``connect``: map the ring, bind the port, describe the disk."""
        fe = dev.frontend
        ring_ref, evtchn = self._read(f"{fe}/ring-ref"), self._read(f"{fe}/event-channel")
        protocol = self._read(f"{fe}/protocol") or XEN_IO_PROTO_ABI_X86_64
        if not (ring_ref or "").isdigit() or not (evtchn or "").isdigit():
            raise XenError(Errno.EINVAL, f"reading {fe}/ring-ref and event-channel")
        if protocol != XEN_IO_PROTO_ABI_X86_64:
            raise XenError(Errno.ENOSYS, f"unknown fe protocol {protocol}")
        persistent = self._read(f"{fe}/feature-persistent") == "1"
        grants, rings, port = self._map_rings(dev, [int(ring_ref)], int(evtchn))
        vbd = dev.vbd
        ring = BlkbackRing(rings[0][1], vbd, map_grant=grants.map, unmap_grant=grants.unmap,
                           feature_discard=self._read(f"{dev.nodename}/discard-enable") != "0",
                           feature_persistent=persistent)
        with dev.lock:
            dev.ring, dev.closing = ring, False
            self._connected(dev, grants, rings, port)
        self.log.info("vbd connected", domid=dev.domid, devid=dev.devid, ring_ref=int(ring_ref),
                      evtchn=int(evtchn), local_port=port, persistent=persistent)
        removable = self._read(f"{dev.nodename}/removable") == "1"
        cdrom = self._read(f"{dev.nodename}/device-type") == "cdrom"
        info = (VDISK_READONLY * vbd.readonly) | (VDISK_CDROM * cdrom) | \
            (VDISK_REMOVABLE * removable)
        return {"sectors": str(vbd.sectors), "info": str(info), "sector-size": str(SECTOR_SIZE),
                "physical-sector-size": str(SECTOR_SIZE)}

    def _frontend_closing(self, dev: Device) -> None:
        dev.closing = True

    def _ring_statistics(self, dev: Device) -> Mapping[str, int]:
        ring = dev.ring
        return dataclasses.asdict(ring.statistics()) if ring is not None else {}

    def _release_ring(self, dev: Device) -> None:
        """``xen_blkif_disconnect``: the ring stops serving."""
        if dev.ring is not None:
            dev.ring.close()
            dev.ring = None

    def _remove(self, dev: Device) -> None:
        if dev.vbd is not None:
            dev.vbd.close()

    def _describe(self, dev: Device) -> dict[str, Any]:
        return {"params": dev.vbd.path if dev.vbd else None,
                "mode": "r" if dev.readonly else "w",
                "sectors": dev.vbd.sectors if dev.vbd else 0}

    # -- the data path -----------------------------------------------------------------

    def upcall(self, ports: list[int]) -> None:
        """Dom0's ports fired: serve each device behind one, kick its frontend if asked."""
        for port in ports:
            dev = self._by_port.get(port)
            if dev is None:
                continue
            with dev.lock:
                ring = dev.ring
                if ring is None or dev.closing or dev.local_port != port:
                    continue
                res = ring.process(kick=lambda: self.hv.post(
                    Hypercall.event_channel_op, EvtchnOp.send, port=port))
            if res.disconnect:
                self._hostile(dev, res.disconnect)
