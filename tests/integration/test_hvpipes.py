"""The same-host fast path on a real host: a guest's hypercalls, kicks and upcalls cross a
/dev/shm pipe to its hypervisor, the hypervisor refuses pipes to the wrong caller, and
a domain's pipe goes away with its process."""

import glob

import ray

from actors.transport.naming import NAMESPACE, actor_name
from cluster.xlcfg import parse_config
from protocols.errno import Errno


def _hv(host):
    return ray.get_actor(actor_name(host, "hypervisor"), namespace=NAMESPACE)


def _pipes(host):
    return ray.get(_hv(host).deliver.remote("statistics"))["pipes"]


def test_samehost_guest_runs_over_its_pipe_and_the_pipe_goes_with_it(xen):
    before = _pipes("h2")
    cfg, _ = parse_config('name = "chan1"\nmemory = 32\nextra = "init=counter"\n')
    xen.create(cfg, host="h2")
    try:
        # Dom0's daemons open theirs lazily, on their first hypercall: at least the guest's
        xen.wait_for(lambda: _pipes("h2")["open"] >= before["open"] + 1, 30,
                     "one pipe for the guest's process")
        xen.wait_for(lambda: any("counter 2" in line for line in xen.console("chan1", 5)), 30,
                     "the guest to count (console kicks through its pipe)")
        during = _pipes("h2")
        assert during["calls"] + during["posted_calls"] > \
            before["calls"] + before["posted_calls"]
        files = glob.glob(f"/dev/shm/xenray-{xen.run_id}-h2-pipe*")
        assert len(files) == 3 * during["open"], "a file and two FIFOs per open pipe"
    finally:
        xen.destroy("chan1")
    xen.wait_for(lambda: _pipes("h2")["open"] == during["open"] - 1, 30,
                 "the destroyed guest's pipe to close")
    assert len(glob.glob(f"/dev/shm/xenray-{xen.run_id}-h2-pipe*")) == 3 * (during["open"] - 1)


def test_samehost_pipe_refused_to_a_forged_caller(xen):
    hv = _hv("h1")
    answer = ray.get(hv.deliver.remote("open_hvpipe", 0, "not-the-secret", "h1/blkback", 1))
    assert answer == {"rc": -Errno.EPERM}
    answer = ray.get(hv.deliver.remote("open_hvpipe", 4000, "x", "h1/dom4000", 1))
    assert answer == {"rc": -Errno.EPERM}
