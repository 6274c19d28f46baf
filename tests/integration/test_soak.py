"""The soak scenario (cluster/scenario/library/soak.toml: 100 domains on 4 hosts for 10
minutes) shrunk as a user shrinks it, `xenray run soak --domains 0.08 --scale 0.05`: the same
file, each group at 8% (9 domains) and every time at 5% (30 s), on an embedded 4-host cluster
of its own (not the session's 2 hosts), passes every check. The full soak runs on demand:
`xenray run soak` (see the README)."""

import json

from cluster.scenario import history
from tests.integration.conftest import cli


def test_the_soak_shrunk_passes_every_check_on_a_cluster_of_its_own(tmp_path):
    out = tmp_path / "run"
    run = cli(tmp_path / "home", "run", "soak", "--domains", "0.08", "--scale", "0.05",
              "--out", str(out), timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    verdicts = {v["check"]: v for v in results["verdicts"]}
    assert set(verdicts) == {"schedule", "errors", "durability", "network", "memory", "leaks"}
    assert all(v["ok"] for v in verdicts.values()), verdicts
    events = history.load(out / "history.jsonl")
    created = history.domains(events)
    assert sorted(created) == ["idle-1", "idle-2", "idle-3", "pinger-1", "rx-1", "target-1",
                               "tx-1", "writer-1", "writer-2"]
    assert {c["host"] for c in created.values()} >= {"h1", "h2", "h3"}
    assert {n for n, c in created.items() if c["op"] is not None} == {"tx-1", "pinger-1"}
    writers = verdicts["durability"]["details"]["domains"]
    assert set(writers) == {"writer-1", "writer-2"}
    assert all(w["blocks"] > 0 and w["lost_count"] == 0 for w in writers.values())
    judged = verdicts["network"]["details"]["domains"]
    assert set(judged) == {"rx-1", "pinger-1"} and all(j["lost"] == 0 for j in judged.values())
    hosts = verdicts["memory"]["details"]["hosts"]
    assert sorted(hosts) == ["h1", "h2", "h3", "h4"]
    assert all(h["difference"] == 0 and h["after"] > 0 for h in hosts.values())
    (census,) = history.of(events, "census")
    assert sorted(census["states"]) == sorted(created)  # all nine ran to the end
