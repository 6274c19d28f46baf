"""``xenray bench scale``'s pure parts (cluster.bench.scale): the fill levels, each domain's
order on its host across batches, the summaries and the table; its xenstore probes against a
real xenstored (an in-process host's, over its real Unix socket); and the report's PNGs."""

import os
import pathlib

import pytest

from actors.toolstack import builder
from actors.xenstored.unix_socket import UnixSocketServer
from cluster.bench import scale
from cluster.plots import write_scale_report
from cluster.xlcfg import parse_config
from protocols.errno import Errno, XenError


def test_fill_levels_start_empty_and_take_each_quarter_once():
    assert scale.fill_levels(100) == [0, 25, 50, 75, 100]
    assert scale.fill_levels(3) == [0, 1, 2, 3]
    assert scale.fill_levels(1) == [0, 1]


def test_hosts_are_sized_for_their_share_the_probe_and_slack():
    assert scale.host_memory_mib(100, 4) == scale.HOST_BASE_MIB + 16 * 27
    assert scale.host_memory_mib(3, 2) == scale.HOST_BASE_MIB + 16 * 4


def result(name, host, k, latency_s=1.0, ok=True):
    return {"name": name, "host": host, "ok": ok, "error": None if ok else "ENOMEM",
            "domid": k if ok else None, "latency_s": latency_s, "steps_ms": {}, "k": k}


def test_order_numbers_a_host_s_domains_across_batches_and_the_cluster_s_as_they_came_up():
    first = [result("a-2", "h2", 1), result("a-1", "h1", 1), result("a-3", "h1", 2)]
    second = [result("b-1", "h1", 1), result("b-2", "h2", 1, ok=False), result("b-3", "h2", 2)]
    records = scale.order([first, second])
    assert [(r["name"], r["k"], r["i"]) for r in records] == [
        ("a-2", 1, 1), ("a-1", 1, 2), ("a-3", 2, 3),
        ("b-1", 3, 4), ("b-2", 2, None), ("b-3", 3, 5)]


def test_creation_summary_compares_each_host_s_last_domain_with_its_first():
    records = scale.order([[result("a-1", "h1", 1, 2.0), result("a-2", "h2", 1, 1.0)],
                           [result("b-1", "h1", 1, 3.0), result("b-2", "h1", 2, 2.5),
                            result("b-3", "h2", 1, 9.0, ok=False)]])
    summary = scale.creation_summary(records, wall_s=2.0)
    assert summary["per_host"]["h1"] == {"domains": 3, "first_s": 2.0, "last_k": 3,
                                         "last_s": 2.5, "last_over_first": 1.25}
    assert summary["per_host"]["h2"]["last_k"] == 1
    assert (summary["created"], summary["failed"], summary["domains_per_s"]) == (4, 1, 2.0)
    assert summary["errors"] == ["ENOMEM"]


SMAPS = """\
55d0c0a00000-7ffd3b5fd000 ---p 00000000 00:00 0                          [rollup]
Rss:               10240 kB
Pss:                6144 kB
Pss_Anon:           4096 kB
Shared_Clean:       4096 kB
Private_Clean:      1024 kB
Private_Dirty:      3072 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
"""


def test_smaps_rollup_uss_is_what_the_process_maps_alone():
    assert scale.smaps_rollup(SMAPS) == {"rss_mib": 10.0, "pss_mib": 6.0, "uss_mib": 4.0}


def test_smaps_rollup_of_this_process_orders_uss_pss_rss():
    mem = scale.process_memory(os.getpid())
    assert 0 < mem["uss_mib"] <= mem["pss_mib"] <= mem["rss_mib"]
    assert scale.process_memory(2**22 + 1) is None  # above pid_max: no such process


def test_memory_summary_per_host_and_over_all():
    rows = [{"host": "h1", "uss_mib": 10.0, "pss_mib": 12.0},
            {"host": "h1", "uss_mib": 20.0, "pss_mib": 22.0},
            {"host": "h2", "uss_mib": 40.0, "pss_mib": 41.0}]
    summary = scale.memory_summary(rows)
    assert summary["per_host"]["h1"] == {"domains": 2, "uss_mib": 15.0, "pss_mib": 17.0,
                                         "uss_total_mib": 30.0, "pss_total_mib": 34.0}
    assert summary["total"]["uss_mib"] == 20.0 and summary["total"]["uss_total_mib"] == 70.0
    assert scale.memory_summary([])["total"] is None


def test_memory_back_fails_when_any_host_is_short():
    before = {"h1": 700, "h2": 700}
    assert scale.memory_back(before, {"h1": 700, "h2": 701})
    assert not scale.memory_back(before, {"h1": 700, "h2": 684})
    assert not scale.memory_back(before, {"h1": 700})  # a host that did not answer


def test_cpu_percent_is_of_one_core():
    assert scale.cpu_percent(1_000_000_000, 1_500_000_000, 5.0) == 10.0


