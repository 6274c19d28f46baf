"""``xenray bench create`` as a user runs it, small (2 domains a path): both launchers on
one-host clusters of their own, in the same run. It is also the suite's test of the ``ray``
launcher: without a pool each create starts its own Ray worker; with one, every create takes
a worker started before it."""

import json

from tests.integration.conftest import cli


def test_bench_create_runs_each_launcher_and_the_pool_serves_every_create(tmp_path):
    run = cli(tmp_path / "home", "bench", "create", "--domains", "2", "--json", timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {r["path"]: r for r in json.loads(run.stdout.splitlines()[-1])["rows"]}
    assert list(rows) == ["Ray actor, no pool (before)", "Ray actor, pool of 2",
                          "fork, one at a time", "fork, all at once"]
    assert [(r["launcher"], r["taken"]) for r in rows.values()] == \
        [("ray", 0), ("ray", 2), ("fork", 2), ("fork", 2)]
    for row in rows.values():
        assert row["first_s"] > 0 and row["per_s"] > 0
        assert {"xenstore", "introduce", "vcpus"} <= set(row["steps_ms"])
    assert rows["Ray actor, no pool (before)"]["speedup"] == 1.0
