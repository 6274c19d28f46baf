"""protocols.xenbus: XenbusState (reference section 10) and the split-device handshake
(sections 8.4, 10, 19.6), checked step by step and over every order in which coalescing
watches can deliver the two sides' state changes."""

import itertools
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errno import Errno, XenError
from protocols.xenbus import (BackendAction, BackendStep, FrontendAction, FrontendStep, XenbusState,
                              backend_on_frontend_state, frontend_on_backend_state)

S = XenbusState
B = BackendAction
F = FrontendAction

# --- XenbusState ----------------------------------------------------------------------------


def test_xenbus_10_state_values():
    assert [(s.name, s.value) for s in S] == [
        ("UNKNOWN", 0), ("INITIALISING", 1), ("INIT_WAIT", 2), ("INITIALISED", 3),
        ("CONNECTED", 4), ("CLOSING", 5), ("CLOSED", 6), ("RECONFIGURING", 7),
        ("RECONFIGURED", 8),
    ]  # fmt: skip


@pytest.mark.parametrize("state", list(S))
def test_xenbus_10_state_is_a_decimal_string(state):
    text = str(state.value)
    assert state.encode() == text.encode()
    assert S.parse(text.encode()) is state
    assert S.parse(text) is state
    assert S.parse(bytearray(text.encode())) is state
    assert S.parse(memoryview(text.encode())) is state


@pytest.mark.parametrize(
    "garbage",
    [b"", b"9", b"10", b"-1", b" 4", b"4 ", b"4\n", b"4\x00", b"04", b"+4", b"0x4", b"4.0",
     b"Connected", "\uff14", b"\xff", None, 4, 4.0, [b"4"]],
)  # fmt: skip
def test_xenbus_10_parse_rejects_garbage(garbage):
    with pytest.raises(XenError) as info:
        S.parse(garbage)
    assert info.value.errno == Errno.EINVAL


@given(st.binary(max_size=8) | st.text(max_size=4))
def test_xenbus_10_parse_any_value_is_a_state_or_einval(value):
    try:
        state = S.parse(value)
    except XenError as e:
        assert e.errno == Errno.EINVAL
    else:
        assert state.encode() == (value.encode() if isinstance(value, str) else value)


# --- single steps -----------------------------------------------------------------------------


def test_xenbus_8_4_backend_probe_publishes_features_then_init_wait():
    assert backend_on_frontend_state(S.INITIALISING, S.INITIALISING, True) == BackendStep(
        B.PROBE, S.INIT_WAIT
    )


def test_xenbus_8_4_frontend_waits_for_init_wait():
    assert frontend_on_backend_state(S.INITIALISING, S.INITIALISING).action is F.NONE
    assert frontend_on_backend_state(S.INITIALISING, S.INIT_WAIT) == FrontendStep(
        F.SETUP_RING, S.INITIALISED
    )


@pytest.mark.parametrize("frontend", [S.INITIALISED, S.CONNECTED])
@pytest.mark.parametrize("backend", [S.INIT_WAIT, S.INITIALISED])
def test_xenbus_19_6_backend_does_the_work_of_a_skipped_frontend_state(backend, frontend):
    assert backend_on_frontend_state(backend, frontend, True) == BackendStep(B.CONNECT, S.CONNECTED)


def test_xenbus_8_4_frontend_may_see_a_backend_that_skipped_init_wait():
    step = frontend_on_backend_state(S.INITIALISING, S.INITIALISED)
    assert step == FrontendStep(F.SETUP_RING, S.INITIALISED)


def test_xenbus_19_6_connected_backend_rewriting_connected_is_a_resize():
    resize = FrontendStep(F.RESIZE, S.CONNECTED)
    assert frontend_on_backend_state(S.CONNECTED, S.CONNECTED) == resize
    assert backend_on_frontend_state(S.CONNECTED, S.CONNECTED, True).action is B.NONE


