"""The launcher of a Ray host: domain processes started ahead of need and kept topped up.

LightVM (SOSP'17) keeps creation flat by doing, before a request arrives, everything that
does not depend on the domain. Here that is starting the process that will run a domain's
vCPUs: a Ray worker takes about 2 s to start and import the kernel on this machine, and a
create used to wait for it. A host's agent keeps ``size`` :class:`DomainActor` s started and
idle (``<host>/vm-<hex>``); a create takes one and binds it to the domain in milliseconds,
and a thread starts its replacement. When the pool is empty (a burst larger than it), a
create starts its own process, as before: slower, never failing for want of one. The
process is taken before xenstored is introduced to the domain (its endpoint is where the
domain's watch events go) and bound to the domain when its vCPUs are handed over.

An idle pooled process costs what any Ray worker costs (``xenray bench scale`` measures
it), so the pool is small by default. The pool's processes are named actors: a restarted
agent finds them again, keeps those that run the domains it adopted, and kills the rest (the
idle ones, and one bound to a domain that was half built when the agent died).
"""

from __future__ import annotations

import collections
import secrets
import threading
from typing import Any

from actors.runtime import THREADS, Runtime
from actors.transport import launch
from actors.transport.naming import DOMAIN_PREFIX, actor_name
from actors.transport.raycall import RayTransport

START_TIMEOUT_S = 60.0
RETRY_S = 1.0  # after a start that failed
WARM_PEERS = ("hypervisor", "xenstored")  # who calls a domain's process by its name
PARALLEL_STARTS = 1  # processes started at once to top the pool up: each takes a core for
# about a second, and two at once on a 2-core machine stalled running guests long enough to
# lose packets (CI, twice)


class DomainPool:
    """:class:`~actors.toolstack.actor.Launcher` of a Ray host: each domain in a
    ``DomainActor`` of its own, taken from ``size`` started ahead."""

    def __init__(self, host: str, log_dir: str | None, size: int, runtime: Runtime = THREADS) -> None:
        self.host, self.log_dir, self.size = host, log_dir, size
        self._idle: collections.deque[str] = collections.deque()  # started, answering
        self._domains: dict[int, str] = {}  # domid -> the component of its process
        self._starting = 0
        self._cv = threading.Condition()
        self._closed = False
        self.taken = self.missed = 0  # creates served from the pool, and without it
        self.runtime = runtime
        self._routes = RayTransport()

    # -- Launcher --------------------------------------------------------------------------

    def take(self, domid: int) -> str:
        """A started process for domain ``domid`` (from the pool, or started now): its
        endpoint, which xenstored is told before the process runs the domain."""
        component = self._take()
        with self._cv:
            self._domains[domid] = component
        return actor_name(self.host, component)

    def start(self, domid: int, secret: str, memory_path: str, resume: bool = False) -> int:
        """Bind the process taken for ``domid`` to it; its pid."""
        with self._cv:
            component = self._domains[domid]
        return launch.ask(launch.find(self.host, component), "bind", domid, secret,
                          memory_path, resume, timeout=START_TIMEOUT_S)

    def kill(self, domid: int) -> None:
        with self._cv:
            component = self._domains.pop(domid, None)
        if component is not None:
            launch.kill(self.host, component)

    def adopt(self, endpoints: dict[int, str]) -> None:
        """The agent (re)started and knows its domains: the processes of those it adopted
        (domid -> endpoint) are theirs again, every other process of the host's pool is
        killed (a dead agent's idle ones, or one bound to a half-built domain), and the
        pool starts filling."""
        keep = {endpoint.partition("/")[2]: domid for domid, endpoint in endpoints.items()}
        for component in launch.named(self.host, DOMAIN_PREFIX):
            if component in keep:
                with self._cv:
                    self._domains[keep[component]] = component
            else:
                launch.kill(self.host, component)
        self.runtime.spawn(self._top_up, name="xl-domain-pool")

    def close(self) -> None:
        """Stop topping up, and kill the idle processes (the host is going away)."""
        with self._cv:
            self._closed = True
            idle, self._idle = list(self._idle), collections.deque()
            self._cv.notify_all()
        for component in idle:
            launch.kill(self.host, component)

    def statistics(self) -> dict[str, Any]:
        with self._cv:
            return {"launcher": "ray", "size": self.size, "idle": list(self._idle),
                    "starting": self._starting,
                    "taken": self.taken, "missed": self.missed}

    # -- the pool --------------------------------------------------------------------------

    def _take(self) -> str:
        with self._cv:
            if self._idle:
                self.taken += 1
                component = self._idle.popleft()
                self._cv.notify_all()  # the top-up thread starts its replacement
                return component
            self.missed += 1
        return self._spawn()  # none ready: this create starts its own

    def _spawn(self) -> str:
        """Start one process and wait until it answers; its component."""
        component = DOMAIN_PREFIX + secrets.token_hex(4)
        try:
            handle = launch.start("domain", self.host, component, self.host, component,
                                  self.log_dir)
            launch.ask(handle, "process", timeout=START_TIMEOUT_S)
        except BaseException:
            launch.kill(self.host, component)
            raise
        for peer in WARM_PEERS:  # they will call it as a domain: their lookup, done now
            self._routes.send(actor_name(self.host, peer), "prefetch",
                              actor_name(self.host, component))
        return component

    def _top_up(self) -> None:
        """Keep ``size`` processes idle or starting, at most :data:`PARALLEL_STARTS` at a
        time (on a small machine a burst of starts would slow the guests already running)."""
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or (
                    len(self._idle) + self._starting < self.size
                    and self._starting < PARALLEL_STARTS))
                if self._closed:
                    return
                self._starting += 1
            self.runtime.spawn(self._start_one, name="xl-domain-pool-start")

    def _start_one(self) -> None:
        try:
            component = self._spawn()
        except Exception:  # Ray refuses for now (the node is going away): try again later
            component = None
        with self._cv:
            if component is None:
                self._cv.wait_for(lambda: self._closed, RETRY_S)
            self._starting -= 1
            if component is not None and not self._closed:
                self._idle.append(component)
                component = None
            self._cv.notify_all()
        if component is not None:  # closed meanwhile
            launch.kill(self.host, component)
