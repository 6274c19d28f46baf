"""Scenarios run for real on the session's cluster (shortened): `xenray run` of a library
scenario from the shell, as a user runs it, and a scenario run from Python whose checker
fails. Only crashes and freezes of a DomU or a backend here: they leave the cluster whole."""

import json

import pytest

from cluster.scenario import history, spec
from cluster.scenario.runner import Runner
from tests.integration.conftest import cli


def test_xenray_run_blkback_killed_passes_and_writes_its_history(cluster_home, tmp_path):
    out = tmp_path / "run"
    run = cli(cluster_home, "run", "blkback-killed", "--out", str(out), "--scale", "0.5",
              "--running", timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout and "FAIL" not in run.stdout
    results = json.loads((out / "results.json").read_text())
    verdicts = {v["check"]: v for v in results["verdicts"]}
    assert set(verdicts) == {"schedule", "durability", "isolation", "recovery", "leaks"}
    assert verdicts["durability"]["details"]["domains"]["writer"]["blocks"] > 0
    assert set(verdicts["isolation"]["details"]["gaps"]) == {"counter1", "counter2"}
    (rec,) = results["recoveries"]
    assert rec["domain"] == "writer" and rec["recovery_s"] is not None
    events = history.load(out / "history.jsonl")
    (crash,) = history.of(events, "inject")
    assert crash["targets"] == ["h1/blkback"] and crash["at"] == 4.0
    assert abs(history.into_workload(events, crash["started"]) - 4.0) < 0.5
    assert len(history.of(events, "progress")) > 30  # sampled all along
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"


FROZEN = '''
name = "frozen"
seed = 1
duration = 6
[hosts]
count = 2
[[domain]]
name = "scn-a"
host = "h1"
config = 'extra = "init=counter interval=0.2"'
[[domain]]
name = "scn-b"
host = "h2"
config = 'extra = "init=counter interval=0.2"'
[[fault]]
kind = "freeze"
target = { name = "scn-a" }
at = 1.5
for = 2.5
[[check]]
kind = "isolation"
params = { max_gap = 2 }
[[check]]
kind = "recovery"
params = { max_s = 0 }
'''


def test_a_frozen_domain_stalls_alone_and_a_missed_bound_fails_the_run(xen, tmp_path):
    results = Runner(spec.parse(FROZEN), xen, tmp_path).run()
    verdicts = {v["check"]: v for v in results["verdicts"]}
    assert verdicts["schedule"]["ok"] and verdicts["isolation"]["ok"]
    assert verdicts["isolation"]["details"]["left_out"] == {"scn-a": ["freeze scn-a"]}
    (rec,) = results["recoveries"]
    assert rec["domain"] == "scn-a" and 0 < rec["recovery_s"] < 2
    assert not verdicts["recovery"]["ok"] and not results["ok"]  # no recovery takes 0 s
    events = history.load(tmp_path / "history.jsonl")
    a = history.progress(events)["scn-a"]
    (window,) = history.fault_windows(events)
    during = [u for t, u in a if window.start + 0.5 < t < window.end]
    assert len(set(during)) == 1  # frozen: not one count while stopped
    assert xen.find("scn-a") is None and xen.find("scn-b") is None  # destroyed at the end


@pytest.mark.parametrize("name, scale", [
    ("xenstored-killed-during-create", 0.5),
    ("partition-ping-udp", 1.0),  # its workloads' own seconds are not scaled
    ("powercut-fsync", 0.6),
    ("hostile-guest", 0.5),
])
def test_a_library_scenario_passes_every_check_on_the_session_cluster(xen, tmp_path, name,
                                                                      scale):
    results = Runner(spec.load(name).scaled(scale), xen, tmp_path).run()
    failed = {v["check"]: v["details"] for v in results["verdicts"] if not v["ok"]}
    assert results["ok"] and not failed, failed
    assert (tmp_path / "timeline.png").exists()


@pytest.mark.parametrize("name", ["host-crash", "migration-destination-crash"])
def test_a_library_scenario_that_crashes_a_host_passes_on_a_cluster_of_its_own(tmp_path, name):
    """These lose a host for good, so each runs as a user runs it: `xenray run` on an
    embedded cluster of its own, which the run stops, dead host and all."""
    run = cli(tmp_path / "home", "run", name, "--out", str(tmp_path / "run"), "--scale", "0.5",
              timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "FAIL" not in run.stdout
    assert json.loads((tmp_path / "run" / "results.json").read_text())["ok"]
