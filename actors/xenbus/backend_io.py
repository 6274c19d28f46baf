"""The xenbus backend's executor: the I/O the core asks for, with Dom0's clients.

:class:`BackendIO` is the one place blkback's and netback's control path touch xenstore and
the hypervisor. It turns watch fires into events for the pure core
(:class:`actors.xenbus.backend.XenbusBackend`), carries out the effects the core returns
(reads, transactional writes, watches, ring maps and port binds through
:mod:`actors.xenbus.grant_map`) and feeds back what they found, and hands what serves the
rings to the driver's :class:`DataPath` (blkback's ``ring.py``, netback's ``vif.py``).

One thread at a time runs the core: whichever fed the first event of a burst keeps going
until no event is left, and the others only queue theirs (a watch fire during an effect,
xs_client's first fire in the same thread, just queues too). A fire already queued is not
queued again, so a burst of identical fires (the toolstack's one transaction) costs one
read. The results of an effect are handled before any queued event.
"""

from __future__ import annotations

import collections
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from actors.xenbus.backend import XenbusBackend
from actors.xenbus.backend_effects import (CloseStalePort, ConnectRing, Disconnect, Hotplug,
                                           Note, Probe, Quiesce, ReadDevice, ReadRing, Remove,
                                           Scan, SwitchState, UnwatchOtherend, WatchBackend,
                                           WatchOtherend)
from actors.xenbus.backend_events import (BackendChanged, BackendGone, Close, DeviceRead, Event,
                                          OtherendChanged, Probed, RingBroken, RingConnected,
                                          RingConnectFailed, RingRead, Scanned, Start)
from actors.xenbus.grant_map import GrantMaps, Rings, map_rings, unmap_rings
from protocols.errno import Errno, XenError
from protocols.evtchn import EvtchnStat
from protocols.hypercall import EvtchnOp, Hypercall

Key = tuple[int, int]  # (domid, devid)
RingBrokenFn = Callable[[Key, int, str], None]  # (device, conn, reason)
_FIRES = (BackendChanged, OtherendChanged)  # events a burst may repeat


class DataPath(Protocol):
    """What serves a driver's devices (blkback's ``BlkbackRings``, netback's
    ``NetbackVifs``). The executor calls these under its lock; the data path calls
    ``on_broken(key, conn, reason)`` (set by the executor) when a frontend breaks a ring."""

    on_broken: RingBrokenFn | None

    def probe(self, key: Key, config: Any) -> Mapping[str, Any]:
        """Open what the device needs; OSError/ValueError/XenError: it is refused."""

    def hotplug(self, key: Key, config: Any) -> None:
        """What the hotplug script does (nothing for most drivers)."""

    def connect(self, key: Key, conn: int, rings: Rings, grants: GrantMaps, port: int,
                params: Any) -> None:
        """Serve connection ``conn``: its mapped rings, Dom0's ``port``."""

    def quiesce(self, key: Key) -> None:
        """Take no new requests."""

    def disconnect(self, key: Key) -> None:
        """Stop serving and release the ring views (idempotent); the executor unmaps."""

    def remove(self, key: Key, config: Any) -> None:
        """The device is gone."""

    def statistics(self, key: Key) -> Mapping[str, int]:
        """The device's counters, closed connections' included."""

    def upcall(self, ports: list[int]) -> None:
        """Dom0's ``ports`` fired: serve the rings behind them (not under the executor's
        lock: the shell calls it)."""


