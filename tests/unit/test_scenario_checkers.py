"""The checkers (cluster.scenario.checkers) on histories written as a run writes them: each
passes a run that keeps its property and fails one that breaks it; and the history's views
(which domains a fault stalls by design, where a domain ran) that they rest on."""

import pytest

from actors.guest.blk import verify_block

from cluster.scenario import checkers, history
from cluster.scenario.history import History

SAMPLE_S = 0.25


class Run:
    """A history written with a clock the test sets (History's own file and format)."""

    def __init__(self, path):
        self.now = 0.0
        self.units = {}
        self.hist = History(path / "history.jsonl", clock=lambda: self.now)

    def at(self, t, event, **fields):
        self.now = t
        return self.hist.record(event, **fields)

    def samples(self, until, stalls):
        """Progress every SAMPLE_S s up to ``until``: each domain advances one unit per
        sample except inside its ``stalls`` (name -> [(from, to)])."""
        t = self.now
        while t < until:
            t = round(t + SAMPLE_S, 4)
            for name, spans in stalls.items():
                if not any(a <= t < b for a, b in spans):
                    self.units[name] = self.units.get(name, 0) + 1
            self.at(t, "progress", units=dict(self.units))

    def events(self):
        self.hist.close()
        return history.load(self.hist._file.name)


def blkback_run(tmp_path, *, stalls, heal_is_crash=True, bound=None):
    """Three domains: c1 (h1) and c2 (h2) counting, d1 (h1) writing to a disk; blkback of h1
    is killed at t=5 (the run's workload starts at t=1, ends at t=11)."""
    run = Run(tmp_path)
    run.at(0, "run", scenario="t", seed=1, duration=10)
    run.at(0.5, "create", domain="c1", host="h1", ok=True, disks=[], vifs=0, init="counter")
    run.at(0.5, "create", domain="c2", host="h2", ok=True, disks=[], vifs=0, init="counter")
    run.at(0.6, "create", domain="d1", host="h1", ok=True, disks=["/x.img"], vifs=0,
           init="blkverify")
    run.at(1.0, "workload")
    run.samples(5.0, stalls)
    run.at(5.0, "inject", index=0, occurrence=0, kind="crash", targets=["h1/blkback"],
           target={"role": "blkback", "host": "h1"})
    run.samples(11.0, stalls)
    run.at(11.0, "end")
    return run.events()


def verdict(kind, events, **params):
    checker = checkers.CHECKERS[kind]
    return checker.fn(events, {}, {**checker.defaults, **params})


def test_history_round_trips_through_its_file(tmp_path):
    run = Run(tmp_path)
    written = [run.at(0, "run", scenario="t"), run.at(1.5, "workload")]
    assert run.events() == written
    assert written[1]["t"] == 1.5 and written[1]["wall"].endswith("+00:00")


def test_a_backend_crash_stalls_the_domains_that_use_it_on_its_host(tmp_path):
    events = blkback_run(tmp_path, stalls={"c1": [], "c2": [], "d1": [(5, 8)]})
    (window,) = history.fault_windows(events)
    assert (window.start, window.end) == (5.0, 5.0)  # a crash is an instant
    assert history.affected(events, window) == {"d1"}


def test_a_host_fault_stalls_every_domain_there_and_a_network_fault_those_with_a_nic(tmp_path):
    run = Run(tmp_path)
    run.at(0, "create", domain="a", host="h1", ok=True, disks=[], vifs=1)
    run.at(0, "create", domain="b", host="h1", ok=True, disks=[], vifs=0)
    run.at(0, "create", domain="c", host="h2", ok=True, disks=[], vifs=1)
    run.at(1, "op", phase="ok", index=0, kind="migrate", domain="c", args={"host": "h1"})
    run.at(2, "inject", index=0, occurrence=0, kind="freeze", targets=["h1"])
    run.at(3, "heal", index=0, occurrence=0, kind="freeze", targets=["h1"])
    run.at(4, "inject", index=1, occurrence=0, kind="partition", targets=["h1"])
    run.at(5, "inject", index=2, occurrence=0, kind="memory", targets=["h1"])
    run.at(6, "inject", index=3, occurrence=0, kind="crash", targets=["h1/xenstored"])
    run.at(7, "inject", index=4, occurrence=0, kind="link", targets=["h1-h2"])
    freeze, partition, memory, xenstored, link = history.fault_windows(run.events())
    events = run.events()
    assert freeze.end == 3
    assert history.host_at(events, "c", 0.5) == "h2" and history.host_at(events, "c", 2) == "h1"
    assert history.affected(events, freeze) == {"a", "b", "c"}  # c had moved there
    assert history.affected(events, partition) == {"a", "c"}
    assert history.affected(events, memory) == set()
    assert history.affected(events, xenstored) == set()  # the data path needs no xenstore
    assert history.affected(events, link) == {"a", "c"}  # "h1-h2": NICs on either host


