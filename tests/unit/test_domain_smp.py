"""A guest with several vCPUs on the in-process host (actors.domain.smp, issue 14): the real
toolstack, hypervisor, scheduler and PV kernel. The guest brings up the vCPUs
``cpu/N/availability`` marks online, runs an init's work on all of them, and follows
``vcpu-set``; the hypervisor accounts each vCPU's time."""

import pytest

from protocols.errno import XenError
from protocols.hypercall import Runstate
from protocols.libxl_types import DomainConfig
from tests.inprocess import HOST

XL = f"{HOST}/xl"


@pytest.fixture
def xl(xl_host):
    return xl_host


def vcpu_rows(host, name):
    return host.call(XL, "vcpu_list", name)


def running_time(host, domid, vcpu):
    sched = host.hypervisor.state.vcpus.sched
    with host.hypervisor.lock:
        return sched.runstate(domid, vcpu, host.hypervisor.state._clock_ns())["time"][
            Runstate.running]


def test_a_guest_runs_its_init_on_every_online_vcpu_and_follows_vcpu_set(xl):
    cfg = DomainConfig(name="smp", memory=16, maxmem=16, vcpus=2, maxvcpus=3,
                       cmdline="init=cpuburn duty=50 period=0.05")
    domid = xl.call(XL, "create", cfg.to_dict())["domid"]
    xl.until(lambda: all(running_time(xl, domid, v) > 50_000_000 for v in (0, 1)),
             "both vCPUs to burn", timeout=30)
    rows = vcpu_rows(xl, "smp")
    assert [r["online"] for r in rows] == [1, 1, 0]
    assert running_time(xl, domid, 2) == 0
    with pytest.raises(XenError, match="You are overcommmitting! You have 2 physical CPUs"):
        xl.call(XL, "vcpu_set", "smp", 3)  # xl's check of the host: 3 vCPUs, 2 pCPUs
    xl.call(XL, "vcpu_set", "smp", 3, False)  # xl vcpu-set -i
    xl.until(lambda: running_time(xl, domid, 2) > 50_000_000, "vCPU 2 to join", timeout=30)
    xl.call(XL, "vcpu_set", "smp", 1)
    xl.until(lambda: [r["online"] for r in vcpu_rows(xl, "smp")] == [1, 0, 0],
             "vCPUs 1 and 2 to go down", timeout=30)
    before = running_time(xl, domid, 1)
    xl.until(lambda: running_time(xl, domid, 0) > running_time(xl, domid, 1) + 100_000_000,
             "vCPU 0 to burn on alone", timeout=30)
    assert running_time(xl, domid, 1) == before


def test_vcpu_set_beyond_maxvcpus_is_refused(xl):
    cfg = DomainConfig(name="one", memory=16, maxmem=16, vcpus=1, maxvcpus=2,
                       cmdline="init=idle")
    xl.call(XL, "create", cfg.to_dict())
    with pytest.raises(XenError, match="Requested 3 VCPUs, however maxcpus is 2!"):
        xl.call(XL, "vcpu_set", "one", 3)
    with pytest.raises(XenError, match="Requested 0 VCPUs!"):
        xl.call(XL, "vcpu_set", "one", 0)