class BackendIO:
    """Runs ``core`` for a driver over ``hv`` (Dom0's hypercalls) and ``xs`` (Dom0's xenstore
    client, whose pushed events the owner feeds to ``xs.on_event``) and ``data``."""

    def __init__(self, core: XenbusBackend, hv: Any, xs: Any, data: DataPath,
                 log: Any = None) -> None:
        self.core, self.hv, self.xs, self.data = core, hv, xs, data
        self.log = log if log is not None else structlog.get_logger().bind(
            component=core.driver.devicetype + "back")
        data.on_broken = self.ring_broken
        self._lock = threading.Lock()  # held by the thread running the core
        self._qlock = threading.Lock()
        self._queue: collections.deque[Event] = collections.deque()
        self._queued: set[Event] = set()
        self._held: dict[Key, tuple[int, GrantMaps, Rings, int]] = {}  # conn, maps, rings, port
        self.effect_errors = 0
        self._do: dict[type, Callable[[Any], Event | None]] = {
            WatchBackend: self._watch_backend, WatchOtherend: self._watch_otherend,
            UnwatchOtherend: self._unwatch_otherend, Scan: self._scan,
            ReadDevice: self._read_device, Probe: self._probe, Hotplug: self._hotplug,
            SwitchState: self._switch_state, CloseStalePort: self._close_stale_port,
            ReadRing: self._read_ring, ConnectRing: self._connect_ring, Quiesce: self._quiesce,
            Disconnect: self._disconnect, Remove: self._remove, Note: self._note}

    # -- events in ---------------------------------------------------------------------

    def start(self) -> None:
        """Watch the backend directory and adopt what is there (returns when done)."""
        self.feed(Start(), wait=True)

    def close(self) -> None:
        """Stop serving every device; xenstore is left as is."""
        self.feed(Close(), wait=True)

    def ring_broken(self, key: Key, conn: int, reason: str) -> None:
        self.feed(RingBroken(*key, conn, reason))

    def feed(self, event: Event, wait: bool = False) -> None:
        """Queue ``event`` and run the core unless another thread does (``wait``: until it
        has been handled, unless this thread is the one running the core)."""
        with self._qlock:
            if isinstance(event, _FIRES):
                if event in self._queued:
                    return
                self._queued.add(event)
            self._queue.append(event)
        while self._lock.acquire(blocking=wait):
            try:
                while (event := self._next()) is not None:
                    self._run(event)
            finally:
                self._lock.release()
            with self._qlock:
                if not self._queue:
                    return
            wait = False  # more came: run them unless another thread took over

    def _next(self) -> Event | None:
        with self._qlock:
            if not self._queue:
                return None
            event = self._queue.popleft()
            self._queued.discard(event)
            return event

    def _run(self, event: Event) -> None:
        results = collections.deque([event])
        while results:
            for effect in self.core.handle(results.popleft()):
                try:
                    result = self._do[type(effect)](effect)
                except Exception as e:  # noqa: BLE001 - one failed effect must not stop the rest
                    self.effect_errors += 1
                    self.log.exception("backend effect failed", effect=repr(effect),
                                       error=repr(e))
                    continue
                if result is not None:
                    results.append(result)

    # -- watches and reads ---------------------------------------------------------------

    def _watch_backend(self, e: WatchBackend) -> None:
        self._watch(e.path, e.token, lambda path, _token: self.feed(BackendChanged(path)))

    def _watch_otherend(self, e: WatchOtherend) -> None:
        fired = OtherendChanged(e.domid, e.devid)
        self._watch(e.path, e.token, lambda _path, _token: self.feed(fired))
        self.feed(fired)  # the watch may exist already (a restart): then it did not fire

    def _watch(self, path: str, token: str, callback: Callable[[str, str], None]) -> None:
        try:
            self.xs.watch(path, token, callback)
        except XenError as e:
            if e.errno != Errno.EEXIST:  # our connection's watch survived a restart
                raise

    def _unwatch_otherend(self, e: UnwatchOtherend) -> None:
        try:
            self.xs.unwatch(e.path, e.token)
        except XenError:
            pass

    def _scan(self, e: Scan) -> Scanned:
        found = set()
        for domid in filter(str.isdigit, self._directory(e.path)):
            found.update((int(domid), int(devid)) for devid in
                         filter(str.isdigit, self._directory(f"{e.path}/{domid}")))
        return Scanned(frozenset(found))

    def _read_device(self, e: ReadDevice) -> DeviceRead:
        backend = self._read_nodes(e.nodename, e.backend)
        otherend = e.otherend if e.otherend is not None else backend.get("frontend")
        frontend = self._read_nodes(otherend, e.frontend) if otherend else {}
        return DeviceRead(e.domid, e.devid, backend, frontend)

    def _read_ring(self, e: ReadRing) -> RingRead:
        return RingRead(e.domid, e.devid, e.conn, self._read_nodes(e.nodename, e.backend),
                        self._read_nodes(e.otherend, e.frontend))

    def _read_nodes(self, directory: str, keys: tuple[str, ...]) -> dict[str, str]:
        nodes = {}
        for key in keys:
            try:
                nodes[key] = bytes(self.xs.read(f"{directory}/{key}")).decode()
            except XenError as e:
                if e.errno not in (Errno.ENOENT, Errno.EACCES):
                    raise
        return nodes

    def _directory(self, path: str) -> list[str]:
        try:
            return self.xs.directory(path)
        except XenError as e:
            if e.errno == Errno.ENOENT:
                return []
            raise

    # -- writes --------------------------------------------------------------------------

    def _switch_state(self, e: SwitchState) -> BackendGone | None:
        def body(tx_id: int) -> bool:
            try:
                self.xs.read(f"{e.nodename}/state", tx_id=tx_id)
            except XenError as err:
                if err.errno == Errno.ENOENT:
                    return False
                raise
            for key, value in e.nodes.items():
                self.xs.write(f"{e.nodename}/{key}", value, tx_id=tx_id)
            if e.state is not None:
                self.xs.write(f"{e.nodename}/state", e.state.encode(), tx_id=tx_id)
            return True

        return None if self.xs.transact(body) else BackendGone(e.domid, e.devid)

    # -- the driver ----------------------------------------------------------------------

    def _probe(self, e: Probe) -> Probed:
        try:
            info = self.data.probe((e.domid, e.devid), e.config)
        except (OSError, ValueError, XenError) as err:
            return Probed(e.domid, e.devid, {}, str(err))
        return Probed(e.domid, e.devid, dict(info))

    def _hotplug(self, e: Hotplug) -> None:
        self.data.hotplug((e.domid, e.devid), e.config)

    def _quiesce(self, e: Quiesce) -> None:
        self.data.quiesce((e.domid, e.devid))

    def _remove(self, e: Remove) -> None:
        self.data.remove((e.domid, e.devid), e.config)

    # -- rings and ports -----------------------------------------------------------------

    def _connect_ring(self, e: ConnectRing) -> RingConnected | RingConnectFailed:
        key = (e.domid, e.devid)
        try:
            grants, rings, port = map_rings(self.hv, e.domid, e.grefs, e.evtchn)
        except (XenError, OSError) as err:
            return RingConnectFailed(e.domid, e.devid, e.conn, str(err))
        try:
            self.data.connect(key, e.conn, rings, grants, port, e.params)
        except Exception as err:  # noqa: BLE001 - the driver could not serve it: give it back
            self.log.exception("data path refused the ring", domid=e.domid, devid=e.devid)
            self._release(key, grants, rings, port)
            return RingConnectFailed(e.domid, e.devid, e.conn, f"connect: {err!r}")
        self._held[key] = (e.conn, grants, rings, port)
        return RingConnected(e.domid, e.devid, e.conn, port)

    def _disconnect(self, e: Disconnect) -> None:
        key = (e.domid, e.devid)
        held = self._held.get(key)
        if held is None or held[0] != e.conn:
            return
        del self._held[key]
        _, grants, rings, port = held
        self._release(key, grants, rings, port)

    def _release(self, key: Key, grants: GrantMaps, rings: Rings, port: int) -> None:
        """Stop serving a connection (the data path may hold part of one it refused), close
        Dom0's port, unmap the rings and every grant left mapped."""
        self.data.disconnect(key)
        self._close_port(port)
        unmap_rings(grants, rings)

    def _close_stale_port(self, e: CloseStalePort) -> None:
        """The dead instance's port to this frontend stays bound: find it and close it."""
        try:
            st = self.hv(Hypercall.event_channel_op, EvtchnOp.status, dom=e.domid,
                         port=e.remote_port)
        except XenError:
            return
        if st["status"] == EvtchnStat.interdomain and st["interdomain_dom"] == 0:
            self._close_port(st["interdomain_port"])

    def _close_port(self, port: int) -> None:
        try:
            self.hv(Hypercall.event_channel_op, EvtchnOp.close, port=port)
        except XenError:
            pass

    def _note(self, e: Note) -> None:
        getattr(self.log, e.level)(e.what, **e.fields)

    # -- queries -----------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """The core's counters, a row per device with its rings' counters, their totals."""
        with self._lock:
            stats = self.core.statistics()
            rows, totals = [], Counter()
            for row in stats.pop("devices"):
                counts = self.data.statistics((row["domid"], row["devid"]))
                totals.update(counts)
                rows.append({**row, **counts})
        return {**stats, "effect_errors": self.effect_errors, "totals": dict(totals),
                self.core.driver.devices_key: rows}
