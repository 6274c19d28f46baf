"""Issue 12's recovery on the session cluster, with real processes killed and stopped by real
signals through the nemeses (``cluster.fault.nemesis``):

* a killed toolstack agent is restarted by Ray and adopts its running domains; a DomU that
  dies while no agent runs still gets its ``on_crash``, and its memory is freed;
* a frozen (SIGSTOPped) domain is shown ``frozen``, and counts on once thawed;
* memory pressure makes a create fail with ENOMEM, and the heal gives the memory back;
* (destructive) a killed hypervisor is a host crash and a killed raylet a lost host: the
  `xenray up` daemon's host watch fences each (every process of the host killed, its names
  freed), and ``list`` names the dead host instead of hanging on it. The session's final
  ``down`` then proves that it cleans up after dead hosts too.
"""

import json
import os
import pathlib
import random
import signal
import textwrap

import pytest

from cluster.api import HostUnreachable
from cluster.fault import nemesis
from cluster.fault.processes import Process, node_processes
from protocols.errno import Errno, XenError
from tests.integration.conftest import cli
from tests.waits import wait_until

WAIT_S = 60.0


def counter(name, **extra):
    lines = [f'name = "{name}"', "memory = 32", 'extra = "init=counter"',
             *(f'{key} = "{value}"' for key, value in extra.items())]
    return textwrap.dedent("\n".join(lines)) + "\n"


def row(xen, name):
    return next((r for r in xen.list({}) if r["name"] == name), None)


def count(xen, name):
    """The counter's last printed value."""
    for line in reversed(xen.console(name, 5)):
        if line.startswith("counter "):
            return int(line.split()[1])
    return -1


def agent_pid(xen, host):
    return xen._call(host, "xl", "process")["pid"]


def test_a_killed_agent_restarts_and_adopts_its_running_domains(xen, domains):
    made = domains(counter("adopted1"), "h1")
    stray = xen._call("h1", "forkserver", "spawn")  # as if forked for a half-built domain
    stray_pid = xen._call("h1", "forkserver", "processes")[stray]
    before = agent_pid(xen, "h1")
    nemesis.inject(xen, "crash", {"role": "xl", "host": "h1"}, {}, random.Random(0))
    after = wait_until(lambda: _answers(xen, "h1") and agent_pid(xen, "h1") != before and
                       agent_pid(xen, "h1"), "Ray to restart h1's agent", WAIT_S)
    old = Process.of(before)
    assert old is None or not old.alive(), "the old agent is dead"
    assert after != before
    adopted = row(xen, "adopted1")
    assert adopted is not None and adopted["domid"] == made["domid"]
    assert adopted["pid"] == made["pid"], "the same domain process, adopted, not rebuilt"
    component = xen._call("h1", "xl", "endpoint", "adopted1").rpartition("/")[2]
    wait_until(lambda: set(xen._call("h1", "forkserver", "processes")) == {component},
               "the process no adopted domain runs in to be killed, not left behind", WAIT_S)
    wait_until(lambda: not os.path.exists(f"/proc/{stray_pid}"), "the stray to die", WAIT_S)
    xen.destroy("adopted1")
    assert row(xen, "adopted1") is None and xen.find("adopted1") is None


def test_a_killed_fork_server_restarts_and_its_domains_run_on_through_it(xen, domains):
    """The fork server is every domain's route to Ray: killed, Ray starts it again, and each
    domain process connects to the new one and is reached through it, its guest never
    stopped; a new domain is forked by the new zygote."""
    made = domains(counter("relayed1"), "h2")
    proc = Process.of(made["pid"])
    before = xen._call("h2", "forkserver", "process")["pid"]
    nemesis.inject(xen, "crash", {"role": "forkserver", "host": "h2"}, {}, random.Random(0))
    wait_until(lambda: _answers(xen, "h2", "forkserver") and
               xen._call("h2", "forkserver", "process")["pid"] != before,
               "Ray to restart h2's fork server", WAIT_S)
    component = xen._call("h2", "xl", "endpoint", "relayed1").rpartition("/")[2]
    wait_until(lambda: component in xen._call("h2", "forkserver", "processes"),
               "the domain to connect to the new fork server", WAIT_S)
    assert xen._call("h2", "forkserver", "processes")[component] == made["pid"]
    counted = count(xen, "relayed1")
    wait_until(lambda: count(xen, "relayed1") > counted, "the counter to go on", WAIT_S)
    assert xen.domain_statistics("relayed1")["state"] == "running", "reached through it"
    domains(counter("relayed2"), "h2")
    assert proc.alive(), "the same process all along"
    xen.destroy("relayed1")
    wait_until(lambda: not proc.alive(), "destroy to kill its process", WAIT_S)


