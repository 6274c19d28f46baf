"""Booting and stopping one emulated Xen host on its Ray node.

A host boots as Xen does: the hypervisor first, which builds Dom0; then Dom0's daemons —
xenstored, the console daemon, blkback and the toolstack agent — all holding Dom0's
credential.
Only then can DomUs be created. Every actor is pinned to the host's node and named
``<host>/<component>`` so that any driver (the CLI, a script) can find it.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import ray

from actors import memory
from cluster.runtime import NAMESPACE, actor_name, pin_to_host

DOM0_COMPONENTS = ("xl", "netback", "blkback", "xenconsoled", "xenstored")  # stop order; hypervisor last


@dataclasses.dataclass(frozen=True)
class HostSpec:
    name: str
    memory_mib: int = 2048
    pcpus: int = 2
    dom0_memory_mib: int = 256


def xenstored_socket(run_dir: str, host: str) -> str:
    """Where a host's xenstored listens for real xs_wire clients (``XENSTORED_PATH``)."""
    return os.path.join(run_dir, f"xenstored-{host}.sock")


def boot_host(spec: HostSpec, *, run_id: str, run_dir: str, log_dir: str) -> None:
    """Start the host's hypervisor, Dom0 and Dom0's daemons; return when all answer."""
    from actors.blkback.actor import BlkbackActor
    from actors.console.actor import ConsoleActor
    from actors.hypervisor.actor import HypervisorActor
    from actors.netback.actor import NetbackActor
    from actors.toolstack.actor import ToolstackActor
    from actors.xenstored.actor import XenstoredActor

    host = spec.name

    def opts(component: str) -> dict:
        return {"name": actor_name(host, component), "namespace": NAMESPACE,
                "lifetime": "detached", **pin_to_host(host)}

    hv = HypervisorActor.options(**opts("hypervisor")).remote(
        host, spec.memory_mib, spec.pcpus, run_id, log_dir)
    dom0_secret = ray.get(hv.deliver.remote("boot_dom0", spec.dom0_memory_mib))
    xs = XenstoredActor.options(**opts("xenstored")).remote(
        host, dom0_secret, xenstored_socket(run_dir, host), log_dir)
    ray.get(xs.deliver.remote("process"))
    daemons = [ConsoleActor.options(**opts("xenconsoled")).remote(host, dom0_secret, log_dir),
               BlkbackActor.options(**opts("blkback")).remote(host, dom0_secret, log_dir),
               NetbackActor.options(**opts("netback")).remote(host, dom0_secret, log_dir),
               ToolstackActor.options(**opts("xl")).remote(host, dom0_secret, log_dir)]
    ray.get([d.deliver.remote("process") for d in daemons])


def stop_host(host: str, *, run_id: str) -> None:
    """Kill every actor of the host (its DomUs first), then remove its leftover /dev/shm files."""
    def kill(component: str) -> None:
        try:
            ray.kill(ray.get_actor(actor_name(host, component), namespace=NAMESPACE))
        except ValueError:
            pass

    try:
        xl = ray.get_actor(actor_name(host, "xl"), namespace=NAMESPACE)
        domids = ray.get(xl.deliver.remote("names"), timeout=30).values()
    except Exception:  # the agent is gone: fall back to the memory files we know of
        domids = []
    for domid in domids:
        kill(f"dom{domid}")
    for component in (*DOM0_COMPONENTS, "hypervisor"):
        kill(component)
    for pattern in ("d*", "ch*"):  # domain memory; same-host channels and their FIFOs
        for path in glob.glob(str(memory.SHM_DIR / f"xenray-{run_id}-{host}-{pattern}")):
            memory.remove(path)
