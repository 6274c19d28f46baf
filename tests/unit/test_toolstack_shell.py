"""xl's real shell (actors.toolstack.actor.ToolstackShell) on the in-process host, without Ray:
the whole create pipeline against the real hypervisor, xenstored, name registry and guest
kernel (``threaded_host.start_toolstack``), libxl's error paths (a failed create leaves
nothing behind, and says why even when part of the undo fails), the reactions to
``@releaseDomain`` (xl_vmcontrol.c handle_domain_death), and the name race between a destroy
and a re-create of the same name.

Interleavings are forced, never slept for: a test stands in for one handler of a real shell
(:class:`Intercept`) and holds it on an event until the other side has got where it must.
"""

import glob
import os
import threading

import pytest

from actors.blkback.actor import BlkbackShell
from actors.guest.inits import INITS
from actors.toolstack.devices import DEVICE_TYPES
from protocols.errno import Errno, XenError
from protocols.hypercall import DomInfoFlag, Domctl, Hypercall
from protocols.libxl_types import Action, DiskSpec, DomainConfig
from protocols.xenstore.paths import (INIT_STATUS, LOCAL_DOMAIN, backend_path, domain_path,
                                      libxl_path, parent, vm_path)
from tests.inprocess import HOST, HV, REGISTRY, XENSTORED, XL, domain_endpoint

BLKBACK = f"{HOST}/blkback"
WAIT_S = 30.0


class Intercept(dict):
    """A stand-in registered in place of a shell: the handlers given, else the real one's."""

    def __init__(self, real, **handlers) -> None:
        super().__init__(handlers)
        self.real = real

    def __missing__(self, kind):
        return lambda *args: self.real(kind, *args)


@pytest.fixture
def host(threaded_host):
    """The threaded in-process host (it overrides the pumped ``host``), running xl."""
    threaded_host.start_toolstack()
    return threaded_host


def create(host, name: str, cmdline: str = "init=idle", **kw) -> dict:
    cfg = DomainConfig(name=name, memory=8, maxmem=8, cmdline=cmdline, **kw)
    return host.call(XL, "create", cfg.to_dict())


def lookup(host, name: str):
    return host.call(REGISTRY, "lookup", name)


def domids(host) -> list[int]:
    return sorted(host.hypervisor.state.table.domains)


def ls(host, path: str) -> list[str]:
    try:
        return sorted(host.xs.directory(path))
    except XenError:
        return []


def leftovers(host) -> dict:
    """What a create could leave: domains, memory files, each domain's xenstore directories
    (its home, libxl's record, /vm, its backends), xl's records."""
    dirs = [LOCAL_DOMAIN, libxl_path(0).rsplit("/", 1)[0], vm_path("").rstrip("/"),
            *(parent(backend_path(dtype.kind, 0)) for dtype in DEVICE_TYPES)]
    return {"domains": domids(host),
            "memory": sorted(glob.glob(f"{host.hypervisor.state.mem_prefix}-d*")),
            "xenstore": {path: ls(host, path) for path in dirs},
            "records": dict(host.toolstack.core.records)}


def introduced(host, domid: int) -> bool:
    """Does xenstored still hold the domain's credential?"""
    secret = host.toolstack.launcher.secrets[domid]
    try:
        host.clients(domain_endpoint(domid), domid, secret).xs.read("domid")
    except XenError as e:
        assert e.errno == Errno.EACCES
        return False
    return True


def shut_down(host, domid: int) -> bool:
    info = host.xl(Hypercall.domctl, Domctl.getdomaininfo, domain=domid)
    return bool(info["flags"] & DomInfoFlag.shutdown)


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    """Run ``fn(*args)`` on a thread; the list gets its result or its exception."""
    out: list = []

    def run():
        try:
            out.append(fn(*args))
        except Exception as e:
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- create ----------------------------------------------------------------------------------

def test_libxl_create_runs_the_whole_pipeline_and_the_guests_init_starts(host):
    before = leftovers(host)
    made = create(host, "web")
    domid = made["domid"]
    assert made["pid"] == os.getpid() and made["host"] == HOST
    assert host.xs.read(f"{domain_path(domid)}/{INIT_STATUS}") == b"running idle"
    assert host.xs.read(f"{domain_path(domid)}/name") == b"web"
    assert host.call(domain_endpoint(domid), "statistics")["init"] == "idle"
    held = lookup(host, "web")
    assert (held["host"], held["domid"]) == (HOST, domid)
    assert held["token"] == host.toolstack.core.records["web"].token
    [row] = [r for r in host.call(XL, "list") if r["name"] == "web"]
    assert row["domid"] == domid and row["mem"] == 8 and row["vcpus"] == 1
    host.call(XL, "destroy", "web")
    assert leftovers(host) == before and lookup(host, "web") is None
    assert not introduced(host, domid)


