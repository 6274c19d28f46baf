"""What the xenbus backend core asks its executor to do (effects are data).

The core (:mod:`actors.xenbus.backend`) decides; :mod:`actors.xenbus.backend_io` carries
these out in order with Dom0's hypercall and xenstore clients and the driver's data path.
Effects that find something (a listing, nodes, a probe, a ring that mapped or did not, a
directory that is gone) answer with an event (:mod:`actors.xenbus.backend_events`). A
device's ``config`` and a connection's ``params`` are the driver's own frozen values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from protocols.xenbus import XenbusState


@dataclasses.dataclass(frozen=True, slots=True)
class WatchBackend:
    """Watch ``backend/<type>`` (an existing watch, from before a restart, is fine)."""

    path: str
    token: str


@dataclasses.dataclass(frozen=True, slots=True)
class WatchOtherend:
    """``watch_otherend``: watch the frontend's ``state``. Its first fire, or one made up
    when the watch existed already, is an :class:`OtherendChanged` for the device."""

    domid: int
    devid: int
    path: str
    token: str


@dataclasses.dataclass(frozen=True, slots=True)
class UnwatchOtherend:
    """``free_otherend_watch``."""

    domid: int
    devid: int
    path: str
    token: str


@dataclasses.dataclass(frozen=True, slots=True)
class Scan:
    """List ``<domid>/<devid>`` under ``path``; answers :class:`Scanned`."""

    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class ReadDevice:
    """Read ``backend`` nodes under ``nodename`` and ``frontend`` nodes under ``otherend``
    (None: the path the backend's ``frontend`` node names); answers :class:`DeviceRead`."""

    domid: int
    devid: int
    nodename: str
    otherend: str | None
    backend: tuple[str, ...]
    frontend: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Probe:
    """The driver's probe: open what the device needs; answers :class:`Probed`."""

    domid: int
    devid: int
    config: Any


@dataclasses.dataclass(frozen=True)
class Hotplug:
    """What the hotplug script does for the device (netback: ``vif-bridge online``)."""

    domid: int
    devid: int
    config: Any


@dataclasses.dataclass(frozen=True)
class SwitchState:
    """``xenbus_switch_state``: write ``nodes`` then ``state`` (None: only the nodes) in one
    transaction, and only if ``<nodename>/state`` still exists (a device the toolstack
    removed is never re-created); answers :class:`BackendGone` if it does not."""

    domid: int
    devid: int
    nodename: str
    state: XenbusState | None
    nodes: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class CloseStalePort:
    """A dead instance of this backend left Dom0's end of an interdomain channel to
    ``remote_port`` of ``domid`` bound: find it (``EVTCHNOP_status``) and close it."""

    domid: int
    remote_port: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReadRing:
    """``connect_ring``'s reads for connection ``conn``: ``backend`` nodes under
    ``nodename``, ``frontend`` nodes under ``otherend``; answers :class:`RingRead`."""

    domid: int
    devid: int
    conn: int
    nodename: str
    otherend: str
    backend: tuple[str, ...]
    frontend: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ConnectRing:
    """``xenbus_map_ring_valloc`` of ``grefs`` and ``bind_interdomain`` to ``evtchn``, all or
    nothing, then serve the rings with ``params``; answers :class:`RingConnected` or
    :class:`RingConnectFailed`."""

    domid: int
    devid: int
    conn: int
    grefs: tuple[int, ...]
    evtchn: int
    params: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Quiesce:
    """The frontend is Closing: take no new requests; the ring stays until disconnected."""

    domid: int
    devid: int


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnect:
    """Stop serving connection ``conn``, close its port, unmap its rings and every grant its
    requests left mapped (nothing if that connection is not the one held)."""

    domid: int
    devid: int
    conn: int


@dataclasses.dataclass(frozen=True)
class Remove:
    """The driver's ``remove``: the device is gone (its rings already released)."""

    domid: int
    devid: int
    config: Any


@dataclasses.dataclass(frozen=True)
class Note:
    """A log line: ``what`` at ``level``, with ``fields``."""

    what: str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    level: str = "info"


Effect = (WatchBackend | WatchOtherend | UnwatchOtherend | Scan | ReadDevice | Probe | Hotplug
          | SwitchState | CloseStalePort | ReadRing | ConnectRing | Quiesce | Disconnect
          | Remove | Note)
