"""The wire between a host's fork server and its forked domain processes, and the domain
side of it: :class:`RelayClient`, a :class:`~actors.transport.Transport` over one Unix socket.

A forked domain process is no Ray worker (a Ray worker costs 43 MiB and wakes 100 times a
second, ``docs/scale.md``), so it cannot call a Ray actor itself. Everything it says that is
not a hypercall on its same-host pipe (xenstore requests, the pipe's opening) goes up its
socket to the host's fork server (``actors.forkserver``), which makes the Ray call for it;
whatever is sent to its endpoint (``h1/forkserver/vm-1a2b``: xenstored's watch events, the
toolstack's ``bind``, an upcall before the pipe opens) comes down the same socket.

Frames are msgpack arrays, one after another on the stream:

* ``["hello", component]``: a process introduces itself (again, after the server
  restarted); the server takes its pid from the socket (``SO_PEERCRED``);
* ``["call", seq, dest, kind, args, timeout]``: a call; from a process, to ``dest`` by Ray;
  from the server, to the process (``dest`` empty);
* ``["send", dest, kind, args]``: one-way, the same two ways;
* ``["reply", seq, ok, value]``: a call's answer; an error travels as
  ``[type name, errno, message]`` (:func:`encode_error`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from actors.transport import PeerGone
from protocols.errno import Errno, XenError

RECONNECT_S = 60.0  # how long a process whose server died waits for the restarted one
RECONNECT_POLL_S = 0.1
CHUNK = 1 << 16
MAX_FRAME = 8 << 20  # a frame larger than this breaks the connection


def pack(frame: list) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


def send_frame(sock: socket.socket | None, frame: list, peer: str) -> None:
    """Write ``frame`` on ``sock`` (the caller holds its write lock): :class:`PeerGone`
    naming ``peer`` if there is no socket, or it broke or timed out (then it is shut down:
    half a frame written leaves the stream unreadable). A value msgpack cannot carry is
    sent as the error it raised instead, if ``frame`` is a reply."""
    if sock is None:
        raise PeerGone(f"{peer} is not connected")
    try:
        data = pack(frame)
    except (TypeError, ValueError, OverflowError) as e:
        if frame[0] != "reply":
            raise
        data = pack(["reply", frame[1], False, encode_error(e)])
    try:
        sock.sendall(data)
    except OSError as e:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        raise PeerGone(f"{peer} went away: {e}") from None


def unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=MAX_FRAME)


def frames(sock: socket.socket, unpack: msgpack.Unpacker) -> Iterator[list]:
    """The frames read from ``sock`` until it closes (or breaks)."""
    while True:
        try:
            data = sock.recv(CHUNK)
        except OSError:
            return
        if not data:
            return
        unpack.feed(data)
        for frame in unpack:
            if isinstance(frame, list) and frame:
                yield frame


def encode_error(e: BaseException) -> list:
    """An exception as a reply carries it: its type's name, its errno, its message."""
    if isinstance(e, XenError):
        return ["XenError", int(e.errno), e.detail]
    return [type(e).__name__, 0, str(e)]


def decode_error(value: Any) -> Exception:
    """The exception :func:`encode_error` carried: a XenError stays one, as do PeerGone and
    TimeoutError (what callers tell apart); anything else is a RuntimeError with its text."""
    try:
        name, errno, message = value
    except (TypeError, ValueError):
        return RuntimeError(f"a malformed error: {value!r}")
    if name == "XenError":
        try:
            return XenError(Errno(errno), message)
        except ValueError:
            return XenError(Errno.EINVAL, message)
    if name == "PeerGone":
        return PeerGone(message)
    if name == "TimeoutError":
        return TimeoutError(message)
    return RuntimeError(f"{name}: {message}")


