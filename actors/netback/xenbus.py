"""netback's control path: the vif's own part of the xenbus handshake, the host's bridges.

Linux ``drivers/net/xen-netback/xenbus.c`` (``netback_probe``, ``connect``,
``read_xenbus_vif_flags``, ``backend_switch_state``, ``hotplug_status_changed``) plus what
the hotplug script does (``tools/hotplug/Linux/vif-bridge``: put the vif on its bridge, write
``hotplug-status``), on the xenbus backend core (actors/xenbus/backend.py: discovery by a
watch on ``backend/vif``, restart recovery, transactional node writes, ``xenbus_dev_fatal``).
Reference sections 9, 10, 19.2, 19.4-19.6.

Decisions:

* Features: ``feature-rx-copy``=1, ``feature-rx-flip``=0, ``feature-sg``=0. No GSO, checksum
  offload, multicast control, split event channels, multi-queue, control ring or XDP: their
  keys are not written (absent means unsupported).
* Hotplug: netback is also ``vif-bridge``, run right after InitWait as libxl runs it: port
  ``vif<domid>.<devid>`` on the bridge named by ``bridge`` (created on first use, default
  xenbr0), then ``hotplug-status``=connected. Connected is held back until
  ``hotplug-status`` reads "connected" (``backend_switch_state``; here the rings are mapped
  only then too); a write to it re-runs the handshake (``hotplug_status_changed``, seen
  through the ``backend/vif`` watch).
* A frontend without ``request-rx-copy``=1 is refused with EOPNOTSUPP. Frontend Closing
  disconnects at once (netback's ``set_backend_state``: Connected -> Closing disconnects).
* A hostile ring (a disconnect reason from the vif) disconnects that vif alone; its backend
  goes Closing. Frames for a vif without a ring are dropped (carrier off) and counted.
* Frames a vif sends reach the bridge while no lock of ours is held (the vif calls
  ``deliver`` outside its own), so two vifs forwarding to each other never wait on each other.
* Bridges live in this process: after a restart they are rebuilt as the vifs are adopted
  (the hotplug step runs again). Uplinks (``uplink:<host>``) join other hosts' bridges.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

from actors.hostnet.uplink import HostBridges
from actors.netback.vif import NetbackVif, TxCredit
from actors.xenbus.backend import XenbusBackend, XenbusDevice
from protocols.errno import Errno, XenError
from protocols.hypercall import EvtchnOp, Hypercall

DEFAULT_BRIDGE = "xenbr0"
FEATURES = {"feature-sg": "0", "feature-rx-copy": "1", "feature-rx-flip": "0"}


@dataclasses.dataclass(eq=False)
class Device(XenbusDevice):
    """One vif (Linux ``struct backend_info`` + ``struct xenvif``)."""

    bridge: str
    vif: NetbackVif | None = None
    kick: Callable[[], None] | None = None
    credit_timer: threading.Timer | None = None  # pending while a rate holds tx back

    @property
    def port(self) -> str:
        """The bridge port's name, as Linux names the vif's net device."""
        return f"vif{self.domid}.{self.devid}"


class Netback(XenbusBackend, HostBridges):
    """netback for one host. Call :meth:`start` once; feed :meth:`upcall` with Dom0's ports.
    The host's bridges, uplinks and captures are :class:`HostBridges`' (one lock for both)."""

    devicetype = "vif"
    devices_key = "vifs"

    def __init__(self, host: str, hv: Any, xs: Any, log: Any = None) -> None:
        HostBridges.__init__(self)
        XenbusBackend.__init__(self, host, hv, xs, log)  # its lock is the bridges' too

    def _new_device(self, domid: int, devid: int, nodename: str, frontend: str) -> Device:
        bridge = self._read(f"{nodename}/bridge") or DEFAULT_BRIDGE
        return Device(domid, devid, nodename, frontend, bridge)

    def _probe(self, dev: Device) -> dict[str, str]:
        """``netback_probe``: the features."""
        return FEATURES

    def _hotplug(self, dev: Device) -> None:
        """``vif-bridge online``: the vif joins its bridge; tell the toolstack it did."""
        bridge = self.bridge(dev.bridge)
        bridge.remove_port(dev.port)  # a port left by a device of the same name
        bridge.add_port(dev.port, functools.partial(self._to_guest, dev))
        self._switch_state(dev, None, {"hotplug-status": "connected"})

    def _hotplug_ready(self, dev: Device) -> bool:
        return self._read(f"{dev.nodename}/hotplug-status") == "connected"

    def _backend_node_changed(self, dev: Device, node: str) -> bool:
        if node != "hotplug-status":
            return False
        self.frontend_changed(dev)  # hotplug_status_changed
        return True

    def _connect(self, dev: Device) -> dict[str, str]:
        """``connect``: check ``request-rx-copy``, map both rings, bind the port."""
        fe = dev.frontend
        if self._read(f"{fe}/request-rx-copy") != "1":  # read_xenbus_vif_flags
            raise XenError(Errno.EOPNOTSUPP, f"{fe}/request-rx-copy is not 1: "
                                             f"netback only copies into rx buffers")
        refs = [self._read(f"{fe}/{key}") for key in ("tx-ring-ref", "rx-ring-ref",
                                                      "event-channel")]
        if not all((v or "").isdigit() for v in refs):
            raise XenError(Errno.EINVAL, f"reading {fe}/tx-ring-ref, rx-ring-ref and "
                                         f"event-channel")
        tx_ref, rx_ref, evtchn = map(int, refs)
        grants, rings, port = self._map_rings(dev, [tx_ref, rx_ref], evtchn)
        vif = NetbackVif(rings[0][1], rings[1][1], grants.map,
                         functools.partial(self.bridges[dev.bridge].receive, dev.port),
                         credit=TxCredit.parse(self._read(f"{dev.nodename}/rate")),
                         reschedule=functools.partial(self._credit_timer, dev))
        with dev.lock:
            dev.vif = vif
            dev.kick = functools.partial(self.hv.post, Hypercall.event_channel_op,
                                         EvtchnOp.send, port=port)
            self._connected(dev, grants, rings, port)
        self.log.info("vif connected", domid=dev.domid, devid=dev.devid, tx_ring_ref=tx_ref,
                      rx_ring_ref=rx_ref, evtchn=evtchn, local_port=port)
        return {}

    def _frontend_closing(self, dev: Device) -> None:
        self._disconnect(dev)

    def _ring_statistics(self, dev: Device) -> Mapping[str, int]:
        vif = dev.vif
        return vif.statistics() if vif is not None else {}

    def _release_ring(self, dev: Device) -> None:
        """``xenvif_disconnect_data``: the vif stops serving."""
        if dev.vif is not None:
            dev.vif.close()
        dev.vif = dev.kick = None

    def _remove(self, dev: Device) -> None:
        """``vif-bridge offline``: off its bridge."""
        self.bridges[dev.bridge].remove_port(dev.port)

    def _describe(self, dev: Device) -> dict[str, Any]:
        return {"bridge": dev.bridge, "port": dev.port}

    # -- the data path -----------------------------------------------------------------

    def upcall(self, ports: list[int]) -> None:
        """Dom0's ports fired: each vif behind one fills newly posted rx buffers and takes
        its tx requests (the frames go to its bridge as they are read)."""
        for port in ports:
            dev = self._by_port.get(port)
            if dev is None:
                continue
            if dev.local_port == port:
                self._serve(dev)

    def _serve(self, dev: Device) -> None:
        with dev.lock:
            vif, kick = dev.vif, dev.kick
        if vif is not None:
            reason = vif.process_tx(kick)
            if reason:
                self._vif_fatal(dev, vif, reason)

    def _credit_timer(self, dev: Device, seconds: float) -> None:
        """``credit_timeout``: serve the vif again when its transmit credit refills (one
        timer at a time per vif)."""
        with dev.lock:
            if dev.credit_timer is not None:
                return
            dev.credit_timer = threading.Timer(seconds, self._credit_due, (dev,))
            dev.credit_timer.daemon = True
            dev.credit_timer.start()

    def _credit_due(self, dev: Device) -> None:
        with dev.lock:
            dev.credit_timer = None
        self._serve(dev)

    def _to_guest(self, dev: Device, frame: bytes) -> None:
        """The bridge sends ``frame`` out of the vif's port: into the guest's rx ring."""
        with dev.lock:
            vif, kick = dev.vif, dev.kick
            if vif is None:
                dev.past["carrier_dropped"] += 1
                return
        vif.transmit(frame, kick)
        if vif.disconnected:  # the frontend broke its rx ring
            self._vif_fatal(dev, vif, vif.disconnected)

    def _vif_fatal(self, dev: Device, vif: NetbackVif, reason: str) -> None:
        """``xenvif_fatal_tx_err``: unless ``vif`` was disconnected meanwhile."""
        with self.lock:
            if dev.vif is vif:
                self._hostile(dev, reason)

    # -- queries -----------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        with self.lock:
            return {**super().statistics(), **self.bridge_statistics()}
