"""The Ray cluster under the emulated hosts: start an embedded one, or attach to one.

Hosts are Ray nodes labelled and named as :mod:`actors.transport.naming` says. The embedded
mode starts a local multi-node cluster on this machine with ``ray.cluster_utils.Cluster``: a
head node that runs no domains, then one node per host.

Hygiene (ray-notes.md): a private ``RAY_TMPDIR`` per run, the shared environment of
:func:`actors.transport.naming.ray_environment` set before Ray is imported (so ``ray`` is
imported here only inside the functions that start or join a cluster), never ``ray stop``;
we tear down only the nodes we started.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import tempfile
from typing import Any

from actors.transport.naming import (HOST_LABEL, LOOPBACK, NAMESPACE, host_resource,
                                     ray_environment)

HEAD_TRIES = 2  # a head that timed out at start-up is started once more

# Detect a dead host in ~3 s instead of ~14 s (ray-notes.md, test settings); five misses, not
# three: sixteen hosts starting on 2 cores missed three heartbeats in a row.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 5,
}


class EmbeddedRay:
    """A local multi-node Ray cluster started (and later stopped) by this process, every node
    on loopback and behind this process's token (:func:`ray_environment`)."""

    def __init__(self, hosts: dict[str, dict[str, int]], *, fast_health_checks: bool = True):
        ray_environment(local=True)
        self._tmpdir = tempfile.mkdtemp(prefix="xr-", dir="/tmp")
        os.environ["RAY_TMPDIR"] = self._tmpdir
        ray_dir = os.path.join(self._tmpdir, "ray")  # where Ray records the current cluster
        os.makedirs(ray_dir)
        from ray.cluster_utils import Cluster as RayCluster

        head_args: dict[str, Any] = {
            "num_cpus": 0,
            "include_dashboard": False,
            "temp_dir": ray_dir,
            "node_ip_address": LOOPBACK,
        }
        if fast_health_checks:
            head_args["_system_config"] = FAST_HEALTH_CHECKS
        self._ray = None
        try:
            self._ray = self._start_head(RayCluster, head_args)
            self.nodes: dict[str, Any] = {}
            for name, size in hosts.items():
                self.add_host(name, cpus=size["cpus"])
        except BaseException:
            self.shutdown()  # the head and the nodes started so far, and the temp dir
            raise
        self.address = self._ray.address

    def _start_head(self, ray_cluster: Any, head_args: dict[str, Any]) -> Any:
        """The head node. Ray gives its raylet a fixed 30 s to register with the GCS
        (``ray/_private/node.py``), which a machine under a load of 20 or more can miss: a
        head that timed out is killed (every process under this run's temp dir) and
        started once more."""
        for attempt in range(HEAD_TRIES):
            try:
                return ray_cluster(initialize_head=True, head_node_args=head_args)
            except Exception as e:
                if "timed out during startup" not in str(e) or attempt + 1 == HEAD_TRIES:
                    raise
                _kill_processes_under(self._tmpdir)
                shutil.rmtree(head_args["temp_dir"], ignore_errors=True)
                os.makedirs(head_args["temp_dir"])
        raise AssertionError("unreachable")

    def add_host(self, name: str, *, cpus: int) -> None:
        self.nodes[name] = self._ray.add_node(
            num_cpus=cpus,
            resources={host_resource(name): 1000},
            labels={HOST_LABEL: name},
            node_ip_address=LOOPBACK,
        )

    def shutdown(self) -> None:
        import ray

        from actors.transport.raycall import RayTransport

        try:
            if ray.is_initialized():
                ray.shutdown()
            RayTransport.forget_all()
            if self._ray is not None:
                self._ray.shutdown()
            else:  # its head failed to start: what it started has no owner to stop it
                _kill_processes_under(self._tmpdir)
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


def _kill_processes_under(directory: str) -> None:
    """SIGKILL every process whose command line names ``directory`` (a Ray node started
    there: its GCS, raylet and agents all take their log or session directory in it)."""
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if directory.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass  # gone meanwhile, or not ours to read


def connect(address: str) -> None:
    """Join a running cluster as a driver (idempotent)."""
    ray_environment(local=is_local(address))
    import ray

    from actors.transport.raycall import RayTransport

    if not ray.is_initialized():
        RayTransport.forget_all()  # handles of an earlier cluster this process joined
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level="WARNING")


def is_local(address: str) -> bool:
    """Is this the address of a cluster on this machine's loopback?"""
    return address.startswith(f"{LOOPBACK}:") or address.startswith("localhost:")


def disconnect() -> None:
    """Leave the cluster this driver joined (the cluster goes on)."""
    import ray

    from actors.transport.raycall import RayTransport

    if ray.is_initialized():
        ray.shutdown()
    RayTransport.forget_all()


def discover_hosts() -> list[str]:
    """Host names of the live nodes carrying the ``xen-host`` label, in name order."""
    import ray

    names = []
    for node in ray.nodes():
        if node.get("Alive") and HOST_LABEL in (node.get("Labels") or {}):
            names.append(node["Labels"][HOST_LABEL])
    return sorted(names)
