"""The run gate as the scheduler's dispatch (actors.domain.rungate, issue 14): a vCPU runs
only while it holds a pCPU, blocks in the hypervisor where it waits, and takes a pCPU again
after. The hypervisor is a small fake SchedPort that answers as the real one does (its
scheduling itself is tested in test_sched_* and test_hypervisor_sched)."""

import threading

import pytest

from actors.domain.rungate import GateChange, RunGate, VcpuCondition
from tests.waits import wait_until


class FakeHypervisor:
    """SCHEDOP_block marks the vCPU blocked; a kick (the IPI) or an upcall wakes it, and
    the pCPU comes back with a vcpu_run message from another thread, as from the pipe."""

    def __init__(self, gate: RunGate, *, in_flight: int = 0) -> None:
        self.gate, self.seq, self.blocked = gate, 10, False
        self.calls: list[str] = []
        self.in_flight = in_flight  # upcalls sent but not yet taken at the next block

    def block(self, vcpu: int, events: int) -> dict:
        self.calls.append(f"block {events}")
        delivered = self.gate.upcalls + self.in_flight
        if events < delivered:
            self.in_flight = 0
            threading.Timer(0.05, self.gate.took_upcall).start()
            return {"blocked": False, "seq": self.seq, "events": delivered}
        self.blocked = True
        return {"blocked": True, "seq": self.seq, "events": delivered}

    def kick(self, vcpu: int) -> None:
        self.calls.append("kick")
        self.wake()

    def set_timer(self, vcpu: int, deadline_ns: int) -> None:
        self.calls.append("timer")

    def upcall(self) -> None:
        """An event for the domain: the upcall goes down, then the dispatch."""
        self.gate.took_upcall()
        self.wake()

    def wake(self) -> None:
        if self.blocked:
            self.blocked = False
            self.seq += 1
            seq = self.seq
            threading.Timer(0.02, self.gate.set_run, (True, seq)).start()


def vcpu_gate() -> tuple[RunGate, FakeHypervisor]:
    """Booted, attached, the test's thread its vCPU holding a pCPU."""
    gate = RunGate()
    assert gate.set_paused(False) is GateChange.BOOT
    hv = FakeHypervisor(gate)
    gate.attach(hv)
    gate.on_vcpu_thread()
    gate.set_run(True, 1)
    gate.enter()
    return gate, hv


def test_a_vcpu_waits_at_the_gate_until_it_holds_a_pcpu():
    gate, hv = vcpu_gate()
    gate.set_run(False, 2)  # preempted: it stops at its next kernel entry
    entered = threading.Event()

    def vcpu():
        gate.on_vcpu_thread()
        gate.enter()
        entered.set()

    t = threading.Thread(target=vcpu, daemon=True)
    t.start()
    wait_until(lambda: gate.vcpu == "runnable", "the vCPU to wait for a pCPU")
    assert not entered.is_set()
    gate.set_run(True, 2)  # stale: not newer than the preemption
    assert not entered.wait(0.1)
    gate.set_run(True, 3)
    assert entered.wait(5)
    t.join(5)


def test_a_wait_blocks_in_the_hypervisor_and_a_local_wake_kicks_itself():
    gate, hv = vcpu_gate()
    with gate.blocking():
        assert hv.blocked and not gate.held and gate.vcpu == "blocked"
    assert hv.calls == ["block 0", "kick"]
    assert gate.held and gate.vcpu == "running" and gate.blocks == 1


def test_an_upcall_during_the_wait_woke_it_already_so_no_kick():
    gate, hv = vcpu_gate()
    with gate.blocking():
        hv.upcall()
    assert hv.calls == ["block 0"]
    assert gate.held


def test_a_block_with_upcalls_in_flight_does_not_block_and_waits_for_them():
    gate, hv = vcpu_gate()
    hv.in_flight = 1
    with gate.blocking():
        assert not hv.blocked and gate.held
    assert gate.upcalls == 1 and gate.blocks == 0
    assert hv.calls == ["block 0"]


def test_a_stale_block_answer_does_not_take_back_a_newer_dispatch():
    gate, hv = vcpu_gate()
    gate.set_run(True, 50)  # the scheduler's newer word raced ahead of block's answer
    with gate.blocking():
        assert gate.held  # seq 10 in the answer is older than 50
    assert "kick" not in hv.calls


