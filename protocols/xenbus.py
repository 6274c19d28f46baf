"""XenBus device states and the split-driver handshake, as pure transition functions.

Each end of a split device publishes its ``XenbusState`` as a decimal string in
``<dir>/state`` and reacts to the *other* end's state from a xenstore watch
(``xen/include/public/io/xenbus.h``; reference sections 8.4, 10, 19.6). The reactions here
follow Linux: the backend's ``frontend_changed`` (``drivers/block/xen-blkback/xenbus.c``,
``drivers/net/xen-netback/xenbus.c``) and the frontend's ``blkback_changed``
(``drivers/block/xen-blkfront.c``). Watches may coalesce (a reader sees only the latest
value) and fire spuriously, so every function is idempotent: applied again to the same
pair of states it asks for nothing new.

Two departures from Linux, both for DESIGN.md's restartable backends:

* A backend that restarts has lost the ring it mapped. It publishes ``Closed``; a frontend
  that sees its backend ``Closed`` or gone while it had a ring does not close (Linux does)
  but reconnects: it drops the old ring, keeps every request still without a response, and
  goes back to ``Initialising``. The backend answers with ``InitWait``, and the handshake
  runs again on a new ring (reference 19.4, 19.6).
* So a ``Closed`` backend ignores a frontend still showing ``Initialised``/``Connected``
  (that is the frontend's state from before the restart; its ring must not be adopted). It
  only answers ``Initialising`` (reconnect) and ``Closed``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from protocols.errno import Errno, XenError


class XenbusState(enum.IntEnum):
    """``enum xenbus_state``, ``xen/include/public/io/xenbus.h`` (reference section 10)."""

    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2  # backend: features published, waiting for the frontend's ring details
    INITIALISED = 3  # frontend: ring-ref, event-channel and protocol published
    CONNECTED = 4
    CLOSING = 5  # the device is being shut down
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    @classmethod
    def parse(cls, value: bytes | bytearray | memoryview | str) -> XenbusState:
        """The state in a xenstore ``state`` node (``b"4"``); anything else is EINVAL."""
        if isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        state = _BY_TEXT.get(value) if isinstance(value, (bytes, str)) else None
        if state is None:
            raise XenError(Errno.EINVAL, f"not a XenbusState: {value!r:.40}")
        return state

    def encode(self) -> bytes:
        """The value to write to a ``state`` node."""
        return b"%d" % self


_BY_TEXT: dict[bytes | str, XenbusState] = {
    text: s for s in XenbusState for text in (str(s.value), str(s.value).encode())
}


class BackendAction(enum.Enum):
    """What a backend does on the way to its next state (blkback ``frontend_changed``)."""

    NONE = "none"
    PROBE = "probe"  # open the device, publish feature-* and limits (xen_blkbk_probe);
    # only then watch the frontend's state: that watch fires once at once, so the backend
    # re-evaluates straight away (xenbus_dev_probe: probe, then watch_otherend)
    CONNECT = "connect"  # drop any old ring; read ring-ref/event-channel/protocol, map the
    # ring, bind_interdomain, publish sectors/info/sector-size (connect_ring + connect)
    PREPARE_RECONNECT = "prepare_reconnect"  # drop any old ring; wait for a new one
    CLOSE = "close"  # stop taking new requests; the ring stays until the frontend is Closed
    DISCONNECT = "disconnect"  # unmap the ring, close the port (xen_blkif_disconnect)
    UNREGISTER = "unregister"  # disconnect and remove the device; no further steps


class FrontendAction(enum.Enum):
    """What a frontend does on the way to its next state (blkfront ``blkback_changed``)."""

    NONE = "none"
    SETUP_RING = "setup_ring"  # read backend features; SHARED_RING_INIT, grant the ring,
    # alloc_unbound for the backend; write ring-ref, event-channel, protocol (talk_to_blkback)
    CONNECT = "connect"  # read sectors/info/sector-size and features; re-issue in-flight I/O
    RESIZE = "resize"  # the backend re-entered Connected: re-read sectors
    RECONNECT = "reconnect"  # drop the ring and port, keep in-flight requests for re-issue
    CLOSE = "close"  # tear down, fail what is in flight (blkfront_closing)


@dataclass(frozen=True, slots=True)
class BackendStep:
    """The backend's reaction: do ``action``, then publish ``state`` if it changed."""

    action: BackendAction
    state: XenbusState


