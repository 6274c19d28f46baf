"""What every Dom0 process holds: Dom0's credential under its own endpoint.

A real Dom0 runs xenstored, xenconsoled, blkback and xl as separate processes that each open
``/dev/xen/privcmd`` and ``/dev/xen/evtchn`` and talk to xenstore; here each is an actor, and
this is the one place that turns (host, Dom0's secret, component) into its clients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from actors.fastpath import SameHostTransport
from actors.hypercall_client import Credential, HypercallClient
from actors.transport import RayTransport
from actors.xs_client import XsClient
from cluster.runtime import actor_name


@dataclasses.dataclass(frozen=True)
class Dom0Clients:
    endpoint: str
    transport: SameHostTransport
    hv: HypercallClient
    xs: XsClient


def dom0_clients(host: str, dom0_secret: str, component: str,
                 deliver: Callable[..., Any], log: Any = None) -> Dom0Clients:
    """Transport, hypercall client and xenstore client for Dom0's ``component`` on ``host``;
    upcalls the hypervisor posts on its channel go to ``deliver`` (the actor's own)."""
    endpoint = actor_name(host, component)
    hypervisor = actor_name(host, "hypervisor")
    cred = Credential(0, dom0_secret, endpoint)
    transport = SameHostTransport(hypervisor, cred, deliver, RayTransport(), log=log)
    hv = HypercallClient(transport, hypervisor, cred)
    return Dom0Clients(endpoint, transport, hv,
                       XsClient(transport, host, 0, dom0_secret, endpoint))
