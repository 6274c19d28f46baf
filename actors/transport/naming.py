"""Where actors live and what every xenray process shares: names, placement, Ray's environment.

Each emulated Xen host is one Ray node carrying the label ``xen-host=<name>`` and the custom
resource ``xen-host-<name>``; every actor of that host is pinned to it with that resource
(``num_cpus=0``), because soft node affinity does not guarantee placement (ray-notes.md).
Actors are named ``<host>/<component>`` (``h1/hypervisor``, ``h1/dom3``, and
``cluster/registry`` for the cluster's own services, on the head node) in one namespace, so
any process finds them by name.

Ray reads some settings when it is first imported (``RAY_ENABLE_UV_RUN_RUNTIME_ENV``) and
others when a node starts, so :func:`ray_environment` is called once, first thing, by every
process that starts or joins a cluster (the CLI, the daemon, the Cluster API, the tests); the
raylets and workers it starts inherit it. Values a user has already exported win.
"""

from __future__ import annotations

import os
from typing import Any

NAMESPACE = "xenray"
HOST_LABEL = "xen-host"
CLUSTER = "cluster"  # the pseudo-host of the cluster's own services (the name registry)
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's resource of the head node

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",  # no re-packaging of this project per worker
    "RAY_worker_maximum_startup_concurrency": "64",
    "RAY_DEDUP_LOGS": "0",
}


def ray_environment() -> dict[str, str]:
    """Set the environment every xenray process shares (before ``import ray``); returns it."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in RAY_ENV}


def host_resource(host: str) -> str:
    return f"xen-host-{host}"


def pin_to_host(host: str) -> dict[str, Any]:
    """Actor options that place an actor on ``host``'s node and nowhere else (the head node
    for :data:`CLUSTER`, which runs no domains)."""
    resource = HEAD_NODE_RESOURCE if host == CLUSTER else host_resource(host)
    return {"num_cpus": 0, "resources": {resource: 0.001}}


def actor_name(host: str, component: str) -> str:
    """The Ray name of a host's actor, e.g. ``h1/hypervisor`` or ``h1/dom3``."""
    return f"{host}/{component}"
