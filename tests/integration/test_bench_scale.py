"""``xenray bench scale`` as a user runs it, small: 2 domains on the session's cluster
(``--running``, its 2 hosts; a cluster of its own would cost a minute to start and stop), it
measures every curve, writes its JSON and plots, and gives the memory back."""

import json
import pathlib

from tests.integration.conftest import cli

SERIES = ("creation", "xenstore", "list", "release", "memory", "idle_cpu", "destroy", "pool",
          "curves")


def test_bench_scale_measures_every_curve_and_draws_them(cluster_home, tmp_path):
    out = tmp_path / "out"
    run = cli(cluster_home, "bench", "scale", "--running", "--domains", "2", "--json",
              "--out", str(out), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    data = result["data"]
    assert all(series in data for series in SERIES), sorted(data)
    assert (data["hosts"], data["levels"]) == (2, [0, 1, 2])
    created = data["creation"]["domains"]
    assert [d["ok"] for d in created] == [True] * 2, created
    assert sorted(d["i"] for d in created) == [1, 2]
    assert {d["host"] for d in created} == {"h1", "h2"}  # by free memory: spread
    for name, curve in data["curves"].items():
        assert len(curve) == 3 and None not in curve, (name, curve)
    assert all(r["seen_by"] == r["watchers"] for r in data["release"]), data["release"]
    assert len(data["memory"]["domains"]) == 2 and data["memory"]["bare"]["uss_mib"] > 0
    assert data["idle_cpu"]["domains"] == 2
    assert all(p["taken"] >= 1 for p in data["pool"].values()), data["pool"]
    assert data["destroy"]["domains"] == 2 and data["destroy"]["memory_back"], data["destroy"]
    assert [pathlib.Path(f).name for f in data["files"]] == [
        "scale.json", "scale-creation.png", "scale-latency.png", "scale-memory.png"]
    for f in data["files"]:
        assert pathlib.Path(f).parent == out and pathlib.Path(f).stat().st_size > 0
    assert json.loads((out / "scale.json").read_text())["levels"] == [0, 1, 2]
    measures = [r["measure"] for r in result["rows"]]
    assert "xl list, every host (N=2)" in measures and "free memory back after destroy" in measures