def test_a_domu_that_dies_while_its_agent_is_down_still_gets_on_crash(xen, domains):
    made = domains(counter("orphan1", on_crash="destroy"), "h1")
    memory = pathlib.Path(f"/dev/shm/xenray-{xen.run_id}-h1-d{made['domid']}")
    assert memory.exists()
    nemesis.inject(xen, "crash", {"role": "xl", "host": "h1"}, {}, random.Random(0))
    nemesis.inject(xen, "crash", {"name": "orphan1"}, {}, random.Random(0))  # agent still down?
    wait_until(lambda: xen.find("orphan1") is None, "on_crash=destroy after the restart",
               WAIT_S)
    wait_until(lambda: not memory.exists(), "the crashed domain's memory to be freed", WAIT_S)


def test_a_frozen_domain_is_shown_frozen_and_counts_on_when_thawed(xen, domains):
    domains(counter("frozen1"), "h2")
    wait_until(lambda: count(xen, "frozen1") >= 1, "the counter to count", WAIT_S)
    frozen = nemesis.inject(xen, "freeze", {"name": "frozen1"}, {}, random.Random(0))
    try:
        assert frozen.detail["pids"] == [row(xen, "frozen1")["pid"]]
        assert row(xen, "frozen1")["health"] == "frozen"
    finally:
        nemesis.heal(frozen)
    assert row(xen, "frozen1")["health"] == "ok"
    at = count(xen, "frozen1")
    wait_until(lambda: count(xen, "frozen1") > at, "the thawed counter to count on", WAIT_S)


def test_memory_pressure_makes_creates_fail_with_enomem_until_healed(xen, domains):
    pressed = nemesis.inject(xen, "memory", {"role": "host", "host": "h2"}, {},
                             random.Random(0))
    try:
        assert pressed.detail["taken_mib"]["h2"] > 0
        with pytest.raises(XenError) as refused:
            xen.create(counter("pressed1"), host="h2")
        assert refused.value.errno == Errno.ENOMEM and xen.find("pressed1") is None
    finally:
        nemesis.heal(pressed)
    assert domains(counter("pressed1"), "h2")["host"] == "h2"


def test_cli_fault_freezes_a_domain_for_a_while_lists_it_and_heals_by_id(xen, domains,
                                                                         cluster_home):
    domains(counter("clifault1"), "h2")
    frozen = cli(cluster_home, "fault", "freeze", "--name", "clifault1", "--for", "5")
    assert frozen.returncode == 0 and "freeze clifault1" in frozen.stdout, frozen.stderr
    assert "healed in 5 s" in frozen.stdout
    assert row(xen, "clifault1")["health"] == "frozen"
    wait_until(lambda: row(xen, "clifault1")["health"] == "ok", "the timed heal", WAIT_S)
    pressed = cli(cluster_home, "fault", "memory", "--role", "host", "--host", "h2",
                  "-p", "mib=64", "--json")
    fid = json.loads(pressed.stdout)["id"]
    assert f"{fid}: memory h2" in cli(cluster_home, "fault", "list").stdout
    assert cli(cluster_home, "fault", "heal", str(fid)).returncode == 0
    assert "no faults in force" in cli(cluster_home, "fault", "list").stdout
    bad = cli(cluster_home, "fault", "crash", "--role", "nosuch")
    assert bad.returncode == 1 and "unknown role 'nosuch'" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1


@pytest.mark.destructive
def test_a_killed_hypervisor_and_a_killed_raylet_are_host_crashes_and_are_fenced(xen, domains):
    """h2's hypervisor dies with a domain on it; then h1's whole Ray node is lost (its
    raylet killed: its workers would run on as orphans, a split brain, if not fenced)."""
    on_h2 = domains(counter("lost2"), "h2")
    nemesis.inject(xen, "crash", {"role": "hypervisor", "host": "h2"}, {}, random.Random(0))
    dead = wait_until(lambda: xen.dead_hosts().get("h2"), "h2 to be declared dead", WAIT_S)
    assert dead["why"] == "its hypervisor died" and "lost2" in dead["lost"]
    gone = Process.of(on_h2["pid"])  # dead, or a zombie its parent has not reaped yet
    assert gone is None or not gone.alive(), "fenced: its domain process is gone"
    assert xen.find("lost2") is None, "its name is free again"
    errors: dict[str, str] = {}
    rows = xen.list(errors)
    assert "host h2 is dead (its hypervisor died)" in errors["h2"] and "lost2" in errors["h2"]
    assert all(r["host"] != "h2" for r in rows)

    h1_procs = node_processes(xen.raylet_pid("h1"))
    h1_hypervisor = Process.of(xen._call("h1", "hypervisor", "process")["pid"])
    assert h1_hypervisor in h1_procs, "h1's processes are its raylet's workers"
    os.kill(xen.raylet_pid("h1"), signal.SIGKILL)
    dead = wait_until(lambda: xen.dead_hosts().get("h1"), "h1 to be declared dead", WAIT_S)
    assert dead["why"] == "its Ray node is gone" and dead["killed"]
    assert not any(p.alive() for p in h1_procs), "no orphan of h1 runs on"
    with pytest.raises(HostUnreachable):
        xen.create(counter("late1"), host="h1")


def _answers(xen, host, component="xl"):
    try:
        xen._call(host, component, "process", timeout=5)
        return True
    except HostUnreachable:
        return False
