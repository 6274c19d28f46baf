"""The hypervisor actor on a real Ray node: pinned to its host, answering msgpack hypercalls."""

import glob
import os

import ray

from actors.hypervisor.actor import HypervisorActor
from actors.transport.hypercall_client import Credential, HypercallClient
from actors.transport.naming import HOST_LABEL, NAMESPACE, actor_name, pin_to_host
from actors.transport.raycall import RayTransport
from protocols.errno import Errno, XenError
from protocols.hypercall import (DOMID_ANY, Domctl, Hypercall, MemoryOp, Sysctl, XenMapSpace,
                                 XenVersion)


def _node_of(host: str) -> str:
    return next(n["NodeID"] for n in ray.nodes()
                if n.get("Alive") and (n.get("Labels") or {}).get(HOST_LABEL) == host)


def test_hypervisor_actor_boots_dom0_and_serves_hypercalls(xen, tmp_path):
    name = actor_name("h1", "hypervisor-test")  # beside the cluster's own
    hv = HypervisorActor.options(name=name, namespace=NAMESPACE, **pin_to_host("h1")).remote(
        "h1", 256, 2, f"t{os.getpid()}", str(tmp_path))
    try:
        where = ray.get(hv.deliver.remote("process"))
        assert where["node_id"] == _node_of("h1")  # pinned to its host's node
        transport = RayTransport()
        secret = transport.call(name, "boot_dom0", 64)
        dom0 = HypercallClient(transport, name, Credential(0, secret, "driver"))
        assert dom0(Hypercall.xen_version, XenVersion.version) == 4 << 16 | 22
        info = dom0(Hypercall.sysctl, Sysctl.physinfo)
        assert info["host"] == "h1" and info["total_pages"] == 256 * 256

        created = dom0(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                       handle=bytes(16), flags=0, max_vcpus=1, max_evtchn_port=1023,
                       max_grant_frames=-1, max_maptrack_frames=-1)
        domid = created["domain"]
        dom0(Hypercall.domctl, Domctl.max_mem, domain=domid, max_memkb=16 * 1024)
        done = dom0(Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
                    nr_extents=16 * 256, extent_order=0, mem_flags=0, domid=domid)
        assert done == 16 * 256
        path = dom0(Hypercall.memory_op, MemoryOp.add_to_physmap_batch, domid=0,
                    space=XenMapSpace.gmfn_foreign,
                    size=1, foreign_domid=domid, idxs=[0], gpfns=[0])["path"]
        assert os.path.getsize(path) == 16 * 256 * 4096  # a real /dev/shm file

        forged = HypercallClient(transport, name, Credential(0, created["secret"], "x"))
        try:
            forged(Hypercall.domctl, Domctl.pausedomain, domain=domid)
            raise AssertionError("a DomU secret claiming dom0 was accepted")
        except XenError as e:
            assert e.errno == Errno.EPERM

        dom0(Hypercall.domctl, Domctl.destroydomain, domain=domid)
        assert not os.path.exists(path)
    finally:
        ray.kill(hv)  # killed, it cannot remove its files: what stop_host does for a host
        for leftover in glob.glob(f"/dev/shm/xenray-t{os.getpid()}-h1-*"):
            os.unlink(leftover)
