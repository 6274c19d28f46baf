"""A restarted toolstack agent adopts the running domains (issue 12's recovery), on the
in-process host: the real xl shell is closed and a new one started in its place, while the
domains run on, as when Ray restarts a killed agent. It takes back every domain it built
from libxl's userdata, destroys one that was being built when it died, and runs the
``on_crash`` of a domain that crashed while no agent ran."""

import os

import pytest

from actors.toolstack import builder
from actors.toolstack.actor import ToolstackShell
from protocols.errno import Errno, XenError
from protocols.hypercall import Hypercall, SchedOp, ShutdownReason
from protocols.libxl_types import Action, DomainConfig
from protocols.xenstore.paths import domain_path
from tests.inprocess import HOST, REGISTRY, XL


@pytest.fixture
def host(threaded_host):
    threaded_host.start_toolstack()
    return threaded_host


def create(host, name, **kw):
    cfg = DomainConfig(name=name, memory=8, maxmem=8, cmdline="init=idle", **kw)
    return host.call(XL, "create", cfg.to_dict())


def restart_agent(host, while_down=lambda: None) -> ToolstackShell:
    """The agent dies (its endpoint gone: what is sent to it meanwhile is lost), then a new
    one starts over the same host, with the same launcher (the domains' processes live)."""
    old = host.toolstack
    old.close()
    del host.endpoints[XL]
    while_down()
    host.toolstack = host.start(XL, ToolstackShell(HOST, host.clients(XL), host.log,
                                                   old.launcher))
    return host.toolstack


def test_a_restarted_agent_adopts_its_domains_and_can_destroy_them(host):
    made = create(host, "web")
    path = builder.userdata_path(made_path := host.memory_path(made["domid"]))
    assert os.stat(path).st_mode & 0o777 == 0o600, "the userdata holds the domain's secret"
    before = host.toolstack.core.records["web"]
    agent = restart_agent(host)
    rec = agent.core.records["web"]
    assert (rec.domid, rec.pid, rec.token, rec.secret, rec.memory_path) == \
        (before.domid, before.pid, before.token, before.secret, made_path)
    assert [r["name"] for r in host.call(XL, "list")] == ["Domain-0", "web"]
    host.call(XL, "destroy", "web")
    assert made["domid"] not in host.hypervisor.state.table.domains
    assert not os.path.exists(path), "the destroy removed the userdata"
    assert host.call(REGISTRY, "lookup", "web") is None, "and gave the name back"


def test_a_domain_half_built_when_the_agent_died_is_destroyed(host):
    half = host.build(DomainConfig(name="half", memory=8, maxmem=8), "half")  # no userdata
    restart_agent(host)
    assert half.domid not in host.hypervisor.state.table.domains
    with pytest.raises(XenError) as gone:
        host.xs.read(domain_path(half.domid))
    assert gone.value.errno == Errno.ENOENT
    assert host.toolstack.core.records == {}


def test_a_domain_that_crashed_while_no_agent_ran_gets_its_on_crash(host):
    made = create(host, "c", on_crash=Action.DESTROY)
    domid = made["domid"]

    def crash():  # the guest crashes itself: VIRQ_DOM_EXC, @releaseDomain, and no agent
        guest = host.clients(f"{HOST}/dom{domid}", domid,
                             host.toolstack.launcher.secrets[domid])
        guest.hv(Hypercall.sched_op, SchedOp.shutdown, reason=ShutdownReason.crash)

    restart_agent(host, crash)
    host.until(lambda: host.call(REGISTRY, "lookup", "c") is None,
               "the adopted, crashed domain to be destroyed by its on_crash")
    assert domid not in host.hypervisor.state.table.domains