def test_libxl_create_two_creates_of_one_name_at_once_make_one_domain(host):
    barrier = threading.Barrier(2)

    def race():
        barrier.wait()
        return create(host, "race")

    runs = [in_thread(race) for _ in range(2)]
    for thread, _ in runs:
        thread.join(WAIT_S)
    results = [out[0] for _, out in runs]
    made = [r for r in results if isinstance(r, dict)]
    lost = [r for r in results if isinstance(r, XenError)]
    assert len(made) == 1 and len(lost) == 1, results
    assert lost[0].errno == Errno.EEXIST and "already exists on h1" in str(lost[0])
    assert domids(host) == [0, made[0]["domid"]]
    assert lookup(host, "race")["domid"] == made[0]["domid"]
    host.call(XL, "destroy", "race")


@pytest.mark.parametrize("how, errno, words", [
    ("disk", Errno.EIO, "disk xvda: blkback refused it"),
    ("init", Errno.ENOENT, "Requested init nosuchinit failed"),
])
def test_libxl_domcreate_a_late_failure_leaves_nothing_behind(host, tmp_path, how, errno, words):
    """The disk is a directory: it passes the config check, then blkback refuses it (the
    BACKENDS step); the unknown init fails the last step (INIT)."""
    host.start(BLKBACK, BlkbackShell(HOST, host.clients(BLKBACK), host.log))
    before = leftovers(host)
    kw = {"disk": (DiskSpec("xvda", 51712, target=str(tmp_path)),)} if how == "disk" else {}
    cmdline = "init=nosuchinit" if how == "init" else "init=idle"
    for _ in range(2):  # and again: nothing accumulates
        with pytest.raises(XenError) as e:
            create(host, "bad", cmdline, **kw)
        assert e.value.errno == errno and words in str(e.value), str(e.value)
        assert leftovers(host) == before
        assert lookup(host, "bad") is None
    started = host.toolstack.launcher.secrets
    assert len(started) == 2, "both got as far as their vCPUs' process"
    assert not any(introduced(host, domid) for domid in started)
    assert all(domain_endpoint(domid) not in host.endpoints for domid in started)


def test_libxl_domcreate_undo_goes_on_past_a_failing_effect_and_raises_the_cause(host):
    """xenstored is gone when the undo releases the domain there: the vCPUs' process is still
    killed and the name still given back, and the user sees why the create failed."""
    def gone(domid):
        raise XenError(Errno.ENOTCONN, "xenstored is not running")

    real = host.endpoints[XENSTORED]
    host.endpoints[XENSTORED] = Intercept(real, release=gone)
    try:
        with pytest.raises(XenError) as e:
            create(host, "bad", "init=nosuchinit")
    finally:
        host.endpoints[XENSTORED] = real
    assert e.value.errno == Errno.ENOENT and "nosuchinit" in str(e.value)
    [domid] = host.toolstack.launcher.secrets
    assert domid not in domids(host) and domain_endpoint(domid) not in host.endpoints
    assert lookup(host, "bad") is None and host.toolstack.core.records == {}


def test_libxl_domcreate_undo_goes_on_past_a_launcher_that_cannot_kill(host, monkeypatch):
    def stuck(domid):
        raise OSError("kill: operation not permitted")

    monkeypatch.setattr(host.toolstack.launcher, "kill", stuck)
    with pytest.raises(XenError) as e:
        create(host, "bad", "init=nosuchinit")
    assert e.value.errno == Errno.ENOENT
    [domid] = host.toolstack.launcher.secrets
    assert domid not in domids(host) and not introduced(host, domid)
    assert lookup(host, "bad") is None


# -- the name race: a destroy's late release and a re-create ----------------------------------

def test_xl_destroy_racing_a_re_create_of_its_name_cannot_free_the_name(host):
    """The destroy's ReleaseName reaches the registry only after a create of the same name on
    the same host has reserved it: the name stays the new domain's, cluster-wide."""
    first = create(host, "web")
    releasing, go = threading.Event(), threading.Event()

    def late_release(*args):
        releasing.set()
        go.wait(WAIT_S)
        return real("release", *args)

    real = host.endpoints[REGISTRY]
    host.endpoints[REGISTRY] = Intercept(real, release=late_release)
    destroy, out = in_thread(host.call, XL, "destroy", "web")
    try:
        assert releasing.wait(WAIT_S), "the destroy never released the name"
        again = create(host, "web")
    finally:
        go.set()
        destroy.join(WAIT_S)
        host.endpoints[REGISTRY] = real
    assert out == [None], out
    assert again["domid"] != first["domid"]
    held = lookup(host, "web")
    assert (held["host"], held["domid"]) == (HOST, again["domid"])
    assert host.call(REGISTRY, "reserve", "web", "h2", "elsewhere") == held, \
        "another host could make a second web"
    host.call(XL, "destroy", "web")
    assert lookup(host, "web") is None