class Pending:
    """Calls sent and not answered yet, by sequence number: what each end of the wire waits
    on. A call's reply is taken only from the peer it went to; a peer going away fails its
    calls (:class:`PeerGone`)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._seq = itertools.count(1)
        self._slots: dict[int, tuple[str, tuple[bool, Any] | None]] = {}  # seq -> (peer, reply)

    def call(self, peer: str, kind: str, send: Callable[[int], None],
             timeout: float | None) -> Any:
        """``send(seq)`` the call, then wait for its reply: the value, or what it raised."""
        seq = next(self._seq)
        with self._cv:
            self._slots[seq] = (peer, None)
        try:
            send(seq)
            with self._cv:
                if not self._cv.wait_for(lambda: seq not in self._slots or
                                         self._slots[seq][1] is not None, timeout):
                    raise TimeoutError(f"{peer} did not answer {kind} within {timeout} s")
                reply = self._slots.get(seq, (peer, None))[1]
        finally:
            with self._cv:
                self._slots.pop(seq, None)
        if reply is None:
            raise PeerGone(f"{peer} went away during {kind}")
        ok, value = reply
        if not ok:
            raise decode_error(value)
        return value

    def answer(self, seq: int, ok: Any, value: Any, peer: str | None = None) -> None:
        """The reply for call ``seq``; ignored unless the call waits for one, and went to
        ``peer`` if that is given (the fork server, whose many peers could lie)."""
        with self._cv:
            slot = self._slots.get(seq)
            if slot is not None and slot[1] is None and peer in (None, slot[0]):
                self._slots[seq] = (slot[0], (bool(ok), value))
                self._cv.notify_all()

    def fail(self, peer: str | None = None) -> None:
        """Every call waiting on ``peer`` (on anyone: None) fails: it went away."""
        with self._cv:
            for seq in [s for s, (p, r) in self._slots.items()
                        if r is None and peer in (None, p)]:
                del self._slots[seq]
            self._cv.notify_all()


class RelayClient:
    """A forked domain process's transport: every call goes through its host's fork server.

    Calls to this process run ``deliver(kind, *args)``: each call on a thread of its own (a
    handler may itself call out, whose reply this reader must be free to read), one-way
    messages in order on one thread, as one vCPU takes interrupts. The socket breaking (the
    fork server killed) fails the calls waiting with :class:`PeerGone`; the process connects
    again, for up to :data:`RECONNECT_S`, to the server Ray starts again."""

    def __init__(self, address: str, component: str, deliver: Callable[..., Any],
                 log: Any = None, reconnect_s: float = RECONNECT_S) -> None:
        self.address, self.component = address, component
        self.deliver = deliver
        self.log = log
        self.reconnect_s = reconnect_s
        self._pending = Pending()
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._oneway: collections.deque[tuple[str, list]] = collections.deque()
        self._oneway_cv = threading.Condition()
        threading.Thread(target=self._run_oneway, name="relay-oneway", daemon=True).start()

    # -- Transport ------------------------------------------------------------------------

    def call(self, dest: str, kind: str, *args: Any, timeout: float | None = None) -> Any:
        return self._pending.call(dest, kind, lambda seq: self._write(
            ["call", seq, dest, kind, list(args), timeout]), timeout)

    def send(self, dest: str, kind: str, *args: Any) -> None:
        try:
            self._write(["send", dest, kind, list(args)])
        except PeerGone:
            pass

    def forget(self, dest: str) -> None:
        """The fork server holds the routes."""

    def prefetch(self, dest: str) -> None:
        """The fork server holds the routes."""

    # -- the socket -----------------------------------------------------------------------

    def connect(self) -> None:
        """Connect to the fork server and say who this is (raises OSError if it is not
        there)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.address)
            sock.sendall(pack(["hello", self.component]))  # its pid: SO_PEERCRED's
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def serve(self) -> None:
        """Read and dispatch frames for as long as a fork server is there; returns when none
        has come back within :attr:`reconnect_s` of the last one going away."""
        while self._sock is not None:
            for frame in frames(self._sock, unpacker()):
                self._dispatch(frame)
            self._lost()
            if not self._reconnect():
                return

    def _lost(self) -> None:
        """The socket broke: every waiting call fails."""
        with self._send_lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._pending.fail()

    def _reconnect(self) -> bool:
        deadline = time.monotonic() + self.reconnect_s
        while time.monotonic() < deadline:
            try:
                with self._send_lock:
                    self.connect()
                if self.log is not None:
                    self.log.info("fork server back: reconnected")
                return True
            except OSError:
                time.sleep(RECONNECT_POLL_S)
        return False

    def _write(self, frame: list) -> None:
        with self._send_lock:
            send_frame(self._sock, frame, "the host's fork server")

    def _dispatch(self, frame: list) -> None:
        match frame:
            case ["reply", int(seq), ok, value]:
                self._pending.answer(seq, ok, value)
            case ["call", int(seq), _, str(kind), list(args), _]:
                threading.Thread(target=self._answer, args=(seq, kind, args),
                                 name=f"relay-{kind}", daemon=True).start()
            case ["send", _, str(kind), list(args)]:
                with self._oneway_cv:
                    self._oneway.append((kind, args))
                    self._oneway_cv.notify()

    def _answer(self, seq: int, kind: str, args: list) -> None:
        try:
            reply = ["reply", seq, True, self.deliver(kind, *args)]
        except Exception as e:  # noqa: BLE001 - the caller gets it, as over Ray
            reply = ["reply", seq, False, encode_error(e)]
        try:
            self._write(reply)
        except PeerGone:
            pass  # the caller's call failed with the server

    def _run_oneway(self) -> None:
        while True:
            with self._oneway_cv:
                self._oneway_cv.wait_for(lambda: self._oneway)
                kind, args = self._oneway.popleft()
            try:
                self.deliver(kind, *args)
            except Exception as e:  # noqa: BLE001 - one-way: nobody to tell but the log
                if self.log is not None:
                    self.log.warning("one-way message failed", kind=kind, error=str(e))
