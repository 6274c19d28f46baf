"""Virtual block devices end to end: blkfront in a PV guest, blkback in Dom0, a real raw
image on the host. What the guest wrote is in the image, byte for byte, read back from the
host with plain file reads after the domain is gone."""

import os

import pytest

from actors.blkback.vbd import create_image
from actors.domain.inits import verify_block
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