def test_isolation_passes_when_only_the_stalled_domain_stops(tmp_path):
    events = blkback_run(tmp_path, stalls={"c1": [], "c2": [], "d1": [(5, 8)]})
    v = verdict("isolation", events, max_gap=1.0)
    assert v.ok, v.summary
    assert set(v.details["gaps"]) == {"c1", "c2"} and "d1" in v.details["left_out"]


def test_isolation_fails_when_a_domain_no_fault_targeted_stops(tmp_path):
    events = blkback_run(tmp_path, stalls={"c1": [], "c2": [(5, 7.5)], "d1": [(5, 8)]})
    v = verdict("isolation", events, max_gap=1.0)
    assert not v.ok
    assert v.summary.startswith("c2 made no progress for 2.8 s from 3.8 s")


def test_isolation_counts_a_stall_at_the_end_of_the_run(tmp_path):
    events = blkback_run(tmp_path, stalls={"c1": [(9, 99)], "c2": [], "d1": []})
    assert not verdict("isolation", events, max_gap=1.0).ok
    assert verdict("isolation", events, max_gap=1.0, exempt=["c1"]).ok


def test_recovery_is_from_the_heal_to_the_first_progress_after_it(tmp_path):
    events = blkback_run(tmp_path, stalls={"c1": [], "c2": [], "d1": [(5, 8)]})
    (row,) = checkers.recovery_times(events)
    assert row["domain"] == "d1" and row["recovery_s"] == pytest.approx(3.0)
    assert verdict("recovery", events).ok  # no bound: reported only
    assert verdict("recovery", events, max_s=4.0).ok


def test_recovery_fails_past_its_bound_or_never(tmp_path):
    late = blkback_run(tmp_path, stalls={"c1": [], "c2": [], "d1": [(5, 8)]})
    v = verdict("recovery", late, max_s=2.0)
    assert not v.ok and "d1 3.0 s after crash h1/blkback" in v.summary
    never = blkback_run(tmp_path, stalls={"c1": [], "c2": [], "d1": [(5, 99)]})
    v = verdict("recovery", never, max_s=2.0)
    assert not v.ok and "d1 never" in v.summary
    assert verdict("recovery", never).ok  # reported, not judged, without a bound


def disk_run(tmp_path, *, written, flush_after, powercut):
    """d1 logged three batches of 4 acknowledged 4 KiB blocks (and a flush after
    ``flush_after`` writes); the image holds the blocks in ``written``."""
    image = tmp_path / "d1.img"
    with image.open("wb") as f:
        f.truncate(64 * 4096)
        for block in written:
            f.seek(block * 4096)
            f.write(verify_block(9, block, 4096))
    lines = [f"ACK {seq} {seq * 8}-{seq * 8 + 31} gen=9 bs=4096" for seq in (0, 4, 8)]
    lines.insert(2 if flush_after == 8 else 3, f"FLUSH {flush_after}")
    run = Run(tmp_path)
    run.at(0, "create", domain="d1", host="h1", ok=True, disks=[str(image)], vifs=0)
    run.at(1, "workload")
    if powercut:
        run.at(2, "inject", index=0, occurrence=0, kind="powercut", targets=["d1/xvda"])
    run.at(3, "end")
    checker = checkers.CHECKERS["durability"]
    return checker.fn(run.events(), {"consoles": {"d1": lines}}, checker.defaults)


def test_durability_passes_when_every_acknowledged_block_is_in_the_image(tmp_path):
    v = disk_run(tmp_path, written=range(12), flush_after=12, powercut=False)
    assert v.ok and v.summary == "d1: all 12 acknowledged blocks in the image"


def test_durability_fails_when_an_acknowledged_block_is_not(tmp_path):
    v = disk_run(tmp_path, written=[b for b in range(12) if b != 5], flush_after=12,
                 powercut=False)
    assert not v.ok and v.summary.startswith("d1: 1 acknowledged blocks lost, first block at "
                                             "sector 40 (ACK 4")


def test_after_a_power_cut_only_flushed_blocks_must_survive(tmp_path):
    kept = disk_run(tmp_path, written=range(8), flush_after=8, powercut=True)
    assert kept.ok and "all 8 flushed of 12 acknowledged blocks" in kept.summary
    lost = disk_run(tmp_path, written=[b for b in range(8) if b != 2], flush_after=8,
                    powercut=True)
    assert not lost.ok and "1 acknowledged blocks lost" in lost.summary


def test_durability_with_nothing_acknowledged_proves_nothing(tmp_path):
    run = Run(tmp_path)
    run.at(0, "create", domain="d1", host="h1", ok=True, disks=["/x.img"], vifs=0)
    checker = checkers.CHECKERS["durability"]
    v = checker.fn(run.events(), {"consoles": {"d1": ["counter 1"]}}, checker.defaults)
    assert not v.ok and "no acknowledged writes were logged" in v.summary


