"""The xenbus backend core that blkback and netback share: finding devices, the handshake.

Linux ``drivers/xen/xenbus/xenbus_probe_backend.c`` and ``xenbus_probe.c`` (a watch on the
backend directory, ``xenbus_dev_changed`` for the device a fired path names,
``xenbus_dev_probe`` then a watch on the other end, ``xenbus_dev_remove``) and
``xenbus_client.c`` (``xenbus_switch_state``, ``xenbus_dev_fatal``,
``xenbus_map_ring_valloc``). Reference sections 8.4, 10, 19.4, 19.6. A driver supplies what
is its own as a :class:`~actors.xenbus.backend_driver.XenbusDriver` (Linux's
``struct xenbus_driver``): which nodes make a
device, its features, how it reads a frontend's ring details, what it publishes once
connected.

Pure, events in and effects out (dask's ``handle_stimulus``): :meth:`XenbusBackend.handle`
takes :mod:`~actors.xenbus.backend_events` and returns
:mod:`~actors.xenbus.backend_effects`; :mod:`actors.xenbus.backend_io` carries them out and
feeds back what they found. The state changes only there. Every reaction to the frontend
goes through :func:`protocols.xenbus.backend_on_frontend_state`, so spurious and coalesced
watch fires are harmless: the same nodes read again ask for nothing new.

Decisions:

* One watch on ``backend/<type>``: a path below ``<domid>/<devid>`` looks at that device
  only (``xenbus_dev_changed``); anything else rescans the whole directory. Of a known
  device, only the nodes the handshake reacts to (``state``, ``online``, the driver's own,
  e.g. netback's ``hotplug-status``) are read again; the rest (features we wrote) is ignored.
* A device is made from its backend nodes once, when found; the frontend's ring details
  are read only to connect (``connect_ring``), in a second read after the state said so.
* A device found by a watch fire is probed only while Initialising (Linux
  ``xenbus_probe_node``: "Device is not new, so ignore it. This can happen if a device is
  going away after switching to Closed"), so an unregistered device that lingers Closed
  until the toolstack removes it is not probed again.
* Restart (DESIGN.md: backends are restartable and recover from xenstore): the first scan,
  after ``Start``, adopts every device directory it finds, whatever its state. A device
  whose old state shows a ring (Connected or Closing) lost that ring with the old instance:
  its stale Dom0 port is closed (found from the frontend's ``event-channel``) and the
  backend publishes Closed, so the frontend reconnects (protocols/xenbus.py's convention,
  19.4); an unplug in progress (``online``=0) keeps Closing. The old grant maps are not
  known and stay until the frontend domain goes.
* Node writes go through one transaction that first checks ``<be>/state`` still exists
  (Linux ``xenbus_switch_state``), so a device the toolstack removed is never re-created;
  a switch that finds it gone removes the device at once (the watch would, later).
* A frontend whose ring cannot be connected gets ``error`` in the backend directory (Linux
  writes it under ``error/``, where this toolstack does not look) and state Closing
  (``xenbus_dev_fatal``). A frontend that breaks its ring is disconnected at once and its
  backend goes Closing; the frontend's Closed then brings it to Closed.
* Each connection has a number; a result or a broken-ring report for a connection already
  dropped is ignored (a ring mapped for one is released).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter
from collections.abc import Mapping
from typing import Any

from actors.xenbus.backend_driver import RingRequest, XenbusDriver
from actors.xenbus.backend_effects import (CloseStalePort, ConnectRing, Disconnect, Effect,
                                           Hotplug, Note, Probe, Quiesce, ReadDevice, ReadRing,
                                           Remove, Scan, SwitchState, UnwatchOtherend,
                                           WatchBackend, WatchOtherend)
from actors.xenbus.backend_events import (BackendChanged, BackendGone, Close, DeviceRead, Event,
                                          Nodes, OtherendChanged, Probed, RingBroken,
                                          RingConnected, RingConnectFailed, RingRead, Scanned,
                                          Start)
from protocols.errno import XenError
from protocols.xenbus import BackendAction, XenbusState, backend_on_frontend_state
from protocols.xenstore.paths import backend_kind_path, backend_path

_S = XenbusState
_STATS = ("scans", "connects", "disconnects", "errors", "hostile", "recovered")


@dataclasses.dataclass(eq=False)
class BackendDevice:
    """One backend device (Linux ``struct xenbus_device``) as the core knows it."""

    domid: int
    devid: int
    nodename: str  # the backend directory
    otherend: str  # the frontend's directory
    config: Any
    found: XenbusState  # the state in xenstore when this instance found the device
    online: bool  # ``online`` when found
    stale_port: int | None  # the frontend's ``event-channel`` when found
    state: XenbusState = _S.INITIALISING  # ours, as last switched
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # what probe found
    watching: bool = False  # probed and the frontend's state watched; a refused one is not
    conn: int = 0  # the connection being served (0: none)
    connecting: int = 0  # the connection being set up (0: none)
    request: RingRequest | None = None  # what the connection mapped
    local_port: int | None = None

    @property
    def key(self) -> tuple[int, int]:
        return self.domid, self.devid


def parse_state(text: str | None) -> XenbusState:
    """``xenbus_read_driver_state``: Unknown when absent (or not a state)."""
    try:
        return XenbusState.parse(text) if text is not None else _S.UNKNOWN
    except XenError:
        return _S.UNKNOWN


class XenbusBackend:
    """The backend devices of one driver on one host. Change the state only through
    :meth:`handle`; call it from one thread at a time."""

    def __init__(self, driver: XenbusDriver) -> None:
        self.driver = driver
        self.root = backend_kind_path(driver.devicetype)  # Dom0's, as Dom0 runs the backends
        self.devices: dict[tuple[int, int], BackendDevice] = {}
        self.stats: Counter[str] = Counter()
        self._conns = itertools.count(1)
        self._adopt: set[tuple[int, int]] | None = None  # the first scan's, not read yet

    def handle(self, *events: Event) -> list[Effect]:
        effects: list[Effect] = []
        for event in events:
            effects += self._handle(event)
        return effects

    @functools.singledispatchmethod
    def _handle(self, event: Event) -> list[Effect]:
        raise TypeError(f"not a backend event: {event!r}")

    # -- discovery (xenbus_probe_backend) ----------------------------------------------

    @_handle.register
    def _start(self, event: Start) -> list[Effect]:
        return [WatchBackend(self.root, f"backend/{self.driver.devicetype}"), Scan(self.root)]

    @_handle.register
    def _backend_changed(self, event: BackendChanged) -> list[Effect]:
        parts = event.path[len(self.root):].strip("/").split("/")
        if not event.path.startswith(self.root) or len(parts) < 2 or not (
                parts[0].isdigit() and parts[1].isdigit()):
            return [Scan(self.root)]
        key, node = (int(parts[0]), int(parts[1])), "/".join(parts[2:])
        dev = self.devices.get(key)
        if dev is None:
            return [self._read_new(key)]
        if node in ("", "state") or dev.watching and node in ("online",
                                                                *self.driver.watched_keys):
            return [self._read(dev)]
        return []

    @_handle.register
    def _scanned(self, event: Scanned) -> list[Effect]:
        """``xenbus_probe_devices``: drop the devices gone, look at the new ones."""
        self.stats["scans"] += 1
        if self._adopt is None:  # the first: adopt what is there, whatever its state
            self._adopt = set(event.devices - self.devices.keys())
        effects: list[Effect] = []
        for key in [k for k in self.devices if k not in event.devices]:
            effects += self._dev_remove(self.devices[key], "backend directory removed")
        new = sorted(event.devices - self.devices.keys())
        return effects + [self._read_new(key) for key in new]

    def _read_new(self, key: tuple[int, int]) -> ReadDevice:
        return ReadDevice(*key, backend_path(self.driver.devicetype, *key), None,
                          ("state", "frontend", "online", *self.driver.config_keys),
                          ("state", "event-channel"))

    def _read(self, dev: BackendDevice) -> ReadDevice:
        """The nodes the handshake reacts to (only ``state`` of a device not watched)."""
        if not dev.watching:
            return ReadDevice(*dev.key, dev.nodename, dev.otherend, ("state",), ())
        return ReadDevice(*dev.key, dev.nodename, dev.otherend,
                          ("state", "online", *self.driver.watched_keys), ("state",))

    @_handle.register
    def _device_read(self, event: DeviceRead) -> list[Effect]:
        """``xenbus_dev_changed``: a device appeared, changed or went."""
        dev = self.devices.get((event.domid, event.devid))
        if dev is None:
            return self._dev_new(event)
        if "state" not in event.backend:
            return self._dev_remove(dev, "backend directory removed")
        if not dev.watching:
            return []
        return self._frontend_changed(dev, event.backend, event.frontend)

    def _dev_new(self, event: DeviceRead) -> list[Effect]:
        key, backend = (event.domid, event.devid), event.backend
        if "state" not in backend or "frontend" not in backend:
            return []  # not (fully) written yet: a later fire brings the rest
        found = parse_state(backend["state"])
        adopt = self._adopt is not None and key in self._adopt
        if self._adopt is not None:
            self._adopt.discard(key)
        if found != _S.INITIALISING and not adopt:
            return []  # not new: going away after Closed (xenbus_probe_node)
        config = self.driver.device_config(event.domid, event.devid, backend)
        if config is None:
            return []
        port = event.frontend.get("event-channel", "")
        dev = BackendDevice(*key, backend_path(self.driver.devicetype, *key), backend["frontend"],
                            config, found, backend.get("online") == "1",
                            int(port) if port.isdigit() else None)
        self.devices[dev.key] = dev
        return [Probe(*dev.key, config)]

    @_handle.register
    def _probed(self, event: Probed) -> list[Effect]:
        """``xenbus_dev_probe``: InitWait with the features, hotplug, then watch the other
        end. A device an earlier instance had connected is sent to Closed first."""
        dev = self.devices.get((event.domid, event.devid))
        if dev is None or dev.watching:
            return []
        if event.error:
            self.stats["errors"] += 1
            refused = self.driver.refused(dev.config, event.error)
            return [self._note(dev, "cannot be opened", "warning", error=event.error),
                    self._switch_state(dev, _S.CLOSED, refused)]
        dev.info = event.info
        effects: list[Effect] = []
        old = dev.found
        if old in (_S.UNKNOWN, _S.INITIALISING):
            state = _S.INIT_WAIT
        elif old in (_S.CONNECTED, _S.CLOSING):  # a ring we no longer have
            if dev.stale_port is not None:
                effects.append(CloseStalePort(dev.domid, dev.stale_port))
            state = _S.CLOSED if dev.online else _S.CLOSING  # an unplug in progress goes on
            self.stats["recovered"] += 1
        else:
            state = old  # InitWait/Initialised: no ring mapped yet; Closed: stays
        effects.append(self._switch_state(dev, state, self.driver.features(dev.config)))
        hotplug = self.driver.hotplug_nodes(dev.config)
        if hotplug is not None:
            effects += [Hotplug(*dev.key, dev.config), self._switch_state(dev, None, hotplug)]
        dev.watching = True
        return effects + [self._note(dev, "found", state=state.name, was=old.name),
                          WatchOtherend(*dev.key, f"{dev.otherend}/state", self._token(dev))]

    def _token(self, dev: BackendDevice) -> str:
        return f"{self.driver.devicetype}-fe:{dev.domid}/{dev.devid}"

    # -- the handshake (frontend_changed) ----------------------------------------------

    @_handle.register
    def _otherend_changed(self, event: OtherendChanged) -> list[Effect]:
        dev = self.devices.get((event.domid, event.devid))
        return [self._read(dev)] if dev is not None and dev.watching else []

    def _frontend_changed(self, dev: BackendDevice, backend: Nodes, frontend: Nodes
                          ) -> list[Effect]:
        """The frontend's ``state``, the backend's ``online`` and whether hotplug is done:
        do what the state machine says."""
        step = backend_on_frontend_state(dev.state, parse_state(frontend.get("state")),
                                         backend.get("online") == "1",
                                         self.driver.hotplug_ready(backend))
        effects: list[Effect] = []
        match step.action:
            case BackendAction.CONNECT:  # Connected once the ring is (connect_ring, connect)
                effects = self._disconnect(dev)
                dev.connecting = conn = next(self._conns)
                return effects + [ReadRing(*dev.key, conn, dev.nodename, dev.otherend,
                                           self.driver.ring_backend_keys,
                                           self.driver.ring_frontend_keys)]
            case BackendAction.PREPARE_RECONNECT | BackendAction.DISCONNECT:
                effects = self._disconnect(dev)
            case BackendAction.CLOSE:
                if self.driver.closing_disconnects:
                    effects = self._disconnect(dev)
                elif dev.conn:
                    effects = [Quiesce(*dev.key)]
            case BackendAction.UNREGISTER:
                return [self._switch_state(dev, step.state), *self._dev_remove(dev, "unplugged")]
        if step.state != dev.state:  # NONE, or PROBE: probed when found
            effects.append(self._switch_state(dev, step.state))
        return effects

    @_handle.register
    def _ring_read(self, event: RingRead) -> list[Effect]:
        dev = self.devices.get((event.domid, event.devid))
        if dev is None or dev.connecting != event.conn:
            return []
        try:
            request = self.driver.connect_ring(dev.config, event.backend, event.frontend)
        except XenError as e:
            dev.connecting = 0
            return self._dev_fatal(dev, str(e))
        dev.request = request
        return [ConnectRing(*dev.key, event.conn, request.grefs, request.evtchn, request.params)]

    @_handle.register
    def _ring_connected(self, event: RingConnected) -> list[Effect]:
        dev = self.devices.get((event.domid, event.devid))
        if dev is None or dev.connecting != event.conn:  # dropped meanwhile: release it
            return [Disconnect(event.domid, event.devid, event.conn)]
        dev.connecting, dev.conn, dev.local_port = 0, event.conn, event.local_port
        self.stats["connects"] += 1
        request = dev.request
        return [self._note(dev, "connected", grefs=list(request.grefs), evtchn=request.evtchn,
                           local_port=event.local_port),
                self._switch_state(dev, _S.CONNECTED,
                             self.driver.connected_nodes(dev.config, dev.info))]

    @_handle.register
    def _ring_connect_failed(self, event: RingConnectFailed) -> list[Effect]:
        dev = self.devices.get((event.domid, event.devid))
        if dev is None or dev.connecting != event.conn:
            return []
        dev.connecting = 0
        return self._dev_fatal(dev, event.error)

    def _dev_fatal(self, dev: BackendDevice, message: str) -> list[Effect]:
        """``xenbus_dev_fatal``: say why in ``error`` and go Closing."""
        self.stats["errors"] += 1
        return [self._note(dev, "connect failed", "warning", error=message),
                *self._disconnect(dev), self._switch_state(dev, _S.CLOSING, {"error": message})]

    @_handle.register
    def _ring_broken(self, event: RingBroken) -> list[Effect]:
        """The frontend broke its ring: disconnect that device alone, its backend goes
        Closing."""
        dev = self.devices.get((event.domid, event.devid))
        if dev is None or not dev.conn or dev.conn != event.conn:
            return []
        self.stats["hostile"] += 1
        return [self._note(dev, "disconnected: the frontend broke its ring", "warning",
                           reason=event.reason),
                *self._disconnect(dev), self._switch_state(dev, _S.CLOSING)]

    def _disconnect(self, dev: BackendDevice) -> list[Effect]:
        """Drop the connection being served (a connection being set up is forgotten)."""
        dev.connecting = 0
        if not dev.conn:
            return []
        conn, dev.conn, dev.local_port = dev.conn, 0, None
        self.stats["disconnects"] += 1
        return [Disconnect(*dev.key, conn)]

    # -- going away ----------------------------------------------------------------------

    @_handle.register
    def _backend_gone(self, event: BackendGone) -> list[Effect]:
        dev = self.devices.get((event.domid, event.devid))
        return self._dev_remove(dev, "backend directory removed") if dev is not None else []

    def _dev_remove(self, dev: BackendDevice, reason: str) -> list[Effect]:
        """``xenbus_dev_remove``: disconnect, the driver's remove, stop watching."""
        del self.devices[dev.key]
        effects = [*self._disconnect(dev), Remove(*dev.key, dev.config)]
        if dev.watching:
            effects.append(UnwatchOtherend(*dev.key, f"{dev.otherend}/state", self._token(dev)))
        return effects + [self._note(dev, "removed", reason=reason)]

    @_handle.register
    def _close(self, event: Close) -> list[Effect]:
        effects: list[Effect] = []
        for dev in self.devices.values():
            effects += self._disconnect(dev)
        return effects

    def _switch_state(self, dev: BackendDevice, state: XenbusState | None,
                nodes: Mapping[str, str] | None = None) -> SwitchState:
        if state is not None:
            dev.state = state
        return SwitchState(*dev.key, dev.nodename, state, dict(nodes or {}))

    def _note(self, dev: BackendDevice, what: str, level: str = "info", **fields: Any) -> Note:
        """A log line about ``dev`` ("vbd found"), with what the driver says of it."""
        return Note(f"{self.driver.devicetype} {what}",
                    {"domid": dev.domid, "devid": dev.devid,
                     **self.driver.describe(dev.config, dev.info), **fields}, level)

    # -- queries -----------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """The counters, and a row per device (without its rings' counters: the data path
        has those)."""
        return {**{k: self.stats[k] for k in _STATS},
                "devices": [{"domid": d.domid, "devid": d.devid, "state": d.state.name,
                             **self.driver.describe(d.config, d.info),
                             "local_port": d.local_port} for d in self.devices.values()]}
