"""The shipped soak (cluster/scenario/library/soak.toml) says what it claims, at full size
and shrunk as the suite runs it; and the checkers that judge it beside durability, network
and leaks: ``memory`` (each host's free memory back to the page) and ``errors`` (no domain
met one), each failing on a run that breaks its property."""

import collections

import pytest

from cluster.scenario import checkers, spec
from cluster.scenario.plot import rows
from tests.unit.test_scenario_checkers import Run

SHRUNK = {"domains": 0.08, "scale": 0.05}  # as tests/integration/test_soak.py runs it


def test_the_soak_holds_100_domains_on_4_hosts_for_10_minutes_with_the_mix():
    s = spec.load("soak")
    assert (len(s.domains), s.hosts.names, s.duration) == (100, ("h1", "h2", "h3", "h4"), 600)
    assert not s.faults and not s.links
    mix = collections.Counter((d.init, dict(a.split("=") for a in d.argv if "=" in a)
                               .get("role", "")) for d in s.domains)
    assert mix == {("blkverify", ""): 20, ("udpstream", "recv"): 10, ("udpstream", "send"): 10,
                   ("ping", ""): 10, ("idle", ""): 50}
    writers = [d for d in s.domains if d.init == "blkverify"]
    assert all(d.image_bytes and "acklog=1" in d.argv for d in writers)  # each its own image
    assert len({d.name for d in writers}) == 20
    assert {c.kind for c in s.checks} == {"errors", "durability", "network", "memory", "leaks"}
    assert {d.host for d in s.domains} == {"h1", "h2", "h3", "h4", None}  # some placed auto
    assert sum(d.config().memory for d in s.domains) <= 4 * (s.hosts.memory_mib - 256)


@pytest.mark.parametrize("sizing", [{"domains": 1.0, "scale": 1.0}, SHRUNK])
def test_every_network_workload_ends_inside_the_run_and_crosses_hosts(sizing):
    """The network checker needs each sender's and receiver's result before the run ends:
    a sender or pinger (created at 0 s) runs at most 80% of the run less 10 s, and its
    receiver waits for it past the end."""
    s = spec.load("soak", domains=sizing["domains"]).scaled(sizing["scale"])
    ips = {ip: d for d in s.domains for ip in (v.ip for v in d.config().vif)}
    created_late = {op.domain for op in s.ops if op.kind == "create" and op.at == 0}
    clients = [d for d in s.domains if d.init == "ping" or "role=send" in d.argv]
    assert clients and {d.name for d in clients} == created_late
    for d in clients:
        opts = dict(a.split("=") for a in d.argv if "=" in a)
        peer = ips[opts.get("dst") or d.argv[0]]
        assert peer.host != d.host and peer.name not in created_late
        lasts = float(opts["seconds"]) if "seconds" in opts else \
            int(opts["count"]) * float(opts["interval"])
        assert 0 < lasts <= 0.8 * s.duration - 9.5, d.name
        if peer.init == "udpstream":
            assert float(dict(a.split("=") for a in peer.argv)["seconds"]) > s.duration


def test_the_shrunk_soak_is_the_same_file_smaller():
    s = spec.load("soak", domains=SHRUNK["domains"]).scaled(SHRUNK["scale"])
    assert s.duration == 30 and len(s.hosts.names) == 4
    assert [(g, len(m)) for g, m in s.groups().items()] == [
        ("writer", 2), ("rx", 1), ("tx", 1), ("target", 1), ("pinger", 1), ("idle", 3)]
    assert s.domain("writer-1").argv[:2] == ["blocks=150", "rate=10"]  # ${duration*5} at 30 s
    assert "idle=3" in s.domain("rx-1").argv  # ${duration*0.01+3}: 3 s at 30 s, 9 at 600


# -- memory -----------------------------------------------------------------------------------

def memory_verdict(tmp_path, before, after, *, errors=None, host_crash=None):
    run = Run(tmp_path)
    run.at(0, "memory", phase="before", free_pages=before, errors={})
    if host_crash:
        run.at(2, "inject", index=0, occurrence=0, kind="crash", targets=[host_crash])
    if after is not None:
        run.at(9, "memory", phase="after", free_pages=after, errors=errors or {})
    checker = checkers.CHECKERS["memory"]
    return checker.fn(run.events(), {}, checker.defaults)


def test_memory_passes_when_every_host_has_its_pages_back(tmp_path):
    v = memory_verdict(tmp_path, {"h1": 458752, "h2": 458752}, {"h1": 458752, "h2": 458752})
    assert v.ok and v.summary == ("every host's free memory is back, to the page: "
                                  "h1 1792 MiB, h2 1792 MiB")