@dataclass(frozen=True, slots=True)
class FrontendStep:
    """The frontend's reaction: do ``action``, then publish ``state`` if it changed."""

    action: FrontendAction
    state: XenbusState


_S = XenbusState
_WAITING = (_S.INIT_WAIT, _S.INITIALISED)  # a backend ready for a ring (blkif.h may skip InitWait)
_HAS_RING = (_S.INITIALISED, _S.CONNECTED)  # a frontend that published a ring


def backend_on_frontend_state(
    backend: XenbusState, frontend: XenbusState, online: bool, hotplug_ready: bool = True
) -> BackendStep:
    """React to the frontend's ``state`` (``online`` is the backend's ``online`` node).

    ``hotplug_ready=False`` holds back Connected until the hotplug script has written
    ``hotplug-status``="connected" (netback, reference section 9): call again when it has.
    After ``UNREGISTER`` the device is gone and the caller stops watching.
    """
    match frontend:
        case _S.UNKNOWN:  # the frontend's directory is gone
            return BackendStep(BackendAction.UNREGISTER, _S.CLOSED)
        case _S.CLOSED if not online:  # toolstack unplug (libxl: online=0 + Closing)
            return BackendStep(BackendAction.UNREGISTER, _S.CLOSED)
        case _S.CLOSED if backend != _S.CLOSED:
            return BackendStep(BackendAction.DISCONNECT, _S.CLOSED)
        case _S.CLOSING if backend != _S.CLOSING:
            return BackendStep(BackendAction.CLOSE, _S.CLOSING)
        case _S.INITIALISING | _S.INITIALISED | _S.CONNECTED if backend in (
            _S.UNKNOWN,
            _S.INITIALISING,
        ):
            return BackendStep(BackendAction.PROBE, _S.INIT_WAIT)
        case _S.INITIALISING if backend in (_S.CLOSED, _S.CONNECTED):
            return BackendStep(BackendAction.PREPARE_RECONNECT, _S.INIT_WAIT)
        # A frontend may skip to Initialised or Connected; the backend connects from either
        # (blkback: "ensure we connect even when two watches fire in close succession").
        case _S.INITIALISED | _S.CONNECTED if backend in _WAITING and hotplug_ready:
            return BackendStep(BackendAction.CONNECT, _S.CONNECTED)
    return BackendStep(BackendAction.NONE, backend)


def frontend_on_backend_state(frontend: XenbusState, backend: XenbusState) -> FrontendStep:
    """React to the backend's ``state`` (``UNKNOWN`` when its node is gone)."""
    match backend:
        case _S.INIT_WAIT | _S.INITIALISED if frontend == _S.INITIALISING:
            return FrontendStep(FrontendAction.SETUP_RING, _S.INITIALISED)
        case _S.CONNECTED if frontend == _S.INITIALISED:
            return FrontendStep(FrontendAction.CONNECT, _S.CONNECTED)
        case _S.CONNECTED if frontend == _S.CONNECTED:  # a backend re-entering Connected
            return FrontendStep(FrontendAction.RESIZE, _S.CONNECTED)
        case _S.CLOSING if frontend != _S.CLOSED:
            return FrontendStep(FrontendAction.CLOSE, _S.CLOSED)
        case _S.CLOSED | _S.UNKNOWN if frontend == _S.CLOSING:  # missed the backend's Closing
            return FrontendStep(FrontendAction.CLOSE, _S.CLOSED)
        case _S.CLOSED | _S.UNKNOWN if frontend in _HAS_RING:  # backend gone or restarted
            return FrontendStep(FrontendAction.RECONNECT, _S.INITIALISING)
        case _S.INITIALISING if frontend == _S.CONNECTED:  # backend directory re-created
            return FrontendStep(FrontendAction.RECONNECT, _S.INITIALISING)
    # Not acting: Initialising with a Connected backend (it answers our Initialising with
    # InitWait rather than keep a ring we are replacing); Connected with an InitWait backend
    # (it connects to the ring we still publish); Closed (final).
    return FrontendStep(FrontendAction.NONE, frontend)
