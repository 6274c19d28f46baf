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
def xl_host(threaded_host, tmp_path):
    """``threaded_host`` with the real toolstack and xenconsoled, for tests that create
    whole domains (``host.call(XL, "create", ...)``); what they leave is destroyed."""
    from actors.console.actor import ConsoleShell
    from protocols.errno import XenError
    from tests.inprocess import HOST

    threaded_host.start_toolstack()
    threaded_host.start(f"{HOST}/xenconsoled", ConsoleShell(
        HOST, threaded_host.clients(f"{HOST}/xenconsoled"), threaded_host.log,
        str(tmp_path / "logs")))
    yield threaded_host
    for name in list(threaded_host.toolstack.core.records):
        try:
            threaded_host.call(f"{HOST}/xl", "destroy", name)
        except XenError:
            pass


@pytest.fixture
def clock():
    """A runtime whose time the test advances (``tests/clock.py``)."""
    return ManualRuntime()


@pytest.fixture(scope="session")
def xen_tools():
    """Xen's verify-stream-v2 (``tests.xen_tools``); the test fails if it is missing."""
    return require_xen_tools()