def net_run(tmp_path, *, unanswered, gaps):
    """A pinger (h2) pinging web (h1) and a UDP stream h2 -> h1, with h1 partitioned off
    from t=5 to t=8; the guests' clocks are 1 s behind the history's."""
    run = Run(tmp_path)
    for name, host, init, argv, ip in [
            ("web", "h1", "idle", [], "10.0.0.1"),
            ("pinger", "h2", "ping", ["10.0.0.1", "count=10"], "10.0.0.2"),
            ("recv", "h1", "udpstream", ["role=recv"], "10.0.0.3"),
            ("send", "h2", "udpstream", ["role=send", "dst=10.0.0.3"], "10.0.0.4")]:
        run.at(0, "create", domain=name, host=host, ok=True, init=init, argv=argv, disks=[],
               vifs=1, ips=[ip])
    run.at(1, "workload")
    run.at(5, "inject", index=0, occurrence=0, kind="partition", targets=["h1"])
    run.at(8, "heal", index=0, occurrence=0, kind="partition", targets=["h1"])
    run.at(10, "result", domain="pinger", final=True, result={
        "init": "ping", "timeout": 1.0, "unanswered": unanswered})
    run.at(10, "result", domain="send", final=True, result={
        "init": "udpstream", "role": "send", "packets": 1000, "t0": 0.0, "t_end": 9.0})
    run.at(10, "result", domain="recv", final=True, result={
        "init": "udpstream", "role": "recv", "gaps": gaps, "highest": 999, "last_sent": 9.0})
    run.at(11, "end")
    checker = checkers.CHECKERS["network"]
    offsets = {"pinger": (1.0, 0.001), "send": (1.0, 0.001)}
    return checker.fn(run.events(), {"clock_offsets": offsets}, checker.defaults)


def test_network_passes_losses_inside_the_partition(tmp_path):
    v = net_run(tmp_path, unanswered=[[5, 4.2], [6, 5.2]], gaps=[[400, 699, 300, 4.1, 6.9]])
    assert v.ok, v.summary
    assert v.details["domains"]["pinger"]["lost"] == 2
    assert v.details["domains"]["recv"]["lost"] == 300


def test_network_fails_a_loss_outside_every_fault_window(tmp_path):
    v = net_run(tmp_path, unanswered=[[5, 4.2], [9, 8.5]], gaps=[[400, 699, 300, 4.1, 6.9]])
    assert not v.ok and v.summary == ("pinger: 1 lost outside any fault window, first #9 "
                                      "sent at 8.5 s")
    v = net_run(tmp_path, unanswered=[], gaps=[[100, 101, 2, 1.0, 1.1]])
    assert not v.ok and v.summary.startswith("recv: 2 lost outside any fault window")


def leaks_verdict(tmp_path, audit, *, host_crash=False):
    run = Run(tmp_path)
    if host_crash:
        run.at(1, "inject", index=0, occurrence=0, kind="crash", targets=["h2"])
    checker = checkers.CHECKERS["leaks"]
    return checker.fn(run.events(), {"audit": audit}, checker.defaults)


def test_leaks_passes_a_clean_audit_and_excuses_a_host_a_fault_crashed(tmp_path):
    assert leaks_verdict(tmp_path, {"leaks": [], "errors": {}}).ok
    v = leaks_verdict(tmp_path, {"leaks": [], "errors": {"h2": "its xl is not running"}},
                      host_crash=True)
    assert v.ok and "crashed, not audited: h2" in v.summary


def test_leaks_fails_on_a_leak_or_a_host_that_did_not_answer(tmp_path):
    leak = {"host": "h1", "kind": "grant-map", "what": "domain 0 maps 8 grant(s) of 3"}
    v = leaks_verdict(tmp_path, {"leaks": [leak], "errors": {}})
    assert not v.ok and v.summary == "1 leaks: h1 grant-map: domain 0 maps 8 grant(s) of 3"
    v = leaks_verdict(tmp_path, {"leaks": [], "errors": {"h2": "its xl is not running"}})
    assert not v.ok and "h2 was not audited" in v.summary


def test_isolation_leaves_out_a_domain_an_op_stalls_and_judges_one_until_its_result(tmp_path):
    run = Run(tmp_path)
    for name in ("a", "b", "c"):
        run.at(0, "create", domain=name, host="h1", ok=True, disks=[], vifs=0)
    run.at(1, "workload")
    run.samples(3, {"a": [], "b": [], "c": []})
    run.at(3, "op", phase="invoke", index=0, kind="pause", domain="a", args={})
    run.at(3.5, "result", domain="c", final=True, result={"init": "ping"})
    run.samples(8, {"a": [(3, 99)], "b": [], "c": [(3.5, 99)]})  # c finished: it idles
    run.at(8, "end")
    v = verdict("isolation", run.events(), max_gap=1.0)
    assert v.ok and set(v.details["gaps"]) == {"b", "c"}
    assert v.details["left_out"] == {"a": ["op pause"]}
