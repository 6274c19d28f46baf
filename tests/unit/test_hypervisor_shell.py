"""The hypervisor's shell (actors.hypervisor.actor) on the in-process host: what it does beyond
the state machine, here the pidfd watch that turns a vCPU process's death into a crash."""

import subprocess

import msgpack

from protocols.hypercall import (Domctl, DomInfoFlag, Hypercall, ShutdownReason,
                                 dominf_shutdown_code)
from tests.inprocess import domain_endpoint
from tests.waits import wait_until


def vcpus_in_a_process_of_their_own(host, domid: int) -> subprocess.Popen:
    """Hand ``domid``'s vCPUs to a new process (the hypervisor watches its pidfd)."""
    child = subprocess.Popen(["sleep", "60"])
    host.xl(Hypercall.domctl, Domctl.setvcpucontext, domain=domid, vcpu=0,
            ctxt=msgpack.packb({"pid": child.pid, "endpoint": domain_endpoint(domid)}))
    return child


def crashed(host, domid: int) -> bool:
    flags = host.xl(Hypercall.domctl, Domctl.getdomaininfo, domain=domid)["flags"]
    return bool(flags & DomInfoFlag.shutdown) and \
        dominf_shutdown_code(flags) == ShutdownReason.crash


def test_hypervisor_vcpu_process_death_is_a_crash_even_after_a_failed_exit_handler(
        host, monkeypatch):
    """One process's exit handling that raises is logged; the watch goes on for every other
    domain (it is one thread for the whole host)."""
    first, _ = host.create_domain(256)
    second, _ = host.create_domain(256)
    vcpu_exited, handled = host.hypervisor.state.vcpu_exited, []

    def failing_for_the_first(domid: int):
        handled.append(domid)
        if domid == first:
            raise RuntimeError("carrying out the crash failed")
        return vcpu_exited(domid)

    monkeypatch.setattr(host.hypervisor.state, "vcpu_exited", failing_for_the_first)
    for domid in (first, second):
        child = vcpus_in_a_process_of_their_own(host, domid)
        child.kill()
        child.wait()
        wait_until(lambda d=domid: d in handled, f"domain {domid}'s vCPU exit")
    assert wait_until(lambda: crashed(host, second), "the second domain to crash")
    assert not crashed(host, first)
