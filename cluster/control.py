"""The control socket: how the ``xenray`` command asks the process that holds the cluster.

``xl`` does not talk to Xen itself; it asks libxl. Here the process ``xenray up`` leaves
running holds the :class:`~cluster.api.Cluster` (it joined Ray once), and every command asks
it over a Unix socket in ``$XENRAY_HOME/run`` (mode 0600: this user only), so a command costs
a local round trip, not a Ray start-up.

Wire: each message is a 4-byte big-endian length and that many bytes of msgpack. A request is
``{"op": name, "args": {...}}``; the answer is zero or more ``{"progress": text}`` or
``{"line": text}`` messages, then one ``{"ok": value, "seconds": t}`` or ``{"error": {...}}``
(the error's type, its errno for a XenError, and its one-line message). :class:`ControlServer`
serves :data:`OPS` (each an operation of the Cluster API) on a thread per connection;
:func:`request` is the client side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import select
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import msgpack

from cluster.fault.active import ActiveFaults

_LEN = struct.Struct(">I")
MAX_MESSAGE = 64 << 20
Emit = Callable[[dict], None]  # send one intermediate message (progress, a console line)


class ControlError(Exception):
    """What a command failed with, as the daemon said it: ``kind`` (the exception's type
    name), ``errno`` (for a XenError) and the one-line message."""

    def __init__(self, kind: str, message: str, errno: int | None = None,
                 expected: bool = True) -> None:
        self.kind, self.errno, self.expected = kind, errno, expected
        super().__init__(message)


class DaemonGone(Exception):
    """No process answers on the control socket."""


# -- framing ----------------------------------------------------------------------------------

def send_message(sock: socket.socket, message: dict) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    sock.sendall(_LEN.pack(len(data)) + data)


def receive_message(sock: socket.socket) -> dict | None:
    """The next message, or None at a clean end of stream (between messages); a stream that
    ends inside a message is a ConnectionError, one that is not msgpack a ValueError."""
    head = _receive_exactly(sock, _LEN.size, clean_end=True)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_MESSAGE:
        raise ValueError(f"control message of {size} bytes")
    return msgpack.unpackb(_receive_exactly(sock, size), raw=False)


def _receive_exactly(sock: socket.socket, n: int, clean_end: bool = False) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if clean_end and not buf:
                return None
            raise ConnectionError("the control socket closed in the middle of a message")
        buf += chunk
    return bytes(buf)


# -- the client -------------------------------------------------------------------------------

def request(path: str | os.PathLike, op: str, args: dict | None = None, *,
            on_message: Emit | None = None) -> tuple[Any, float]:
    """Ask the daemon listening on ``path`` to run ``op``; its value and how long it took
    there (seconds). Intermediate messages go to ``on_message``. :class:`ControlError` if it
    failed, :class:`DaemonGone` if nothing answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise DaemonGone(str(path)) from e
        send_message(sock, {"op": op, "args": args or {}})
        while True:
            message = receive_message(sock)
            if message is None:
                raise DaemonGone(f"the daemon closed {path} without an answer")
            if "ok" in message:
                return message["ok"], message.get("seconds", 0.0)
            if "error" in message:
                e = message["error"]
                raise ControlError(e["kind"], e["message"], e.get("errno"),
                                   e.get("expected", True))
            if on_message is not None:
                on_message(message)
    finally:
        sock.close()


# -- the server -------------------------------------------------------------------------------

Op = Callable[..., Any]  # (cluster, args, emit[, client socket]) -> value


def _follow(xen: Any, args: dict, emit: Emit, client: socket.socket) -> None:
    """Console lines until the domain goes or the client hangs up (Ctrl-C), even while the
    domain prints nothing."""
    for line in xen.follow_console(args["name"], lines=args.get("lines", 20),
                                   stop=lambda: _hung_up(client)):
        emit({"line": line})


def _hung_up(client: socket.socket) -> bool:
    """Has the client closed its end (readable, and nothing to read)?"""
    ready = select.select([client], [], [], 0)[0]
    if not ready:
        return False
    try:
        return client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _capture(xen: Any, args: dict, emit: Emit) -> int:
    return xen.capture(args["host"], args["bridge"], args["out"], seconds=args.get("seconds"),
                       progress=lambda n: emit({"progress": n}))


def _control(word: str) -> Op:
    def op(xen: Any, args: dict, emit: Emit) -> None:
        getattr(xen, word)(args["name"], wait=args.get("wait", False))
    return op


def _by_name(method: str) -> Op:
    def op(xen: Any, args: dict, emit: Emit) -> Any:
        return getattr(xen, method)(args["name"])
    return op


def _with_errors(method: str) -> Op:
    """A call about every host: the hosts that do not answer come back beside the rows."""
    def op(xen: Any, args: dict, emit: Emit) -> dict:
        errors: dict[str, str] = {}
        rows = getattr(xen, method)(errors=errors)
        return {"rows": rows, "errors": errors}
    return op


def _vcpu_list(xen: Any, args: dict, emit: Emit) -> dict:
    errors: dict[str, str] = {}
    return {"rows": xen.vcpu_list(args.get("name"), errors=errors), "errors": errors}


def _audit(xen: Any, args: dict, emit: Emit) -> dict:
    from cluster.audit import audit

    errors: dict[str, str] = {}
    leaks = [dataclasses.asdict(leak) for leak in audit(xen, errors=errors)]
    return {"leaks": leaks, "errors": errors}


