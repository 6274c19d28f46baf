"""The xenbus backend core (actors/xenbus/backend.py), pure: events in, the exact effects out.

Each test feeds a list of events, as the executor would after watch fires and effects, and
asserts the whole list of effects that comes back (dask's ``test_worker_state_machine``
style), with blkback's and netback's real drivers. Log lines (``Note``) are left out except
where a test is about them. Reference 8.3, 8.4, 9, 10, 19.2, 19.4, 19.6.
"""

from actors.blkback.xenbus import BlkbackDriver, BlkifParams, VbdConfig
from actors.netback.xenbus import FEATURES, NetbackDriver, VifConfig, VifParams
from actors.xenbus.backend import XenbusBackend
from actors.xenbus.backend_effects import (CloseStalePort, ConnectRing, Disconnect, Hotplug,
                                           Note, Probe, Quiesce, ReadDevice, ReadRing, Remove,
                                           Scan, SwitchState, UnwatchOtherend, WatchBackend,
                                           WatchOtherend)
from actors.xenbus.backend_events import (BackendChanged, BackendGone, Close, DeviceRead,
                                          OtherendChanged, Probed, RingBroken, RingConnected,
                                          RingConnectFailed, RingRead, Scanned, Start)
from protocols.xenbus import XenbusState

S = XenbusState
ROOT = "/local/domain/0/backend/vbd"
KEY = (3, 51712)
BE, FE = f"{ROOT}/3/51712", "/local/domain/3/device/vbd/51712"
TOKEN = "vbd-fe:3/51712"
CONFIG = VbdConfig("/img/a.img", readonly=False)
FEATURES_VBD = BlkbackDriver().features(CONFIG)
READ_NEW = ReadDevice(*KEY, BE, None, ("state", "frontend", "online", *BlkbackDriver.config_keys),
                      ("state", "event-channel"))
READ = ReadDevice(*KEY, BE, FE, ("state", "online"), ("state",))  # what the handshake reacts to
RING_KEYS = ("ring-ref", "event-channel", "protocol", "feature-persistent")
RING = {"ring-ref": "8", "event-channel": "5", "protocol": "x86_64-abi",
        "feature-persistent": "1"}
CONNECTED_NODES = {"sectors": "2048", "info": "0", "sector-size": "512",
                   "physical-sector-size": "512"}


def handle(core: XenbusBackend, *events) -> list:
    """The effects of ``events``, log lines left out."""
    return [e for e in core.handle(*events) if not isinstance(e, Note)]


def backend_nodes(state: str = "1", online: str = "1") -> dict[str, str]:
    """The backend directory as the toolstack wrote it (reference 8.3)."""
    return {"state": state, "frontend": FE, "online": online, "params": "/img/a.img",
            "mode": "w"}


def frontend(fe_state: S, online: str = "1", **backend: str) -> DeviceRead:
    """A read of the nodes the handshake reacts to: the frontend in ``fe_state`` (and the
    backend's ``state`` as the toolstack may have written it)."""
    return DeviceRead(*KEY, {"state": "2", "online": online, **backend},
                      {"state": str(int(fe_state))})


def started(core: XenbusBackend, *devices: tuple[int, int]) -> XenbusBackend:
    core.handle(Start(), Scanned(frozenset(devices)))
    return core


def probed(state: str = "1") -> XenbusBackend:
    """blkback with the vbd found (by the first scan) and probed: InitWait, watching."""
    core = started(XenbusBackend(BlkbackDriver()), KEY)
    core.handle(DeviceRead(*KEY, backend_nodes(state), {"state": "1"}),
                Probed(*KEY, {"sectors": 2048}))
    return core


def connected() -> XenbusBackend:
    """blkback with the vbd Connected on connection 1, Dom0's port 17."""
    core = probed()
    core.handle(frontend(S.INITIALISED), RingRead(*KEY, 1, {}, RING), RingConnected(*KEY, 1, 17))
    return core


def device(core: XenbusBackend) -> dict:
    [row] = core.statistics()["devices"]
    return row


# -- discovery (xenbus_probe_backend) -----------------------------------------------------

