"""xl's ``xenstat`` (actors/toolstack/xenstat.py): libxenstat's node from the hypervisor's
domain list, each vCPU's getvcpuinfo and the backends' device rows (Dom0's view of a vif: its
transmit is the guest's receive), a backend that does not answer costing only its columns;
and the real toolstack shell answering it on the in-process host, with a guest writing to
its disk."""

import pytest

from actors.toolstack import xenstat
from protocols.errno import Errno, XenError
from protocols.hypercall import Domctl, DomInfoFlag, Hypercall, Sysctl, XenVersion
from protocols.libxl_types import DiskSpec, DomainConfig
from tests.waits import wait_until

PHYSINFO = {"nr_cpus": 2, "total_pages": 262144, "free_pages": 131072, "host": "h1"}


def info(domid, *, flags=int(DomInfoFlag.blocked), pages=8192, max_pages=8192, cpu=0,
         max_vcpu_id=0):
    return {"domain": domid, "flags": flags, "tot_pages": pages, "max_pages": max_pages,
            "cpu_time": cpu, "nr_online_vcpus": max_vcpu_id + 1, "max_vcpu_id": max_vcpu_id,
            "handle": bytes(16), "ssidref": 0, "cpupool": 0}


def make_node(**kw):
    args = {"host": "h1", "time": 1.0, "clock": 2.0, "version": "4.22-xenray",
            "physinfo": PHYSINFO, "infos": [info(0, max_pages=xenstat.UINT_MAX), info(3)],
            "names": {3: "web"}, "vifs": [], "vbds": [], **kw}
    args.setdefault("vcpus", {i["domain"]: [] for i in args["infos"]})
    return xenstat.node(**args)


def test_libxenstat_node_memory_in_bytes_and_vcpus_from_max_vcpu_id():
    n = make_node(infos=[info(0, max_pages=xenstat.UINT_MAX, pages=4096),
                         info(3, pages=8192, max_pages=16384, cpu=7, max_vcpu_id=3)])
    assert (n["tot_mem"], n["free_mem"], n["num_cpus"], n["cpu_hz"]) == (1 << 30, 1 << 29, 2, 0)
    dom0, web = n["domains"]
    assert (dom0["name"], dom0["max_mem"], dom0["cur_mem"]) == ("Domain-0", None, 16 << 20)
    assert web == {"domid": 3, "name": "web", "flags": int(DomInfoFlag.blocked), "cpu_ns": 7,
                   "num_vcpus": 4, "online_vcpus": 4, "vcpus": [], "cur_mem": 32 << 20,
                   "max_mem": 64 << 20, "ssid": 0, "networks": [], "vbds": []}


def test_libxenstat_leaves_out_a_domain_without_a_name():
    n = make_node(infos=[info(0), info(3), info(4)], names={3: "web"})
    assert [d["name"] for d in n["domains"]] == ["Domain-0", "web"]


def test_libxenstat_collect_vcpus_each_vcpus_online_and_ns_from_getvcpuinfo():
    """xenstat_collect_vcpus: vCPUs 0..max_vcpu_id; a domain whose getvcpuinfo fails (gone
    since the list) is pruned; Dom0's vCPUs, not scheduled here, are not asked for."""
    asked = []

    def hv(op, sub, *, domain, vcpu):
        assert (op, sub) == (Hypercall.domctl, Domctl.getvcpuinfo)
        asked.append((domain, vcpu))
        if domain == 4:
            raise XenError(Errno.ESRCH, "gone")
        return {"vcpu": vcpu, "online": int(vcpu != 1), "blocked": 0, "running": 0,
                "cpu_time": 10**9 * (vcpu + 1), "cpu": -1}

    infos = [info(0, max_vcpu_id=1), info(3, max_vcpu_id=2), info(4), info(5)]
    vcpus = xenstat.collect_vcpus(hv, infos, {3: "web", 4: "gone"})
    assert asked == [(3, 0), (3, 1), (3, 2), (4, 0)], "none for Dom0 or the unnamed domain 5"
    assert vcpus == {0: [], 3: [{"online": 1, "ns": 10**9}, {"online": 0, "ns": 2 * 10**9},
                                {"online": 1, "ns": 3 * 10**9}]}
    n = make_node(infos=infos, names={3: "web", 4: "gone"}, vcpus=vcpus)
    assert [(d["name"], len(d["vcpus"])) for d in n["domains"]] == [("Domain-0", 0), ("web", 3)]


