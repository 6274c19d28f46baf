"""One xenray cluster for the whole integration session, started as a user starts it:
`xenray up` (a daemon holding an embedded two-host cluster, on loopback, behind its token)
in a private XENRAY_HOME. The tests reach it as users do: through the CLI (test_cli.py) and
through ``Cluster.running()`` (the ``xen`` fixture); never one Ray instance per test
(ray-notes.md). Tests marked ``destructive`` (they leave a host sick or dead, or stop the cluster)
run last, the cluster's stop the very last. When the session ends the cluster is stopped, and nothing of it may be left behind."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    """Destructive tests after the others, and ``destructive(last=True)`` (the cluster's
    stop) after every other destructive one; otherwise in file order."""
    def order(item):
        mark = item.get_closest_marker("destructive")
        return (mark is not None, bool(mark and mark.kwargs.get("last")))

    items.sort(key=order)


def cli(home, *args, timeout=300):
    """``xenray ARGS`` as a user runs it (no Ray token in its environment: it needs none)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN",
                                                             "RAY_AUTH_TOKEN_PATH")}
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=ROOT,
                          env={**env, "XENRAY_HOME": str(home)}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cluster_home(tmp_path_factory):
    """The session's XENRAY_HOME, with `xenray up` running in it (the same Ray token as this
    process, so the tests may join it too)."""
    home = tmp_path_factory.mktemp("xenray-home")
    os.environ["XENRAY_HOME"] = str(home)
    env = {**os.environ, "XENRAY_HOME": str(home)}
    up = subprocess.run([sys.executable, "-m", "cluster.cli", "up", "--hosts", "2",
                         "--host-memory", "1024"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    record = (home / "run" / "cluster.json").read_text()
    yield home
    cli(home, "down")
    assert not list((home / "run").iterdir()), "the cluster left files in its run directory"
    run_id = json.loads(record)["run_id"]
    assert not list(pathlib.Path("/dev/shm").glob(f"xenray-{run_id}-*")), "/dev/shm leftovers"


@pytest.fixture(scope="session")
def xen(cluster_home):
    from cluster.api import Cluster

    cluster = Cluster.running()
    yield cluster
    cluster.stop()  # joined: this only leaves it


@pytest.fixture
def domains(xen):
    """``domains(config, host)``: create a domain; destroyed after the test if it still is."""
    made = []

    def make(config, host):
        info = xen.create(config, host=host)
        made.append(info["name"])
        return info

    yield make
    for name in made:
        if xen.find(name) is not None:
            xen.destroy(name)