def test_memory_fails_when_a_host_has_fewer_or_more_free_pages_than_before(tmp_path):
    v = memory_verdict(tmp_path, {"h1": 458752, "h2": 458752}, {"h1": 458752, "h2": 450560})
    assert not v.ok
    assert v.summary == "h2: 8192 pages (32.0 MiB) fewer free than before (458752 -> 450560)"
    assert v.details["hosts"]["h2"]["difference"] == -8192
    v = memory_verdict(tmp_path, {"h1": 100}, {"h1": 101})
    assert not v.ok and "h1: 1 pages (0.0 MiB) more free than before" in v.summary


def test_memory_fails_unread_and_leaves_out_a_host_a_fault_crashed(tmp_path):
    v = memory_verdict(tmp_path, {"h1": 100, "h2": 100}, {"h1": 100},
                       errors={"h2": "host h2 does not answer"})
    assert not v.ok and v.summary == "h2 was not read after the run: host h2 does not answer"
    v = memory_verdict(tmp_path, {"h1": 100, "h2": 100}, {"h1": 100}, host_crash="h2")
    assert v.ok and v.summary.endswith("h1 0 MiB (crashed, not judged: h2)")
    v = memory_verdict(tmp_path, {"h1": 100}, None)
    assert not v.ok and "was not read both before" in v.summary


# -- errors -----------------------------------------------------------------------------------

def errors_verdict(tmp_path, *, consoles=None, result=None, states=None, destroy_op=False):
    """w1 (a writer) and i1, i2 (idle) on h1; at the end the census lists ``states``."""
    run = Run(tmp_path)
    for name, init in (("w1", "blkverify"), ("i1", "idle"), ("i2", "idle")):
        run.at(0, "create", domain=name, host="h1", ok=True, init=init, argv=[], disks=[],
               vifs=0)
    run.at(1, "workload")
    if destroy_op:
        run.at(3, "op", phase="invoke", index=0, kind="destroy", domain="i2", args={})
        run.at(4, "op", phase="ok", index=0, kind="destroy", domain="i2", args={})
    run.at(8, "result", domain="w1", final=True, result=result or {
        "init": "blkverify", "blocks": 64, "verified": 64, "bad": [], "errors": 0})
    run.at(10, "end")
    run.at(10.5, "census", errors={}, states=states if states is not None else
           {"w1": "-b----", "i1": "-b----", "i2": "r-----"})
    checker = checkers.CHECKERS["errors"]
    return checker.fn(run.events(), {"consoles": consoles or {"w1": ["ACK 0 0-7 gen=1 bs=512"]}},
                      checker.defaults)


def test_errors_passes_a_run_where_nothing_went_wrong(tmp_path):
    v = errors_verdict(tmp_path)
    assert v.ok and v.summary == ("3 domains, no error: 3 running at the end, no panic or "
                                  "failed request on a console, 1 results clean")


@pytest.mark.parametrize("change, said", [
    ({"consoles": {"i1": ["Kernel panic - not syncing: Attempted to kill init!"]}},
     "i1 said: 'Kernel panic - not syncing: Attempted to kill init!'"),
    ({"consoles": {"w1": ["blkverify: writing blocks 0-7: EIO; retrying in 0.5 s"] * 2}},
     "w1 said: 'blkverify: writing blocks 0-7: EIO; retrying in 0.5 s' (and 1 more)"),
    ({"result": {"init": "blkverify", "bad": [3, 9], "errors": 0}},
     "w1: its result counts 2 bad blocks, 0 failed steps"),
    ({"states": {"w1": "-b----", "i1": "-b----"}}, "i2 was not running at the end"),
    ({"states": {"w1": "-b----", "i1": "---sc-", "i2": "r-----"}},
     "i1 was ---sc- at the end (shut down or dying)"),
])
def test_errors_fails_on_what_a_guest_says_counts_or_a_domain_gone(tmp_path, change, said):
    v = errors_verdict(tmp_path, **change)
    assert not v.ok and v.summary == said


def test_errors_does_not_count_a_domain_an_op_destroyed(tmp_path):
    v = errors_verdict(tmp_path, states={"w1": "-b----", "i1": "-b----"}, destroy_op=True)
    assert v.ok and "2 running at the end" in v.summary


# -- the timeline's rows ----------------------------------------------------------------------

def test_the_timeline_sums_a_groups_progress_in_one_row(tmp_path):
    run = Run(tmp_path)
    for name, group in (("w-1", "w"), ("w-2", "w"), ("solo", "solo")):
        run.at(0, "create", domain=name, group=group, host="h1", ok=True)
    run.at(1, "progress", units={"w-1": 3, "w-2": 4, "solo": 1})
    run.at(2, "progress", units={"w-1": 5, "w-2": 4, "solo": 2})
    assert rows(run.events()) == {"w ×2": [(1, 7), (2, 9)], "solo": [(1, 1), (2, 2)]}