def test_libxenstat_vif_counters_are_dom0s_devices_transmit_is_to_the_guest():
    vifs = [{"domid": 3, "devid": 1, "bridge": "xenbr0", "tx_bytes": 100, "tx_packets": 1,
             "rx_bytes": 5000, "rx_packets": 7, "rx_dropped": 2, "carrier_dropped": 1,
             "tx_errors": 3, "rx_errors": 4},
            {"domid": 3, "devid": 0, "tx_bytes": 1, "rx_bytes": 2},
            {"domid": 9, "devid": 0, "tx_bytes": 1, "rx_bytes": 2}]  # no such domain here
    vbds = [{"domid": 3, "devid": 51712, "params": "/img", "rd_req": 5, "wr_req": 6,
             "rd_sect": 40, "wr_sect": 48, "f_req": 1}]
    web = make_node(vifs=vifs, vbds=vbds)["domains"][1]
    assert [n["id"] for n in web["networks"]] == [0, 1]
    assert web["networks"][1] == {"id": 1, "tbytes": 5000, "tpackets": 7, "terrs": 4,
                                  "tdrop": 3, "rbytes": 100, "rpackets": 1, "rerrs": 3,
                                  "rdrop": 0}
    assert web["vbds"] == [{"dev": 51712, "error": False, "oo_reqs": 0, "rd_reqs": 5,
                            "wr_reqs": 6, "rd_sects": 40, "wr_sects": 48}]


def test_xenstat_version_string_is_libxenstats():
    assert xenstat.version_string(4 << 16 | 22, "-xenray") == "4.22-xenray"


def test_gather_a_backend_that_fails_costs_only_its_columns():
    calls = []

    def hv(op, sub, **args):
        calls.append((op, sub))
        return {(Hypercall.sysctl, Sysctl.getdomaininfolist): [info(0), info(3)],
                (Hypercall.domctl, Domctl.getvcpuinfo): {"online": 1, "cpu_time": 42},
                (Hypercall.sysctl, Sysctl.physinfo): PHYSINFO,
                (Hypercall.xen_version, XenVersion.version): 4 << 16 | 22,
                (Hypercall.xen_version, XenVersion.extraversion): "-xenray"}[(op, sub)]

    def statistics(component):
        if component == "netback":
            raise TimeoutError("h1/netback did not answer within 5 s")
        return {"devices": [{"domid": 3, "devid": 51712, "wr_req": 9}]}

    clock = iter([50.0])
    n = xenstat.gather("h1", hv, {3: "web"}, lambda: next(clock), statistics,
                       wall=lambda: 1234.5)
    assert (n["time"], n["clock"], n["xen_version"]) == (1234.5, 50.0, "4.22-xenray")
    assert n["errors"] == {"netback": "host h1's netback did not answer: "
                                      "h1/netback did not answer within 5 s"}
    web = n["domains"][1]
    assert web["networks"] == [] and web["vbds"][0]["wr_reqs"] == 9
    assert web["vcpus"] == [{"online": 1, "ns": 42}]
    assert calls[0] == (Hypercall.sysctl, Sysctl.getdomaininfolist), "sampled first"


@pytest.fixture
def host(threaded_host):
    threaded_host.start_toolstack()
    return threaded_host


def test_xl_xenstat_on_the_in_process_host_counts_a_guests_disk_writes(host, tmp_path):
    """The real shell: Dom0 and the domain, their memory from the hypervisor, the vbd's
    write count from the real blkback as the guest's blkbench writes; no netback runs on
    this host, which the node says."""
    from actors.blkback.actor import BlkbackShell
    from tests.inprocess import HOST, XL

    host.start(f"{HOST}/blkback", BlkbackShell(HOST, host.clients(f"{HOST}/blkback"), host.log))
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    cfg = DomainConfig(name="web", memory=8, maxmem=8,
                       cmdline="init=blkbench rw=write count=64 size=256K iodepth=4",
                       disk=(DiskSpec("xvda", 51712, target=str(image)),))
    domid = host.call(XL, "create", cfg.to_dict())["domid"]

    def written():
        n = host.call(XL, "xenstat")
        web = next(d for d in n["domains"] if d["name"] == "web")
        return n if web["vbds"] and web["vbds"][0]["wr_reqs"] >= 64 else None

    n = wait_until(written, "64 writes counted", timeout=30)
    dom0, web = n["domains"]
    assert dom0["name"] == "Domain-0" and web["domid"] == domid
    assert dom0["vcpus"] == [] and len(web["vcpus"]) == 1 and web["vcpus"][0]["online"] == 1
    assert web["vcpus"][0]["ns"] > 0, "it ran"
    assert web["cur_mem"] == 8 << 20 and web["max_mem"] is not None
    assert web["vbds"][0]["dev"] == 51712 and web["vbds"][0]["wr_sects"] >= 64 * 8
    assert n["tot_mem"] == 64 << 20 and n["host"] == HOST and n["clock"] > 0
    assert set(n["errors"]) == {"netback"}
    host.call(XL, "destroy", "web")
