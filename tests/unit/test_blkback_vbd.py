"""blkback's image files (actors/blkback/vbd.py): sizes, sparse creation, I/O, discard."""

import os

import pytest

from actors.blkback.vbd import Vbd, create_image
from protocols.blkif import parse_size


@pytest.mark.parametrize("text,size", [("4096", 4096), ("512K", 512 << 10), ("64M", 64 << 20),
                                       ("1G", 1 << 30), ("2t", 2 << 40), ("64MiB", 64 << 20),
                                       (" 8 KB ", 8 << 10), (1024, 1024)])
def test_vbd_size_parser_takes_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "12X", "-4K", "1.5G", "0", "100", 0, 513])
def test_vbd_size_parser_refuses_junk_and_non_sector_sizes(text):
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


def test_vbd_create_image_is_sparse_and_refuses_an_existing_file(tmp_path):
    path = tmp_path / "disk.img"
    assert create_image(path, "64M") == 64 << 20
    st = os.stat(path)
    assert st.st_size == 64 << 20 and st.st_blocks * 512 < (1 << 20)
    with pytest.raises(FileExistsError, match=str(path)):
        create_image(path, "1M")
    assert os.stat(path).st_size == 64 << 20
    assert create_image(path, "1M", overwrite=True) == 1 << 20
    assert os.stat(path).st_size == 1 << 20


def test_vbd_8_2_sectors_are_512_byte_units_and_io_round_trips(tmp_path):
    path = tmp_path / "disk.img"
    create_image(path, "1M")
    vbd = Vbd(path, readonly=False)
    assert vbd.sectors == 2048
    data = bytes(range(256)) * 4
    vbd.write(3, data)
    assert vbd.read(3, len(data)) == data
    with open(path, "rb") as f:
        f.seek(3 * 512)
        assert f.read(len(data)) == data
    a, b = bytearray(512), bytearray(512)
    assert vbd.readv(3, [a, b]) == 1024 and bytes(a + b) == data
    vbd.flush()
    vbd.close()


def test_vbd_missing_image_error_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.img"):
        Vbd(tmp_path / "nope.img", readonly=True)


def test_vbd_read_only_image_asked_for_write_is_refused_naming_it(tmp_path):
    path = tmp_path / "ro.img"
    create_image(path, "1M")
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError, match="ro.img"):
        Vbd(path, readonly=False)
    vbd = Vbd(path, readonly=True)
    assert vbd.readonly and vbd.sectors == 2048
    with pytest.raises(OSError):
        vbd.write(0, b"x" * 512)
    vbd.close()


def test_vbd_directory_is_not_an_image(tmp_path):
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        Vbd(tmp_path, readonly=True)


def test_vbd_discard_reads_as_zeros_and_frees_blocks(tmp_path):
    path = tmp_path / "disk.img"
    create_image(path, "4M")
    vbd = Vbd(path, readonly=False)
    vbd.write(0, b"\xab" * (1 << 20))
    vbd.flush()
    before = os.stat(path).st_blocks
    punched = vbd.discard(256, 1024)  # 128 KiB .. 640 KiB
    assert vbd.read(256, 1024 * 512) == bytes(1024 * 512)
    assert vbd.read(0, 256 * 512) == b"\xab" * (256 * 512)
    assert vbd.read(1280, 512) == b"\xab" * 512
    assert os.stat(path).st_size == 4 << 20
    if punched:  # ext4 and tmpfs punch; a refusing filesystem falls back to zeros
        assert os.stat(path).st_blocks < before
    vbd.close()


def test_vbd_discard_falls_back_to_writing_zeros(tmp_path):
    path = tmp_path / "disk.img"
    create_image(path, "1M")
    vbd = Vbd(path, readonly=False)
    vbd.write(0, b"\x11" * 4096)
    vbd.punch_supported = False  # as after a filesystem answered EOPNOTSUPP
    assert vbd.discard(2, 4) is False
    assert vbd.read(0, 4096) == b"\x11" * 1024 + bytes(2048) + b"\x11" * 1024
    vbd.close()
