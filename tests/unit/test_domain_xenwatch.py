"""xenwatch (actors.domain.xenwatch) on its own, over real xenstore watches (Linux xenbus_xs.c;
reference 11.4, 12.2, 19.8).

The watches are set through a real XsClient on the ``host`` fixture; its watch events reach
the client through a stand-in endpoint, when the test pumps the host's mailbox, so the test
chooses when each event arrives. The gate is a real :class:`RunGate` the test opens and shuts.
"""

import threading

import pytest

from actors.domain.rungate import GateChange, RunGate
from actors.domain.xenwatch import Xenwatch
from actors.runtime import THREADS
from protocols.hypercall import ShutdownReason
from tests.inprocess import HOST

WATCHER = f"{HOST}/xenwatch-test"


class Log:
    """Records ``log.exception`` calls."""

    def __init__(self) -> None:
        self.exceptions: list[tuple[str, dict]] = []

    def exception(self, event: str, **kw) -> None:
        self.exceptions.append((event, kw))


def start_xenwatch(host, gate: RunGate, runtime=THREADS, log=None) -> Xenwatch:
    xs = host.clients(WATCHER).xs
    host.start(WATCHER, {"xs_event": xs.on_event})
    xenwatch = Xenwatch(xs, gate, runtime, log or host.log)
    xenwatch.start()
    return xenwatch


def open_gate() -> RunGate:
    gate = RunGate()
    assert gate.set_paused(False) is GateChange.BOOT
    return gate


def fire(host, path: str) -> None:
    host.xs.write(path, "x")
    host.pump()


def test_xenwatch_runs_callbacks_one_at_a_time_in_arrival_order(host):
    xenwatch = start_xenwatch(host, open_gate())
    calls, running, overlap = [], [], []
    release = threading.Event()

    def callback(name: str, block: bool = False):
        def run() -> None:
            running.append(name)
            overlap.append(len(running))
            if block and not release.is_set():
                release.wait(10)
            calls.append(name)
            running.remove(name)
        return run

    xenwatch.register_watch("/test/a", "a", callback("a", block=True))
    xenwatch.register_watch("/test/b", "b", callback("b"))
    host.pump()  # both firings on registration: a's callback runs, and blocks
    host.until(lambda: running == ["a"], "a's callback")
    fire(host, "/test/b")  # b changes while a's callback runs
    assert xenwatch.stats["xs_events"] == 3
    assert calls == [] and running == ["a"]  # b waits its turn
    release.set()
    host.until(lambda: calls == ["a", "b", "b"], "the queued callbacks, in order")
    assert max(overlap) == 1


def test_xenwatch_12_2_runs_no_callback_while_the_gate_is_shut_then_the_pending_ones(host):
    gate = RunGate()  # created: shut until the first unpause
    xenwatch = start_xenwatch(host, gate)
    calls = []
    xenwatch.register_watch("/test/a", "a", lambda: calls.append("a"))
    fire(host, "/test/a")
    assert xenwatch.stats["xs_events"] == 2 and calls == []
    gate.set_paused(False)
    host.until(lambda: calls == ["a", "a"], "the pending callbacks")
    gate.set_paused(True)
    fire(host, "/test/a")
    assert xenwatch.stats["xs_events"] == 3 and calls == ["a", "a"]
    gate.set_paused(False)
    host.until(lambda: calls == ["a", "a", "a"], "the callback after the unpause")
    assert gate.vcpu == "offline"  # xenwatch is not the vCPU


def test_xenwatch_19_8_a_shut_down_domain_runs_no_more_callbacks_and_the_thread_ends(host):
    gate, before = open_gate(), set(threading.enumerate())
    xenwatch = start_xenwatch(host, gate)
    (thread,) = [t for t in threading.enumerate() if t not in before and t.name == "xenwatch"]
    calls = []
    xenwatch.register_watch("/test/a", "a", lambda: calls.append("a"))
    host.pump()
    host.until(lambda: calls == ["a"], "the firing on registration")
    gate.shut_down(ShutdownReason.poweroff)
    fire(host, "/test/a")
    thread.join(10)
    assert not thread.is_alive() and thread.name == "xenwatch"
    assert calls == ["a"]


@pytest.mark.parametrize("error", [RuntimeError("driver bug"), KeyError("node")])
def test_xenwatch_a_callback_that_raises_is_logged_and_the_next_still_runs(host, error):
    log = Log()
    xenwatch = start_xenwatch(host, open_gate(), log=log)
    calls = []

    def broken() -> None:
        raise error

    xenwatch.register_watch("/test/bad", "bad", broken)
    xenwatch.register_watch("/test/good", "good", lambda: calls.append("good"))
    host.pump()
    host.until(lambda: calls == ["good"], "the callback after the broken one")
    assert log.exceptions == [("watch callback failed", {"path": "/test/bad", "token": "bad"})]
