"""A killed xenconsoled comes back (DESIGN.md "Failure semantics"): Ray starts the actor
again, it finds every domain again from xenstore, binds their console ports again and drains
each ring from where the dead one stopped, appending to the same log. The guest's writer
waits while the ring is full, so nothing it printed during the outage is lost."""

import os
import re
import signal

from tests.integration.conftest import cli

COUNTER = 'name = "{name}"\nmemory = 32\nextra = "init=counter interval=0.1"\n'


def counts(path: str) -> list[int]:
    """The numbers of the ``counter N`` lines in a console log."""
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").splitlines()
    return [int(m.group(1)) for line in lines if (m := re.fullmatch(r"counter (\d+)", line))]


def test_a_sigkilled_xenconsoled_restarts_and_loses_no_console_output(xen, domains,
                                                                      cluster_home):
    name = "chatter"
    domid = domains(COUNTER.format(name=name), "h1")["domid"]
    log = xen._call("h1", "xenconsoled", "log_path", name)
    xen.wait_for(lambda: os.path.exists(log) and len(counts(log)) >= 5, 30,
                 "the counter to count")
    old = xen._call("h1", "xenconsoled", "process")["pid"]
    os.kill(old, signal.SIGKILL)
    # during the outage and after: the CLI answers, or says why in one line, never a traceback
    shown = cli(cluster_home, "console", name, "--no-follow", "--lines", "5")
    assert shown.returncode == 0 or (len(shown.stderr.splitlines()) == 1
                                     and "Traceback" not in shown.stderr), shown.stderr
    new = xen.wait_for(lambda: xen._call("h1", "xenconsoled", "process")["pid"], 60,
                       "xenconsoled's new incarnation")
    assert new != old
    stats = xen._call("h1", "xenconsoled", "statistics")
    dom0 = next(d for d in xen._call("h1", "hypervisor", "audit")["domains"]
                if d["domid"] == 0)
    bound = [p for p in dom0["ports"]
             if p["endpoint"] == "h1/xenconsoled" and p["remote_dom"] == domid]
    assert len(bound) == 1, bound  # the dead one's port is gone (released with its process,
    #                                or closed as stale by the new one), one bound anew
    assert name in [c["name"] for c in stats["consoles"]]
    assert xen._call("h1", "xenconsoled", "log_path", name) == log  # the same file
    at_restart = len(counts(log))
    xen.wait_for(lambda: len(counts(log)) >= at_restart + 5, 30, "new lines after the restart")
    logged = counts(log)
    assert logged == list(range(logged[0], logged[0] + len(logged))), \
        "a number is missing or repeated: output from the outage was lost"
    shown = cli(cluster_home, "console", name, "--no-follow", "--lines", "3")
    assert shown.returncode == 0 and "counter " in shown.stdout, shown.stderr
