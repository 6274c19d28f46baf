"""What the xenbus backend core hears (events are data).

The core (:mod:`actors.xenbus.backend`) never reads xenstore or makes a hypercall: its
executor (:mod:`actors.xenbus.backend_io`) turns watch fires into these events, carries out
the effects the core returns, and feeds back what they found (a read's nodes, a ring that
mapped or did not). Every event names its device by ``(domid, devid)``; the results of a
connection's steps carry its number (``conn``), so a result for a connection the core has
since dropped is recognised as stale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

Nodes = Mapping[str, str]  # node name -> value; a node that does not exist is absent


@dataclasses.dataclass(frozen=True, slots=True)
class Start:
    """``xenbus_register_backend``: watch ``backend/<type>`` and look at what is there (also
    after a restart)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """The backend goes away: stop serving every device; xenstore is left as it is."""


@dataclasses.dataclass(frozen=True, slots=True)
class BackendChanged:
    """The watch on ``backend/<type>`` fired for ``path`` (Linux ``backend_changed``)."""

    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class OtherendChanged:
    """The watch on the frontend's ``state`` fired (``xenbus_otherend_changed``)."""

    domid: int
    devid: int


@dataclasses.dataclass(frozen=True, slots=True)
class Scanned:
    """What a :class:`~actors.xenbus.backend_effects.Scan` listed: every ``<domid>/<devid>``
    under ``backend/<type>`` (``xenbus_probe_devices``)."""

    devices: frozenset[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class DeviceRead:
    """The nodes a :class:`~actors.xenbus.backend_effects.ReadDevice` asked for."""

    domid: int
    devid: int
    backend: Nodes
    frontend: Nodes


@dataclasses.dataclass(frozen=True)
class Probed:
    """The driver opened what the device needs (``info``: e.g. blkback's ``sectors``), or
    could not (``error``: why)."""

    domid: int
    devid: int
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""


@dataclasses.dataclass(frozen=True)
class RingRead:
    """The nodes a :class:`~actors.xenbus.backend_effects.ReadRing` asked for
    (``connect_ring``'s reads)."""

    domid: int
    devid: int
    conn: int
    backend: Nodes
    frontend: Nodes


@dataclasses.dataclass(frozen=True, slots=True)
class RingConnected:
    """Connection ``conn``'s rings are mapped, its port bound (Dom0's ``local_port``) and
    served."""

    domid: int
    devid: int
    conn: int
    local_port: int


@dataclasses.dataclass(frozen=True, slots=True)
class RingConnectFailed:
    """Connection ``conn``'s rings could not be mapped, its port bound or the data path
    serve them; nothing is held."""

    domid: int
    devid: int
    conn: int
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class RingBroken:
    """The data path found the frontend breaking connection ``conn``'s ring protocol (a
    ``req_prod`` overflow, a chain it cannot have meant) and stopped serving it."""

    domid: int
    devid: int
    conn: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class BackendGone:
    """A :class:`~actors.xenbus.backend_effects.SwitchState` found the backend directory
    removed and wrote nothing."""

    domid: int
    devid: int


Event = (Start | Close | BackendChanged | OtherendChanged | Scanned | DeviceRead | Probed
         | RingRead | RingConnected | RingConnectFailed | RingBroken | BackendGone)
