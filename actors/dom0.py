"""What every Dom0 process holds: Dom0's credential under its own endpoint.

A real Dom0 runs xenstored, xenconsoled, blkback and xl as separate processes that each open
``/dev/xen/privcmd`` and ``/dev/xen/evtchn`` and talk to xenstore; here each is an actor, and
this is the one place that turns (host, Dom0's secret, component) into its clients.
"""

from __future__ import annotations

import dataclasses

from actors.hypercall_client import Credential, HypercallClient
from actors.transport import RayTransport
from actors.xs_client import XsClient
from cluster.runtime import actor_name


@dataclasses.dataclass(frozen=True)
class Dom0Clients:
    endpoint: str
    transport: RayTransport
    hv: HypercallClient
    xs: XsClient


def dom0_clients(host: str, dom0_secret: str, component: str) -> Dom0Clients:
    """Transport, hypercall client and xenstore client for Dom0's ``component`` on ``host``."""
    endpoint = actor_name(host, component)
    transport = RayTransport()
    hv = HypercallClient(transport, actor_name(host, "hypervisor"),
                         Credential(0, dom0_secret, endpoint))
    return Dom0Clients(endpoint, transport, hv,
                       XsClient(transport, host, 0, dom0_secret, endpoint))
