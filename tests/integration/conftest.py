"""One embedded 2-host xenray cluster for the whole integration session (ray-notes.md:
never one Ray instance per test), with fast health checks and a private RAY_TMPDIR.
XENRAY_HOME points into the session's temp dir so runs leave nothing in the user's home."""

import pytest


@pytest.fixture(scope="session")
def xen(tmp_path_factory):
    import os

    os.environ["XENRAY_HOME"] = str(tmp_path_factory.mktemp("xenray-home"))
    from cluster.api import Cluster

    cluster = Cluster(hosts=2, host_memory_mib=1024).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def ray_hosts(xen):
    """The embedded Ray nodes under the cluster, by host name."""
    return xen._embedded
