"""netback's shell: the only netback file that knows about Ray.

A xenbus backend shell (actors/xenbus/backend_shell.py: Dom0's credential on its own
endpoint ``<host>/netback``, the shared core and executor, restart recovery) with netback's
driver (xenbus.py) and, as the data path, vif.py's :class:`NetbackVifs` on the host's bridges
(actors/hostnet/). A restarted netback also reads its peers back from xenstore.

The inter-host network: ``set_peers`` gives every bridge an uplink per peer host; frames
for host X wait in the :class:`UplinkSender` until their link delivers them, then go one-way
to ``<X>/netback`` as ``frames(this host, bridge, [frame, ...])``. ``set_link`` shapes a
link, ``set_link_fault`` puts a fault on top of that shaping (or takes it off), and
``set_partition`` cuts this host off from the hosts it names, both ways. The peers are kept
in xenstore (``uplink.save_peers``), so a restarted netback rejoins the mesh as it was,
partition and faults included. One Ray call carries a batch, and calls may run on the
actor's several threads, so frames can arrive reordered, as on a real network. Threads and
timers (the sender, the credit timers) come from ``runtime``.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import ray

from actors.hostnet.link import LinkSpec
from actors.hostnet.uplink import (CAPTURE_MAX, HostBridges, Peer, UplinkSender, load_peers,
                                   save_peers)
from actors.netback.vif import NetbackVifs
from actors.netback.xenbus import NetbackDriver
from actors.runtime import THREADS, Runtime
from actors.transport.clients import HostClients
from actors.transport.naming import actor_name
from actors.transport.raycall import RayEndpoint
from actors.xenbus.backend_shell import BackendShell, backend_clients

LINK_COUNTS = (("frames", "sent"), ("lost", "lost"), ("duplicated", "duplicated"),
               ("reordered", "reordered"), ("partitioned", "partitioned"))  # row <- Link's


class NetbackShell(BackendShell):
    """netback and the host's uplinks over Dom0's clients on endpoint ``<host>/netback`` (the
    in-process test host runs this very class; :class:`NetbackActor` is it as a Ray actor)."""

    component = "netback"

    def __init__(self, host: str, clients: HostClients, log: Any,
                 runtime: Runtime = THREADS) -> None:
        self.host, self.transport = host, clients.transport
        self.bridges = HostBridges()
        self.vifs = NetbackVifs(clients.hv, self.bridges, runtime)
        super().__init__(clients, log, NetbackDriver(), self.vifs)
        self.sender = UplinkSender(self._send, log=self.log, runtime=runtime)
        self._peers_lock = threading.Lock()  # control calls may come on several threads
        self.peers: dict[str, Peer] = load_peers(self.xs)
        self._apply_peers()
        self.start()

    def _send(self, host: str, bridge: str, frames: list[bytes]) -> None:
        self.transport.send(actor_name(host, "netback"), "frames", self.host, bridge, frames)

    def on_statistics(self) -> dict[str, Any]:
        return {**super().on_statistics(), **self.bridges.bridge_statistics(),
                "uplinks": self.sender.statistics()}

    # -- the cluster's network -------------------------------------------------------------

    def on_set_peers(self, hosts: list[str]) -> None:
        """The other hosts of the cluster: an uplink to each (a new one unshaped; a known
        one keeps its link, fault and partition)."""
        with self._peers_lock:
            self.peers = {h: self.peers.get(h, Peer()) for h in hosts if h != self.host}
            self._apply_peers()

    def on_set_link(self, host: str, spec: dict[str, Any]) -> None:
        """Shape the link from here to ``host`` (``LinkSpec`` fields); a fault on it stays
        on top."""
        self._change_peer(host, base=LinkSpec.from_dict(spec))

    def on_set_link_fault(self, host: str, spec: dict[str, Any] | None) -> None:
        """Put a fault (``LinkSpec`` fields) on top of the link to ``host``'s shaping, in
        place of any before; None takes it off, which gives the shaping back."""
        self._change_peer(host, fault=None if spec is None else LinkSpec.from_dict(spec))

    def on_set_partition(self, blocked_hosts: list[str]) -> None:
        """Cut this host off from ``blocked_hosts``, both ways, and from no other: frames to
        and from them are dropped (counted ``partitioned``). ``[]`` heals."""
        blocked = set(blocked_hosts)
        with self._peers_lock:
            unknown = blocked - set(self.peers)
            if unknown:
                raise ValueError(f"{self.host} has no uplink to {', '.join(sorted(unknown))}")
            self.peers = {h: dataclasses.replace(p, blocked=h in blocked)
                          for h, p in self.peers.items()}
            self._apply_peers()

    def _change_peer(self, host: str, **change: Any) -> None:
        with self._peers_lock:
            if host not in self.peers:
                raise ValueError(f"{self.host} has no uplink to {host!r}")
            self.peers = {**self.peers, host: dataclasses.replace(self.peers[host], **change)}
            self._apply_peers()

    def on_links(self) -> dict[str, dict[str, Any]]:
        """Each uplink: what it does now (the ``LinkSpec`` fields), its ``base`` shaping and
        ``fault``, whether it is ``blocked`` by a partition, and what met it: frames sent,
        lost, duplicated, reordered, and partitioned (either way)."""
        stats = self.sender.statistics()["links"]
        return {h: {**dataclasses.asdict(p.spec), "base": dataclasses.asdict(p.base),
                    "fault": None if p.fault is None else dataclasses.asdict(p.fault),
                    "blocked": p.blocked,
                    **{k: stats.get(h, {}).get(name, 0) for k, name in LINK_COUNTS}}
                for h, p in self.peers.items()}

    def _apply_peers(self) -> None:
        """Under the lock (or in __init__): keep the peers and hand them to the uplinks."""
        save_peers(self.xs, self.peers)
        self.sender.set_links({h: p.spec for h, p in self.peers.items()},
                              [h for h, p in self.peers.items() if p.blocked])
        self.bridges.set_peers(self.sender.submit, self.peers)

    def on_frames(self, from_host: str, bridge: str, frames: list[bytes]) -> None:
        if self.sender.admit(from_host, len(frames)):
            self.bridges.from_uplink(bridge, from_host, frames)

    def on_capture_start(self, bridge: str, limit: int = CAPTURE_MAX) -> int:
        return self.bridges.capture_start(bridge, limit)

    def on_capture_read(self, capture_id: int) -> list[list]:
        return self.bridges.capture_read(capture_id)

    def on_capture_stop(self, capture_id: int) -> None:
        self.bridges.capture_stop(capture_id)

    def close(self) -> None:
        self.sender.close()
        super().close()


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class NetbackActor(RayEndpoint, NetbackShell):
    def __init__(self, host: str, dom0_secret: str, log_dir: str | None) -> None:
        super().__init__(host, *backend_clients(host, dom0_secret, self.component,
                                                self.deliver, log_dir))