def test_xenbus_probe_start_watches_the_backend_directory_then_reads_each_device_it_lists():
    core = XenbusBackend(BlkbackDriver())
    assert core.handle(Start()) == [WatchBackend(ROOT, "backend/vbd"), Scan(ROOT)]
    other = ReadDevice(3, 51728, f"{ROOT}/3/51728", None, READ_NEW.backend, READ_NEW.frontend)
    assert core.handle(Scanned(frozenset({(3, 51728), KEY}))) == [READ_NEW, other]
    assert core.statistics()["scans"] == 1


def test_xenbus_dev_probe_waits_for_the_nodes_then_probes_publishes_init_wait_and_watches():
    core = started(XenbusBackend(BlkbackDriver()))
    assert core.handle(BackendChanged(f"{BE}/params")) == [READ_NEW]
    assert core.handle(DeviceRead(*KEY, {"params": "/img/a.img"}, {})) == []  # not all written
    assert core.handle(DeviceRead(*KEY, backend_nodes(), {"state": "1"})) == [Probe(*KEY, CONFIG)]
    assert core.handle(Probed(*KEY, {"sectors": 2048})) == [
        SwitchState(*KEY, BE, S.INIT_WAIT, FEATURES_VBD),
        Note("vbd found", {"domid": 3, "devid": 51712, "params": "/img/a.img", "mode": "w",
                           "sectors": 2048, "state": "INIT_WAIT", "was": "INITIALISING"}),
        WatchOtherend(*KEY, f"{FE}/state", TOKEN)]
    assert core.handle(OtherendChanged(*KEY)) == [READ]  # the watch's first fire
    assert core.handle(frontend(S.INITIALISING)) == []


def test_xenbus_probe_node_ignores_a_device_found_later_that_is_not_initialising():
    """Linux ``xenbus_probe_node``: "Device is not new, so ignore it" (one going away after
    Closed); only the first scan adopts devices in other states (a restart)."""
    core = started(XenbusBackend(BlkbackDriver()))
    assert core.handle(BackendChanged(f"{BE}/state")) == [READ_NEW]
    assert core.handle(DeviceRead(*KEY, backend_nodes("6"), {"state": "6"})) == []
    assert core.devices == {}


def test_blkback_10_an_image_that_cannot_be_opened_gets_hotplug_error_and_closed():
    core = started(XenbusBackend(BlkbackDriver()))
    core.handle(DeviceRead(*KEY, backend_nodes(), {"state": "1"}))
    assert handle(core, Probed(*KEY, error="No such file")) == [
        SwitchState(*KEY, BE, S.CLOSED, {"hotplug-error": "/img/a.img: No such file",
                                         "hotplug-status": "error"})]
    assert core.statistics()["errors"] == 1
    assert handle(core, OtherendChanged(*KEY)) == []  # refused: the frontend is not watched
    assert handle(core, BackendChanged(f"{BE}/state")) == [
        ReadDevice(*KEY, BE, FE, ("state",), ())]  # only whether it is gone
    assert handle(core, DeviceRead(*KEY, {}, {})) == [Remove(*KEY, CONFIG)]


# -- the handshake (frontend_changed) ------------------------------------------------------

def test_blkback_8_4_frontend_initialised_maps_the_ring_then_publishes_connected():
    core = probed()
    assert handle(core, frontend(S.INITIALISED)) == [
        ReadRing(*KEY, 1, BE, FE, (), RING_KEYS)]
    assert handle(core, RingRead(*KEY, 1, {}, RING)) == [
        ConnectRing(*KEY, 1, (8,), 5, BlkifParams(persistent=True, discard=True))]
    assert handle(core, RingConnected(*KEY, 1, 17)) == [
        SwitchState(*KEY, BE, S.CONNECTED, CONNECTED_NODES)]
    assert device(core)["local_port"] == 17 and device(core)["state"] == "CONNECTED"
    assert core.statistics()["connects"] == 1