def report(tmp_path=None):
    """A whole report as bench_scale assembles it, from made-up samples."""
    levels = [0, 1, 2]
    records = scale.order([[result("a-1", "h1", 1, 2.0)],
                           [result("b-1", "h2", 1, 2.2)]])
    data = {"hosts": 2, "domains": 2, "domain_mib": 16, "levels": levels,
            "xenstore": [{"n": n, "host": h, "host_domains": 0, "read_us": 100.0 + n,
                          "write_us": 200.0 + n, "watch_us": 300.0 + 10 * n}
                         for n in levels for h in ("h1", "h2")],
            "list": [{"n": n, "list_ms": 5.0 + n, "rows": 2 + n} for n in levels],
            "release": [{"n": n, "host": "h1", "create_s": 2.0, "watchers": 4,
                         "seen_by": 4 - (n == 2), "seen_ms": 3.0, "seen_max_ms": 4.0,
                         "destroy_ms": 50.0, "events": 6 + n} for n in levels],
            "memory": {"domains": [], "unread": 0, "bare": {"rss_mib": 90.0, "pss_mib": 40.0,
                                                            "uss_mib": 30.0},
                       "summary": scale.memory_summary(
                           [{"host": "h1", "uss_mib": 60.0, "pss_mib": 70.0},
                            {"host": "h2", "uss_mib": 50.0, "pss_mib": 60.0}])},
            "pool": {"h1": {"size": 2, "taken": 3, "missed": 1},
                     "h2": {"size": 2, "taken": 2, "missed": 0}},
            "idle_cpu": {"seconds": 5.0, "domains": 2, "domain_pct": 1.0,
                         "domains_total_pct": 2.0, "bare_pct": 0.5},
            "destroy": {"domains": 2, "seconds": 1.5, "per_domain_ms": 700.0, "errors": [],
                        "free_before_mib": {"h1": 700}, "free_after_mib": {"h1": 700},
                        "memory_back": True},
            "creation": {"domains": records, "summary": scale.creation_summary(records, 4.0)}}
    data["curves"] = scale.curves(data)
    return data


def test_curves_are_medians_over_hosts_at_each_level():
    curves = report()["curves"]
    assert curves["read_us"] == [100.0, 101.0, 102.0]
    assert curves["events"] == [6, 7, 8]
    assert set(curves) == set(scale.CURVES)


def test_table_puts_each_cost_at_n_beside_its_baseline_from_the_same_run():
    rows = {r["measure"]: r for r in scale.table_rows(report())}
    watch = rows["xenstore write to its watch event, p50 (N=2)"]
    assert (watch["value"], watch["baseline"], watch["baseline_is"]) == (320.0, 300.0, "N=0")
    assert watch["ratio"] == pytest.approx(320 / 300)
    uss = rows["memory: USS per domain (median)"]
    assert (uss["value"], uss["baseline"], uss["ratio"]) == (55.0, 30.0, 55 / 30)
    assert rows["create: each host's last domain (median over hosts)"]["ratio"] == 1.0
    assert rows["free memory back after destroy"]["value"] == "yes"


def test_notes_name_a_missed_release_and_the_curves():
    text = "\n".join(scale.notes(report()))
    assert "N=2: 3 of 4 watchers" in text
    assert "  XS_READ µs: 100 101 102" in text
    assert "5 of 6 creates took one" in text


def test_scale_report_writes_its_json_and_three_nonempty_pngs(tmp_path):
    files = write_scale_report(report(), tmp_path / "out")
    assert [pathlib.Path(f).name for f in files] == [
        "scale.json", "scale-creation.png", "scale-latency.png", "scale-memory.png"]
    for f in files[1:]:
        assert pathlib.Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def xs_socket(host, tmp_path):
    """The in-process host's xenstored, listening on a real Unix socket."""
    server = UnixSocketServer(host.xenstored.server, tmp_path / "xs.sock").start()
    yield tmp_path / "xs.sock"
    server.stop()


def test_time_xenstore_times_reads_writes_and_watch_events_and_cleans_up(host, xs_socket):
    timed = scale.time_xenstore(xs_socket, ops=20, fires=5)
    assert all(0 < timed[k] < 1e6 for k in ("read_us", "write_us", "watch_us"))
    with pytest.raises(XenError) as gone:
        host.xs.read(scale.BENCH_NODE)
    assert gone.value.errno == Errno.ENOENT


def test_a_watcher_that_never_gets_its_event_times_out(host, xs_socket):
    with scale.Watcher(xs_socket, "/local/domain/0/quiet") as w:
        host.xs.write("/local/domain/0/elsewhere", "1")
        with pytest.raises(TimeoutError):
            w.wait("/local/domain/0/quiet/x", timeout=0.2)
        host.xs.write("/local/domain/0/quiet/x", "1")
        assert w.wait("/local/domain/0/quiet/x") > 0


def test_time_release_counts_the_watchers_that_see_a_destroy(host, xs_socket):
    built = host.build(parse_config('name = "probe"\nmemory = 16\n')[0])

    def destroy():
        builder.destroy_domain(host.xl, host.xs, built.domid)
        host.release(built.domid)

    def events_sent():
        return host.xenstored.on_statistics()["watch_events"]

    seen = scale.time_release(xs_socket, built.domid, destroy, events_sent, watchers=3)
    assert (seen["watchers"], seen["seen_by"]) == (3, 3)
    assert 0 < seen["seen_ms"] <= seen["seen_max_ms"]
    assert seen["events"] >= 3


def test_time_release_reports_watchers_that_never_saw_it(host, xs_socket):
    """A destroy that does not release the domain in xenstored: nobody is told."""
    built = host.build(parse_config('name = "kept"\nmemory = 16\n')[0])
    seen = scale.time_release(xs_socket, built.domid, lambda: None, lambda: 0, watchers=2,
                              timeout=0.2)
    assert (seen["seen_by"], seen["seen_ms"], seen["events"]) == (0, None, 0)
