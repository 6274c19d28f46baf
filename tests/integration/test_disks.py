"""Virtual block devices end to end: blkfront in a PV guest, blkback in Dom0, a real raw
image on the host. What the guest wrote is in the image, byte for byte, read back from the
host with plain file reads after the domain is gone."""

import os

import pytest

from actors.blkback.vbd import create_image
from actors.guest.blk import verify_block
from cluster.xlcfg import parse_config


def disk_cfg(name: str, image, init: str, access: str = "rw"):
    return parse_config(f'name = "{name}"\nmemory = 32\n'
                        f'disk = [ "{image},raw,xvda,{access}" ]\n'
                        f'extra = "init={init}"\n')[0]


def test_guest_writes_land_in_the_image_byte_for_byte(xen, tmp_path):
    image = tmp_path / "disk.img"
    create_image(image, 16 << 20)
    xen.create(disk_cfg("verifier", image, "blkverify blocks=64 iodepth=8 seed=7"), host="h1")
    try:
        result = xen.wait_for(lambda: xen.result("verifier"), 120, "blkverify's result")
        assert result["verified"] == 64 and result["bad"] == []
    finally:
        xen.destroy("verifier")
    with open(image, "rb") as f:
        for i in range(64):
            assert f.read(4096) == verify_block(7, i, 4096), f"block {i} differs in the image"
        assert f.read(4096) == bytes(4096)  # nothing written past the run


def test_create_refuses_write_access_to_a_read_only_image(xen, tmp_path):
    image = tmp_path / "ro.img"
    create_image(image, 1 << 20)
    os.chmod(image, 0o444)
    with pytest.raises(Exception, match="read-only"):
        xen.create(disk_cfg("ro-writer", image, "idle"), host="h2")
    assert xen.find("ro-writer") is None


def test_killing_blkback_mid_stream_loses_no_acknowledged_write(xen, tmp_path):
    """blkback is restartable: a new incarnation recovers its devices from xenstore, blkfront
    reconnects on a new ring and re-issues what had no response (19.4); every write the guest
    issued completes and every block is on disk afterwards."""
    import ray

    from actors.transport.naming import NAMESPACE, actor_name

    image = tmp_path / "stream.img"
    create_image(image, 64 << 20)
    blocks = 3000
    xen.create(disk_cfg("streamer", image, f"blkverify blocks={blocks} iodepth=8 seed=3"),
               host="h2")
    try:
        blkback = actor_name("h2", "blkback")
        stats = lambda: xen._transport.call(blkback, "statistics")["totals"]  # noqa: E731
        xen.wait_for(lambda: stats().get("wr_req", 0) > 200, 60, "the write stream to be under way")
        ray.kill(ray.get_actor(blkback, namespace=NAMESPACE), no_restart=False)
        assert xen.result("streamer") is None  # the stream was still running
        result = xen.wait_for(lambda: xen.result("streamer"), 180, "blkverify to finish")
        assert result["verified"] == blocks and result["bad"] == []
        recovered = xen.wait_for(lambda: xen._transport.call(blkback, "statistics"), 30,
                                 "blkback's new incarnation")
        assert recovered["recovered"] >= 1  # the restarted blkback found the device again
        vbd = xen.domain_statistics("streamer")["vbd"]
        assert vbd[51712]["reconnects"] >= 1  # blkfront reconnected on a new ring
    finally:
        xen.destroy("streamer")
    with open(image, "rb") as f:
        for i in range(blocks):
            assert f.read(4096) == verify_block(3, i, 4096), f"block {i} lost"


@pytest.mark.parametrize("mode", ["overflow", "garbage"])
def test_hostile_frontend_is_refused_and_blkback_keeps_serving_others(xen, tmp_path, mode):
    """19.2: a frontend that overflows its ring is disconnected alone; garbage requests get
    BLKIF_RSP_ERROR; blkback itself survives (same incarnation) and serves another domain."""
    evil_img, good_img = tmp_path / "evil.img", tmp_path / "good.img"
    create_image(evil_img, 4 << 20)
    create_image(good_img, 4 << 20)
    from actors.transport.naming import actor_name

    blkback = actor_name("h1", "blkback")
    before = xen._transport.call(blkback, "statistics")
    xen.create(disk_cfg("evil", evil_img, f"blkhostile mode={mode}"), host="h1")
    try:
        xen.wait_for(lambda: any("blkhostile: published" in line
                                 for line in xen.console("evil", 20)), 60, "the attack")
        after = xen.wait_for(
            lambda: (s := xen._transport.call(blkback, "statistics"))["hostile"]
            + s["totals"].get("errors", 0) > before["hostile"] + before["totals"].get(
                "errors", 0) and s, 30, "blkback to refuse the hostile ring")
        assert after["recovered"] == before["recovered"]  # the same blkback, never restarted
        xen.create(disk_cfg("good", good_img, "blkverify blocks=32 iodepth=4"), host="h1")
        result = xen.wait_for(lambda: xen.result("good"), 120, "the good domain's verify")
        assert result["verified"] == 32 and result["bad"] == []
    finally:
        for name in ("evil", "good"):
            if xen.find(name) is not None:
                xen.destroy(name)
    with open(evil_img, "rb") as f:
        assert f.read() == bytes(4 << 20)  # nothing the hostile guest sent was written