def test_xenbus_19_6_spurious_and_repeated_watch_fires_ask_for_nothing_new():
    core = connected()
    assert handle(core, OtherendChanged(*KEY)) == [READ]
    assert handle(core, frontend(S.CONNECTED)) == []  # the same nodes read again
    assert handle(core, frontend(S.CONNECTED)) == []
    assert handle(core, BackendChanged(f"{BE}/sectors")) == []  # a node we wrote
    assert handle(core, BackendChanged(f"{BE}/state")) == [READ]
    assert handle(core, BackendChanged(f"{ROOT}/3")) == [Scan(ROOT)]  # not one device
    assert handle(core, Scanned(frozenset({KEY}))) == []  # nothing new, nothing gone
    assert device(core)["local_port"] == 17 and core.statistics()["connects"] == 1


def test_blkback_19_6_a_skipped_initialised_still_connects():
    """Two fires in close succession read once: the frontend is already Connected."""
    core = probed()
    assert handle(core, frontend(S.CONNECTED)) == [ReadRing(*KEY, 1, BE, FE, (), RING_KEYS)]


def test_xenbus_10_frontend_directory_gone_unregisters():
    core = connected()
    assert handle(core, DeviceRead(*KEY, {"state": "4", "online": "1"}, {})) == [
        SwitchState(*KEY, BE, S.CLOSED), Disconnect(*KEY, 1), Remove(*KEY, CONFIG),
        UnwatchOtherend(*KEY, f"{FE}/state", TOKEN)]


def test_blkback_8_3_a_frontend_protocol_it_cannot_serve_is_xenbus_dev_fatal():
    core = probed()
    handle(core, frontend(S.INITIALISED))
    assert handle(core, RingRead(*KEY, 1, {}, {**RING, "protocol": "x86_32-abi"})) == [
        SwitchState(*KEY, BE, S.CLOSING, {"error": "ENOSYS: unknown fe protocol x86_32-abi"})]
    assert core.statistics()["errors"] == 1 and core.statistics()["connects"] == 0


def test_xenbus_map_ring_failure_is_xenbus_dev_fatal():
    core = probed()
    handle(core, frontend(S.INITIALISED), RingRead(*KEY, 1, {}, RING))
    assert handle(core, RingConnectFailed(*KEY, 1, "EINVAL: gref 8: GNTST -4")) == [
        SwitchState(*KEY, BE, S.CLOSING, {"error": "EINVAL: gref 8: GNTST -4"})]
    assert handle(core, frontend(S.INITIALISED)) == []  # Closing waits for the frontend


# -- restart (DESIGN.md: backends recover from xenstore) -----------------------------------

def test_xenbus_19_4_restart_adopts_a_connected_vbd_closes_its_stale_port_and_goes_closed():
    core = started(XenbusBackend(BlkbackDriver()), KEY)
    assert handle(core, DeviceRead(*KEY, backend_nodes("4"),
                                   {"state": "4", "event-channel": "5"})) == [Probe(*KEY, CONFIG)]
    assert handle(core, Probed(*KEY, {"sectors": 2048})) == [
        CloseStalePort(3, 5), SwitchState(*KEY, BE, S.CLOSED, FEATURES_VBD),
        WatchOtherend(*KEY, f"{FE}/state", TOKEN)]
    assert core.statistics()["recovered"] == 1
    assert handle(core, frontend(S.CONNECTED)) == []  # its old ring is not adopted
    assert handle(core, frontend(S.INITIALISING)) == [SwitchState(*KEY, BE, S.INIT_WAIT)]


def test_xenbus_19_4_restart_during_an_unplug_keeps_closing_then_unregisters():
    core = started(XenbusBackend(BlkbackDriver()), KEY)
    handle(core, DeviceRead(*KEY, backend_nodes("5", online="0"),
                            {"state": "4", "event-channel": "5"}))
    assert handle(core, Probed(*KEY, {"sectors": 2048})) == [
        CloseStalePort(3, 5), SwitchState(*KEY, BE, S.CLOSING, FEATURES_VBD),
        WatchOtherend(*KEY, f"{FE}/state", TOKEN)]
    assert handle(core, frontend(S.CLOSED, online="0")) == [
        SwitchState(*KEY, BE, S.CLOSED), Remove(*KEY, CONFIG),
        UnwatchOtherend(*KEY, f"{FE}/state", TOKEN)]


