"""Progress from consoles (cluster.scenario.progress) and the timeline PNG
(cluster.scenario.plot): the lines each init prints are counted in its units, a restarted
workload goes on adding, a console is followed across hosts from real log files, and a run's
history draws."""

import json

from cluster.scenario import plot
from cluster.scenario.history import History
from cluster.scenario.progress import Consoles, Progress
from tests.netwire import IPS, Wire
from tests.unit.test_guest_net import Kernel, run


def feed(init, lines):
    p = Progress(init)
    results = [r for line in lines if (r := p.feed(line)) is not None]
    return p.units, results


def test_counter_and_ping_count_their_lines():
    assert feed("counter", ["counter 1", "counter 2", "hello", "counter 3"])[0] == 3
    assert feed("ping", ["PING 10.0.0.1 (10.0.0.1) 56(84) bytes of data.",
                         "64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=1.0 ms",
                         "no answer from 10.0.0.1: icmp_seq=2",
                         "64 bytes from 10.0.0.1: icmp_seq=3 ttl=64 time=1.0 ms"])[0] == 2


def test_a_count_printed_goes_on_adding_after_the_workload_restarts():
    units, _ = feed("memdirty", ["memdirty: 100 pages dirtied, 50 pages/s",
                                 "memdirty: 250 pages dirtied, 50 pages/s",
                                 "memdirty: 40 pages dirtied, 40 pages/s"])  # a new domain
    assert units == 290


def test_a_udp_stream_reports_its_packets_so_far_and_its_total():
    wire = Wire()
    wire.stack(0)
    sender = run(Kernel(wire.stack(1)), "udpstream", "role=send", f"dst={IPS[0]}",
                 "seconds=0.05", "rate=2000", "report=0.01")
    so_far = [line for line in sender.lines if line.endswith("packets so far")]
    assert len(so_far) >= 3 and so_far[0].startswith("udpstream send: ")
    units, (result,) = feed("udpstream", sender.lines)
    assert units == result["packets"] > int(so_far[-1].split()[2])


def test_result_lines_are_returned_and_an_unmeasured_init_counts_nothing():
    units, results = feed("idle", ["counter 1", 'RESULT {"init": "x", "n": 2}', "RESULT {"])
    assert units == 0 and results == [{"init": "x", "n": 2}]
    assert not Progress("idle").measured and Progress("counter").measured


def test_consoles_follow_a_domain_across_hosts_from_what_follow_found(tmp_path):
    h1, h2 = tmp_path / "console" / "h1", tmp_path / "console" / "h2"
    h1.mkdir(parents=True)
    (h1 / "a.log").write_bytes(b"counter 1\ncounter 2\n")  # an older run's a
    consoles = Consoles(tmp_path, ["h1", "h2"])
    consoles.follow("a")
    assert consoles.read("a") == []
    with (h1 / "a.log").open("ab") as f:
        f.write(b"counter 3\ncoun")
    assert consoles.read("a") == ["counter 3"]  # a partial line waits for its end
    with (h1 / "a.log").open("ab") as f:
        f.write(b"ter 4\n")
    h2.mkdir()
    (h2 / "a.log").write_bytes(b"counter 5\n")  # it migrated to h2
    assert consoles.read("a") == ["counter 4", "counter 5"]
    assert consoles.read("a") == []


def test_the_timeline_draws_a_run(tmp_path):
    now = [0.0]
    hist = History(tmp_path / "history.jsonl", clock=lambda: now[0])
    for t, event, fields in [
            (0, "create", {"domain": "c1", "host": "h1", "ok": True}),
            (1, "workload", {}), (2, "progress", {"units": {"c1": 1, "c2": 1}}),
            (3, "inject", {"index": 0, "occurrence": 0, "kind": "freeze", "targets": ["c1"]}),
            (4, "op", {"phase": "invoke", "index": 0, "kind": "migrate", "domain": "c2"}),
            (5, "heal", {"index": 0, "occurrence": 0, "kind": "freeze", "targets": ["c1"]}),
            (5.5, "inject", {"index": 1, "occurrence": 0, "kind": "crash", "targets": ["h2"]}),
            (6, "progress", {"units": {"c1": 1, "c2": 9}}), (7, "end", {})]:
        now[0] = t
        hist.record(event, **fields)
    hist.close()
    png = plot.write_timeline(hist.events, tmp_path / "timeline.png", title="t")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert json.loads((tmp_path / "history.jsonl").read_text().splitlines()[2])["t"] == 2
