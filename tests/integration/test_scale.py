"""Issue 13 on the session cluster: creation from the hosts' pools of started domain
processes, batch creation spread by free memory, and ``create --count`` as a user runs it."""

import json
import os
import pathlib
import threading

from actors.transport import launch
from cluster.fault.processes import Process
from tests.integration.conftest import cli
from tests.waits import wait_until

WAIT_S = 60.0
IDLE = 'name = "{name}"\nmemory = 16\nextra = "init=idle"\n'


def ticks_since_boot():
    """Now, in the unit of a process's start time (``/proc/<pid>/stat`` field 22)."""
    return float(pathlib.Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")


def full_pool(xen, host):
    return wait_until(lambda: (p := xen._call(host, "xl", "pool"))["starting"] == 0 and
                      len(p["idle"]) == p["size"] and p, f"{host}'s pool to fill", WAIT_S)


def test_a_create_binds_a_process_started_before_it_and_the_pool_tops_up(xen, domains):
    pool = full_pool(xen, "h2")
    started = {c: Process.of(launch.ask(launch.find("h2", c), "process")["pid"])
               for c in pool["idle"]}
    asked = ticks_since_boot()
    made = domains(IDLE.format(name="pooled1"), "h2")
    endpoint = xen._call("h2", "xl", "endpoint", "pooled1").partition("/")[2]
    assert endpoint in started, "the domain runs in one of the pool's idle processes"
    assert made["pid"] == started[endpoint].pid
    assert started[endpoint].start < asked, "started before the create was asked"
    after = full_pool(xen, "h2")
    assert after["taken"] == pool["taken"] + 1
    assert endpoint not in after["idle"], "a bound process is never handed out again"
    xen.destroy("pooled1")
    wait_until(lambda: not started[endpoint].alive(), "destroy to kill its process", WAIT_S)
    assert endpoint not in launch.named("h2", "vm-")


def test_create_many_spreads_by_free_memory_and_reports_a_failure_without_stopping(xen):
    xen.create(IDLE.format(name="many-2"), host="h1")  # its name is taken: that one fails
    seen = []
    try:
        results = xen.create_many(IDLE.format(name="many"), 5,
                                  progress=lambda done, total, r: seen.append((done, total)))
        assert [r["name"] for r in results] == [f"many-{i}" for i in range(1, 6)]
        assert [r["ok"] for r in results] == [True, False, True, True, True]
        assert "EEXIST" in results[1]["error"] and results[1]["domid"] is None
        assert {r["host"] for r in results} == {"h1", "h2"}
        for host in ("h1", "h2"):
            assert sorted(r["k"] for r in results if r["host"] == host) == \
                list(range(1, 1 + sum(r["host"] == host for r in results)))
        assert sorted(seen) == [(i, 5) for i in range(1, 6)]
        rows = {r["name"]: r for r in xen.list()}
        for r in results:
            if r["ok"]:
                assert rows[r["name"]]["host"] == r["host"]
                assert rows[r["name"]]["domid"] == r["domid"]
        assert rows["many-2"]["host"] == "h1", "the failed create left the other alone"
    finally:
        for i in range(1, 6):
            if xen.find(f"many-{i}") is not None:
                xen.destroy(f"many-{i}")


def test_cli_create_count_shows_each_domain_and_a_summary(cluster_home, tmp_path):
    cfg = tmp_path / "burst.cfg"
    cfg.write_text(IDLE.format(name="burst"))
    made = cli(cluster_home, "create", str(cfg), "--count", "3", "--json")
    try:
        assert made.returncode == 0, made.stderr
        results = json.loads(made.stdout)
        assert [(r["name"], r["ok"]) for r in results] == \
            [("burst-1", True), ("burst-2", True), ("burst-3", True)]
        again = cli(cluster_home, "create", str(cfg), "--count", "1", "--host", "h2")
        assert again.returncode == 1, "burst-1 exists: the one create failed"
        assert "burst-1: EEXIST" in again.stderr
        assert "created 0 of 1 domains" in again.stdout
        bad = cli(cluster_home, "create", str(cfg), "--count", "0")
        assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    finally:
        for i in (1, 2, 3):
            cli(cluster_home, "destroy", f"burst-{i}")


def thread_wakeups(pid):
    """``{tid: voluntary context switches}`` of the threads named as the process's main
    thread, the main thread left out: the Python threads (Ray's own C++ threads name
    themselves, and the main thread is Ray's, which checks for signals every 10 ms)."""
    task = pathlib.Path(f"/proc/{pid}/task")
    main = (task / str(pid) / "comm").read_text()
    out = {}
    for t in task.iterdir():
        if t.name != str(pid) and (t / "comm").read_text() == main:
            status = (t / "status").read_text()
            out[t.name] = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return out


def test_an_idle_domain_s_own_threads_sleep(xen, domains):
    """No xenray thread of an idle guest wakes on a timer: over 5 s of a domain that runs
    ``idle``, its Python threads are woken at most once in all (a timer of 1 s would be 5)."""
    made = domains(IDLE.format(name="sleeper1"), "h1")
    before = thread_wakeups(made["pid"])
    assert before, "the domain has Python threads (its kernel's and the pipe's)"
    threading.Event().wait(5.0)  # the measurement window itself, not a wait for something
    after = thread_wakeups(made["pid"])
    woken = sum(after[t] - before[t] for t in before if t in after)
    assert woken <= 1, f"the idle domain's threads woke {woken} times in 5 s"
