"""A host's fork server: it starts the host's domain processes and relays their messages.

Each domain runs in a process of its own (it crashes, pauses and is killed alone), but not in
a Ray worker: this actor's zygote (:mod:`.zygote`) forks it in a few ms, it costs a few MiB of
its own, and it sleeps while its guest does. Being no Ray worker, it talks to the rest
through this actor: one Unix socket per process (``actors.transport.relay``), in the
abstract namespace (nothing to clean up), named after the run and the host. A call to its
endpoint ``h1/forkserver/vm-1a2b`` reaches this actor over Ray (``relay``) and goes down the
socket; a call it makes comes up the socket and this actor makes it over Ray.

Ray restarts this actor if it dies; its zygote ends with it (its stdin closes), and its
processes connect again to the new one (``RelayClient``) and say who they are, so a domain
lives through its fork server's death as it lives through xenstored's: calls in flight fail
with :class:`~actors.transport.PeerGone`, and xenstore's client sends them again. ``close``
kills every process (the host is going away).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

import ray

from actors import log as xlog
from actors import memory
from actors.transport import PeerGone, Transport
from actors.transport.naming import DOMAIN_PREFIX, actor_name
from actors.transport.raycall import RayEndpoint, RayTransport
from actors.transport.relay import Pending, encode_error, send_frame, unpacker
from protocols.errno import Errno, XenError

WRITE_TIMEOUT_S = 2.0  # a process whose socket stays full this long is cut off (it connects
# again once it reads: a frozen domain's calls in flight fail, as the fork server's death's do)
SPAWN_TIMEOUT_S = 30.0  # a fork and a connect take milliseconds; a loaded machine, seconds
CALL_THREADS = 32  # the calls domain processes make at once, over Ray
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ZYGOTE = "actors.domain.zygote"  # by name: an actor package never imports another


def address(run_id: str, host: str) -> str:
    """The fork server's socket, in the abstract namespace."""
    return f"\0xenray-{run_id}-{host}-{os.getuid()}-forkserver"


