"""xenstored's Unix socket, so the real Xen tools can use an emulated host (reference 11.1;
``tools/xenstored/core.c`` ``init_sockets``, ``tools/libs/store/xs.c`` ``xs_daemon_socket``).

``xenstore-read``, ``xenstore-ls``, ``pyxs`` ... connect to ``$XENSTORED_PATH`` (by default
``/var/run/xenstored/socket``) and speak xs_wire on a stream socket. Each client is a
privileged Dom0 connection of a :class:`~actors.xenstored.server.XenstoredServer`.

One selector thread serves every client with non-blocking sockets. Replies and watch events
(which other threads produce too, e.g. for a domain's write) are sent at once if the socket
takes them and otherwise queued for the loop, so a client that stops reading stalls nobody:
over ``max_output`` queued bytes it is closed, as is a client the server kills (garbage, an
oversized payload). The others keep being served.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import selectors
import socket
import stat
import threading

from actors.xenstored.server import XenstoredServer

RECV_SIZE = 65536
MAX_OUTPUT = 1 << 20  # bytes queued for a client that does not read


class _Client:
    """One accepted socket and what is still to be written to it."""

    __slots__ = ("sock", "conn_id", "lock", "out", "dead")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn_id = 0
        self.lock = threading.Lock()  # guards out, dead and sending
        self.out = bytearray()
        self.dead = False


class UnixSocketServer:
    """Listens on ``path`` and serves each client as a privileged Dom0 connection."""

    def __init__(self, server: XenstoredServer, path: str | os.PathLike[str], *,
                 max_output: int = MAX_OUTPUT) -> None:
        self.server = server
        self.path = pathlib.Path(path)
        self.max_output = max_output
        self.log = server.log.bind(socket=str(self.path))
        self._clients: dict[int, _Client] = {}  # by fd; the loop thread's only
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._inode = 0

    def __enter__(self) -> UnixSocketServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> UnixSocketServer:
        """Bind (replacing a stale socket file), listen and serve in a background thread."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            os.chmod(self.path, 0o600)  # as xenstored: Dom0's root only
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._inode = self.path.stat().st_ino
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="xenstored-socket", daemon=True)
        self._thread.start()
        self.log.info("xenstored socket listening")
        return self

    def stop(self) -> None:
        """Close the listener and every client, and remove the socket file."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake()
        thread.join()
        self._thread = None
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None

    # --- the loop thread ------------------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while not self._stopping:
                self._update_interest()
                for key, mask in self._selector.select():
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._serve(key.data, mask)
                for client in [c for c in self._clients.values() if c.dead]:
                    self._close(client)
        except Exception:
            self.log.exception("xenstored socket loop failed")
        finally:
            self._shutdown()

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as err:  # e.g. EMFILE: keep the clients we have
                self.log.warning("xenstored socket accept failed", error=str(err))
                return
            sock.setblocking(False)
            client = _Client(sock)
            client.conn_id = self.server.open_connection(
                0, True, lambda data, c=client: self._send(c, data), socket=True)
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _serve(self, client: _Client, mask: int) -> None:
        if client.dead:
            return
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(client)
            if mask & selectors.EVENT_READ:
                try:
                    data = client.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data or not self.server.handle(client.conn_id, data):
                    client.dead = True
        except Exception:
            self.log.exception("xenstored socket client failed", conn_id=client.conn_id)
            client.dead = True

    def _flush(self, client: _Client) -> None:
        with client.lock:
            if not client.out:
                return
            try:
                sent = client.sock.send(client.out)
            except BlockingIOError:
                return
            except OSError:
                client.dead = True
                return
            del client.out[:sent]

    def _update_interest(self) -> None:
        assert self._selector is not None
        for client in self._clients.values():
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
            if self._selector.get_key(client.sock).events != want:
                self._selector.modify(client.sock, want, client)

    def _close(self, client: _Client) -> None:
        assert self._selector is not None
        with client.lock:
            client.dead = True
        self._clients.pop(client.sock.fileno(), None)
        self._selector.unregister(client.sock)
        client.sock.close()
        self.server.close_connection(client.conn_id)

    def _shutdown(self) -> None:
        assert self._selector is not None and self._listener is not None
        for client in list(self._clients.values()):
            self._close(client)
        self._selector.close()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino == self._inode:  # not a successor's socket
                self.path.unlink()
        self.log.info("xenstored socket closed")

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    # --- any thread -----------------------------------------------------------------------

    def _send(self, client: _Client, data: bytes) -> None:
        """The connection's ``send``: write now if the socket takes it, else queue it for the
        loop. Raising tells the server the connection is gone."""
        with client.lock:
            if client.dead:
                raise ConnectionError("client closed")
            if not client.out:
                try:
                    sent = client.sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    client.dead = True
                    self._wake()
                    raise
                if sent == len(data):
                    return
                data = data[sent:]
            if len(client.out) + len(data) > self.max_output:
                client.dead = True
                self._wake()
                raise ConnectionError(f"client does not read: over {self.max_output} bytes queued")
            client.out += data
        self._wake()

    def _wake(self) -> None:
        wake = self._wake_w
        if wake is not None:
            with contextlib.suppress(OSError):  # full (already woken) or closed
                wake.send(b"\0")
