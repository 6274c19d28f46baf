"""Emulated hosts end to end: PV domains from real xl.cfg files, consoles, pause, shutdown
and reboot, crash isolation, and the real xenstore tools against a host's xenstored."""

import os
import pathlib
import re
import signal
import subprocess

import pytest

from cluster.xlcfg import parse_config

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "cluster" / "examples"
COUNT = re.compile(r"counter (\d+)")


def counter_cfg(name: str, **keys: str):
    extra = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    return parse_config(f'name = "{name}"\nmemory = 32\nextra = "init=counter"\n{extra}')[0]


def count(xen, name: str) -> int:
    found = [int(m.group(1)) for line in xen.console(name, 5) if (m := COUNT.search(line))]
    return found[-1] if found else 0


def counts_past(xen, name: str, value: int, timeout: float = 30) -> int:
    return xen.wait_for(lambda: (c := count(xen, name)) > value and c, timeout,
                        f"{name} to count past {value}")


def test_create_from_shipped_xl_cfg_and_read_its_console(xen, domains):
    info = domains(EXAMPLES / "counter1.cfg", "h1")
    assert info["host"] == "h1" and info["domid"] >= 1
    first = counts_past(xen, "counter1", 0)
    assert counts_past(xen, "counter1", first) > first
    row = next(r for r in xen.list() if r["name"] == "counter1")
    assert row["mem"] == 64 and row["vcpus"] == 1 and row["state"][2] == "-"
    dom0 = next(r for r in xen.list() if r["domid"] == 0 and r["host"] == "h1")
    assert dom0["name"] == "Domain-0"


def test_pause_stops_progress_and_unpause_resumes(xen, domains):
    domains(counter_cfg("pausee"), "h2")
    domains(counter_cfg("witness"), "h2")
    counts_past(xen, "pausee", 1)
    xen.pause("pausee")
    assert next(r for r in xen.list() if r["name"] == "pausee")["state"][2] == "p"
    frozen = count(xen, "pausee")
    counts_past(xen, "witness", count(xen, "witness") + 3)  # time passes for others
    assert count(xen, "pausee") <= frozen + 1  # at most a line already in flight
    xen.unpause("pausee")
    counts_past(xen, "pausee", frozen + 1)


def test_sigkill_of_a_domain_is_a_crash_and_others_keep_running(xen, domains):
    domains(counter_cfg("victim", on_crash="preserve"), "h1")
    domains(counter_cfg("same-host"), "h1")
    domains(counter_cfg("other-host"), "h2")
    for name in ("victim", "same-host", "other-host"):
        counts_past(xen, name, 0)
    pid = next(r["pid"] for r in xen.list() if r["name"] == "victim")
    before = {n: count(xen, n) for n in ("same-host", "other-host")}
    os.kill(pid, signal.SIGKILL)
    xen.wait_for(lambda: next(r for r in xen.list() if r["name"] == "victim")["state"][3:5]
                 == "sc", 30, "victim to show as crashed (preserve)")
    for name, value in before.items():
        counts_past(xen, name, value + 2)


def test_on_crash_destroy_removes_the_domain(xen, domains):
    domains(counter_cfg("crashy"), "h2")
    counts_past(xen, "crashy", 0)
    pid = next(r["pid"] for r in xen.list() if r["name"] == "crashy")
    os.kill(pid, signal.SIGKILL)
    xen.wait_for(lambda: xen.find("crashy") is None, 30, "crashy to be destroyed")


def test_shutdown_wait_and_reboot_restart(xen, domains):
    domains(counter_cfg("rebooter"), "h1")
    counts_past(xen, "rebooter", 0)
    old = xen.find("rebooter")
    xen.reboot("rebooter", wait=True)
    new = xen.wait_for(lambda: xen.find("rebooter"), 60, "rebooter to restart")
    assert new[1] != old[1]  # a restarted domain is a new domain
    counts_past(xen, "rebooter", 0)
    xen.shutdown("rebooter", wait=True)
    assert xen.find("rebooter") is None  # on_poweroff = destroy


def test_an_init_that_raises_crashes_the_domain(xen, domains):
    cfg = parse_config('name = "raiser"\nmemory = 32\nextra = "init=crash"\n'
                       'on_crash = "preserve"\n')[0]
    domains(cfg, "h2")
    xen.wait_for(lambda: next(r for r in xen.list() if r["name"] == "raiser")["state"][4]
                 == "c", 30, "raiser to crash")


def test_real_xenstore_tools_read_an_emulated_host(xen, domains):
    info = domains(counter_cfg("visible"), "h1")
    sock = next(h["xenstored_socket"] for h in xen.info() if h["host"] == "h1")
    env = {**os.environ, "XENSTORED_PATH": sock}
    out = subprocess.run(["xenstore-read", f"/local/domain/{info['domid']}/name"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "visible"
    listing = subprocess.run(["xenstore-ls", f"/local/domain/{info['domid']}"], env=env,
                             capture_output=True, text=True, timeout=30).stdout
    assert "console" in listing and "control" in listing


def test_create_refuses_what_the_host_cannot_hold(xen):
    cfg = parse_config('name = "huge"\nmemory = 100000\n')[0]
    with pytest.raises(Exception, match="ENOMEM|memory"):
        xen.create(cfg, host="h1")
    assert xen.find("huge") is None


def test_create_refuses_the_shipped_example_naming_its_missing_disk(xen):
    with pytest.raises(Exception, match="/dev/vg/guest-volume does not exist"):
        xen.create(EXAMPLES / "xlexample.pvlinux", host="h1")
    assert xen.find("example.pvlinux") is None


def test_on_crash_rename_restart_keeps_the_old_domain_and_starts_a_new_one(xen, domains):
    domains(counter_cfg("phoenix", on_crash="rename-restart"), "h1")
    counts_past(xen, "phoenix", 0)
    old_domid = xen.find("phoenix")[1]
    pid = next(r["pid"] for r in xen.list() if r["name"] == "phoenix")
    os.kill(pid, signal.SIGKILL)
    renamed = f"phoenix-{old_domid}"
    xen.wait_for(lambda: xen.find(renamed) and xen.find("phoenix"), 60,
                 "the renamed wreck and a new phoenix")
    assert xen.find("phoenix")[1] != old_domid
    counts_past(xen, "phoenix", 0)
    xen.destroy(renamed)


def test_xen_init_dom0_entries_read_back_with_xenstore_read(xen):
    """``tools/helpers/xen-init-dom0.c`` (reference 11.5): on any Xen host
    ``xenstore-read /local/domain/0/name`` prints ``Domain-0``; the cpupool is named too."""
    for host in xen.info():
        env = {**os.environ, "XENSTORED_PATH": host["xenstored_socket"]}
        got = subprocess.run(["xenstore-read", "/local/domain/0/name", "/local/domain/0/domid",
                              "/local/pool/0/name"], env=env, capture_output=True, text=True,
                             timeout=30)
        assert got.returncode == 0, got.stderr
        assert got.stdout.split() == ["Domain-0", "0", "Pool-0"], host["host"]