def test_xenbus_9_netback_holds_connected_until_hotplug_status():
    held = backend_on_frontend_state(S.INIT_WAIT, S.CONNECTED, True, hotplug_ready=False)
    assert held == BackendStep(B.NONE, S.INIT_WAIT)
    ready = backend_on_frontend_state(S.INIT_WAIT, S.CONNECTED, True, hotplug_ready=True)
    assert ready == BackendStep(B.CONNECT, S.CONNECTED)


@pytest.mark.parametrize("backend", [S.CLOSED, S.CONNECTED])
def test_xenbus_19_6_frontend_back_to_initialising_makes_backend_prepare_reconnect(backend):
    step = backend_on_frontend_state(backend, S.INITIALISING, True)
    assert step == BackendStep(B.PREPARE_RECONNECT, S.INIT_WAIT)


@pytest.mark.parametrize("frontend", [S.INITIALISED, S.CONNECTED])
def test_xenbus_19_6_closed_backend_never_adopts_a_stale_frontend_ring(frontend):
    assert backend_on_frontend_state(S.CLOSED, frontend, True) == BackendStep(B.NONE, S.CLOSED)


@pytest.mark.parametrize("backend", [S.CLOSED, S.UNKNOWN, S.INITIALISING])
def test_xenbus_19_4_frontend_reconnects_when_its_backend_goes_away(backend):
    step = frontend_on_backend_state(S.CONNECTED, backend)
    assert step == FrontendStep(F.RECONNECT, S.INITIALISING)


def test_xenbus_19_4_frontend_waits_at_initialising_for_a_connected_backend_to_let_go():
    assert frontend_on_backend_state(S.INITIALISING, S.CONNECTED).action is F.NONE


@pytest.mark.parametrize("frontend", [S.INITIALISING, S.INITIALISED, S.CONNECTED])
def test_xenbus_10_frontend_closes_when_backend_closing(frontend):
    assert frontend_on_backend_state(frontend, S.CLOSING) == FrontendStep(F.CLOSE, S.CLOSED)


def test_xenbus_10_backend_follows_frontend_closing_then_closed():
    closing = BackendStep(B.CLOSE, S.CLOSING)
    assert backend_on_frontend_state(S.CONNECTED, S.CLOSING, True) == closing
    assert backend_on_frontend_state(S.CLOSING, S.CLOSED, True) == BackendStep(
        B.DISCONNECT, S.CLOSED
    )
    assert backend_on_frontend_state(S.CLOSED, S.CLOSED, True).action is B.NONE


@pytest.mark.parametrize("backend", list(S))
def test_xenbus_10_offline_backend_unregisters_when_frontend_closed(backend):
    step = backend_on_frontend_state(backend, S.CLOSED, online=False)
    assert step == BackendStep(B.UNREGISTER, S.CLOSED)


def test_xenbus_10_backend_unregisters_when_frontend_directory_is_gone():
    assert backend_on_frontend_state(S.CONNECTED, S.UNKNOWN, True).action is B.UNREGISTER


STATES = list(S)


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("ready", [True, False])
def test_xenbus_19_7_backend_settles_on_repeated_watch_fires(online, ready):
    """Watches fire spuriously: re-evaluating against the same frontend state settles."""
    for backend, frontend in itertools.product(STATES, STATES):
        for _ in range(3):
            step = backend_on_frontend_state(backend, frontend, online, ready)
            if step.action is B.UNREGISTER or step.state == backend:
                break
            backend = step.state
        else:
            pytest.fail(f"backend never settles against frontend {frontend.name}")


def test_xenbus_19_7_frontend_settles_on_repeated_watch_fires():
    for frontend, backend in itertools.product(STATES, STATES):
        step = frontend_on_backend_state(frontend, backend)
        again = frontend_on_backend_state(step.state, backend)
        assert again.state == step.state
        assert again.action in (F.NONE, F.RESIZE)


# --- whole handshakes, driven as watches would drive them ------------------------------------


