"""``xenray bench sched`` as a user runs it, short (``--runtime 0.5``): both schedulers and
credit without BOOST, each on a one-pCPU cluster of its own, in the same run. The shares'
tolerances are test_sched.py's; here the benchmark's table and JSON are checked whole."""

import json

from tests.integration.conftest import cli

SCHEDS = ["credit2", "credit", "credit (no BOOST)"]


def test_bench_sched_measures_each_scheduler_beside_the_ideal(tmp_path):
    run = cli(tmp_path / "home", "bench", "sched", "--runtime", "0.5", "--json", timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    rows = out["rows"]
    cases = {(r["sched"], r["case"]) for r in rows}
    for sched in SCHEDS[:2]:
        assert {(sched, "weight 256 of 256+512"), (sched, "weight 512 of 256+512"),
                (sched, "pCPU busy (both)"), (sched, "cap 25, alone")} <= cases
    for sched in SCHEDS:
        assert {(sched, "wake-up latency, alone"),
                (sched, "wake-up latency, beside a hog")} <= cases
    for r in rows:
        if "ideal" in r:  # a share of the one pCPU, beside its ideal, and their ratio
            assert 0 < r["measured"] <= 1.05 and r["ratio"] == r["measured"] / r["ideal"], r
        else:
            assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"], r
    weights = [r for r in rows if r["case"].startswith("weight")]
    assert all(0 < r["measured"] < 1 for r in weights)  # each burner got some, neither all
    assert out["data"]["runtime_s"] == 0.5
