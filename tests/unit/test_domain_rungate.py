"""The run gate (actors.domain.rungate) on its own: pause, seq order, the freezer, shutdown
(reference 12.1, 12.2, 19.8). The vCPU is the test's thread, or a helper thread where it must
block; nothing else is needed.
"""

import contextlib
import threading

import pytest

from actors.domain.rungate import GateChange, Halted, KernelState, RunGate
from protocols.hypercall import ShutdownReason
from tests.waits import wait_until


def running_gate() -> RunGate:
    """Booted and unpaused, the test's thread its running vCPU."""
    gate = RunGate()
    assert gate.set_paused(False) is GateChange.BOOT
    gate.enter()
    return gate


def blocked_vcpu(gate: RunGate) -> threading.Thread:
    """A vCPU thread blocked on an event that never comes (until shutdown)."""
    thread = threading.Thread(target=gate.wait_event, args=(lambda: False, 30), daemon=True)
    thread.start()
    return thread


def test_rungate_12_2_creation_leaves_it_shut_and_only_the_first_unpause_boots():
    gate = RunGate()
    assert not gate.runnable() and gate.status()["state"] == "created"
    assert gate.set_paused(False) is GateChange.BOOT
    assert gate.runnable() and gate.state is KernelState.RUNNING
    assert gate.set_paused(True) is GateChange.NONE and not gate.runnable()
    assert gate.set_paused(False) is GateChange.NONE and gate.runnable()


def test_rungate_12_2_a_message_not_newer_than_the_last_applied_is_stale():
    gate = running_gate()
    assert gate.set_paused(True, seq=5) is GateChange.NONE
    gate.set_paused(False, seq=4)  # overtaken in flight
    gate.set_paused(False, seq=5)  # a duplicate
    assert gate.paused
    gate.set_paused(False, seq=6)
    assert not gate.paused
    gate.set_paused(True, seq=0)  # unordered: always applied
    assert gate.paused


def test_rungate_12_2_a_parked_vcpu_of_a_paused_domain_reads_as_paused():
    gate = running_gate()
    assert gate.status()["vcpu"] == "running"
    blocked_vcpu(gate)
    wait_until(lambda: gate.vcpu == "blocked", "the vCPU to block")
    assert gate.status()["vcpu"] == "blocked"
    gate.set_paused(True)
    assert gate.status() == {"state": "running", "vcpu": "paused", "paused": True,
                             "held": False, "blocks": 0, "vcpus": ["blocked"],
                             "shutdown_reason": None}
    gate.shut_down(ShutdownReason.poweroff)


def test_rungate_12_2_a_shut_gate_holds_the_vcpu_until_reopened():
    gate = running_gate()
    gate.set_paused(True)
    passed = threading.Event()
    thread = threading.Thread(target=lambda: (gate.enter(), passed.set()), daemon=True)
    thread.start()
    wait_until(lambda: gate.vcpu == "gated", "the vCPU at the gate")
    assert not passed.is_set()
    gate.set_paused(False)
    assert passed.wait(10) and gate.vcpu == "running"


def test_rungate_19_8_shutdown_is_final_keeps_the_first_reason_and_halts_every_entry():
    gate = running_gate()
    vcpu = blocked_vcpu(gate)
    assert gate.shut_down(ShutdownReason.poweroff) is True
    assert gate.shut_down(ShutdownReason.crash) is False
    assert gate.reason is ShutdownReason.poweroff
    vcpu.join(10)
    assert not vcpu.is_alive()  # woken: the wait ends at shutdown
    assert gate.set_paused(False) is GateChange.NONE and not gate.runnable()
    for entry in (gate.enter, lambda: gate.enter(vcpu=False),
                  lambda: gate.schedule_timeout(float("inf"), lambda: 0.0)):
        with pytest.raises(Halted):
            entry()
    assert gate.status()["vcpu"] == "stopped"


def test_rungate_12_1_freeze_waits_for_the_vcpu_to_park_and_a_reopened_gate_resumes():
    gate = running_gate()
    blocked_vcpu(gate)
    wait_until(lambda: gate.vcpu == "blocked", "the vCPU to block")
    assert gate.freeze(timeout=10) is True
    assert (gate.state, gate.reason) == (KernelState.SUSPENDED, ShutdownReason.suspend)
    assert not gate.runnable()
    gate.set_paused(True)  # the hypervisor paused it for the suspend
    assert gate.set_paused(False) is GateChange.RESUMED  # resumedomain: SCHEDOP returned 1
    assert (gate.state, gate.reason) == (KernelState.RUNNING, None)
    gate.shut_down(ShutdownReason.poweroff)


