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

from actors import memory
from actors.transport.naming import DOMAIN_PREFIX, FORKSERVER, actor_name

LAUNCHERS = ("fork", "ray")  # how a host starts its domains' processes (actors.toolstack)
POOL_SIZE = 2  # Ray workers the ray launcher starts ahead of need (actors.toolstack.pool)
STOP_TIMEOUT_S = 10.0
DOM0_COMPONENTS = ("xl", "netback", "blkback", "xenconsoled", "xenstored")  # stop order; hypervisor last


@dataclasses.dataclass(frozen=True)
class HostSpec:
    name: str
    memory_mib: int = 2048
    pcpus: int = 2
    dom0_memory_mib: int = 256
    pool: int = POOL_SIZE
    launcher: str = "fork"
    sched: str = "credit2"  # the hypervisor's scheduler (actors.hypervisor.sched)
    sched_params: tuple[tuple[str, object], ...] = ()  # its constructor's, for experiments


def xenstored_socket(run_dir: str, host: str) -> str:
    """Where a host's xenstored listens for real xs_wire clients (``XENSTORED_PATH``)."""
    return os.path.join(run_dir, f"xenstored-{host}.sock")


def boot_host(spec: HostSpec, *, run_id: str, run_dir: str, log_dir: str) -> None:
    """Start the host's hypervisor, Dom0 and Dom0's daemons; return when all answer."""
    from actors.transport import launch  # imports ray: only once the process joined Ray

    host = spec.name
    hv = launch.start("hypervisor", host, "hypervisor", host, spec.memory_mib, spec.pcpus,
                      run_id, log_dir, spec.sched, dict(spec.sched_params))
    dom0_secret = launch.ask(hv, "boot_dom0", spec.dom0_memory_mib)
    xs = launch.start("xenstored", host, "xenstored", host, dom0_secret,
                      xenstored_socket(run_dir, host), log_dir, run_id)
    launch.ask(xs, "process")
    daemons = [launch.start(kind, host, kind, host, dom0_secret, log_dir)
               for kind in ("xenconsoled", "blkback", "netback")]
    if spec.launcher == "fork":
        daemons.append(launch.start("forkserver", host, FORKSERVER, host, run_id, log_dir))
        for peer in (hv, xs):  # they call the host's domains through it: looked up now
            peer.deliver.remote("prefetch", actor_name(host, FORKSERVER))
    daemons.append(launch.start("xl", host, "xl", host, dom0_secret, log_dir, spec.launcher,
                                spec.pool))
    launch.ask_all([(d, "process", ()) for d in daemons])


def boot_registry(run_id: str) -> None:
    """Start the cluster's name registry (on the head node) and wait until it answers."""
    from actors.transport import launch
    from actors.transport.naming import CLUSTER

    launch.ask(launch.start("registry", CLUSTER, "registry", run_id), "process")


def stop_registry() -> None:
    from actors.transport import launch
    from actors.transport.naming import CLUSTER

    launch.kill(CLUSTER, "registry")


def stop_host(host: str, *, run_id: str, run_dir: str | None = None) -> None:
    """Kill every actor of the host (its agent, then its domains' processes and the pool's
    idle ones), then remove its leftover /dev/shm
    files and, given ``run_dir``, its xenstored's socket (killed, xenstored cannot)."""
    from actors.transport import launch

    launch.kill(host, "xl")  # first: its pool starts no process after the list below
    if (server := launch.find(host, FORKSERVER)) is not None:
        try:  # its domain processes are no Ray workers: Ray would not kill them
            launch.ask(server, "close", timeout=STOP_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - dying already: its processes' sockets close,
            pass  # and they end once none has come back (RelayClient.reconnect_s)
    for component in (*launch.named(host, DOMAIN_PREFIX), FORKSERVER, *DOM0_COMPONENTS[1:],
                      "hypervisor"):
        launch.kill(host, component)
    remove_host_files(host, run_id=run_id, run_dir=run_dir)


def remove_host_files(host: str, *, run_id: str, run_dir: str | None = None) -> None:
    """What a host's processes leave on this machine once they are dead: domain memory,
    same-host pipes and their FIFOs, the dirty-logging handover socket, xenstored's journal
    and socket, the fork server's list of its processes."""
    for pattern in ("d*", "pipe*", "logdirty", "xenstored.*", "forkserver*"):
        for path in glob.glob(str(memory.SHM_DIR / f"xenray-{run_id}-{host}-{pattern}")):
            memory.remove(path)
    if run_dir is not None:
        memory.remove(xenstored_socket(run_dir, host))
