"""The PV control protocol's guest half (actors.domain.manage) on its own (reference 11.5, 12.1,
12.3; Linux manage.c).

``control/shutdown`` is a real node of the ``host`` fixture's xenstored (Dom0's own
``/local/domain/0/control``, so the test's Dom0 client is the "guest"); the kernel's side is
stand-ins: ``printk`` and ``power_off`` record, the hypercall records or fails. The handler is
called as xenwatch would call it; the whole path, watch included, runs in
test_domain_kernel.py.
"""

import pytest

from actors.domain.manage import PVControl
from actors.domain.rungate import KernelState, RunGate
from protocols.errno import Errno, XenError
from protocols.hypercall import Hypercall, SchedOp, ShutdownReason

NODE = "/local/domain/0/control/shutdown"


class Kernel:
    """What PVControl calls in the kernel, recorded."""

    def __init__(self, *, fail_hypercall: bool = False) -> None:
        self.printk: list[str] = []
        self.power_off: list[ShutdownReason] = []
        self.hypercalls: list[tuple] = []
        self.fail_hypercall = fail_hypercall

    def hypercall(self, op, sub, **args):
        self.hypercalls.append((op, sub, args))
        if self.fail_hypercall:
            raise XenError(Errno.EINVAL, "refused")


def control(host, gate: RunGate, kernel: Kernel, **kw) -> PVControl:
    return PVControl(host.xs, gate, kernel.hypercall, kernel.printk.append,
                     kernel.power_off.append, host.log, **kw)


def booted() -> RunGate:
    """Running, its vCPU not started yet (offline: already parked for a freeze)."""
    gate = RunGate()
    gate.set_paused(False)
    return gate


@pytest.mark.parametrize("command, reason", [("poweroff", ShutdownReason.poweroff),
                                             ("halt", ShutdownReason.poweroff),
                                             ("reboot", ShutdownReason.reboot)])
def test_manage_12_3_each_command_is_acked_then_powers_off_with_its_reason(host, command,
                                                                           reason):
    kernel = Kernel()
    pv = control(host, booted(), kernel)
    host.xs.write(NODE, command)
    pv.shutdown_handler()
    assert host.xs.read(NODE) == b"" and kernel.power_off == [reason]
    assert pv.stats == {"control_requests": 1, "control_ignored": 0}


@pytest.mark.parametrize("node", [None, ""])
def test_manage_12_3_a_missing_or_empty_node_is_no_request(host, node):
    kernel = Kernel()
    pv = control(host, booted(), kernel)
    if node is not None:
        host.xs.write(NODE, node)
    pv.shutdown_handler()
    assert pv.stats == {"control_requests": 0, "control_ignored": 0}
    assert kernel.power_off == [] and kernel.hypercalls == []


def test_manage_12_1_suspend_freezes_then_issues_schedop_shutdown_suspend(host):
    gate, kernel = booted(), Kernel()
    pv = control(host, gate, kernel)
    host.xs.write(NODE, "suspend")
    pv.shutdown_handler()
    assert host.xs.read(NODE) == b""
    assert kernel.printk == ["PM: suspending"]
    assert kernel.hypercalls == [(Hypercall.sched_op, SchedOp.shutdown,
                                  {"reason": int(ShutdownReason.suspend)})]
    assert (gate.state, gate.reason) == (KernelState.SUSPENDED, ShutdownReason.suspend)


def test_manage_suspend_is_aborted_when_the_vcpu_will_not_freeze(host):
    gate, kernel = booted(), Kernel()
    gate.enter()  # the test's thread is the vCPU, running, and will not park
    pv = control(host, gate, kernel, freeze_timeout_s=0.01)
    host.xs.write(NODE, "suspend")
    pv.shutdown_handler()
    assert host.xs.read(NODE) == b""  # acked all the same, as Linux does
    assert kernel.printk == ["PM: Freezing of tasks failed: suspend aborted"]
    assert kernel.hypercalls == [] and gate.state is KernelState.RUNNING


def test_manage_12_1_a_failed_suspend_hypercall_thaws_and_the_domain_runs_on(host):
    gate, kernel = booted(), Kernel(fail_hypercall=True)
    pv = control(host, gate, kernel)
    host.xs.write(NODE, "suspend")
    pv.shutdown_handler()
    assert len(kernel.hypercalls) == 1
    assert (gate.state, gate.reason) == (KernelState.RUNNING, None) and gate.runnable()


def test_manage_11_suspend_runs_pre_suspend_after_the_freeze_and_before_the_hypercall(host):
    gate, kernel = booted(), Kernel()
    order = []

    def hypercall(op, sub, **args):
        order.append("hypercall")
        kernel.hypercall(op, sub, **args)

    pv = PVControl(host.xs, gate, hypercall, kernel.printk.append, kernel.power_off.append,
                   host.log, pre_suspend=lambda: order.append(("pre_suspend", gate.state)),
                   suspend_failed=lambda: order.append("suspend_failed"))
    host.xs.write(NODE, "suspend")
    pv.shutdown_handler()
    assert order == [("pre_suspend", KernelState.SUSPENDED), "hypercall"]


@pytest.mark.parametrize("failing", ["pre_suspend", "hypercall"])
def test_manage_11_a_failed_suspend_undoes_pre_suspend_and_thaws(host, failing):
    gate = booted()
    kernel = Kernel(fail_hypercall=failing == "hypercall")
    undone = []

    def pre_suspend():
        if failing == "pre_suspend":
            raise XenError(Errno.EIO, "a device would not quiesce")

    pv = control(host, gate, kernel, pre_suspend=pre_suspend,
                 suspend_failed=lambda: undone.append(gate.state))
    host.xs.write(NODE, "suspend")
    pv.shutdown_handler()
    assert undone == [KernelState.SUSPENDED]  # undone before the gate reopens
    assert kernel.printk == ["PM: suspending", "PM: suspend failed: resuming"]
    assert len(kernel.hypercalls) == (failing == "hypercall")
    assert gate.state is KernelState.RUNNING and gate.runnable()


def test_manage_a_transaction_xenstored_refuses_is_no_request(host, monkeypatch):
    """A domain being destroyed loses its xenstore connection while the watch fires (xenstored
    answers EACCES): Linux's shutdown_handler returns when its transaction cannot start."""
    kernel = Kernel()
    pv = control(host, booted(), kernel)
    host.xs.write(NODE, "poweroff")

    def refused(op, *args, **kw):
        raise XenError(Errno.EACCES, "xenstored: domain 1 is not introduced")

    monkeypatch.setattr(host.xs, "request", refused)
    pv.shutdown_handler()  # no exception for xenwatch to log
    assert kernel.power_off == [] and pv.stats == {"control_requests": 0,
                                                   "control_ignored": 0}