class _Process:
    """One domain process as its fork server sees it: its pid and its socket (None while it
    is away, connecting again)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()  # one writer at a time

    def write(self, frame: list) -> None:
        with self.lock:
            send_frame(self.sock, frame, f"domain process {self.pid}")


class ForkServer:
    """The fork server of ``host``: :meth:`on_spawn` a process, :meth:`on_relay` a call to
    one, and the calls they make carried out over ``transport``."""

    def __init__(self, host: str, run_id: str, log_dir: str | None, transport: Transport,
                 log: Any) -> None:
        self.host, self.log_dir, self.transport, self.log = host, log_dir, transport, log
        self.address = address(run_id, host)
        self.peers = {actor_name(host, "hypervisor"), actor_name(host, "xenstored")}  # as in
        # Xen, a domain makes hypercalls and talks on its xenstore ring, to nobody else
        for peer in self.peers:  # looked up now, not by the first domain's first call
            transport.prefetch(peer)
        self._processes: dict[str, _Process] = {}
        self._state_path = str(memory.SHM_DIR / f"xenray-{run_id}-{host}-forkserver")
        self._load()
        self._cv = threading.Condition()  # guards _processes
        self._pending = Pending()  # calls relayed to processes, by component
        self._calls = concurrent.futures.ThreadPoolExecutor(CALL_THREADS,
                                                            thread_name_prefix="relay-call")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.address)  # the last one's died with its process
        self._listener.listen(128)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._spawn_lock = threading.Lock()  # one fork at a time; guards the zygote
        self._zygote = self._start_zygote()
        threading.Thread(target=self._serve, name="forkserver", daemon=True).start()
        log.info("fork server up", zygote=self._zygote.pid)

    def _start_zygote(self) -> subprocess.Popen:
        """A new zygote, once it has imported the kernel (about 1.5 s of a core)."""
        zygote = subprocess.Popen(
            [sys.executable, "-m", ZYGOTE, self.address.lstrip("\0"), self.host,
             self.log_dir or ""],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, close_fds=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])})
        assert zygote.stdout is not None
        if zygote.stdout.readline().strip() != "ready":
            self.log.warning("zygote failed to start", rc=zygote.wait())
        return zygote

    def _fork(self, component: str) -> int:
        """The zygote forks ``component``; its pid (0 if the zygote died meanwhile). A zygote
        found dead (killed on its own) is started again first."""
        with self._spawn_lock:
            if self._zygote.poll() is not None:
                self.log.warning("zygote dead: started again", rc=self._zygote.returncode)
                self._zygote = self._start_zygote()
            assert self._zygote.stdin is not None and self._zygote.stdout is not None
            try:
                self._zygote.stdin.write(component + "\n")
                self._zygote.stdin.flush()
                return int(self._zygote.stdout.readline() or 0)
            except (OSError, ValueError):
                return 0

    # -- commands ------------------------------------------------------------------------

    def on_spawn(self) -> str:
        """Fork a domain process; its component (``vm-1a2b``) once it has connected."""
        component = DOMAIN_PREFIX + secrets.token_hex(4)
        pid = self._fork(component)
        if pid <= 0:
            raise XenError(Errno.EAGAIN, f"{self.host}'s zygote is gone")
        with self._cv:
            self._processes.setdefault(component, _Process(pid))
            self._save()
            if not self._cv.wait_for(lambda: getattr(self._processes.get(component), "sock",
                                                     None) is not None, SPAWN_TIMEOUT_S):
                self._processes.pop(component, None)
                self._save()
                _kill(pid)
                raise XenError(Errno.EAGAIN, f"{component} did not connect within "
                                             f"{SPAWN_TIMEOUT_S} s")
        return component

    def on_relay(self, component: str, kind: str, args: list,
                 timeout: float | None = None) -> Any:
        """A call to process ``component``: its handler's value, or what it raised."""
        return self._pending.call(component, kind, lambda seq: self._process(component).write(
            ["call", seq, "", kind, args, timeout]), timeout)

    def on_relay_send(self, component: str, kind: str, args: list) -> None:
        """One-way: like an interrupt, lost if the process is not there."""
        try:
            self._process(component).write(["send", "", kind, args])
        except PeerGone:
            pass

    def on_kill(self, component: str) -> bool:
        """SIGKILL process ``component`` (a domain destroyed, or no domain's); False if there
        is none."""
        with self._cv:
            proc = self._processes.pop(component, None)
            self._save()
        if proc is None:
            return False
        _kill(proc.pid)
        return True

    def on_processes(self) -> dict[str, int]:
        """Every process this server knows (connected or coming back): component -> pid."""
        with self._cv:
            return {c: p.pid for c, p in self._processes.items()}

    def on_close(self) -> None:
        """Kill every domain process and the zygote (the host is going away)."""
        with self._cv:
            procs, self._processes = list(self._processes.values()), {}
            memory.remove(self._state_path)
        for proc in procs:
            _kill(proc.pid)
        with self._spawn_lock:
            _kill(self._zygote.pid)

    # -- what a restarted server knows ---------------------------------------------------

    def _save(self) -> None:
        """Under ``_cv``: each process's pid, where a server Ray starts again finds it (so it
        kills a process before it has connected again, and refuses a hello in its name
        from another pid)."""
        tmp = f"{self._state_path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({c: p.pid for c, p in self._processes.items()}, f)
        os.replace(tmp, self._state_path)

    def _load(self) -> None:
        """The processes a dead server of this host knew, still alive (not yet connected)."""
        try:
            with open(self._state_path) as f:
                known = json.load(f)
        except (OSError, ValueError):
            return
        for component, pid in known.items():
            if isinstance(pid, int) and _exists(pid):
                self._processes[component] = _Process(pid)
        if self._processes:
            self.log.info("processes of the last fork server", count=len(self._processes))

    # -- the sockets ---------------------------------------------------------------------

    def _process(self, component: str) -> _Process:
        with self._cv:
            proc = self._processes.get(component)
        if proc is None:
            raise PeerGone(f"{self.host}/{component}: no such domain process")
        return proc

    def _serve(self) -> None:
        """The one thread for every process's socket. If it fails, the server is useless:
        the process exits, and Ray starts it again (its processes connect again)."""
        try:
            self._read_all()
        except BaseException as e:  # noqa: BLE001 - nothing would read any socket again
            self.log.error("fork server thread failed: restarting", error=repr(e))
            os._exit(1)

    def _read_all(self) -> None:
        """Accept processes and read what they send."""
        readers: dict[socket.socket, Any] = {}
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._listener:
                    try:
                        conn, _ = self._listener.accept()
                    except OSError as e:  # out of descriptors: the next select tries again
                        self.log.warning("accept failed", error=str(e))
                        continue
                    conn.settimeout(WRITE_TIMEOUT_S)  # a process not reading blocks no one
                    readers[conn] = unpacker()
                    self._selector.register(conn, selectors.EVENT_READ, data=[None])
                    continue
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    self._selector.unregister(sock)
                    readers.pop(sock, None)
                    self._gone(key.data[0], sock)
                    sock.close()
                    continue
                try:
                    unpack = readers[sock]
                    unpack.feed(data)
                    for frame in unpack:
                        if isinstance(frame, list) and frame:
                            self._dispatch(frame, sock, key.data)
                except Exception as e:  # noqa: BLE001 - a process's garbage: its own loss
                    self.log.warning("malformed frames: connection closed",
                                     component=key.data[0], error=repr(e))
                    sock.shutdown(socket.SHUT_RDWR)  # read as closed at the next select

    def _dispatch(self, frame: list, sock: socket.socket, who: list) -> None:
        match frame:
            case ["hello", str(component)] if who[0] is None:
                pid = _peer_pid(sock)
                with self._cv:
                    known = component in self._processes
                    proc = self._processes.setdefault(component, _Process(pid))
                    if proc.pid != pid:  # another process's name: a guest's lie
                        self.log.warning("hello refused: not that process's name",
                                         component=component, pid=pid)
                        sock.shutdown(socket.SHUT_RDWR)
                        return
                    who[0] = component
                    with proc.lock:
                        proc.sock = sock
                    if not known:  # one forked by a server whose list was lost
                        self._save()
                    self._cv.notify_all()
            case ["reply", int(seq), ok, value] if who[0]:
                self._pending.answer(seq, ok, value, peer=who[0])  # only to a call made to it
            case ["call", int(seq), str(dest), str(kind), list(args), timeout] if who[0]:
                if dest in self.peers:
                    self._calls.submit(self._call, who[0], seq, dest, kind, args, timeout)
                else:  # written by another thread: this one never blocks on a write
                    self._calls.submit(self._reply, who[0], ["reply", seq, False, encode_error(
                        XenError(Errno.EPERM, f"a domain talks to its hypervisor and "
                                              f"xenstored, not {dest!r}"))])
            case ["send", str(dest), str(kind), list(args)] if who[0] and dest in self.peers:
                self.transport.send(dest, kind, *args)

    def _call(self, component: str, seq: int, dest: str, kind: str, args: list,
              timeout: float | None) -> None:
        try:
            reply = ["reply", seq, True, self.transport.call(dest, kind, *args,
                                                             timeout=timeout)]
        except Exception as e:  # noqa: BLE001 - the process's caller gets it
            reply = ["reply", seq, False, encode_error(e)]
        self._reply(component, reply)

    def _reply(self, component: str, reply: list) -> None:
        try:
            self._process(component).write(reply)
        except PeerGone:
            pass  # it went away: its call failed there

    def _gone(self, component: str | None, sock: socket.socket) -> None:
        """A process's socket closed: it died, was killed, or will connect again; the calls
        waiting on it fail. It stays known until the toolstack kills it (``on_kill``)."""
        if component is None:
            return
        with self._cv:
            proc = self._processes.get(component)
            if proc is not None and proc.sock is sock:
                with proc.lock:
                    proc.sock = None
        self._pending.fail(component)


def _peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end (``SO_PEERCRED``), which it cannot forge."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# Restarted when killed: its processes connect again. Many threads: every call relayed to a
# process holds one until the process answers.
@ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=64)
class ForkServerActor(RayEndpoint, ForkServer):
    def __init__(self, host: str, run_id: str, log_dir: str | None) -> None:
        super().__init__(host, run_id, log_dir, RayTransport(),
                         xlog.setup(host=host, component="forkserver", log_dir=log_dir))
