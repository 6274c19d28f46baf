"""Host crashes: noticing them, fencing the host, and saying so.

A host is dead when its Ray node is (Ray's GCS stops hearing its raylet: about 2 s with the
embedded cluster's health-check settings) or when its hypervisor is: Xen's hypervisor going
down is the machine going down, with every domain on it. A dead host is **fenced**
(DESIGN.md's failure semantics): its actors are killed without restart, every process of its
Ray node still on this machine is SIGKILLed (found by its raylet's pid:
:mod:`cluster.fault.processes`), its files are removed, and the cluster's registry frees its
names and remembers it as dead with the domains lost. Until then, a lost host's domain
processes would run on, unmanaged, a split brain; afterwards no domain runs where xenray says
it does not, and ``list`` and ``info`` name the dead host instead of hanging on it.

A frozen or busy hypervisor (no answer within the probe's timeout) is not dead: a freeze is
healed by SIGCONT, and fencing a host that is only slow would be a lie.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Protocol

from actors.transport import PeerGone
from actors.transport.naming import CLUSTER, actor_name
from cluster.fault.processes import kill_all, node_processes
from cluster.hosts import remove_host_files


class Cluster(Protocol):
    """What the watch needs of :class:`cluster.api.Cluster` (which holds a watch)."""

    hosts: list[str]
    run_id: str
    run_dir: str
    _transport: Any

    def _call(self, host: str, component: str, kind: str, *args: Any) -> Any: ...
    def _progress(self, message: str) -> None: ...
    def raylet_pid(self, host: str) -> int: ...
    def learn_raylet(self, host: str, pid: int) -> None: ...

PERIOD_S = 1.0  # how often the watch looks
PROBE_TIMEOUT_S = 5.0  # a hypervisor slower than this is busy or frozen, not dead


@dataclasses.dataclass
class Fence:
    """What fencing one host did."""

    host: str
    why: str
    at: float
    actors: list[str]
    killed: list[int]
    unreachable: bool  # its processes could not be looked for (its raylet's pid unknown)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fence(cluster: Cluster, host: str, why: str) -> Fence:
    """Fence ``host`` (see the module's docstring) and tell the registry."""
    from actors.transport import launch

    actors = launch.kill_host(host)  # first, so that Ray restarts none of them
    raylet = cluster.raylet_pid(host)
    procs = node_processes(raylet)
    killed = kill_all(procs)
    deadline = time.monotonic() + 5  # SIGKILL is delivered at once, the exit takes a moment
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    remove_host_files(host, run_id=cluster.run_id, run_dir=cluster.run_dir)
    done = Fence(host, why, time.time(), actors, killed, unreachable=not raylet)
    cluster._call(CLUSTER, "registry", "host_lost", host, done.as_dict())
    return done


class HostWatch:
    """A thread that looks at every host each :data:`PERIOD_S` and fences the dead ones."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.fenced: dict[str, Fence] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-watch", daemon=True)

    def start(self) -> HostWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(PERIOD_S):
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 - the watch goes on (Ray may be stopping)
                self.cluster._progress(f"host watch: {e}")

    def check(self) -> list[Fence]:
        """Look at every host not yet fenced once; fence the dead ones."""
        from cluster.runtime import discover_hosts

        alive = set(discover_hosts())
        done = []
        for host in self.cluster.hosts:
            if host in self.fenced or self._stop.is_set():
                continue
            why = None
            if host not in alive:
                why = "its Ray node is gone"
            elif not self._hypervisor_alive(host):
                why = "its hypervisor died"
            if why is not None:
                self.fenced[host] = fence(self.cluster, host, why)
                done.append(self.fenced[host])
                self.cluster._progress(f"host {host} is dead ({why}): fenced")
        return done

    def _hypervisor_alive(self, host: str) -> bool:
        try:
            answer = self.cluster._transport.call(actor_name(host, "hypervisor"), "process",
                                                  timeout=PROBE_TIMEOUT_S)
        except PeerGone:
            return False
        except TimeoutError:
            return True
        self.cluster.learn_raylet(host, answer.get("raylet_pid", 0))
        return True