def test_xenbus_restart_keeps_a_device_that_had_no_ring_in_its_state():
    core = probed("2")  # InitWait when the old instance died: nothing was mapped
    assert core.statistics()["recovered"] == 0 and device(core)["state"] == "INIT_WAIT"


# -- a hostile ring (19.2) -----------------------------------------------------------------

def test_xenbus_19_2_hostile_ring_disconnects_that_device_and_goes_closing():
    core = connected()
    assert handle(core, RingBroken(*KEY, 2, "req_prod overflow")) == []  # not this connection
    assert handle(core, RingBroken(*KEY, 1, "req_prod overflow")) == [
        Disconnect(*KEY, 1), SwitchState(*KEY, BE, S.CLOSING)]
    assert core.statistics()["hostile"] == 1 and device(core)["local_port"] is None
    assert handle(core, RingBroken(*KEY, 1, "req_prod overflow")) == []  # told twice
    assert handle(core, frontend(S.CLOSED)) == [SwitchState(*KEY, BE, S.CLOSED)]
    assert handle(core, frontend(S.INITIALISING)) == [SwitchState(*KEY, BE, S.INIT_WAIT)]
    assert handle(core, frontend(S.INITIALISED)) == [ReadRing(*KEY, 2, BE, FE, (), RING_KEYS)]


# -- unplug and removal (10) ---------------------------------------------------------------

def test_xenbus_10_unplug_online_0_then_frontend_closed_unregisters():
    core = connected()
    assert handle(core, BackendChanged(f"{BE}/online")) == [READ]
    assert handle(core, frontend(S.CONNECTED, online="0", state="5")) == []
    assert handle(core, frontend(S.CLOSING, online="0")) == [
        Quiesce(*KEY), SwitchState(*KEY, BE, S.CLOSING)]  # blkback: no new requests
    assert handle(core, frontend(S.CLOSED, online="0")) == [
        SwitchState(*KEY, BE, S.CLOSED), Disconnect(*KEY, 1), Remove(*KEY, CONFIG),
        UnwatchOtherend(*KEY, f"{FE}/state", TOKEN)]
    assert core.devices == {}
    # Its own write fires the watch: the device lingering Closed is not probed again.
    assert handle(core, BackendChanged(f"{BE}/state")) == [READ_NEW]
    assert handle(core, DeviceRead(*KEY, backend_nodes("6", online="0"), {"state": "6"})) == []


def test_xenbus_switch_state_finding_the_directory_removed_removes_the_device():
    """The toolstack removed the directory while a switch was pending: the switch wrote
    nothing (BackendGone); the device goes, and a ring set up meanwhile is released."""
    core = probed()
    assert handle(core, frontend(S.INITIALISED)) == [ReadRing(*KEY, 1, BE, FE, (), RING_KEYS)]
    assert handle(core, BackendGone(*KEY)) == [
        Remove(*KEY, CONFIG), UnwatchOtherend(*KEY, f"{FE}/state", TOKEN)]
    assert handle(core, RingRead(*KEY, 1, {}, RING)) == []
    assert handle(core, RingConnected(*KEY, 1, 17)) == [Disconnect(*KEY, 1)]
    assert handle(core, BackendChanged(BE)) == [READ_NEW]  # the removal's own fire
    assert handle(core, DeviceRead(*KEY, {}, {})) == []


def test_xenbus_backend_directory_removed_disconnects_and_removes():
    core = connected()
    assert handle(core, BackendChanged(BE)) == [READ]
    assert handle(core, DeviceRead(*KEY, {}, {"state": "4"})) == [
        Disconnect(*KEY, 1), Remove(*KEY, CONFIG), UnwatchOtherend(*KEY, f"{FE}/state", TOKEN)]
    assert core.statistics()["disconnects"] == 1


def test_xenbus_scan_drops_the_devices_gone():
    core = connected()
    assert handle(core, Scanned(frozenset())) == [
        Disconnect(*KEY, 1), Remove(*KEY, CONFIG), UnwatchOtherend(*KEY, f"{FE}/state", TOKEN)]