def test_a_vcpu_condition_lets_go_of_its_lock_while_it_waits_for_a_pcpu():
    gate, hv = vcpu_gate()
    hv.wake = lambda: None  # no dispatch until the interrupt below gives it
    cv = VcpuCondition()
    state = {"ready": False, "took_lock": False}

    def interrupt():
        wait_until(lambda: hv.blocked, "the vCPU to block")
        with cv:
            state["ready"] = True
            cv.notify_all()
        wait_until(lambda: gate.vcpu == "runnable", "the vCPU to wait for a pCPU")
        state["took_lock"] = cv.acquire(timeout=2)  # the vCPU must not hold it now
        if state["took_lock"]:
            cv.release()
        gate.set_run(True, 99)

    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    with cv:
        assert cv.wait_for(lambda: state["ready"], 5)
    t.join(5)
    assert state["took_lock"] and gate.held and hv.calls == ["block 0", "kick"]


def test_off_the_vcpu_thread_nothing_blocks_in_the_hypervisor():
    gate, hv = vcpu_gate()
    done = []
    t = threading.Thread(target=lambda: done.append(gate.blocking().__enter__()))
    t.start()
    t.join(5)
    assert hv.calls == [] and done == [None]


@pytest.mark.parametrize("attached", [False, True])
def test_before_attach_the_vcpu_runs_without_a_pcpu(attached):
    gate = RunGate()
    gate.set_paused(False)
    if attached:
        gate.attach(FakeHypervisor(gate))
    done = threading.Event()
    threading.Thread(target=lambda: (gate.enter(), done.set()), daemon=True).start()
    assert done.wait(0.3) is not attached


def test_a_notify_while_the_vcpu_blocks_in_the_hypervisor_is_not_lost():
    """The block hypercall is made holding the condition's lock: a waker that comes while it
    is in flight waits for the lock, so its notify reaches the wait (not before it)."""
    gate, hv = vcpu_gate()
    cv = VcpuCondition()
    state = {"ready": False}
    block = hv.block

    def block_while_woken(vcpu, events):
        def waker():
            with cv:
                state["ready"] = True
                cv.notify_all()
        threading.Thread(target=waker, daemon=True).start()
        threading.Event().wait(0.05)  # the waker runs now, while the block is in flight
        return block(vcpu, events)

    hv.block = block_while_woken
    done = threading.Event()

    def vcpu():  # waits with no timeout: a lost notify leaves it waiting for good
        gate.on_vcpu_thread()
        with cv:
            cv.wait_for(lambda: state["ready"])
        done.set()

    threading.Thread(target=vcpu, daemon=True).start()
    assert done.wait(10), "the notify was lost: the vCPU still waits"
    assert gate.held


@pytest.mark.parametrize("how", ["wait_event", "vcpu_condition"])
def test_an_unrelated_upcall_wakes_the_vcpu_which_then_blocks_again(how):
    """Linux's idle loop: the interrupt runs, the wait is not over, the vCPU blocks again;
    it does not wait on as a running vCPU (and shows b, and costs no CPU time)."""
    gate, hv = vcpu_gate()
    cv = VcpuCondition()
    state = {"ready": False}
    done = threading.Event()

    def vcpu():
        gate.on_vcpu_thread()
        if how == "wait_event":
            gate.wait_event(lambda: state["ready"], 30)
        else:
            with cv:
                cv.wait_for(lambda: state["ready"], 30)
        done.set()

    threading.Thread(target=vcpu, daemon=True).start()
    wait_until(lambda: hv.blocked, "the vCPU to block")
    hv.upcall()  # an interrupt that does not end the wait (a console drain, say)
    wait_until(lambda: hv.calls.count("block 0") + hv.calls.count("block 1") == 2
               and hv.blocked, "the vCPU to block again")
    assert not done.is_set() and "kick" not in hv.calls
    with cv:
        state["ready"] = True
        cv.notify_all()
    gate.wake()
    assert done.wait(10)


def test_a_wait_whose_block_was_refused_blocks_once_the_upcall_has_landed():
    """SCHEDOP_block refused (an upcall in flight): once it lands the vCPU blocks again,
    rather than spending the rest of its wait as a running vCPU."""
    gate, hv = vcpu_gate()
    hv.in_flight = 1
    t = threading.Thread(target=lambda: (gate.on_vcpu_thread(),
                                         gate.wait_event(lambda: False, 2)), daemon=True)
    t.start()
    wait_until(lambda: hv.blocked, "the vCPU to block after the refusal")
    assert hv.calls[:2] == ["block 0", "block 1"]
