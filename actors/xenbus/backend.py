"""The xenbus backend core that blkback and netback share: finding devices, the handshake.

Linux ``drivers/xen/xenbus/xenbus_probe_backend.c`` and ``xenbus_probe.c`` (a watch on the
backend directory, ``xenbus_dev_changed`` for the device a fired path names,
``xenbus_dev_probe`` then a watch on the other end, ``xenbus_dev_remove``) and
``xenbus_client.c`` (``xenbus_switch_state``, ``xenbus_dev_fatal``,
``xenbus_map_ring_valloc``, ``xenbus_unmap_ring_vfree``). Reference sections 8.4, 10, 19.4,
19.6. A driver subclasses :class:`XenbusBackend` and supplies what is its own: the device's
nodes, probe, the rings' connect and release, its data path.

Pure given the injected clients: ``hv`` makes Dom0 hypercalls, ``xs`` is a privileged
xenstore client whose watch events the owner feeds to ``xs.on_event``; the actors only add
Ray. Every reaction to the frontend goes through
:func:`protocols.xenbus.backend_on_frontend_state`, so spurious and coalesced watch fires are
harmless.

Decisions:

* One watch on ``backend/<type>``: a path below ``<domid>/<devid>`` looks at that device
  only (``xenbus_dev_changed``); anything else rescans the whole directory.
* Restart (DESIGN.md: backends are restartable and recover from xenstore): :meth:`start`
  adopts every device directory it finds. A device whose old state shows a ring (Connected or
  Closing) lost that ring with the old instance: its stale Dom0 port is closed (found with
  ``EVTCHNOP_status`` from the frontend's ``event-channel``) and the backend publishes Closed,
  so the frontend reconnects (protocols/xenbus.py's convention, 19.4); an unplug in progress
  (``online``=0) keeps Closing. The old grant maps are not known and stay until the frontend
  domain goes.
* Node writes go through one transaction that first checks ``<be>/state`` still exists
  (Linux ``xenbus_switch_state``), so a device the toolstack removed is never re-created.
* A frontend whose ring cannot be connected gets ``error`` in the backend directory (Linux
  writes it under ``error/``, where this toolstack does not look) and state Closing
  (``xenbus_dev_fatal``). A frontend that breaks its ring is disconnected at once and its
  backend goes Closing; the frontend's Closed then brings it to Closed.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

import structlog

from actors.xenbus.grant_map import GrantMaps
from protocols.errno import Errno, XenError
from protocols.evtchn import EvtchnStat
from protocols.hypercall import EvtchnOp, Hypercall
from protocols.xenbus import BackendAction, XenbusState, backend_on_frontend_state

BACKEND = "/local/domain/0/backend"  # Dom0's backend directories, one per device type
_S = XenbusState

Rings = tuple[tuple[int, memoryview], ...]  # (gref, page) of each mapped ring


@dataclasses.dataclass(eq=False)
class XenbusDevice:
    """One backend device (Linux ``struct xenbus_device``); a driver adds its own fields."""

    domid: int
    devid: int
    nodename: str  # the backend directory
    frontend: str  # the other end's directory (``otherend``)
    _: dataclasses.KW_ONLY
    state: XenbusState = _S.INITIALISING
    grants: GrantMaps | None = None
    rings: Rings = ()
    local_port: int | None = None
    watching: bool = False  # the frontend's state is watched: a refused device is not
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    past: Counter = dataclasses.field(default_factory=Counter)  # stats of closed rings

    @property
    def key(self) -> tuple[int, int]:
        return self.domid, self.devid


class XenbusBackend(abc.ABC):
    """A backend driver for one host. Call :meth:`start` once; the subclass's ``upcall``
    serves Dom0's ports."""

    devicetype: ClassVar[str]  # "vbd", "vif": the directory under ``backend/``
    devices_key: ClassVar[str] = "devices"  # the device list's name in :meth:`statistics`

    def __init__(self, host: str, hv: Any, xs: Any, log: Any = None) -> None:
        self.host, self.hv, self.xs = host, hv, xs
        self.log = log if log is not None else structlog.get_logger().bind(
            host=host, component=type(self).__name__.lower())
        self.root = f"{BACKEND}/{self.devicetype}"
        self.lock = threading.RLock()
        self.devices: dict[tuple[int, int], Any] = {}
        self._by_port: dict[int, Any] = {}
        self.stats: Counter[str] = Counter()

    # -- what a driver supplies --------------------------------------------------------

    @abc.abstractmethod
    def _new_device(self, domid: int, devid: int, nodename: str, frontend: str
                    ) -> XenbusDevice | None:
        """The device from its backend nodes; None while they are not all written."""

    @abc.abstractmethod
    def _probe(self, dev: XenbusDevice) -> Mapping[str, str] | None:
        """The driver's ``probe``: its feature nodes, or None when it refused the device
        (it has published why)."""

    @abc.abstractmethod
    def _connect(self, dev: XenbusDevice) -> Mapping[str, str]:
        """Read the frontend's ring details, map the rings (:meth:`_map_rings`), serve them
        (:meth:`_connected`); the nodes to publish with Connected. XenError if refused."""

    @abc.abstractmethod
    def _frontend_closing(self, dev: XenbusDevice) -> None:
        """The frontend is Closing; the backend goes Closing after this."""

    @abc.abstractmethod
    def _ring_statistics(self, dev: XenbusDevice) -> Mapping[str, int]:
        """The counters of what serves the rings now ({} when nothing does)."""

    @abc.abstractmethod
    def _release_ring(self, dev: XenbusDevice) -> None:
        """Under ``dev.lock``: stop and drop what serves the rings (if anything does)."""

    @abc.abstractmethod
    def _remove(self, dev: XenbusDevice) -> None:
        """The driver's ``remove``: the device is gone, its rings already released."""

    @abc.abstractmethod
    def _describe(self, dev: XenbusDevice) -> dict[str, Any]:
        """The device's own fields, for the log and :meth:`statistics`."""

    def _hotplug(self, dev: XenbusDevice) -> None:
        """Right after probe, what the hotplug script does (nothing unless the driver has one)."""

    def _hotplug_ready(self, dev: XenbusDevice) -> bool:
        """Whether Connected may be entered yet (``backend_switch_state``'s wait)."""
        return True

    def _backend_node_changed(self, dev: XenbusDevice, node: str) -> bool:
        """A node below a known device's directory fired: True if the driver handled it."""
        return False

    # -- discovery (xenbus_probe_backend) ----------------------------------------------

    def start(self) -> None:
        """Watch ``backend/<type>`` and adopt what is there already (also after a restart)."""
        try:
            self.xs.watch(self.root, f"backend/{self.devicetype}", self._backend_changed)
        except XenError as e:
            if e.errno != Errno.EEXIST:  # our connection's watch survived a restart
                raise
        self.scan()

    def _backend_changed(self, path: str, token: str) -> None:
        parts = path[len(self.root):].strip("/").split("/")
        if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
            self.scan()
            return
        key = (int(parts[0]), int(parts[1]))
        with self.lock:
            dev = self.devices.get(key)
            if dev is None or not self._backend_node_changed(dev, "/".join(parts[2:])):
                self._dev_changed(*key)

    def scan(self) -> None:
        """Every device directory (``xenbus_probe_devices``): drop the ones gone, pick up the
        new ones."""
        with self.lock:
            self.stats["scans"] += 1
            found = set()
            for domid in filter(str.isdigit, self._directory(self.root)):
                found.update((int(domid), int(devid)) for devid in
                             filter(str.isdigit, self._directory(f"{self.root}/{domid}")))
            for key in [k for k in self.devices if k not in found]:
                self._dev_remove(self.devices[key], "backend directory removed")
            for key in sorted(found - self.devices.keys()):
                self._dev_changed(*key)

    def _directory(self, path: str) -> list[str]:
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

    @staticmethod
    def _parse_state(text: str | None) -> XenbusState:
        """``xenbus_read_driver_state``: Unknown when absent (or not a state)."""
        try:
            return XenbusState.parse(text) if text is not None else _S.UNKNOWN
        except XenError:
            return _S.UNKNOWN

    def _dev_changed(self, domid: int, devid: int) -> None:
        """``xenbus_dev_changed``: one device's directory appeared, changed or went."""
        with self.lock:
            dev = self.devices.get((domid, devid))
            nodename = f"{self.root}/{domid}/{devid}"
            state = self._read(f"{nodename}/state")
            if dev is not None:
                if state is None:
                    self._dev_remove(dev, "backend directory removed")
                return
            frontend = self._read(f"{nodename}/frontend")
            if state is None or frontend is None:
                return  # not (fully) written yet: a later fire brings the rest
            dev = self._new_device(domid, devid, nodename, frontend)
            if dev is not None:
                self.devices[dev.key] = dev
                self._dev_probe(dev, self._parse_state(state))

    def _dev_probe(self, dev: XenbusDevice, old: XenbusState) -> None:
        """``xenbus_dev_probe``: the driver's probe, InitWait, hotplug; then watch the
        frontend. A device an earlier instance had connected is sent to Closed first."""
        nodes = self._probe(dev)
        if nodes is None:
            return  # refused: nothing to watch, the toolstack removes it
        if old in (_S.UNKNOWN, _S.INITIALISING):
            state = _S.INIT_WAIT
        elif old in (_S.CONNECTED, _S.CLOSING):  # a ring we no longer have
            self._close_stale_port(dev)
            online = self._read(f"{dev.nodename}/online") == "1"
            state = _S.CLOSED if online else _S.CLOSING  # an unplug in progress goes on
            self.stats["recovered"] += 1
        else:
            state = old  # InitWait/Initialised: no ring mapped yet; Closed: stays
        self._switch_state(dev, state, nodes)
        self._hotplug(dev)
        self.log.info(f"{self.devicetype} found", domid=dev.domid, devid=dev.devid,
                      **self._describe(dev), state=state.name, was=old.name)
        dev.watching = True
        try:
            self.xs.watch(f"{dev.frontend}/state", self._token(dev), self._otherend_changed)
        except XenError as e:
            if e.errno != Errno.EEXIST:
                raise
        self.frontend_changed(dev)  # in case the watch existed already (no first fire)

    def _close_stale_port(self, dev: XenbusDevice) -> None:
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

    def _token(self, dev: XenbusDevice) -> str:
        return f"{self.devicetype}-fe:{dev.domid}/{dev.devid}"

    # -- the handshake (frontend_changed) ----------------------------------------------

    def _otherend_changed(self, path: str, token: str) -> None:
        domid, _, devid = token.partition(":")[2].partition("/")
        with self.lock:
            dev = self.devices.get((int(domid), int(devid)))
            if dev is not None:
                self.frontend_changed(dev)

    def frontend_changed(self, dev: XenbusDevice) -> None:
        """Read the frontend's ``state`` and the backend's ``online`` (and whether hotplug is
        done); do what the state machine says."""
        with self.lock:
            if self.devices.get(dev.key) is not dev or not dev.watching:
                return
            frontend = self._parse_state(self._read(f"{dev.frontend}/state"))
            online = self._read(f"{dev.nodename}/online") == "1"
            step = backend_on_frontend_state(dev.state, frontend, online,
                                             self._hotplug_ready(dev))
            match step.action:
                case BackendAction.CONNECT:
                    self._disconnect(dev)
                    try:
                        nodes = self._connect(dev)
                    except XenError as e:
                        self._dev_fatal(dev, str(e))
                        return
                    self._switch_state(dev, step.state, nodes)
                    return
                case BackendAction.PREPARE_RECONNECT | BackendAction.DISCONNECT:
                    self._disconnect(dev)
                case BackendAction.CLOSE:
                    self._frontend_closing(dev)
                case BackendAction.UNREGISTER:
                    self._switch_state(dev, step.state)
                    self._dev_remove(dev, "unplugged")
                    return
            if step.state != dev.state:  # NONE, or PROBE: probed when adopted
                self._switch_state(dev, step.state)

    def _map_rings(self, dev: XenbusDevice, grefs: list[int], evtchn: int
                   ) -> tuple[GrantMaps, Rings, int]:
        """``xenbus_map_ring_valloc`` + ``bind_interdomain``: map the frontend's ring pages
        and bind its port, all or nothing. Returns the maps, the rings and Dom0's port."""
        grants, rings = GrantMaps(self.hv, dev.domid), []
        try:
            for gref in grefs:
                rings.append((gref, grants.map(gref, False)))
            port = self.hv(Hypercall.event_channel_op, EvtchnOp.bind_interdomain,
                           remote_dom=dev.domid, remote_port=evtchn)["local_port"]
        except XenError:
            self._unmap_rings(grants, rings)
            raise
        return grants, tuple(rings), port

    def _connected(self, dev: XenbusDevice, grants: GrantMaps, rings: Rings, port: int) -> None:
        """Under ``dev.lock``, with what serves the rings in place: route ``port`` to it."""
        dev.grants, dev.rings, dev.local_port = grants, rings, port
        self._by_port[port] = dev
        self.stats["connects"] += 1

    @staticmethod
    def _unmap_rings(grants: GrantMaps, rings: Rings) -> None:
        """``xenbus_unmap_ring_vfree``, and every grant the rings' requests left mapped."""
        for gref, page in rings:
            grants.unmap(gref, page)
        grants.unmap_all()

    def _disconnect(self, dev: XenbusDevice) -> None:
        """Close the port, drop the rings and their grants (idempotent)."""
        with dev.lock:
            grants, rings, port = dev.grants, dev.rings, dev.local_port
            dev.grants, dev.rings, dev.local_port = None, (), None
            dev.past.update(self._ring_statistics(dev))
            self._release_ring(dev)
        if port is not None:
            self._by_port.pop(port, None)
            try:
                self.hv(Hypercall.event_channel_op, EvtchnOp.close, port=port)
            except XenError:
                pass
        if grants is not None:
            self._unmap_rings(grants, rings)
            self.stats["disconnects"] += 1

    def _dev_fatal(self, dev: XenbusDevice, message: str) -> None:
        """``xenbus_dev_fatal``: say why in ``error`` and go Closing."""
        self.stats["errors"] += 1
        self.log.warning(f"{self.devicetype} connect failed", domid=dev.domid, devid=dev.devid,
                         error=message)
        self._disconnect(dev)
        self._switch_state(dev, _S.CLOSING, {"error": message})

    def _hostile(self, dev: XenbusDevice, reason: str) -> None:
        """The frontend broke its ring: disconnect that device alone, its backend goes
        Closing."""
        with self.lock:
            if self.devices.get(dev.key) is not dev:
                return
            self.stats["hostile"] += 1
            self.log.warning("frontend broke its ring: disconnected", domid=dev.domid,
                             devid=dev.devid, reason=reason)
            self._disconnect(dev)
            self._switch_state(dev, _S.CLOSING)

    def _dev_remove(self, dev: XenbusDevice, reason: str) -> None:
        """``xenbus_dev_remove``: disconnect, the driver's remove, stop watching."""
        self._disconnect(dev)
        self.devices.pop(dev.key, None)
        self._remove(dev)
        if dev.watching:
            try:
                self.xs.unwatch(f"{dev.frontend}/state", self._token(dev))
            except XenError:
                pass
        self.log.info(f"{self.devicetype} removed", domid=dev.domid, devid=dev.devid,
                      reason=reason)

    def _switch_state(self, dev: XenbusDevice, state: XenbusState | None,
                      nodes: Mapping[str, str] | None = None) -> None:
        """``xenbus_switch_state``, with ``nodes`` written in the same transaction (``state``
        None: only them); nothing when the directory is gone."""
        def body(tx_id: int) -> bool:
            try:
                self.xs.read(f"{dev.nodename}/state", tx_id=tx_id)
            except XenError as e:
                if e.errno == Errno.ENOENT:
                    return False
                raise
            for key, value in (nodes or {}).items():
                self.xs.write(f"{dev.nodename}/{key}", value, tx_id=tx_id)
            if state is not None:
                self.xs.write(f"{dev.nodename}/state", state.encode(), tx_id=tx_id)
            return True

        if state is not None:
            dev.state = state
        self.xs.transact(body)

    # -- queries -----------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        with self.lock:
            devices, totals = [], Counter()
            for dev in self.devices.values():
                counts = Counter(dev.past)
                counts.update(self._ring_statistics(dev))
                totals.update(counts)
                devices.append({"domid": dev.domid, "devid": dev.devid, "state": dev.state.name,
                                **self._describe(dev), "local_port": dev.local_port, **counts})
            return {**{k: self.stats[k] for k in ("scans", "connects", "disconnects", "errors",
                                                  "hostile", "recovered")},
                    "totals": dict(totals), self.devices_key: devices}

    def close(self) -> None:
        """Stop serving every device (the backend is going away); xenstore is left as is."""
        with self.lock:
            for dev in list(self.devices.values()):
                self._disconnect(dev)
