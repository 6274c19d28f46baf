"""`xenray image create PATH SIZE`: a sparse raw image, refused over an existing file."""

import os

from cluster.cli import main


def test_image_create_makes_a_sparse_file_of_the_asked_size(tmp_path, capsys):
    path = tmp_path / "disk.img"
    assert main(["image", "create", str(path), "64M"]) == 0
    st = os.stat(path)
    assert st.st_size == 64 << 20 and st.st_blocks * 512 < st.st_size
    assert "131072 sectors" in capsys.readouterr().out


def test_image_create_refuses_to_overwrite_and_names_the_file(tmp_path, capsys):
    path = tmp_path / "disk.img"
    path.write_bytes(b"precious")
    assert main(["image", "create", str(path), "1M"]) == 1
    assert str(path) in capsys.readouterr().err
    assert path.read_bytes() == b"precious"


def test_image_create_rejects_a_bad_size(tmp_path, capsys):
    assert main(["image", "create", str(tmp_path / "x.img"), "12 parsecs"]) == 1
    assert not (tmp_path / "x.img").exists()