# -- reactions to @releaseDomain ---------------------------------------------------------------

def hold_reactions(host) -> threading.Event:
    """Hold xl's reaction thread at its next hypercall (the domain list it reads on
    @releaseDomain) until the returned event is set: what shuts down meanwhile is one batch."""
    release = threading.Event()
    real = host.endpoints[HV]

    def hypercall(*args):
        if threading.current_thread().name == "xl-reactions":
            release.wait(WAIT_S)
        return real("hypercall", *args)

    host.endpoints[HV] = Intercept(real, hypercall=hypercall)
    return release


def test_xl_handle_domain_death_a_failing_rebuild_does_not_stop_the_others_teardown(
        host, monkeypatch):
    a, b = create(host, "a"), create(host, "b")  # a restarts on reboot, b is destroyed

    def cannot_start(domid, secret, memory_path, resume=False):
        raise OSError("no room for another process")

    monkeypatch.setattr(host.toolstack.launcher, "start", cannot_start)
    release = hold_reactions(host)
    try:
        host.call(XL, "shutdown", "a", "reboot")
        host.call(XL, "shutdown", "b", "poweroff")
        host.until(lambda: shut_down(host, a["domid"]) and shut_down(host, b["domid"]),
                   "both domains to shut down")
    finally:
        release.set()
    host.until(lambda: lookup(host, "b") is None and b["domid"] not in domids(host),
               "b to be destroyed")
    host.until(lambda: lookup(host, "a") is None, "a's failed restart to give its name back")
    assert domids(host) == [0] and host.toolstack.core.records == {}


def test_xl_handle_domain_death_a_rebuild_does_not_hold_up_other_reactions(host, monkeypatch):
    a, b = create(host, "a"), create(host, "b")
    launcher = host.toolstack.launcher
    building, go = threading.Event(), threading.Event()
    real_start = launcher.start

    def slow_start(domid, secret, memory_path, resume=False):
        building.set()
        go.wait(WAIT_S)
        return real_start(domid, secret, memory_path, resume)

    monkeypatch.setattr(launcher, "start", slow_start)
    try:
        host.call(XL, "shutdown", "a", "reboot")
        assert building.wait(WAIT_S), "a's restart never started its vCPUs' process"
        host.call(XL, "shutdown", "b", "poweroff")
        host.until(lambda: lookup(host, "b") is None, "b to be destroyed during a's rebuild")
    finally:
        go.set()
    host.until(lambda: (lookup(host, "a") or {}).get("domid") not in (None, a["domid"]),
               "a to run again")
    domid = lookup(host, "a")["domid"]
    assert host.xs.read(f"{domain_path(domid)}/{INIT_STATUS}") == b"running idle"
    assert b["domid"] not in domids(host)
    host.call(XL, "destroy", "a")


def test_xl_handle_domain_death_rename_restart_keeps_the_crashed_domain_and_creates_anew(
        host, monkeypatch):
    """on_crash=rename-restart: the crashed domain keeps running under ``<name>-<domid>``
    (its reservation moved with its token) and a new domain is created under the name, off
    the reaction thread."""
    crash, runs = threading.Event(), []

    def crashy(os):
        runs.append(os.domid)
        if len(runs) == 1:
            crash.wait(WAIT_S)
            raise RuntimeError("crashing as asked")
        os.idle()

    monkeypatch.setitem(INITS, "crashy", crashy)
    first = create(host, "c", "init=crashy", on_crash=Action.RENAME_RESTART)["domid"]
    crash.set()
    renamed = f"c-{first}"
    host.until(lambda: (lookup(host, "c") or {}).get("domid") not in (None, first),
               "c to be created anew")
    held = lookup(host, renamed)
    assert (held["domid"], held["token"]) == (first, host.toolstack.core.records[renamed].token)
    assert host.xs.read(f"{domain_path(first)}/name") == renamed.encode()
    assert shut_down(host, first) and runs == [first, lookup(host, "c")["domid"]]
    host.call(XL, "destroy", renamed)
    host.call(XL, "destroy", "c")
    assert domids(host) == [0]


def test_xl_a_domain_that_powers_off_as_its_create_returns_is_still_destroyed(host):
    """``init=poweroff`` shuts the domain down right after its init starts, while create is
    still finishing: that @releaseDomain finds the record being built. xl re-checks once the
    build ends, as libxl's domain-death event reports a domain already dead, so
    ``on_poweroff=destroy`` still happens."""
    made = create(host, "brief", cmdline="init=poweroff")
    assert host.until(lambda: lookup(host, "brief") is None and
                      made["domid"] not in domids(host), "the domain to be destroyed",
                      timeout=WAIT_S)
