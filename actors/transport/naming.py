"""Where actors live and what every xenray process shares: names, placement, Ray's environment.

Each emulated Xen host is one Ray node carrying the label ``xen-host=<name>`` and the custom
resource ``xen-host-<name>``; every actor of that host is pinned to it with that resource
(``num_cpus=0``), because soft node affinity does not guarantee placement (ray-notes.md).
Actors are named ``<host>/<component>`` (``h1/hypervisor``, ``h1/dom3``, and
``cluster/registry`` for the cluster's own services, on the head node) in one namespace, so
any process finds them by name.

Ray reads some settings when it is first imported (``RAY_ENABLE_UV_RUN_RUNTIME_ENV``, the
authentication token) and others when a node starts, so :func:`ray_environment` is called
once, first thing, by every process that starts or joins a cluster (the daemon of ``xenray
up``, the Cluster API, the demo and benchmarks, the tests); the raylets and workers it starts
inherit it. Values a user has already exported win.

Closed to strangers (DESIGN.md "Security"): a local cluster (``local=True``, the embedded
default) binds every Ray server to loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray
resolve this machine to 127.0.0.1; the nodes are started with ``node_ip_address=127.0.0.1``),
and every cluster runs Ray's token authentication: a process that does not hold the token is
refused by each Ray server. A local cluster's token is made here, once per process, and only
ever kept in the environment of the processes that start and join it (or, for the daemon of
``xenray up``, in a 0600 file in ``$XENRAY_HOME``). Joining a cluster on other machines needs
its token in ``RAY_AUTH_TOKEN_PATH`` (or ``RAY_AUTH_TOKEN``).

Noise: a DomU killed on purpose is a dead Ray worker, which Ray announces on the driver's
stdout ("A worker died or was killed ..."), and a host being stopped has one-way calls in
flight to its restartable daemons, which Ray announces as retried; those two messages are
filtered (Ray's log dedup skip regex), nothing else.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

NAMESPACE = "xenray"
HOST_LABEL = "xen-host"
CLUSTER = "cluster"  # the pseudo-host of the cluster's own services (the name registry)
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's resource of the head node
LOOPBACK = "127.0.0.1"

RAY_ENV = {
    "RAY_AUTH_MODE": "token",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",  # no re-packaging of this project per worker
    "RAY_worker_maximum_startup_concurrency": "64",
    "RAY_DEDUP_LOGS": "1",  # the skip regex below works only with dedup on
    # Ray's words for what xenray does on purpose: a DomU's process killed (a crash), a
    # restartable daemon's pending one-way calls retried while it is stopped.
    "RAY_DEDUP_LOGS_SKIP_REGEX": ("A worker died or was killed while executing"
                                  "|There are infinite retries remaining"),
}
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # this machine is 127.0.0.1 to Ray
TOKEN_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class NoToken(Exception):
    """Joining a cluster on other machines without its authentication token."""


def ray_environment(*, local: bool = True) -> dict[str, str]:
    """Set the environment every xenray process shares (before ``import ray``); returns it.

    ``local``: the cluster runs on this machine only (loopback), and a token is made for it
    if none is set. Otherwise the token must already be in the environment."""
    env = {**RAY_ENV, **(LOCAL_ENV if local else {})}
    missing = [key for key in env if key not in os.environ]
    if missing and "ray" in sys.modules:
        raise RuntimeError(f"ray was imported before xenray set {', '.join(missing)}: call "
                           "actors.transport.naming.ray_environment() (the Cluster API, the "
                           "CLI and the tests do) before anything imports ray")
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if os.environ["RAY_AUTH_MODE"] == "token" and not any(os.environ.get(v) for v in TOKEN_VARS):
        if not local:
            raise NoToken("joining a Ray cluster on other machines needs its token: set "
                          "RAY_AUTH_TOKEN_PATH to the cluster's token file")
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # Ray's own generator's format
    return {key: os.environ[key] for key in env}


def host_resource(host: str) -> str:
    return f"xen-host-{host}"


def pin_to_host(host: str) -> dict[str, Any]:
    """Actor options that place an actor on ``host``'s node and nowhere else (the head node
    for :data:`CLUSTER`, which runs no domains)."""
    resource = HEAD_NODE_RESOURCE if host == CLUSTER else host_resource(host)
    return {"num_cpus": 0, "resources": {resource: 0.001}}


DOMAIN_PREFIX = "vm-"  # the components of a host's domain processes: vm-<hex>
FORKSERVER = "forkserver"  # the component of a host's fork server (actors.forkserver)


def actor_name(host: str, component: str) -> str:
    """The Ray name of a host's actor, e.g. ``h1/hypervisor`` or ``h1/dom3``."""
    return f"{host}/{component}"


def forked_component(component: str) -> str:
    """The component of a forked domain process ``vm-1a2b`` (under its host's fork server):
    its endpoint is ``h1/forkserver/vm-1a2b``, which no Ray actor bears."""
    return f"{FORKSERVER}/{component}"


def relayed(dest: str) -> tuple[str, str] | None:
    """A forked domain process's endpoint (``h1/forkserver/vm-1a2b``) as the Ray name of the
    fork server that relays to it and its component there (``h1/forkserver``, ``vm-1a2b``);
    None for a Ray actor's name."""
    host, _, rest = dest.partition("/")
    server, sep, component = rest.partition("/")
    return (f"{host}/{server}", component) if sep else None
