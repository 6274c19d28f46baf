"""``xenray run SCENARIO``: a scenario file (or a library scenario's name) run on an
embedded cluster of its hosts (or, with ``--running``, on the cluster ``xenray up`` runs),
shown as it goes, judged, and answered with an exit status: 0 only if every check passed."""

from __future__ import annotations

import argparse
import datetime
import pathlib

from rich.console import Console

from cluster.scenario import spec
from cluster.scenario.report import live, recovery_lines, verdict_table
from cluster.scenario.runner import Runner


def run(a: argparse.Namespace, out: Console) -> int:
    # a bad file is one line, before anything starts; --domains shrinks each group
    scenario = spec.load(a.scenario, domains=a.domains or 1.0)
    if a.scale is not None:
        scenario = scenario.scaled(a.scale)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = pathlib.Path(a.out or f"runs/{scenario.name}-{stamp}")
    from cluster.api import Cluster

    if a.running:
        cluster = Cluster.running()
    else:
        hosts = scenario.hosts
        cluster = Cluster(list(hosts.names), host_memory_mib=hosts.memory_mib,
                          host_cpus=hosts.cpus, progress=lambda m: out.print(f"  {m}"))
        cluster.start()
    out.print(f"[bold]{scenario.name}[/bold]: {scenario.duration:g} s, seed {scenario.seed}, "
              f"{len(scenario.domains)} domains on {len(scenario.hosts.names)} hosts, "
              f"{len(scenario.faults)} faults, {len(scenario.ops)} ops; writing {out_dir}")
    try:
        with live(out, scenario.duration) as (say, tick):
            results = Runner(scenario, cluster, out_dir, say=say, tick=tick).run()
    finally:
        cluster.stop()
    out.print(verdict_table(results))
    for line in recovery_lines(results):
        out.print(f"  {line}", markup=False, highlight=False)
    out.print(f"history {results['history']}\ntimeline {results['timeline']}", markup=False,
              highlight=False)
    return 0 if results["ok"] else 1
