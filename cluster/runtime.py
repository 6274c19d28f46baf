"""The Ray cluster under the emulated hosts: start an embedded one, or attach to one.

Each emulated Xen host is one Ray node carrying the label ``xen-host=<name>`` and the
custom resource ``xen-host-<name>``; every actor of that host is pinned to it with that
resource (``num_cpus=0``), because soft node affinity does not guarantee placement
(ray-notes.md). The embedded mode starts a local multi-node cluster on this machine with
``ray.cluster_utils.Cluster``: a head node that runs no domains, then one node per host.

Hygiene (ray-notes.md): a private ``RAY_TMPDIR`` per run, the shared environment of
``cluster.RAY_ENV`` in every process, never ``ray stop``; we tear down only the nodes we
started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import ray

from cluster import RAY_ENV

NAMESPACE = "xenray"
HOST_LABEL = "xen-host"


# Detect a dead host in ~2 s instead of ~14 s (ray-notes.md, test settings).
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


def host_resource(host: str) -> str:
    return f"xen-host-{host}"


def pin_to_host(host: str) -> dict[str, Any]:
    """Actor options that place an actor on ``host``'s node and nowhere else."""
    return {"num_cpus": 0, "resources": {host_resource(host): 0.001}}


def actor_name(host: str, component: str) -> str:
    """The Ray name of a host's actor, e.g. ``h1/hypervisor`` or ``h1/dom3``."""
    return f"{host}/{component}"


def apply_ray_env() -> None:
    """Make sure child processes (raylets, workers) inherit the shared settings."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


class EmbeddedRay:
    """A local multi-node Ray cluster started (and later stopped) by this process."""

    def __init__(self, hosts: dict[str, dict[str, int]], *, fast_health_checks: bool = True):
        apply_ray_env()
        self._tmpdir = tempfile.mkdtemp(prefix="xr-", dir="/tmp")
        os.environ["RAY_TMPDIR"] = self._tmpdir
        ray_dir = os.path.join(self._tmpdir, "ray")  # where Ray records the current cluster
        os.makedirs(ray_dir)
        from ray.cluster_utils import Cluster as RayCluster

        head_args: dict[str, Any] = {
            "num_cpus": 0,
            "include_dashboard": False,
            "temp_dir": ray_dir,
        }
        if fast_health_checks:
            head_args["_system_config"] = FAST_HEALTH_CHECKS
        self._ray = RayCluster(initialize_head=True, head_node_args=head_args)
        self.nodes: dict[str, Any] = {}
        for name, size in hosts.items():
            self.add_host(name, cpus=size["cpus"])
        self.address = self._ray.address

    def add_host(self, name: str, *, cpus: int) -> None:
        self.nodes[name] = self._ray.add_node(
            num_cpus=cpus,
            resources={host_resource(name): 1000},
            labels={HOST_LABEL: name},
        )

    def shutdown(self) -> None:
        try:
            if ray.is_initialized():
                ray.shutdown()
            self._ray.shutdown()
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


def connect(address: str) -> None:
    """Join a running cluster as a driver (idempotent)."""
    apply_ray_env()
    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level="WARNING")


def discover_hosts() -> list[str]:
    """Host names of the live nodes carrying the ``xen-host`` label, in name order."""
    names = []
    for node in ray.nodes():
        if node.get("Alive") and HOST_LABEL in (node.get("Labels") or {}):
            names.append(node["Labels"][HOST_LABEL])
    return sorted(names)
