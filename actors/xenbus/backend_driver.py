"""What a backend driver tells the xenbus backend core (Linux ``struct xenbus_driver`` and
the reads and writes of its ``probe``, ``connect_ring`` and ``connect``).

A driver (blkback's and netback's ``xenbus.py``) subclasses :class:`XenbusDriver` with
pure decisions only: which backend nodes make a device, its features, what the hotplug
script reports, how the frontend's ring details read and when they are refused, what is
published once connected. What opens a device and serves its rings is the driver's data
path (:class:`actors.xenbus.backend_io.DataPath`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from actors.xenbus.backend_events import Nodes


@dataclasses.dataclass(frozen=True)
class RingRequest:
    """What a driver's ``connect_ring`` read: the ring pages, the frontend's port and the
    driver's own connection parameters."""

    grefs: tuple[int, ...]
    evtchn: int
    params: Any = None


class XenbusDriver:
    """A backend driver's own decisions (Linux ``struct xenbus_driver`` and what its probe
    and connect read and publish). Pure; subclassed by blkback's and netback's ``xenbus``."""

    devicetype: ClassVar[str]  # "vbd", "vif": the directory under ``backend/``
    devices_key: ClassVar[str] = "devices"  # the device list's name in statistics
    config_keys: ClassVar[tuple[str, ...]] = ()  # backend nodes a device is made from
    watched_keys: ClassVar[tuple[str, ...]] = ()  # backend nodes that re-run frontend_changed
    ring_backend_keys: ClassVar[tuple[str, ...]] = ()  # what connect_ring reads, backend
    ring_frontend_keys: ClassVar[tuple[str, ...]] = ()  # and frontend
    closing_disconnects: ClassVar[bool] = False  # frontend Closing: disconnect, or quiesce

    def device_config(self, domid: int, devid: int, backend: Nodes) -> Any | None:
        """The device from its backend nodes; None while they are not all written."""
        return ()

    def features(self, config: Any) -> Mapping[str, str]:
        """The nodes probe publishes (``feature-*``)."""
        return {}

    def refused(self, config: Any, error: str) -> Mapping[str, str]:
        """The nodes published, with Closed, for a device probe could not open."""
        return {"error": error}

    def hotplug_nodes(self, config: Any) -> Mapping[str, str] | None:
        """What the hotplug script writes once it ran; None: the driver has no hotplug."""
        return None

    def hotplug_ready(self, backend: Nodes) -> bool:
        """Whether Connected may be entered yet (netback's ``backend_switch_state`` wait)."""
        return True

    def connect_ring(self, config: Any, backend: Nodes, frontend: Nodes) -> RingRequest:
        """``connect_ring``: the frontend's ring details; XenError if they are refused."""
        raise NotImplementedError

    def connected_nodes(self, config: Any, info: Mapping[str, Any]) -> Mapping[str, str]:
        """The nodes published with Connected (blkback's ``sectors``, ``info``...)."""
        return {}

    def describe(self, config: Any, info: Mapping[str, Any]) -> dict[str, Any]:
        """The device's own fields, for the log and statistics."""
        return {}
