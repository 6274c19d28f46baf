"""blkback's control path: finding vbds in xenstore and running the xenbus handshake.

Linux ``drivers/block/xen-blkback/xenbus.c`` (``xen_blkbk_probe``, ``frontend_changed``,
``connect_ring``, ``connect``, ``xen_blkif_disconnect``) on top of the xenbus core's device
discovery (``xenbus_probe_backend.c``: a watch on ``backend/vbd``, then a look at the device
directory named by each fired path). Reference sections 8.3, 8.4, 10, 19.4, 19.6.

Pure given the injected clients: ``hv`` makes Dom0 hypercalls, ``xs`` is a privileged
xenstore client whose watch events the owner feeds to ``xs.on_event``; the actor only adds
Ray. Every reaction to the frontend goes through
:func:`protocols.xenbus.backend_on_frontend_state`, so spurious and coalesced watch fires are
harmless.

Decisions:

* Restart (DESIGN.md: backends are restartable and recover from xenstore): :meth:`start`
  adopts every device directory it finds. A device whose old state shows a ring (Connected or
  Closing) lost that ring with the old instance: its stale Dom0 port is closed (found with
  ``EVTCHNOP_status`` from the frontend's ``event-channel``) and the backend publishes Closed,
  so the frontend reconnects (protocols/xenbus.py's convention, 19.4); an unplug in progress
  (``online``=0) keeps Closing. The old grant maps are not known and stay until the frontend
  domain goes.
* Node writes go through one transaction that first checks ``<be>/state`` still exists
  (Linux ``xenbus_switch_state``), so a device the toolstack removed is never re-created.
* Failures blkback reports: an image that cannot be opened gets ``hotplug-error`` and
  ``hotplug-status``=error (the hotplug script's nodes) and state Closed; a bad ring
  (unknown ``protocol``, unmappable ``ring-ref``, unbindable port) gets ``error`` in the
  backend directory (Linux writes it under ``error/``, where this toolstack does not look)
  and state Closing (``xenbus_dev_fatal``). A frontend that overflows its ring is disconnected
  at once and its backend goes Closing; the frontend's Closed then brings it to Closed.
* No indirect segments, one ring page, one queue: ``max-ring-page-order``=0 is published and
  ``feature-max-indirect-segments`` / ``multi-queue-max-queues`` are not.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from typing import Any

import structlog

from actors.blkback.ring import BlkbackRing
from actors.blkback.vbd import SECTOR_SIZE, Vbd
from actors.grant_map import GrantMaps
from protocols.blkif import VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE, XEN_IO_PROTO_ABI_X86_64
from protocols.errno import Errno, XenError
from protocols.evtchn import EvtchnStat
from protocols.hypercall import EvtchnOp, Hypercall
from protocols.xenbus import BackendAction, XenbusState, backend_on_frontend_state

BACKEND_ROOT = "/local/domain/0/backend/vbd"
ROOT_TOKEN = "backend/vbd"
FRONTEND_TOKEN = "vbd-fe:"  # + "<domid>/<devid>"
_S = XenbusState


@dataclasses.dataclass(eq=False)
class Device:
    """One vbd (Linux ``struct backend_info`` + ``xen_blkif``)."""

    domid: int
    devid: int
    nodename: str
    frontend: str
    readonly: bool
    state: XenbusState = _S.INITIALISING
    vbd: Vbd | None = None
    ring: BlkbackRing | None = None
    ring_page: memoryview | None = None
    ring_ref: int = 0
    grants: GrantMaps | None = None
    local_port: int | None = None
    closing: bool = False  # Closing: no new requests are taken
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    past: Counter = dataclasses.field(default_factory=Counter)  # stats of closed rings

    @property
    def token(self) -> str:
        return f"{FRONTEND_TOKEN}{self.domid}/{self.devid}"


class Blkback:
    """blkback for one host. Call :meth:`start` once; feed :meth:`upcall` with Dom0's ports."""

    def __init__(self, host: str, hv: Any, xs: Any, log: Any = None) -> None:
        self.host, self.hv, self.xs = host, hv, xs
        self.log = log if log is not None else structlog.get_logger().bind(
            host=host, component="blkback")
        self.lock = threading.RLock()
        self.devices: dict[tuple[int, int], Device] = {}
        self._by_port: dict[int, Device] = {}
        self.stats: Counter[str] = Counter()

    # -- discovery (xenbus_probe_backend) ----------------------------------------------

    def start(self) -> None:
        """Watch ``backend/vbd`` and adopt what is there already (also after a restart)."""
        try:
            self.xs.watch(BACKEND_ROOT, ROOT_TOKEN, self._on_backend_watch)
        except XenError as e:
            if e.errno != Errno.EEXIST:  # our connection's watch survived a restart
                raise
        self.scan()

    def _on_backend_watch(self, path: str, token: str) -> None:
        parts = path[len(BACKEND_ROOT):].strip("/").split("/")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            self._check(int(parts[0]), int(parts[1]))  # xenbus_dev_changed: that device only
        else:
            self.scan()

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
            frontend, params = self._read(f"{nodename}/frontend"), self._read(f"{nodename}/params")
            if state is None or frontend is None or params is None:
                return  # not (fully) written yet: a later fire brings the rest
            mode = self._read(f"{nodename}/mode") or "w"
            dev = Device(domid, devid, nodename, frontend, readonly=not mode.startswith("w"))
            self.devices[(domid, devid)] = dev
            self._adopt(dev, self._parse_state(state), params)

    def _adopt(self, dev: Device, old: XenbusState, params: str) -> None:
        """``xen_blkbk_probe``: open the image, publish features, InitWait; then watch the
        frontend. A device an earlier instance had connected is sent to Closed first."""
        log = self.log.bind(domid=dev.domid, devid=dev.devid)
        try:
            dev.vbd = Vbd(params, readonly=dev.readonly)
        except (OSError, ValueError) as e:
            log.warning("cannot open vbd", params=params, error=str(e))
            self.stats["errors"] += 1
            self._publish(dev, {"hotplug-error": f"{params}: {e}", "hotplug-status": "error"},
                          _S.CLOSED)
            return  # refused: nothing to watch, the toolstack removes it
        nodes = self._features(dev)
        if old in (_S.UNKNOWN, _S.INITIALISING):
            state = _S.INIT_WAIT
        elif old in (_S.CONNECTED, _S.CLOSING):  # a ring we no longer have
            self._close_stale_port(dev)
            online = self._read(f"{dev.nodename}/online") == "1"
            state = _S.CLOSED if online else _S.CLOSING  # an unplug in progress goes on
            self.stats["recovered"] += 1
        else:
            state = old  # InitWait/Initialised: no ring mapped yet; Closed: stays
        self._publish(dev, nodes, state)
        log.info("vbd found", params=params, mode="r" if dev.readonly else "w",
                 sectors=dev.vbd.sectors, state=state.name, was=old.name)
        try:
            self.xs.watch(f"{dev.frontend}/state", dev.token, self._on_frontend_watch)
        except XenError as e:
            if e.errno != Errno.EEXIST:
                raise
        self.frontend_changed(dev)  # in case the watch existed already (no first fire)

    def _features(self, dev: Device) -> dict[str, str]:
        nodes = {"feature-flush-cache": "1", "feature-persistent": "1", "feature-barrier": "0",
                 "max-ring-page-order": "0"}
        if self._read(f"{dev.nodename}/discard-enable") != "0":
            nodes |= {"feature-discard": "1", "discard-granularity": str(SECTOR_SIZE),
                      "discard-alignment": "0", "discard-secure": "0"}
        else:
            nodes["feature-discard"] = "0"
        return nodes

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
        """Read the frontend's ``state`` and ``online``; do what the state machine says."""
        with self.lock:
            if self.devices.get((dev.domid, dev.devid)) is not dev or dev.vbd is None:
                return
            frontend = self._parse_state(self._read(f"{dev.frontend}/state"))
            online = self._read(f"{dev.nodename}/online") == "1"
            step = backend_on_frontend_state(dev.state, frontend, online)
            match step.action:
                case BackendAction.NONE | BackendAction.PROBE:  # probed when adopted
                    pass
                case BackendAction.CONNECT:
                    self._disconnect(dev)
                    try:
                        nodes = self._connect(dev)
                    except XenError as e:
                        self._fatal(dev, str(e))
                        return
                    self._publish(dev, nodes, step.state)
                    return
                case BackendAction.PREPARE_RECONNECT | BackendAction.DISCONNECT:
                    self._disconnect(dev)
                case BackendAction.CLOSE:
                    dev.closing = True
                case BackendAction.UNREGISTER:
                    self._publish(dev, {}, step.state)
                    self._forget(dev, "unplugged")
                    return
            if step.state != dev.state:
                self._publish(dev, {}, step.state)

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
        grants = GrantMaps(self.hv, dev.domid)
        page = grants.map(int(ring_ref), False)
        try:
            port = self.hv(Hypercall.event_channel_op, EvtchnOp.bind_interdomain,
                           remote_dom=dev.domid, remote_port=int(evtchn))["local_port"]
        except XenError:
            grants.unmap(int(ring_ref), page)
            raise
        vbd = dev.vbd
        ring = BlkbackRing(page, vbd, map_grant=grants.map, unmap_grant=grants.unmap,
                           feature_discard=self._read(f"{dev.nodename}/discard-enable") != "0",
                           feature_persistent=persistent)
        with dev.lock:
            dev.ring, dev.ring_page, dev.grants, dev.closing = ring, page, grants, False
            dev.local_port = port
            dev.ring_ref = int(ring_ref)
        self._by_port[port] = dev
        self.stats["connects"] += 1
        self.log.info("vbd connected", domid=dev.domid, devid=dev.devid, ring_ref=int(ring_ref),
                      evtchn=int(evtchn), local_port=port, persistent=persistent)
        removable = self._read(f"{dev.nodename}/removable") == "1"
        cdrom = self._read(f"{dev.nodename}/device-type") == "cdrom"
        info = (VDISK_READONLY * vbd.readonly) | (VDISK_CDROM * cdrom) | \
            (VDISK_REMOVABLE * removable)
        return {"sectors": str(vbd.sectors), "info": str(info), "sector-size": str(SECTOR_SIZE),
                "physical-sector-size": str(SECTOR_SIZE)}

    def _fatal(self, dev: Device, message: str) -> None:
        """``xenbus_dev_fatal``: say why in ``error`` and go Closing."""
        self.stats["errors"] += 1
        self.log.warning("vbd connect failed", domid=dev.domid, devid=dev.devid, error=message)
        self._disconnect(dev)
        self._publish(dev, {"error": message}, _S.CLOSING)

    def _disconnect(self, dev: Device) -> None:
        """``xen_blkif_disconnect``: close the port, drop the ring and its grants (idempotent)."""
        with dev.lock:
            ring, page, grants, port = dev.ring, dev.ring_page, dev.grants, dev.local_port
            dev.ring = dev.ring_page = dev.grants = dev.local_port = None
            if ring is not None:
                dev.past.update(dataclasses.asdict(ring.statistics()))
                ring.close()
        if port is not None:
            self._by_port.pop(port, None)
            try:
                self.hv(Hypercall.event_channel_op, EvtchnOp.close, port=port)
            except XenError:
                pass
        if grants is not None:
            if page is not None:
                grants.unmap(dev.ring_ref, page)
            grants.unmap_all()
            self.stats["disconnects"] += 1

    def _forget(self, dev: Device, reason: str) -> None:
        self._disconnect(dev)
        self.devices.pop((dev.domid, dev.devid), None)
        if dev.vbd is not None:
            dev.vbd.close()
            try:
                self.xs.unwatch(f"{dev.frontend}/state", dev.token)
            except XenError:
                pass
        self.log.info("vbd removed", domid=dev.domid, devid=dev.devid, reason=reason)

    def _publish(self, dev: Device, nodes: dict[str, str], state: XenbusState) -> None:
        """Write ``nodes`` and ``state`` in one transaction, unless the directory is gone."""
        def body(tx_id: int) -> bool:
            try:
                self.xs.read(f"{dev.nodename}/state", tx_id=tx_id)
            except XenError as e:
                if e.errno == Errno.ENOENT:
                    return False
                raise
            for key, value in nodes.items():
                self.xs.write(f"{dev.nodename}/{key}", value, tx_id=tx_id)
            self.xs.write(f"{dev.nodename}/state", state.encode(), tx_id=tx_id)
            return True

        dev.state = state
        self.xs.transact(body)

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

    def _hostile(self, dev: Device, reason: str) -> None:
        with self.lock:
            if self.devices.get((dev.domid, dev.devid)) is not dev:
                return
            self.stats["hostile"] += 1
            self.log.warning("frontend broke its ring: disconnected", domid=dev.domid,
                             devid=dev.devid, reason=reason)
            self._disconnect(dev)
            self._publish(dev, {}, _S.CLOSING)

    # -- queries -----------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        with self.lock:
            devices, totals = [], Counter()
            for dev in self.devices.values():
                ring = Counter(dev.past)
                if dev.ring is not None:
                    ring.update(dataclasses.asdict(dev.ring.statistics()))
                totals.update(ring)
                devices.append({"domid": dev.domid, "devid": dev.devid, "state": dev.state.name,
                                "params": dev.vbd.path if dev.vbd else None,
                                "sectors": dev.vbd.sectors if dev.vbd else 0,
                                "local_port": dev.local_port, **ring})
            return {**{k: self.stats[k] for k in ("scans", "connects", "disconnects", "errors",
                                                  "hostile", "recovered")},
                    "totals": dict(totals), "devices": devices}

    def close(self) -> None:
        """Stop serving every device (the backend is going away); xenstore is left as is."""
        with self.lock:
            for dev in list(self.devices.values()):
                self._disconnect(dev)
