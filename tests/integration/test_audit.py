"""``xenray audit`` on the session's cluster: domains created and destroyed, with a disk and a
NIC, on both hosts, leave nothing behind (the audit finds no leak it did not find before:
earlier tests may have left their own, e.g. a blkback killed while it mapped a ring); leaks
planted as a buggy part would leave them (a node written with Debian's ``xenstore-write``, a
memory file in /dev/shm named for the run) are found, through the API and the CLI, until
they are removed."""

import json
import os
import pathlib
import subprocess

from actors.blkback.vbd import create_image
from cluster.audit import Leak, audit
from tests.integration.conftest import cli

UNUSED_DOMID = 31000


def test_audit_is_clean_after_domains_come_and_go_and_finds_planted_leaks(
        xen, domains, cluster_home, tmp_path):
    before = set(audit(xen))
    image = tmp_path / "disk.img"
    create_image(image, 4 << 20)
    made = [domains('name = "aud1"\nmemory = 32\nextra = "init=counter"\n', "h1"),
            domains(f'name = "aud2"\nmemory = 32\ndisk = [ "{image},raw,xvda,rw" ]\n'
                    'extra = "init=idle"\n', "h2"),
            domains('name = "aud3"\nmemory = 32\nvif = [ "ip=10.9.0.1" ]\n'
                    'extra = "init=idle"\n', "h1")]
    assert set(audit(xen)) == before  # running domains are no leak
    for info in made:
        xen.destroy(info["name"])
    assert set(audit(xen)) == before

    socket = next(h["xenstored_socket"] for h in xen.info() if h["host"] == "h1")
    env = {**os.environ, "XENSTORED_PATH": socket}
    node = f"/local/domain/{UNUSED_DOMID}"
    subprocess.run(["xenstore-write", f"{node}/x", "1"], env=env, check=True, timeout=30)
    stray = pathlib.Path(f"/dev/shm/xenray-{xen.run_id}-h2-d{UNUSED_DOMID}")
    stray.touch(mode=0o600)
    forked = xen._call("h2", "forkserver", "spawn")  # as a toolstack that lost track would
    pid = xen._call("h2", "forkserver", "processes")[forked]
    planted = {Leak("h1", "xenstore", node),
               Leak("h2", "shm-file", f"{stray}: domain {UNUSED_DOMID} is gone"),
               Leak("h2", "process", f"the fork server's process {forked} (pid {pid}) runs no "
                                     "domain")}
    try:
        as_json = json.loads(cli(cluster_home, "audit", "--json").stdout)
        assert {Leak(**row) for row in as_json} == before | planted
        said = cli(cluster_home, "audit")
        assert said.returncode == 1 and f"h1  xenstore    {node}" in said.stdout.splitlines()
    finally:
        subprocess.run(["xenstore-rm", node], env=env, check=True, timeout=30)
        stray.unlink()
        xen._call("h2", "forkserver", "kill", forked)
    assert set(audit(xen)) == before
    assert cli(cluster_home, "audit").returncode == (1 if before else 0)