def test_rungate_freeze_gives_up_on_a_vcpu_that_will_not_park():
    gate = running_gate()  # the test's thread is the running vCPU, and will not stop
    assert gate.freeze(timeout=0.01) is False
    assert (gate.state, gate.reason) == (KernelState.RUNNING, None) and gate.runnable()


def test_rungate_freeze_of_a_domain_not_running_does_nothing():
    gate = RunGate()
    assert gate.freeze(timeout=0) is None and gate.state is KernelState.CREATED
    gate.shut_down(ShutdownReason.crash)
    assert gate.freeze(timeout=0) is None and gate.state is KernelState.SHUTDOWN


def test_rungate_12_1_thaw_after_a_failed_suspend_runs_on_unless_shut_down_meanwhile():
    gate = RunGate()
    gate.set_paused(False)  # booted, its vCPU not yet started: offline is parked
    assert gate.freeze(timeout=0) is True
    gate.thaw()
    assert gate.state is KernelState.RUNNING and gate.reason is None
    gate.shut_down(ShutdownReason.crash)
    gate.thaw()
    assert gate.state is KernelState.SHUTDOWN and gate.reason is ShutdownReason.crash


def test_rungate_11_a_freeze_waits_out_a_no_freeze_section_which_passes_the_suspending_gate():
    """A console write is all before a suspend or all after it: the freezer waits for it, and
    its own kernel entries inside let it through while the suspend is in progress."""
    gate = running_gate()
    inside, leave, passed = threading.Event(), threading.Event(), threading.Event()

    def writer() -> None:  # the vCPU, in a write that blocks (a full ring) then goes on
        gate.enter()
        with gate.no_freeze():
            inside.set()
            gate.wait_event(leave.is_set, 30)
            gate.enter()  # its re-check after the wait: a suspend in progress lets it by
            passed.set()
        with contextlib.suppress(Halted):
            gate.enter()  # the next scheduling point: frozen here, until the shutdown

    gate.vcpu = "offline"  # the writer thread is the vCPU from now on
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert inside.wait(10)
    wait_until(lambda: gate.vcpu == "blocked", "the writer to block")
    frozen: list = []
    freezer = threading.Thread(target=lambda: frozen.append(gate.freeze(timeout=30)),
                               daemon=True)
    freezer.start()
    wait_until(lambda: gate.state is KernelState.SUSPENDING, "the freeze to start")
    assert frozen == []  # blocked, but inside the section: not frozen
    leave.set()
    gate.wake()
    freezer.join(10)
    assert frozen == [True] and passed.is_set()
    assert gate.vcpu == "gated" and gate.state is KernelState.SUSPENDED
    gate.shut_down(ShutdownReason.poweroff)
    thread.join(10)


def test_rungate_11_a_no_freeze_section_still_stops_at_a_pause():
    gate = running_gate()
    gate.set_paused(True)
    passed = threading.Event()

    def enter() -> None:
        with gate.no_freeze():
            gate.enter()
            passed.set()

    thread = threading.Thread(target=enter, daemon=True)
    thread.start()
    wait_until(lambda: gate.vcpu == "gated", "the vCPU at the gate")
    assert not passed.is_set()
    gate.set_paused(False)
    assert passed.wait(10)
    thread.join(10)


def test_rungate_11_a_freeze_hears_at_once_of_a_running_vcpu_reaching_its_next_entry():
    """No waiting out the freezer's timeout: parking at the gate wakes the freezer."""
    gate = running_gate()
    go = threading.Event()

    def vcpu() -> None:
        gate.enter()
        go.wait(30)  # computing, between kernel entries
        with contextlib.suppress(Halted):
            gate.enter()

    gate.vcpu = "offline"
    thread = threading.Thread(target=vcpu, daemon=True)
    thread.start()
    wait_until(lambda: gate.vcpu == "running", "the vCPU running")
    frozen: list = []
    freezer = threading.Thread(target=lambda: frozen.append(gate.freeze(timeout=3600)),
                               daemon=True)
    freezer.start()
    wait_until(lambda: gate.state is KernelState.SUSPENDING, "the freeze to start")
    go.set()
    freezer.join(30)
    assert frozen == [True]
    gate.shut_down(ShutdownReason.poweroff)
    thread.join(10)