def _create(xen: Any, args: dict, emit: Emit) -> dict:
    from protocols.libxl_types import DomainConfig

    return xen.create(DomainConfig.from_dict(args["config"]), host=args.get("host"),
                      name=args.get("name"))


def _create_many(xen: Any, args: dict, emit: Emit) -> list[dict]:
    from protocols.libxl_types import DomainConfig

    hosts = None if args.get("host") in (None, "auto") else [args["host"]]
    return xen.create_many(DomainConfig.from_dict(args["config"]), args["count"], hosts=hosts,
                           progress=lambda done, total, r: emit({"done": done, "result": r}))


# ``xenray fault``: on the faults this daemon injected (they outlive the command)
FAULT_OPS: dict[str, Callable[[ActiveFaults, dict], Any]] = {
    "fault": lambda faults, args: faults.inject(
        args["kind"], args.get("target"), args.get("params"), for_s=args.get("for"),
        seed=args.get("seed")),
    "heal": lambda faults, args: (faults.heal_all() if args.get("id") is None
                                  else [faults.heal(args["id"])]),
    "faults": lambda faults, args: faults.list(),
}

OPS: dict[str, Op] = {
    "hosts": lambda xen, args, emit: xen.hosts,
    "create": _create,
    "create_many": _create_many,
    "list": _with_errors("list"),
    "info": _with_errors("info"),
    "xenstat": _with_errors("xenstat"),
    "links": _with_errors("links"),
    "sched": lambda xen, args, emit: xen.sched(args.pop("kind"), args.pop("name", None),
                                               **args),
    "vcpu_list": _vcpu_list,
    "vcpu_set": lambda xen, args, emit: xen.vcpu_set(
        args["name"], args["count"], ignore_host=args.get("ignore_host", False)),
    "vcpu_pin": lambda xen, args, emit: xen.vcpu_pin(args["name"], args["vcpu"],
                                                     args["cpus"]),
    "destroy": _by_name("destroy"),
    "pause": _by_name("pause"),
    "unpause": _by_name("unpause"),
    "mem_set": lambda xen, args, emit: xen.mem_set(args["name"], args["size"]),
    "mem_max": lambda xen, args, emit: xen.mem_max(args["name"], args["size"]),
    "shutdown": _control("shutdown"),
    "reboot": _control("reboot"),
    "console": lambda xen, args, emit: xen.console(args["name"], args.get("lines", 20)),
    "result": _by_name("result"),
    "set_link": lambda xen, args, emit: xen.set_link(
        args["a"], args["b"], bandwidth=args.get("bandwidth"), latency=args.get("latency"),
        loss=args.get("loss"), both_ways=args.get("both_ways", True)),
    "capture": _capture,
    "audit": _audit,
    "migrate": lambda xen, args, emit: xen.migrate(args.pop("name"), args.pop("host"), **args),
    "save": lambda xen, args, emit: xen.save(args["name"], args["path"],
                                             checkpoint=args.get("checkpoint", False)),
    "restore": lambda xen, args, emit: xen.restore(args["path"], host=args.get("host"),
                                                   paused=args.get("paused", False)),
}


class ControlServer:
    """Serves :data:`OPS` on the cluster ``xen`` at ``path`` (0600), a thread per client.
    ``stop_requested`` is called for the ``stop`` op (``xenray down``)."""

    def __init__(self, xen: Any, path: str | os.PathLike, log: Any,
                 stop_requested: Callable[[], None]) -> None:
        self.xen, self.path, self.log = xen, pathlib.Path(path), log
        self._stop_requested = stop_requested
        self.faults = ActiveFaults(xen)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a daemon that was killed
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600: no window where others may connect
        try:
            self._listener.bind(str(self.path))
        finally:
            os.umask(old)
        self._listener.listen(64)
        threading.Thread(target=self._accept, name="control", daemon=True).start()

    def close(self) -> None:
        """Stop serving; heal every fault still in force (a frozen part would not stop)."""
        self.faults.heal_all()
        with contextlib.suppress(OSError):
            self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(sock,), name="control-client",
                             daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                req = receive_message(sock)
            except (OSError, ValueError, struct.error):
                return
            if not isinstance(req, dict) or not isinstance(req.get("args", {}), dict):
                return
            op, args = req.get("op"), req.get("args", {})
            t0 = time.perf_counter()
            try:
                if op == "stop":
                    value = None
                    self._stop_requested()
                elif op == "follow":
                    value = _follow(self.xen, args, lambda m: send_message(sock, m), sock)
                elif op in FAULT_OPS:
                    value = FAULT_OPS[op](self.faults, args)
                elif op in OPS:
                    value = OPS[op](self.xen, args, lambda m: send_message(sock, m))
                else:
                    raise ValueError(f"unknown operation {op!r}")
                send_message(sock, {"ok": value, "seconds": time.perf_counter() - t0})
            except (BrokenPipeError, ConnectionResetError):
                return  # the client went away (Ctrl-C on console or capture)
            except Exception as e:  # any failure is answered in one line
                self._answer_error(sock, op, e)

    def _answer_error(self, sock: socket.socket, op: Any, e: Exception) -> None:
        from cluster.errors import describe

        kind, message, expected = describe(e)
        if not expected:
            self.log.error("command failed", op=op, error=repr(e), traceback=traceback.format_exc())
        with contextlib.suppress(OSError):
            send_message(sock, {"error": {"kind": kind, "message": message, "expected": expected,
                                          "errno": getattr(e, "errno", None)}})