def test_xenbus_close_disconnects_every_connected_device_and_leaves_xenstore():
    core = connected()
    assert handle(core, Close()) == [Disconnect(*KEY, 1)]
    assert handle(core, Close()) == []


# -- netback's part (9) ------------------------------------------------------------------

NET_ROOT = "/local/domain/0/backend/vif"
VIF, VBE, VFE = (3, 0), f"{NET_ROOT}/3/0", "/local/domain/3/device/vif/0"
VIF_CONFIG = VifConfig("xenbr1", "vif3.0")
NET_RING_KEYS = ("request-rx-copy", "tx-ring-ref", "rx-ring-ref", "event-channel")


def vif_read(fe_state: S, hotplug: str = "connected", online: str = "1") -> DeviceRead:
    return DeviceRead(*VIF, {"state": "2", "online": online, "hotplug-status": hotplug},
                      {"state": str(int(fe_state))})


def netback() -> XenbusBackend:
    """netback with vif 0 of domain 3 (on xenbr1) found and probed."""
    core = started(XenbusBackend(NetbackDriver()), VIF)
    core.handle(DeviceRead(*VIF, {"state": "1", "frontend": VFE, "online": "1",
                                  "bridge": "xenbr1"}, {"state": "1"}))
    return core


def test_netback_9_hotplug_runs_after_init_wait_and_connected_waits_for_hotplug_status():
    core = netback()
    assert handle(core, Probed(*VIF, {})) == [
        SwitchState(*VIF, VBE, S.INIT_WAIT, FEATURES), Hotplug(*VIF, VIF_CONFIG),
        SwitchState(*VIF, VBE, None, {"hotplug-status": "connected"}),
        WatchOtherend(*VIF, f"{VFE}/state", "vif-fe:3/0")]
    assert handle(core, vif_read(S.CONNECTED, hotplug="")) == []  # held back
    assert handle(core, BackendChanged(f"{VBE}/hotplug-status")) == [
        ReadDevice(*VIF, VBE, VFE, ("state", "online", "hotplug-status"), ("state",))]
    assert handle(core, vif_read(S.CONNECTED)) == [
        ReadRing(*VIF, 1, VBE, VFE, ("rate",), NET_RING_KEYS)]
    ring = {"request-rx-copy": "1", "tx-ring-ref": "8", "rx-ring-ref": "9",
            "event-channel": "5"}
    assert handle(core, RingRead(*VIF, 1, {"rate": "2000,50000"}, ring)) == [
        ConnectRing(*VIF, 1, (8, 9), 5, VifParams("2000,50000"))]
    assert handle(core, RingConnected(*VIF, 1, 11)) == [SwitchState(*VIF, VBE, S.CONNECTED)]


def test_netback_9_a_frontend_without_request_rx_copy_is_refused_eopnotsupp():
    core = netback()
    handle(core, Probed(*VIF, {}), vif_read(S.CONNECTED))
    ring = {"tx-ring-ref": "8", "rx-ring-ref": "9", "event-channel": "5"}
    assert handle(core, RingRead(*VIF, 1, {}, ring)) == [SwitchState(
        *VIF, VBE, S.CLOSING,
        {"error": "EOPNOTSUPP: request-rx-copy is not 1: netback only copies into rx buffers"})]


def test_netback_10_frontend_closing_disconnects_at_once():
    core = netback()
    handle(core, Probed(*VIF, {}), vif_read(S.CONNECTED),
           RingRead(*VIF, 1, {}, {"request-rx-copy": "1", "tx-ring-ref": "8",
                                  "rx-ring-ref": "9", "event-channel": "5"}),
           RingConnected(*VIF, 1, 11))
    assert handle(core, vif_read(S.CLOSING)) == [
        Disconnect(*VIF, 1), SwitchState(*VIF, VBE, S.CLOSING)]
    assert handle(core, vif_read(S.CLOSED)) == [SwitchState(*VIF, VBE, S.CLOSED)]
    assert handle(core, vif_read(S.CLOSED, online="0")) == [
        SwitchState(*VIF, VBE, S.CLOSED), Remove(*VIF, VIF_CONFIG),
        UnwatchOtherend(*VIF, f"{VFE}/state", "vif-fe:3/0")]
