"""``create`` as a user meets it, on the shared two-host cluster: a name is unique across the
cluster and reserved before anything is built; a create that fails, at any step, leaves nothing
behind (libxl's domcreate error paths) and says why in one typed error; create returns once
the guest's init runs."""

import glob
import os
import subprocess
import threading

import pytest

from cluster.xlcfg import parse_config
from protocols.errno import Errno, XenError


def leftovers(xen) -> dict:
    """What a failed create could leave: hypervisor domains, memory files, names."""
    return {"domains": {h["host"]: h["domains"] for h in xen.info()},
            "memory": sorted(glob.glob(f"/dev/shm/xenray-{xen.run_id}-*-d*")),
            "names": sorted(r["name"] for r in xen.list())}


def race(xen, name: str, hosts: list[str]) -> tuple[list, list]:
    """``create`` of ``name`` on each host at the same moment; (results, errors)."""
    cfg = parse_config(f'name = "{name}"\nmemory = 32\nextra = "init=idle"\n')[0]
    barrier, results, errors = threading.Barrier(len(hosts)), [], []

    def create(host):
        barrier.wait()
        try:
            results.append(xen.create(cfg, host=host))
        except XenError as e:
            errors.append(e)

    threads = [threading.Thread(target=create, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, errors


@pytest.mark.parametrize("hosts", [["h1", "h2"], ["h1", "h1"]], ids=["two-hosts", "one-host"])
def test_create_two_creates_of_one_name_at_once_make_one_domain(xen, hosts):
    before = leftovers(xen)
    results, errors = race(xen, "race", hosts)
    try:
        assert len(results) == 1 and len(errors) == 1, (results, errors)
        assert errors[0].errno == Errno.EEXIST and "already exists" in str(errors[0])
        rows = [r for r in xen.list() if r["name"] == "race"]
        assert len(rows) == 1 and rows[0]["host"] == results[0]["host"]
        assert xen.find("race") == (results[0]["host"], results[0]["domid"])
    finally:
        xen.destroy("race")
    assert leftovers(xen) == before, "the losing create left something behind"


@pytest.mark.parametrize("text, errno, words", [
    ('vcpus = 64\nmaxvcpus = 64\nextra = "init=idle"', Errno.EINVAL, "at most 32 vCPUs"),
    ('memory = 100000\nextra = "init=idle"', Errno.ENOMEM, "host has memory for"),
    ('extra = "init=nosuchinit"', Errno.ENOENT, "Requested init nosuchinit failed"),
    ('disk = [ "/nonexistent/disk.img,raw,xvda,rw" ]\nextra = "init=idle"', Errno.ENOENT,
     "/nonexistent/disk.img does not exist"),
    ('disk = [ "/tmp,raw,xvda,ro" ]\nextra = "init=idle"', Errno.EIO,
     "disk xvda: blkback refused it"),  # passes the config check; the backend says no
], ids=["vcpus", "memory", "init", "disk", "backend"])
def test_create_that_fails_leaves_nothing_behind_and_says_why(xen, text, errno, words):
    before = leftovers(xen)
    with pytest.raises(XenError) as e:
        xen.create(parse_config(f'name = "bad"\n{text}\n')[0], host="h1")
    assert e.value.errno == errno and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value), "one line, never a traceback"
    assert leftovers(xen) == before
    assert xen.holder("bad") is None, "the name is free again"


def test_create_returns_once_the_guests_init_runs(xen):
    """The guest kernel says ``running counter`` in ``~/data/init`` before it runs the init;
    create returns only after that (read at once, through Debian's xenstore-read)."""
    info = xen.create(parse_config('name = "ready"\nextra = "init=counter interval=0.1"\n')[0],
                      host="h2")
    try:
        sock = next(h["xenstored_socket"] for h in xen.info() if h["host"] == "h2")
        got = subprocess.run(["xenstore-read", f"/local/domain/{info['domid']}/data/init"],
                             env={**os.environ, "XENSTORED_PATH": sock}, capture_output=True,
                             text=True, timeout=30)
        assert got.stdout.strip() == "running counter", got.stderr
        assert xen.find("ready") == ("h2", info["domid"])
    finally:
        xen.destroy("ready")
