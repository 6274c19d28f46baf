"""Starting and stopping actors by kind: the one place that knows every actor's Ray class.

The toolstack starts a domain's actor, and ``cluster.hosts`` starts a host's hypervisor and
Dom0 daemons, without importing the actor classes themselves (an actor package never reaches
into another): they name the *kind* and this module imports its shell on first use. Every
actor is detached, named ``<host>/<component>`` in :data:`~.naming.NAMESPACE` and pinned to its
host (:mod:`.naming`), so any process finds it by name and it outlives whoever started it.
"""

from __future__ import annotations

import importlib
from typing import Any

import ray

from actors.transport.naming import NAMESPACE, actor_name, pin_to_host
from actors.transport.raycall import remember

ACTOR_CLASSES = {
    "hypervisor": "actors.hypervisor.actor:HypervisorActor",
    "xenstored": "actors.xenstored.actor:XenstoredActor",
    "xenconsoled": "actors.console.actor:ConsoleActor",
    "blkback": "actors.blkback.actor:BlkbackActor",
    "netback": "actors.netback.actor:NetbackActor",
    "xl": "actors.toolstack.actor:ToolstackActor",
    "domain": "actors.domain.actor:DomainActor",
    "forkserver": "actors.forkserver.actor:ForkServerActor",
    "registry": "actors.registry.actor:RegistryActor",
}


def _actor_class(kind: str) -> Any:
    module, _, name = ACTOR_CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def start(kind: str, host: str, component: str, *args: Any) -> Any:
    """Start actor ``<host>/<component>`` of ``kind`` with constructor ``args``; its handle.

    ``ValueError`` if an actor of that name is alive (Ray names are unique while alive)."""
    cls = _actor_class(kind)
    handle = cls.options(name=actor_name(host, component), namespace=NAMESPACE,
                         lifetime="detached", **pin_to_host(host)).remote(*args)
    remember(actor_name(host, component), handle)
    return handle


def ask(handle: Any, kind: str, *args: Any, timeout: float | None = None) -> Any:
    """``deliver(kind, *args)`` on a handle :func:`start` returned, waiting for the answer."""
    return ray.get(handle.deliver.remote(kind, *args), timeout=timeout)


def ask_all(calls: list[tuple[Any, str, tuple]], timeout: float | None = None) -> list[Any]:
    """Several :func:`ask` at once (``(handle, kind, args)`` each), answers in order."""
    return ray.get([h.deliver.remote(kind, *args) for h, kind, args in calls], timeout=timeout)


def find(host: str, component: str) -> Any | None:
    """The handle of actor ``<host>/<component>``, or None if there is none."""
    try:
        return ray.get_actor(actor_name(host, component), namespace=NAMESPACE)
    except ValueError:
        return None


def kill(host: str, component: str) -> bool:
    """SIGKILL actor ``<host>/<component>`` (no restart); False if there is none."""
    handle = find(host, component)
    if handle is None:
        return False
    ray.kill(handle, no_restart=True)
    return True


def named(host: str, prefix: str = "") -> list[str]:
    """The components of ``host``'s live named actors whose component starts with
    ``prefix`` (``named("h1", "vm-")``: its domain processes), sorted."""
    start = f"{host}/{prefix}"
    return sorted(a["name"][len(host) + 1:]
                  for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith(start))


def kill_host(host: str) -> list[str]:
    """``ray.kill`` (no restart) every named actor of ``host``: its Dom0 daemons, its domains,
    its hypervisor. Ray's GCS carries this out even when the host's node is gone, so that no
    restartable daemon comes back on a host declared dead. The names killed."""
    return [actor_name(host, c) for c in named(host) if kill(host, c)]
