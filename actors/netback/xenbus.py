"""netback's control path: the vif's own part of the xenbus handshake.

Linux ``drivers/net/xen-netback/xenbus.c`` (``netback_probe``, ``connect``,
``read_xenbus_vif_flags``, ``backend_switch_state``, ``hotplug_status_changed``) plus when
the hotplug script runs and what it reports (``tools/hotplug/Linux/vif-bridge``), as a
:class:`~actors.xenbus.backend.XenbusDriver` of the xenbus backend core
(actors/xenbus/backend.py: discovery by a watch on ``backend/vif``, restart recovery,
transactional node writes, ``xenbus_dev_fatal``). Pure; the vifs' rings, their bridge ports
and the credit timer are the data path's (vif.py). Reference sections 9, 10, 19.2,
19.4-19.6.

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
* ``rate`` is read when the vif connects (``xen_net_read_rate`` in ``connect``).
* Bridges live in the netback process: after a restart they are rebuilt as the vifs are
  adopted (the hotplug step runs again). Uplinks (``uplink:<host>``) join other hosts'
  bridges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from actors.xenbus.backend_driver import Nodes, RingRequest, XenbusDriver
from protocols.errno import Errno, XenError

DEFAULT_BRIDGE = "xenbr0"
FEATURES = {"feature-sg": "0", "feature-rx-copy": "1", "feature-rx-flip": "0"}


@dataclasses.dataclass(frozen=True, slots=True)
class VifConfig:
    """What the toolstack wrote for one vif that netback needs before it connects."""

    bridge: str
    name: str  # the bridge port, as Linux names the vif's net device: vif<domid>.<devid>


@dataclasses.dataclass(frozen=True, slots=True)
class VifParams:
    """What ``connect`` read that the rings need: the backend's ``rate`` ("bytes,usec")."""

    rate: str | None = None


class NetbackDriver(XenbusDriver):
    devicetype = "vif"
    devices_key = "vifs"
    config_keys = ("bridge",)
    watched_keys = ("hotplug-status",)
    ring_backend_keys = ("rate",)
    ring_frontend_keys = ("request-rx-copy", "tx-ring-ref", "rx-ring-ref", "event-channel")
    closing_disconnects = True

    def device_config(self, domid: int, devid: int, backend: Nodes) -> VifConfig:
        return VifConfig(backend.get("bridge") or DEFAULT_BRIDGE, f"vif{domid}.{devid}")

    def features(self, config: VifConfig) -> Mapping[str, str]:
        """``netback_probe``'s nodes."""
        return FEATURES

    def hotplug_nodes(self, config: VifConfig) -> dict[str, str]:
        """``vif-bridge online`` reports success."""
        return {"hotplug-status": "connected"}

    def hotplug_ready(self, backend: Nodes) -> bool:
        return backend.get("hotplug-status") == "connected"

    def connect_ring(self, config: VifConfig, backend: Nodes, frontend: Nodes) -> RingRequest:
        """``connect``: check ``request-rx-copy`` (``read_xenbus_vif_flags``), both rings, the
        port (one, not split), the rate."""
        if frontend.get("request-rx-copy") != "1":
            raise XenError(Errno.EOPNOTSUPP, "request-rx-copy is not 1: netback only copies "
                                             "into rx buffers")
        refs = [frontend.get(key, "") for key in ("tx-ring-ref", "rx-ring-ref",
                                                  "event-channel")]
        if not all(v.isdigit() for v in refs):
            raise XenError(Errno.EINVAL, "reading tx-ring-ref, rx-ring-ref and event-channel")
        tx_ref, rx_ref, evtchn = map(int, refs)
        return RingRequest((tx_ref, rx_ref), evtchn, VifParams(backend.get("rate")))

    def describe(self, config: VifConfig, info: Mapping[str, Any]) -> dict[str, Any]:
        return {"bridge": config.bridge, "port": config.name}
