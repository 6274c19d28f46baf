"""The commands that run in the ``xenray`` process itself: ``up`` and ``down`` (the daemon's
life), ``image``, ``demo`` and ``bench`` (each its own embedded cluster), ``help``."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from rich.console import Console

from cluster import home
from cluster.cli.cmdtable import COMMANDS
from cluster.control import ControlError, DaemonGone, request

out = Console(highlight=False)
UP_TIMEOUT_S = 900.0  # sixteen hosts take minutes on 2 cores
DOWN_TIMEOUT_S = 120.0


def cmd_up(a: argparse.Namespace) -> int:
    rec = home.read_record()
    if rec is not None and home.daemon_alive(rec["pid"]):
        out.print(f"a cluster is already up (pid {rec['pid']}, hosts {', '.join(rec['hosts'])})")
        return 0
    log_path = home.logs_dir() / "daemon.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.daemon", "--hosts", str(a.hosts),
                                 "--host-memory", str(a.host_memory),
                                 *(["--pcpus", str(a.pcpus)] if a.pcpus else []),
                                 "--sched", a.sched, "--pool", str(a.pool),
                                 "--launcher", a.launcher],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    with out.status(f"starting {a.hosts} emulated hosts..."):
        deadline = time.monotonic() + UP_TIMEOUT_S
        while (rec := home.read_record()) is None or rec["pid"] != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.terminate()
                print(f"xenray up: the cluster did not start; its log is {log_path}",
                      file=sys.stderr)
                return 1
            time.sleep(0.2)
    out.print(f"cluster up: hosts {', '.join(rec['hosts'])} (Ray at {rec['address']}, "
              "loopback only)")
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    rec = home.read_record()
    if rec is None or not home.daemon_alive(rec["pid"]):
        _remove_leftovers(rec)
        out.print("no cluster is running")
        return 0
    try:
        request(home.socket_path(), "stop")
    except (DaemonGone, ControlError):
        os.kill(rec["pid"], signal.SIGTERM)
    with out.status("stopping the cluster..."):
        deadline = time.monotonic() + DOWN_TIMEOUT_S
        while home.daemon_alive(rec["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
    if home.daemon_alive(rec["pid"]):
        raise TimeoutError(f"the cluster's daemon (pid {rec['pid']}) did not stop in "
                           f"{DOWN_TIMEOUT_S:.0f} s")
    out.print("cluster stopped")
    return 0


def _remove_leftovers(rec: dict | None) -> None:
    """What a daemon that was killed left: its record, socket and token, its hosts'
    xenstored sockets, and its run's /dev/shm files (domain memory, hypervisor pipes)."""
    from actors import memory

    for path in (home.record_path(), home.socket_path(), home.token_path(),
                 *home.run_dir().glob("xenstored-*.sock")):
        path.unlink(missing_ok=True)
    if rec is not None:
        for path in memory.SHM_DIR.glob(f"xenray-{rec['run_id']}-*"):
            path.unlink(missing_ok=True)


def cmd_image(a: argparse.Namespace) -> int:
    """``xenray image create PATH SIZE``: a sparse raw image for a ``disk=`` entry."""
    from actors.blkback.vbd import create_image
    from protocols.blkif import parse_size

    size = create_image(a.path, parse_size(a.size), overwrite=a.force)
    out.print(f"created {a.path}: {size} bytes ({size // 512} sectors), sparse", markup=False)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from cluster.demo import run

    return run(out)


def cmd_run(a: argparse.Namespace) -> int:
    from cluster.scenario.command import run

    return run(a, out)


def cmd_fuzz(a: argparse.Namespace) -> int:
    """``xenray fuzz TARGET``: a campaign on an embedded one-host cluster
    (:mod:`cluster.fault.fuzz`); exit status 1 if the verdict fails."""
    import json

    from cluster.api import Cluster
    from cluster.fault.fuzz import answers_table, checks_table, fuzz

    say = (lambda m: None) if a.json else (lambda m: out.print(f"  {m}", markup=False))
    with Cluster(hosts=1, progress=say) as xen:
        verdict = fuzz(xen, a.target, a.count, a.seed, progress=say)
    if a.json:
        print(json.dumps(verdict, indent=2))
    else:
        out.print(answers_table(verdict))
        out.print(checks_table(verdict))
    return 0 if verdict["ok"] else 1


def cmd_bench(a: argparse.Namespace) -> int:
    from cluster import bench

    return bench.run(a.what, out, a)


def cmd_help(a: argparse.Namespace) -> int:
    print("usage: xenray [-v] <command> [args]   (any unambiguous prefix of a command works)\n")
    for spec in COMMANDS:
        print(f"  {spec.name:<11} {spec.desc}")
    return 0


def cmd_completion(a: argparse.Namespace) -> int:
    print(f'complete -W "{" ".join(s.name for s in COMMANDS)}" xenray')
    return 0
