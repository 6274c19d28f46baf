"""Xen's own client library against actors.xenstored over its Unix socket (reference 11.1
wire format and operations, 11.4 transactions): ``libxenstore_checks.c``, built at test time
with ``cc`` against Debian's ``libxen-dev`` (``<xenstore.h>``, ``-lxenstore``), reads, writes,
lists, removes and runs transactions, with and without a conflict. libxenstore 4.17 finds
the server through ``XENSTORED_PATH`` (``tools/xenstore/xs_lib.c`` ``xs_daemon_path``).
No Ray: the server runs in this process. ``.ci/run`` installs ``libxen-dev`` and ``gcc``."""

import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from actors.xenstored import UnixSocketServer, XenstoredServer
from actors.xenstored.server import TOOLSTACK

SOURCE = pathlib.Path(__file__).with_name("libxenstore_checks.c")
TIMEOUT = 30.0
CHECKS = ["ok open", "ok write", "ok read", "ok relative write", "ok directory", "ok rm",
          "ok transaction commit", "ok transaction abort", "ok ta err second read",
          "ok transaction conflict EAGAIN"]


@pytest.fixture
def xenstored():
    """A running server on a short socket path (Unix socket paths hold 107 bytes)."""
    tmp = tempfile.mkdtemp(dir="/tmp", prefix="xs-")
    path = os.path.join(tmp, "run", "socket")
    try:
        with UnixSocketServer(XenstoredServer(), path, max_output=64 * 1024) as sock:
            yield sock
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> pathlib.Path:
    """The C client, compiled into a temporary directory."""
    binary = tmp_path_factory.mktemp("libxenstore") / "libxenstore_checks"
    built = subprocess.run(["cc", "-Wall", "-Werror", "-o", str(binary), str(SOURCE),
                            "-lxenstore"], capture_output=True, text=True, timeout=TIMEOUT,
                           check=False)
    assert built.returncode == 0, built.stderr
    return binary


def test_libxenstore_reads_writes_lists_removes_and_runs_transactions(xenstored, client):
    """Each check of the C program, in order; "ta err" (test-xenstore.c ``test_ta3``): the
    second read inside the transaction returns the first read's value, and the commit of a
    transaction whose node another connection wrote fails with errno EAGAIN."""
    env = dict(os.environ, XENSTORED_PATH=str(xenstored.path))
    run = subprocess.run([str(client)], env=env, capture_output=True, text=True,
                         timeout=TIMEOUT, check=False)
    assert run.stdout.splitlines() == CHECKS, run.stdout + run.stderr
    assert run.returncode == 0
    store = xenstored.server.store
    assert store.read(TOOLSTACK, 0, "/lxs/a") == b"other"
    assert store.read(TOOLSTACK, 0, "/local/domain/0/lxs-rel") == b"1"
    assert store.directory(TOOLSTACK, 0, "/lxs") == ["a", "c", "t1"]
    assert xenstored.server.statistics().store.eagain == 1