@dataclass(frozen=True)
class Device:
    """Both ends of one device plus whose watch has an undelivered event."""

    backend: XenbusState
    frontend: XenbusState
    online: bool = True
    hotplug_ready: bool = True
    backend_watch: bool = True  # a watch fires once when registered
    frontend_watch: bool = True
    unregistered: bool = False


def _fire_backend(d: Device) -> tuple[Device, BackendAction]:
    step = backend_on_frontend_state(d.backend, d.frontend, d.online, d.hotplug_ready)
    changed = step.state != d.backend
    d = replace(
        d,
        backend=step.state,
        backend_watch=step.action is B.PROBE,  # the frontend watch is registered after probe
        frontend_watch=d.frontend_watch or changed,
    )
    return replace(d, unregistered=step.action is B.UNREGISTER), step.action


def _fire_frontend(d: Device) -> tuple[Device, FrontendAction]:
    step = frontend_on_backend_state(d.frontend, d.backend)
    changed = step.state != d.frontend
    d = replace(
        d, frontend=step.state, frontend_watch=False, backend_watch=d.backend_watch or changed
    )
    return d, step.action


def _backend_pending(d: Device) -> bool:
    return d.backend_watch and not d.unregistered


def _successors(d: Device):
    if _backend_pending(d):
        yield _fire_backend(d)
    if d.frontend_watch:
        yield _fire_frontend(d)


def _walk_alternately(d: Device, limit: int = 20):
    """Deliver watch events backend, frontend, backend, ...; return the final device and the
    actions taken, in order."""
    actions = []
    for _ in range(limit):
        if not _backend_pending(d) and not d.frontend_watch:
            return d, actions
        if _backend_pending(d):
            d, action = _fire_backend(d)
            actions += [action] if action is not B.NONE else []
        if d.frontend_watch:
            d, action = _fire_frontend(d)
            actions += [action] if action is not F.NONE else []
    pytest.fail("handshake did not settle")


def _settled_states(start: Device) -> set[Device]:
    """Every state where no watch event is pending, over every delivery order; fails on a
    cycle (a livelock)."""
    settled, on_path, done = set(), set(), set()

    def visit(d: Device) -> None:
        if d in on_path:
            pytest.fail(f"livelock through {d}")
        if d in done:
            return
        on_path.add(d)
        nexts = [n for n, _ in _successors(d)]
        if not nexts:
            settled.add(d)
        for n in nexts:
            visit(n)
        on_path.discard(d)
        done.add(d)

    visit(start)
    return settled


def test_blkif_8_4_startup_handshake_walk():
    start = Device(S.INITIALISING, S.INITIALISING)
    end, actions = _walk_alternately(start)
    assert (end.backend, end.frontend) == (S.CONNECTED, S.CONNECTED)
    assert actions == [B.PROBE, F.SETUP_RING, B.CONNECT, F.CONNECT]


def test_xenbus_19_6_startup_reaches_connected_in_every_watch_order():
    settled = _settled_states(Device(S.INITIALISING, S.INITIALISING))
    assert {(d.backend, d.frontend) for d in settled} == {(S.CONNECTED, S.CONNECTED)}


def test_xenbus_9_netback_startup_waits_for_hotplug_then_connects():
    held = _settled_states(Device(S.INITIALISING, S.INITIALISING, hotplug_ready=False))
    assert {(d.backend, d.frontend) for d in held} == {(S.INIT_WAIT, S.INITIALISED)}
    # The hotplug-status watch fires: the backend re-evaluates with the script done.
    (waiting,) = held
    ready = replace(waiting, hotplug_ready=True, backend_watch=True)
    settled = _settled_states(ready)
    assert {(d.backend, d.frontend) for d in settled} == {(S.CONNECTED, S.CONNECTED)}


def test_xenbus_19_6_frontend_skipping_init_wait_still_connects():
    """blkif.h: a frontend may publish its ring and go Initialised before InitWait."""
    start = Device(S.INITIALISING, S.INITIALISED)
    end, actions = _walk_alternately(start)
    assert (end.backend, end.frontend) == (S.CONNECTED, S.CONNECTED)
    assert actions == [B.PROBE, B.CONNECT, F.CONNECT]
    assert {(d.backend, d.frontend) for d in _settled_states(start)} == {(S.CONNECTED, S.CONNECTED)}


