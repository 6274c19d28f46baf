"""One embedded Ray cluster for the whole integration session (ray-notes.md: never one
Ray instance per test). Two emulated hosts, fast health checks, a private RAY_TMPDIR."""

import pytest


@pytest.fixture(scope="session")
def ray_hosts():
    from cluster.runtime import EmbeddedRay, connect

    embedded = EmbeddedRay({"h1": {"cpus": 2}, "h2": {"cpus": 2}})
    connect(embedded.address)
    yield embedded
    embedded.shutdown()
