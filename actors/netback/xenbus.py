"""netback's control path: finding vifs in xenstore, the xenbus handshake, the host's bridges.

Linux ``drivers/net/xen-netback/xenbus.c`` (``netback_probe``, ``frontend_changed``,
``connect``, ``read_xenbus_vif_flags``, ``backend_switch_state``, ``hotplug_status_changed``)
plus what the hotplug script does (``tools/hotplug/Linux/vif-bridge``: put the vif on its
bridge, write ``hotplug-status``). Reference sections 9, 10, 19.2, 19.4-19.6. The shape is
blkback's (actors/blkback/xenbus.py): discovery by a watch on ``backend/vif``, every reaction
through :func:`protocols.xenbus.backend_on_frontend_state`, restart recovery from xenstore,
node writes in one transaction that checks ``<be>/state`` still exists, ``error`` and
Closing for a frontend netback refuses (``xenbus_dev_fatal``).

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
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from actors.grant_map import GrantMaps
from actors.netback.uplink import HostBridges
from actors.netback.vif import NetbackVif
from protocols.errno import Errno, XenError
from protocols.evtchn import EvtchnStat
from protocols.hypercall import EvtchnOp, Hypercall
from protocols.xenbus import BackendAction, XenbusState, backend_on_frontend_state

BACKEND_ROOT = "/local/domain/0/backend/vif"
ROOT_TOKEN = "backend/vif"
FRONTEND_TOKEN = "vif-fe:"  # + "<domid>/<devid>"
DEFAULT_BRIDGE = "xenbr0"
FEATURES = {"feature-sg": "0", "feature-rx-copy": "1", "feature-rx-flip": "0"}
_S = XenbusState


@dataclasses.dataclass(eq=False)
class Device:
    """One vif (Linux ``struct backend_info`` + ``struct xenvif``)."""

    domid: int
    devid: int
    nodename: str
    frontend: str
    bridge: str
    state: XenbusState = _S.INITIALISING
    vif: NetbackVif | None = None
    grants: GrantMaps | None = None
    rings: tuple[tuple[int, memoryview], ...] = ()  # (gref, page) of the tx and rx ring
    local_port: int | None = None
    kick: Callable[[], None] | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    past: Counter = dataclasses.field(default_factory=Counter)  # stats of closed rings

    @property
    def port(self) -> str:
        """The bridge port's name, as Linux names the vif's net device."""
        return f"vif{self.domid}.{self.devid}"

    @property
    def token(self) -> str:
        return f"{FRONTEND_TOKEN}{self.domid}/{self.devid}"


class Netback(HostBridges):
    """netback for one host. Call :meth:`start` once; feed :meth:`upcall` with Dom0's ports.
    The host's bridges, uplinks and captures are :class:`HostBridges`' (one lock for both)."""

    def __init__(self, host: str, hv: Any, xs: Any, log: Any = None) -> None:
        super().__init__()
        self.host, self.hv, self.xs = host, hv, xs
        self.log = log if log is not None else structlog.get_logger().bind(
            host=host, component="netback")
        self.devices: dict[tuple[int, int], Device] = {}
        self._by_port: dict[int, Device] = {}
        self.stats: Counter[str] = Counter()

    # -- discovery (xenbus_probe_backend) ----------------------------------------------

    def start(self) -> None:
        """Watch ``backend/vif`` and adopt what is there already (also after a restart)."""
        try:
            self.xs.watch(BACKEND_ROOT, ROOT_TOKEN, self._on_backend_watch)
        except XenError as e:
            if e.errno != Errno.EEXIST:  # our connection's watch survived a restart
                raise
        self.scan()

    def _on_backend_watch(self, path: str, token: str) -> None:
        parts = path[len(BACKEND_ROOT):].strip("/").split("/")
        if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
            self.scan()
            return
        key = (int(parts[0]), int(parts[1]))
        with self.lock:
            dev = self.devices.get(key)
            if dev is not None and parts[2:] == ["hotplug-status"]:
                self.frontend_changed(dev)  # hotplug_status_changed
            else:
                self._check(*key)  # xenbus_dev_changed: that device only

    def scan(self) -> None:
        """Every device directory: drop the ones gone, pick up the new ones."""
        with self.lock:
            self.stats["scans"] += 1
            found = set()
            for domid in filter(str.isdigit, self._ls(BACKEND_ROOT)):
                found.update((int(domid), int(devid)) for devid in
                             filter(str.isdigit, self._ls(f"{BACKEND_ROOT}/{domid}")))
            for key in [k for k in self.devices if k not in found]:
                self._forget(self.devices[key], "backend directory removed")
            for key in sorted(found - self.devices.keys()):
                self._check(*key)

    def _ls(self, path: str) -> list[str]:
        try:
            return self.xs.directory(path)
        except XenError as e:
            if e.errno == Errno.ENOENT:
                return []
            raise

    def _read(self, path: str) -> str | None:
        try:
            return bytes(self.xs.read(path)).decode()
        except XenError as e:
            if e.errno == Errno.ENOENT:
                return None
            raise

    def _check(self, domid: int, devid: int) -> None:
        with self.lock:
            dev = self.devices.get((domid, devid))
            nodename = f"{BACKEND_ROOT}/{domid}/{devid}"
            state = self._read(f"{nodename}/state")
            if dev is not None:
                if state is None:
                    self._forget(dev, "backend directory removed")
                return
            frontend = self._read(f"{nodename}/frontend")
            if state is None or frontend is None:
                return  # not (fully) written yet: a later fire brings the rest
            bridge = self._read(f"{nodename}/bridge") or DEFAULT_BRIDGE
            dev = Device(domid, devid, nodename, frontend, bridge)
            self.devices[(domid, devid)] = dev
            self._adopt(dev, self._parse_state(state))

    def _adopt(self, dev: Device, old: XenbusState) -> None:
        """``netback_probe``: publish features, InitWait, run the hotplug step; then watch
        the frontend. A vif an earlier instance had connected is sent to Closed first."""
        if old in (_S.UNKNOWN, _S.INITIALISING):
            state = _S.INIT_WAIT
        elif old in (_S.CONNECTED, _S.CLOSING):  # a ring we no longer have
            self._close_stale_port(dev)
            online = self._read(f"{dev.nodename}/online") == "1"
            state = _S.CLOSED if online else _S.CLOSING  # an unplug in progress goes on
            self.stats["recovered"] += 1
        else:
            state = old  # InitWait/Initialised: no ring mapped yet; Closed: stays
        self._publish(dev, FEATURES, state)
        self._hotplug(dev)
        self.log.info("vif found", domid=dev.domid, devid=dev.devid, bridge=dev.bridge,
                      state=state.name, was=old.name)
        try:
            self.xs.watch(f"{dev.frontend}/state", dev.token, self._on_frontend_watch)
        except XenError as e:
            if e.errno != Errno.EEXIST:
                raise
        self.frontend_changed(dev)  # in case the watch existed already (no first fire)

    def _hotplug(self, dev: Device) -> None:
        """``vif-bridge online``: the vif joins its bridge; tell the toolstack it did."""
        bridge = self.bridge(dev.bridge)
        bridge.remove_port(dev.port)  # a port left by a device of the same name
        bridge.add_port(dev.port, functools.partial(self._to_guest, dev))
        self._publish(dev, {"hotplug-status": "connected"})

    def _close_stale_port(self, dev: Device) -> None:
        """The dead instance's port to this frontend stays bound: find it and close it."""
        port = self._read(f"{dev.frontend}/event-channel")
        if port is None or not port.isdigit():
            return
        try:
            st = self.hv(Hypercall.event_channel_op, EvtchnOp.status, dom=dev.domid,
                         port=int(port))
            if st["status"] == EvtchnStat.interdomain and st["interdomain_dom"] == 0:
                self.hv(Hypercall.event_channel_op, EvtchnOp.close,
                        port=st["interdomain_port"])
        except XenError:
            pass

    @staticmethod
    def _parse_state(text: str | None) -> XenbusState:
        try:
            return XenbusState.parse(text) if text is not None else _S.UNKNOWN
        except XenError:
            return _S.UNKNOWN

    # -- the handshake (frontend_changed) ----------------------------------------------

    def _on_frontend_watch(self, path: str, token: str) -> None:
        domid, _, devid = token.removeprefix(FRONTEND_TOKEN).partition("/")
        with self.lock:
            dev = self.devices.get((int(domid), int(devid)))
            if dev is not None:
                self.frontend_changed(dev)

    def frontend_changed(self, dev: Device) -> None:
        """Read the frontend's ``state``, ``online`` and ``hotplug-status``; do what the
        state machine says."""
        with self.lock:
            if self.devices.get((dev.domid, dev.devid)) is not dev:
                return
            frontend = self._parse_state(self._read(f"{dev.frontend}/state"))
            online = self._read(f"{dev.nodename}/online") == "1"
            ready = self._read(f"{dev.nodename}/hotplug-status") == "connected"
            step = backend_on_frontend_state(dev.state, frontend, online, ready)
            match step.action:
                case BackendAction.CONNECT:
                    self._disconnect(dev)
                    try:
                        self._connect(dev)
                    except XenError as e:
                        self._fatal(dev, str(e))
                        return
                case BackendAction.PREPARE_RECONNECT | BackendAction.DISCONNECT | \
                        BackendAction.CLOSE:
                    self._disconnect(dev)
                case BackendAction.UNREGISTER:
                    self._publish(dev, {}, step.state)
                    self._forget(dev, "unplugged")
                    return
            if step.state != dev.state:
                self._publish(dev, {}, step.state)

    def _connect(self, dev: Device) -> None:
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
        grants = GrantMaps(self.hv, dev.domid)
        try:
            rings = ((tx_ref, grants.map(tx_ref, False)), (rx_ref, grants.map(rx_ref, False)))
            port = self.hv(Hypercall.event_channel_op, EvtchnOp.bind_interdomain,
                           remote_dom=dev.domid, remote_port=evtchn)["local_port"]
        except XenError:
            grants.unmap_all()
            raise
        vif = NetbackVif(rings[0][1], rings[1][1], grants.map,
                         functools.partial(self.bridges[dev.bridge].receive, dev.port))
        with dev.lock:
            dev.vif, dev.grants, dev.rings, dev.local_port = vif, grants, rings, port
            dev.kick = functools.partial(self.hv.post, Hypercall.event_channel_op,
                                         EvtchnOp.send, port=port)
        self._by_port[port] = dev
        self.stats["connects"] += 1
        self.log.info("vif connected", domid=dev.domid, devid=dev.devid, tx_ring_ref=tx_ref,
                      rx_ring_ref=rx_ref, evtchn=evtchn, local_port=port)

    def _fatal(self, dev: Device, message: str) -> None:
        """``xenbus_dev_fatal``: say why in ``error`` and go Closing."""
        self.stats["errors"] += 1
        self.log.warning("vif connect failed", domid=dev.domid, devid=dev.devid, error=message)
        self._disconnect(dev)
        self._publish(dev, {"error": message}, _S.CLOSING)

    def _disconnect(self, dev: Device) -> None:
        """``xenvif_disconnect_data``: close the port, drop the rings and grants (idempotent)."""
        with dev.lock:
            vif, grants, rings, port = dev.vif, dev.grants, dev.rings, dev.local_port
            dev.vif, dev.grants, dev.rings, dev.local_port, dev.kick = None, None, (), None, None
            if vif is not None:
                dev.past.update(vif.statistics())
                vif.close()
        if port is not None:
            self._by_port.pop(port, None)
            try:
                self.hv(Hypercall.event_channel_op, EvtchnOp.close, port=port)
            except XenError:
                pass
        if grants is not None:
            for gref, page in rings:
                grants.unmap(gref, page)
            grants.unmap_all()
            self.stats["disconnects"] += 1

    def _forget(self, dev: Device, reason: str) -> None:
        """The device is gone (``vif-bridge offline``): off its bridge, stop watching."""
        self._disconnect(dev)
        self.devices.pop((dev.domid, dev.devid), None)
        self.bridges[dev.bridge].remove_port(dev.port)
        try:
            self.xs.unwatch(f"{dev.frontend}/state", dev.token)
        except XenError:
            pass
        self.log.info("vif removed", domid=dev.domid, devid=dev.devid, reason=reason)

    def _publish(self, dev: Device, nodes: dict[str, str], state: XenbusState | None = None
                 ) -> None:
        """Write ``nodes`` (and ``state``) in one transaction, unless the directory is gone."""
        def body(tx_id: int) -> bool:
            try:
                self.xs.read(f"{dev.nodename}/state", tx_id=tx_id)
            except XenError as e:
                if e.errno == Errno.ENOENT:
                    return False
                raise
            for key, value in nodes.items():
                self.xs.write(f"{dev.nodename}/{key}", value, tx_id=tx_id)
            if state is not None:
                self.xs.write(f"{dev.nodename}/state", state.encode(), tx_id=tx_id)
            return True

        if state is not None:
            dev.state = state
        self.xs.transact(body)

    # -- the data path -----------------------------------------------------------------

    def upcall(self, ports: list[int]) -> None:
        """Dom0's ports fired: each vif behind one fills newly posted rx buffers and takes
        its tx requests (the frames go to its bridge as they are read)."""
        for port in ports:
            dev = self._by_port.get(port)
            if dev is None:
                continue
            with dev.lock:
                vif, kick = dev.vif, dev.kick
            if vif is not None and dev.local_port == port:
                reason = vif.process_tx(kick)
                if reason:
                    self._hostile(dev, vif, reason)

    def _to_guest(self, dev: Device, frame: bytes) -> None:
        """The bridge sends ``frame`` out of the vif's port: into the guest's rx ring."""
        with dev.lock:
            vif, kick = dev.vif, dev.kick
            if vif is None:
                dev.past["carrier_dropped"] += 1
                return
        vif.transmit(frame, kick)
        if vif.disconnected:  # the frontend broke its rx ring
            self._hostile(dev, vif, vif.disconnected)

    def _hostile(self, dev: Device, vif: NetbackVif, reason: str) -> None:
        """``xenvif_fatal_tx_err``: that vif alone is disconnected; its backend goes Closing."""
        with self.lock:
            if self.devices.get((dev.domid, dev.devid)) is not dev or dev.vif is not vif:
                return  # disconnected meanwhile
            self.stats["hostile"] += 1
            self.log.warning("frontend broke its ring: disconnected", domid=dev.domid,
                             devid=dev.devid, reason=reason)
            self._disconnect(dev)
            self._publish(dev, {}, _S.CLOSING)

    # -- queries -----------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        with self.lock:
            vifs, totals = [], Counter()
            for dev in self.devices.values():
                counts = Counter(dev.past)
                if dev.vif is not None:
                    counts.update(dev.vif.statistics())
                totals.update(counts)
                vifs.append({"domid": dev.domid, "devid": dev.devid, "state": dev.state.name,
                             "bridge": dev.bridge, "port": dev.port,
                             "local_port": dev.local_port, **counts})
            return {**{k: self.stats[k] for k in ("scans", "connects", "disconnects", "errors",
                                                  "hostile", "recovered")},
                    "totals": dict(totals), "vifs": vifs, **self.bridge_statistics()}

    def close(self) -> None:
        """Stop serving every vif (the backend is going away); xenstore is left as is."""
        with self.lock:
            for dev in list(self.devices.values()):
                self._disconnect(dev)
