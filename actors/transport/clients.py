"""What every process of an emulated host holds: its clients, under its own endpoint.

A real Dom0 runs xenstored, xenconsoled, blkback, netback and xl as separate processes that
each open ``/dev/xen/privcmd`` and ``/dev/xen/evtchn`` and talk to xenstore, and a DomU's
kernel does the same through its hypercall page and xenbus; here each is an actor, and this
is the one place that turns (host, domid, secret, component) into its transport (the
same-host pipe to its hypervisor, Ray for the rest), hypercall client and xenstore
client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from actors.transport import Transport
from actors.transport.hypercall_client import Credential, HypercallClient
from actors.transport.naming import actor_name
from actors.transport.raycall import RayTransport
from actors.transport.samehost import SameHostTransport
from actors.transport.xs_client import XsClient


@dataclasses.dataclass(frozen=True)
class HostClients:
    """A process's endpoint and what it talks through: the transport, its hypercall client
    and its xenstore client (all over that transport)."""

    endpoint: str
    transport: Transport
    hv: HypercallClient
    xs: XsClient

    @classmethod
    def over(cls, transport: Transport, host: str, domid: int, secret: str,
             endpoint: str) -> HostClients:
        """The clients of ``endpoint`` (of domain ``domid`` on ``host``) over ``transport``."""
        cred = Credential(domid, secret, endpoint)
        return cls(endpoint, transport,
                   HypercallClient(transport, actor_name(host, "hypervisor"), cred),
                   XsClient(transport, host, domid, secret, endpoint))


def host_clients(host: str, domid: int, secret: str, component: str,
                 deliver: Callable[..., Any], log: Any = None,
                 fallback: Transport | None = None) -> HostClients:
    """The clients of ``component`` ("blkback", "dom3") of domain ``domid`` on ``host``;
    upcalls and vCPU gates the hypervisor posts on its pipe go to ``deliver`` (the
    actor's own). What is not a hypercall goes by ``fallback``: Ray unless said otherwise
    (a forked domain's goes through its fork server, ``actors.transport.relay``)."""
    endpoint = actor_name(host, component)
    transport = SameHostTransport(actor_name(host, "hypervisor"),
                                  Credential(domid, secret, endpoint), deliver,
                                  fallback or RayTransport(), log=log)
    return HostClients.over(transport, host, domid, secret, endpoint)
