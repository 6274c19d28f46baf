"""``xenray bench cli``: what a command costs a user, with ``--domains`` domains (100) running.

Issue 10's aim: ``xenray list`` and ``xenray info`` answer in under 0.5 s with 100 domains.
One run starts a persistent cluster (``xenray up``, in a private ``XENRAY_HOME``), creates the
domains through it, then times, each the median of several runs, in the same minutes:

1. ``python -c pass``: the floor, a Python start;
2. ``xenray list`` and ``xenray info`` as a user types them, asking the daemon;
3. the daemon's own time for each (what the cluster costs, not the CLI);
4. today's old path as the baseline: a process that joins Ray and asks the hosts itself
   (``Cluster(address=...)``), as every command did before the daemon.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from rich.console import Console

from cluster.bench.common import BenchResult

RUNS = 7
PROJECT = pathlib.Path(__file__).resolve().parents[2]
AIM_S = 0.5
OLD_PATH = ("import os, sys\n"
            "from cluster.api import Cluster\n"
            "xen = Cluster(sys.argv[1].split(','), address=sys.argv[2], run_id=sys.argv[3])\n"
            "xen.start()\n"
            "rows = xen.list()\n"
            "xen.stop()\n")


def _time(argv: list[str], env: dict[str, str], runs: int = RUNS) -> float:
    """Median wall time of ``argv`` (which must succeed)."""
    lat = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=300)
        lat.append(time.perf_counter() - t)
    return statistics.median(lat)


def bench_cli(out: Console, a: argparse.Namespace) -> BenchResult:
    from cluster import home
    from cluster.control import request

    n = a.domains or 100
    scratch = tempfile.mkdtemp(prefix="xenray-bench-cli-")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN",
                                                             "RAY_AUTH_TOKEN_PATH")}
    env["XENRAY_HOME"] = scratch
    cli = [sys.executable, "-m", "cluster.cli"]
    memory = 512 + (n // 2 + 1) * 16
    with out.status("starting a 2-host cluster (xenray up)..."):
        subprocess.run([*cli, "up", "--hosts", "2", "--host-memory", str(memory)], env=env,
                       check=True, capture_output=True, timeout=600)
    os.environ["XENRAY_HOME"] = scratch  # this process asks the same daemon
    try:
        sock = home.socket_path()
        rec = home.read_record()

        def create(i: int) -> None:
            cfg = {"name": f"idle{i}", "memory": 16, "maxmem": 16, "cmdline": "init=idle"}
            from protocols.libxl_types import DomainConfig

            request(sock, "create", {"config": DomainConfig(**cfg).to_dict(),
                                     "host": f"h{i % 2 + 1}"})

        with out.status(f"creating {n} domains...") as st, \
                concurrent.futures.ThreadPoolExecutor(8) as pool:
            for done, _ in enumerate(pool.map(create, range(n)), 1):
                st.update(f"created {done}/{n} domains")
        rows = []
        with out.status("timing..."):
            floor = _time([sys.executable, "-c", "pass"], env)
            for command in ("list", "info"):
                wall = _time([*cli, command], env)
                daemon_s = statistics.median(request(sock, command)[1]
                                             for _ in range(RUNS))
                rows.append({"path": f"xenray {command} (asks the daemon)", "seconds": wall,
                             "daemon_s": daemon_s, "ratio": wall / floor})
            uv = shutil.which("uv")
            if uv is not None:  # what the README types: uv's own start-up on top
                wall = _time([uv, "run", "--project", str(PROJECT), "xenray", "list"], env)
                rows.append({"path": "uv run xenray list", "seconds": wall, "daemon_s": None,
                             "ratio": wall / floor})
            token_env = {**env, "RAY_AUTH_TOKEN_PATH": rec["token"]}
            old = _time([sys.executable, "-c", OLD_PATH, ",".join(rec["hosts"]),
                         rec["address"], rec["run_id"]], token_env, runs=3)
            rows.append({"path": "list by joining Ray (the old way)", "seconds": old,
                         "daemon_s": None, "ratio": old / floor})
            rows.insert(0, {"path": "python -c pass", "seconds": floor, "daemon_s": None,
                            "ratio": 1.0})
    finally:
        subprocess.run([*cli, "down"], env=env, capture_output=True, timeout=600)
    worst = max(r["seconds"] for r in rows if r["path"].startswith("xenray"))  # uv apart
    return BenchResult(
        "cli", f"what a command costs with {n} domains on 2 hosts (median of {RUNS})",
        [("path", "path", ""), ("seconds", "wall s", ".3f"), ("daemon_s", "in the daemon s",
                                                              ".3f"),
         ("ratio", "÷ python -c pass", ".1f")], rows,
        [f"aim (issue 10): list and info under {AIM_S} s with {n} domains: "
         f"{'met' if worst < AIM_S else 'not met'} (slowest {worst:.3f} s; the old way "
         f"{rows[-1]['seconds']:.2f} s)"])
