"""Issue 13 on the session cluster: domain processes forked by the hosts' fork servers,
batch creation spread by free memory, ``create --count`` as a user runs it, idle domains that
sleep."""

import json
import os
import pathlib
import threading

from cluster.bench.scale import smaps_rollup
from cluster.fault.processes import Process
from tests.integration.conftest import cli
from tests.waits import wait_until

WAIT_S = 60.0
IDLE = 'name = "{name}"\nmemory = 16\nextra = "init=idle"\n'


def ticks_since_boot():
    """Now, in the unit of a process's start time (``/proc/<pid>/stat`` field 22)."""
    return float(pathlib.Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")


def parent(pid):
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_create_forks_its_process_from_the_host_s_zygote_and_destroy_kills_it(xen, domains):
    """The domain's process is no Ray worker: the host's fork server's zygote forked it,
    after the create was asked, and it shares the zygote's pages (a few MiB of its own,
    where a Ray worker costs 43). Destroy kills it and the fork server forgets it."""
    asked = ticks_since_boot()
    made = domains(IDLE.format(name="forked1"), "h2")
    endpoint = xen._call("h2", "xl", "endpoint", "forked1")
    host, server, component = endpoint.split("/")
    assert (host, server) == ("h2", "forkserver") and component.startswith("vm-")
    assert xen._call("h2", "forkserver", "processes")[component] == made["pid"]
    proc = Process.of(made["pid"])
    assert proc.start >= asked, "forked for this create, not started ahead"
    zygote = parent(made["pid"])
    assert parent(zygote) == xen._call("h2", "forkserver", "process")["pid"]
    assert "actors.domain.zygote" in pathlib.Path(f"/proc/{zygote}/cmdline").read_text()
    uss = smaps_rollup(pathlib.Path(f"/proc/{made['pid']}/smaps_rollup").read_text())["uss_mib"]
    assert uss < 30, f"a forked idle domain owns {uss:.1f} MiB"
    assert xen.domain_statistics("forked1")["init"] == "idle", "reached through the relay"
    xen.destroy("forked1")
    wait_until(lambda: not proc.alive(), "destroy to kill its process", WAIT_S)
    assert component not in xen._call("h2", "forkserver", "processes")


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
