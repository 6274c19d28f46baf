"""The same-host fast path on a real host: a guest's hypercalls, kicks and upcalls cross a
/dev/shm channel to its hypervisor, the hypervisor refuses channels to the wrong caller, and
a domain's channel goes away with its process."""

import glob

import ray

from cluster.runtime import NAMESPACE, actor_name
from cluster.xlcfg import parse_config
from protocols.errno import Errno


def _hv(host):
    return ray.get_actor(actor_name(host, "hypervisor"), namespace=NAMESPACE)


def _channels(host):
    return ray.get(_hv(host).deliver.remote("statistics"))["channels"]


def test_fastpath_guest_runs_over_its_channel_and_the_channel_goes_with_it(xen):
    before = _channels("h2")
    cfg, _ = parse_config('name = "chan1"\nmemory = 32\nextra = "init=counter"\n')
    xen.create(cfg, host="h2")
    try:
        # Dom0's daemons open theirs lazily, on their first hypercall: at least the guest's
        xen.wait_for(lambda: _channels("h2")["open"] >= before["open"] + 1, 30,
                     "one channel for the guest's process")
        xen.wait_for(lambda: any("counter 2" in line for line in xen.console("chan1", 5)), 30,
                     "the guest to count (console kicks through its channel)")
        during = _channels("h2")
        assert during["calls"] + during["posted_calls"] > \
            before["calls"] + before["posted_calls"]
        files = glob.glob(f"/dev/shm/xenray-{xen.run_id}-h2-ch*")
        assert len(files) == 3 * during["open"], "a file and two FIFOs per open channel"
    finally:
        xen.destroy("chan1")
    xen.wait_for(lambda: _channels("h2")["open"] == during["open"] - 1, 30,
                 "the destroyed guest's channel to close")
    assert len(glob.glob(f"/dev/shm/xenray-{xen.run_id}-h2-ch*")) == 3 * (during["open"] - 1)


def test_fastpath_channel_refused_to_a_forged_caller(xen):
    hv = _hv("h1")
    answer = ray.get(hv.deliver.remote("open_channel", 0, "not-the-secret", "h1/blkback", 1))
    assert answer == {"rc": -Errno.EPERM}
    answer = ray.get(hv.deliver.remote("open_channel", 4000, "x", "h1/dom4000", 1))
    assert answer == {"rc": -Errno.EPERM}
