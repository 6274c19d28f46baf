"""How a nemesis and a fence find and signal a host's processes (cluster.fault.processes):
by the raylet pid in their environment, with real child processes and real signals; a pid
reused by another process is never signalled."""

import os
import signal
import subprocess
import sys

import pytest

from actors.procstat import stopped
from cluster.fault.processes import Process, kill_all, node_processes
from tests.waits import wait_until


@pytest.fixture
def workers():
    """Three idle processes (waiting for a signal): two of 'raylet' 4242's node, one of 4343's."""
    procs = [subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"],
                              env={**os.environ, "RAY_RAYLET_PID": str(raylet)})
             for raylet in (4242, 4242, 4343)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_node_processes_are_found_by_their_raylet_and_only_theirs(workers):
    found = wait_until(lambda: [p.pid for p in node_processes(4242)] or None,
                       "the workers' environments to be readable")
    assert found == sorted(w.pid for w in workers[:2])
    assert [p.pid for p in node_processes(4343)] == [workers[2].pid]
    assert node_processes(0) == []


def test_kill_all_sigkills_and_a_freeze_is_a_stopped_process(workers):
    first = Process.of(workers[0].pid)
    assert kill_all([first], signal.SIGSTOP) == [first.pid]
    wait_until(lambda: stopped(first.pid), "SIGSTOP to take")
    kill_all([first], signal.SIGCONT)
    wait_until(lambda: not stopped(first.pid), "SIGCONT to take")
    assert kill_all(node_processes(4242)) == sorted(w.pid for w in workers[:2])
    assert workers[0].wait(10) == -signal.SIGKILL and workers[1].wait(10) == -signal.SIGKILL
    assert workers[2].poll() is None, "another host's process is untouched"


def test_a_process_whose_pid_was_reused_is_not_signalled(workers):
    real = Process.of(workers[0].pid)
    impostor = Process(real.pid, real.start + 1)  # same pid, another start time
    assert not impostor.alive() and kill_all([impostor]) == []
    assert workers[0].poll() is None
    workers[0].kill()
    workers[0].wait()
    assert not real.alive() and not real.signal(signal.SIGKILL)
