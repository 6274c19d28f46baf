"""The in-process host every unit test that needs a component's real peers uses (one fixture,
``tests/inprocess.py``): ``host`` delivers one-way messages when the test pumps them,
``threaded_host`` on a mailbox thread (for components that block in threads of their own).
Each is closed after its test, which fails the test if a delivery raised."""

import uuid

import pytest

from tests.clock import ManualRuntime
from tests.inprocess import InProcessHost
from tests.xen_tools import require_xen_tools


def _host(threaded: bool):
    host = InProcessHost(f"/dev/shm/xenray-test-{uuid.uuid4().hex[:12]}", threaded=threaded)
    yield host
    host.close()


@pytest.fixture
def host():
    yield from _host(threaded=False)


@pytest.fixture
def threaded_host():
    yield from _host(threaded=True)


@pytest.fixture
def clock():
    """A runtime whose time the test advances (``tests/clock.py``)."""
    return ManualRuntime()


@pytest.fixture(scope="session")
def xen_tools():
    """Xen's verify-stream-v2 (``tests.xen_tools``); the test fails if it is missing."""
    return require_xen_tools()
