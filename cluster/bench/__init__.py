"""``xenray bench``: costs measured beside a baseline taken in the same run.

These machines are shared and noisy, so every benchmark reports medians and a ratio to a
baseline measured moments before on the same cluster, never an absolute pass/fail. Each is a
module here returning a :class:`~cluster.bench.common.BenchResult` (a table, or JSON with
``--json``); :data:`BENCHMARKS` names them for the CLI, imported on first use.
"""

from __future__ import annotations

import argparse
import importlib

from actors.transport.naming import ray_environment

BENCHMARKS = {
    "hypercall": "cluster.bench.hypercall:bench_hypercall",
    "create": "cluster.bench.create:bench_create",
    "blk": "cluster.bench.blk:bench_blk",
    "net": "cluster.bench.net:bench_net",
    "cli": "cluster.bench.cli:bench_cli",
    "migrate": "cluster.bench.migrate:bench_migrate",
    "scale": "cluster.bench.scale:bench_scale",
    "sched": "cluster.bench.sched:bench_sched",
}


def run(name: str, out, a: argparse.Namespace) -> int:
    """Run benchmark ``name`` with the CLI's arguments and print its result."""
    ray_environment(local=True)  # the benchmarks import ray: the environment comes first
    module, _, fn = BENCHMARKS[name].partition(":")
    result = getattr(importlib.import_module(module), fn)(out, a)
    result.print(out, as_json=getattr(a, "json", False))
    return 0