CONNECTED = Device(S.CONNECTED, S.CONNECTED, backend_watch=False, frontend_watch=False)


def test_xenbus_19_4_reconnect_after_backend_restart():
    """A restarted backend publishes Closed; the frontend reconnects on a new ring."""
    restarted = replace(CONNECTED, backend=S.CLOSED, backend_watch=True, frontend_watch=True)
    end, actions = _walk_alternately(restarted)
    assert (end.backend, end.frontend) == (S.CONNECTED, S.CONNECTED)
    assert actions == [
        F.RECONNECT, B.PREPARE_RECONNECT, F.SETUP_RING, B.CONNECT, F.CONNECT
    ]  # fmt: skip
    assert {(d.backend, d.frontend) for d in _settled_states(restarted)} == {
        (S.CONNECTED, S.CONNECTED)
    }


@pytest.mark.parametrize("gone", [S.UNKNOWN, S.INITIALISING])
def test_xenbus_19_4_reconnect_after_backend_directory_recreated(gone):
    """The backend node vanishes (reads as Unknown) or is re-created by the toolstack."""
    start = replace(CONNECTED, backend=gone, frontend_watch=True, backend_watch=True)
    assert {(d.backend, d.frontend) for d in _settled_states(start)} == {(S.CONNECTED, S.CONNECTED)}


def test_xenbus_19_6_frontend_initiated_reconnect():
    """A frontend that resumes (suspend, migration) goes back to Initialising."""
    start = replace(CONNECTED, frontend=S.INITIALISING, backend_watch=True)
    end, actions = _walk_alternately(start)
    assert (end.backend, end.frontend) == (S.CONNECTED, S.CONNECTED)
    assert actions == [B.PREPARE_RECONNECT, F.SETUP_RING, B.CONNECT, F.CONNECT]
    assert {(d.backend, d.frontend) for d in _settled_states(start)} == {(S.CONNECTED, S.CONNECTED)}


def test_xenbus_10_toolstack_unplug_ends_with_unregister():
    """libxl: online=0 and backend Closing in one transaction, then wait for Closed."""
    unplug = replace(CONNECTED, online=False, backend=S.CLOSING, frontend_watch=True)
    end, actions = _walk_alternately(unplug)
    assert actions == [F.CLOSE, B.UNREGISTER]
    assert (end.backend, end.frontend, end.unregistered) == (S.CLOSED, S.CLOSED, True)
    settled = _settled_states(unplug)
    assert {(d.backend, d.frontend, d.unregistered) for d in settled} == {
        (S.CLOSED, S.CLOSED, True)
    }


def test_xenbus_10_close_while_online_leaves_device_closed_not_removed():
    closing = replace(CONNECTED, backend=S.CLOSING, frontend_watch=True)
    settled = _settled_states(closing)
    assert {(d.backend, d.frontend, d.unregistered) for d in settled} == {
        (S.CLOSED, S.CLOSED, False)
    }


def test_xenbus_10_frontend_initiated_close():
    closing = replace(CONNECTED, frontend=S.CLOSING, backend_watch=True)
    end, actions = _walk_alternately(closing)
    assert actions == [B.CLOSE, F.CLOSE, B.DISCONNECT]
    assert (end.backend, end.frontend) == (S.CLOSED, S.CLOSED)


@pytest.mark.parametrize("backend", STATES)
@pytest.mark.parametrize("frontend", STATES)
def test_xenbus_19_7_settled_states_stay_put_on_spurious_watch_fires(backend, frontend):
    """From any pair of states, every settled outcome is stable when either watch refires."""
    start = Device(backend, frontend)
    for d in _settled_states(start):
        if not d.unregistered:
            assert _fire_backend(d)[0].backend == d.backend
        assert _fire_frontend(d)[0].frontend == d.frontend
