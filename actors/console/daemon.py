"""xenconsoled: the Dom0 daemon that drains every guest's console ring into a log file.

Xen's ``tools/console/daemon/io.c``. It watches ``@introduceDomain`` and ``@releaseDomain``
(both with the token ``domlist``) and enumerates the domains on every fire
(``enum_domains``). A new domain whose ``console/ring-ref`` and ``console/port`` are in
xenstore (reference 11.5) gets its console page foreign-mapped and its console event channel
bound (``domain_create_ring``); from then on each notification drains the page's ``out``
ring (reference 7.4, 11.2) into the log and signals the guest back, so a guest waiting for
ring space goes on (``buffer_append`` then ``xenevtchn_notify``). A domain that is gone is
unmapped and unbound (``cleanup_domain``).

No Ray here: the hypervisor and xenstored are reached through the clients handed in
(:class:`~actors.transport.hypercall_client.HypercallClient`, :class:`~actors.transport.xs_client.XsClient`), so
the whole daemon runs in-process in tests.

Decisions:

* A domain is gone when it is no longer under ``/local/domain`` or the hypervisor no longer
  lists it (or lists it dying). A shut-down domain is still served: its last words (a crash
  message) reach the log.
* A ring whose indices are out of range (a hostile guest: the byte ring raises ``XenError``)
  is logged, unmapped and unbound, and that domain is not picked up again while it exists;
  the other consoles keep being served. (Xen's ``buffer_append`` silently skips such a ring.)
* The guest is signalled back only when bytes were consumed: only that frees ring space.
* Restart (DESIGN.md "Failure semantics"): Ray starts the daemon again after a crash, and
  its first scan finds every domain again from xenstore, as a restarted ``xenconsoled``
  does. A console port still bound to Dom0 is the dead instance's (a dead actor's ports stay
  bound, unlike a dead process's ``/dev/xen/evtchn``): found with ``EVTCHNOP_status``, it is
  closed and the guest's port bound again, as the backends do (``CloseStalePort``). The
  ring's indices are where the dead instance left them, so what the guest wrote meanwhile
  (whatever fitted: a writer finding the ring full waits) is drained into the log at once.
* Log files are ``<log_dir>/console/<host>/<name>.log``, raw bytes, appended; the name is
  ``~/name`` when the domain is picked up. The last :data:`TAIL_LINES` lines of each served
  console are also kept in memory; the tail of a console that is gone comes from its file,
  and so does the first tail of the consoles a restarted daemon picks up, so ``console`` and
  ``result`` see what was logged before the crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import threading
from collections import Counter, deque
from typing import Any, BinaryIO

import structlog

from actors.memory import Mapping
from protocols.console import XENCONSOLE_CONNECTED, ConsoleInterface
from protocols.errno import Errno, XenError
from protocols.evtchn import EvtchnStat
from protocols.hypercall import DomInfoFlag, EvtchnOp, Hypercall, MemoryOp, Sysctl, XenMapSpace
from protocols.xenstore.paths import INTRODUCE_DOMAIN, LOCAL_DOMAIN, RELEASE_DOMAIN, domain_path

DOMLIST_TOKEN = "domlist"  # io.c watches both special paths with this token
TAIL_LINES = 200
MAX_LINE = 4096  # a longer run of bytes without a newline counts as a line (tail only)
MAX_DOMAINS = 1 << 15


def log_file_name(name: str) -> str:
    """The file name for a domain's log: its name, kept inside the console directory."""
    safe = name.replace("/", "_").replace("\0", "_")
    return f"{safe if safe not in ('', '.', '..') else '_' + safe}.log"


def file_tail(path: str | os.PathLike, n: int) -> list[str]:
    """The last ``n`` lines of a log file (a last line without newline included)."""
    if n <= 0:
        return []
    lines = _last_bytes(path, n).split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [_text(line) for line in lines[-n:]]


def _last_bytes(path: str | os.PathLike, n: int) -> bytes:
    """The end of a file, reaching back over at least ``n`` newlines (or to its start)."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        data = b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    return data


def _text(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", "replace")


@dataclasses.dataclass(eq=False)
class Console:
    """One served console (io.c's ``struct domain``): the mapped page, the bound port, the log."""

    domid: int
    name: str
    remote_port: int
    local_port: int
    mapping: Mapping
    intf: ConsoleInterface
    log_file: BinaryIO | None
    lines: deque[str]
    partial: bytes = b""
    bytes_logged: int = 0

    def record(self, data: bytes) -> None:
        """Append guest output to the log file and the in-memory tail."""
        if self.log_file is not None:
            self.log_file.write(data)
        self.bytes_logged += len(data)
        self.remember(data)

    def remember(self, data: bytes) -> None:
        """Add output to the in-memory tail only (what the log already holds, after a
        restart)."""
        *complete, partial = (self.partial + data).split(b"\n")
        while len(partial) > MAX_LINE:
            complete.append(partial[:MAX_LINE])
            partial = partial[MAX_LINE:]
        self.lines.extend(_text(line) for line in complete)
        self.partial = partial

    def tail(self, n: int) -> list[str]:
        lines = [*self.lines, _text(self.partial)] if self.partial else list(self.lines)
        return lines[-n:] if n > 0 else []

    def close(self) -> None:
        self.intf.release()
        self.mapping.close()
        if self.log_file is not None:
            self.log_file.close()


class ConsoleDaemon:
    """xenconsoled for one host. ``hv`` is a Dom0 hypercall client, ``xs`` a privileged
    xenstore client whose watch events reach :meth:`XsClient.on_event`. Call :meth:`start`
    once; then feed it :meth:`upcall`. Thread-safe (one lock)."""

    def __init__(self, host: str, hv: Any, xs: Any, log_dir: str | os.PathLike | None, *,
                 log: Any = None, tail_lines: int = TAIL_LINES) -> None:
        self.host, self.hv, self.xs = host, hv, xs
        self.dir = pathlib.Path(log_dir) / "console" / host if log_dir is not None else None
        self.log = log if log is not None else structlog.get_logger().bind(
            host=host, component="xenconsoled")
        self.tail_lines = tail_lines
        self.lock = threading.RLock()
        self.consoles: dict[int, Console] = {}  # domid -> console, in pick-up order
        self._by_port: dict[int, Console] = {}  # Dom0 local port -> console
        self._refused: set[int] = set()  # hostile or unbindable: not picked up again
        self.stats: Counter[str] = Counter()

    def start(self) -> None:
        """Watch the domain list, then enumerate it once (``main.c``: ``enum_domains``), so
        the domains already running are served whether or not the watches' first fire
        arrives. EEXIST: a restarted daemon finds its connection's watches still there. The
        consoles this first scan picks up start their tails from their log files."""
        for path in (INTRODUCE_DOMAIN, RELEASE_DOMAIN):
            try:
                self.xs.watch(path, DOMLIST_TOKEN, self._on_domlist)
            except XenError as e:
                if e.errno != Errno.EEXIST:
                    raise
        self.scan(from_logs=True)

    def _on_domlist(self, path: str, token: str) -> None:
        self.scan()

    # -- the domain list (enum_domains) ------------------------------------------------

    def scan(self, from_logs: bool = False) -> None:
        """Drop consoles of domains that are gone; pick up new domains' consoles (their tails
        read back from their log files if ``from_logs``)."""
        with self.lock:
            self.stats["scans"] += 1
            present = self._live_domains() & self._listed_domains()
            for domid in [d for d in self.consoles if d not in present]:
                self._drop(domid, "domain gone")
            self._refused &= present
            for domid in sorted(present - self.consoles.keys() - self._refused):
                self._pick_up(domid, from_logs)

    def _live_domains(self) -> set[int]:
        infos = self.hv(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=1,
                        max_domains=MAX_DOMAINS)
        return {i["domain"] for i in infos if not i["flags"] & DomInfoFlag.dying}

    def _listed_domains(self) -> set[int]:
        try:
            names = self.xs.directory(LOCAL_DOMAIN)
        except XenError as e:
            if e.errno != Errno.ENOENT:
                raise
            return set()
        return {int(n) for n in names if n.isdigit() and int(n) != 0}

    def _read(self, path: str) -> str | None:
        try:
            return bytes(self.xs.read(path)).decode("utf-8", "replace")
        except XenError as e:
            if e.errno in (Errno.ENOENT, Errno.EACCES):
                return None
            raise

    def _pick_up(self, domid: int, from_log: bool = False) -> None:
        base = domain_path(domid)
        ring_ref, port = self._read(f"{base}/console/ring-ref"), self._read(f"{base}/console/port")
        if ring_ref is None or port is None or not (ring_ref.isdigit() and port.isdigit()):
            return  # not set up (yet): a later fire picks it up
        name = self._read(f"{base}/name") or f"Domain-{domid}"
        log = self.log.bind(domid=domid)
        try:
            console = self._connect(domid, name, int(ring_ref), int(port))
        except XenError as e:
            if e.errno != Errno.ESRCH:  # ESRCH: it died meanwhile, nothing to remember
                self._refused.add(domid)
                log.warning("cannot connect console", error=str(e))
            return
        except FileNotFoundError:  # destroyed between the map's answer and the mmap
            return
        if from_log and console.log_file is not None:
            console.remember(_last_bytes(console.log_file.name, self.tail_lines))
        self.consoles[domid] = console
        self._by_port[console.local_port] = console
        self.stats["connected"] += 1
        log.info("console connected", name=name, ring_ref=int(ring_ref),
                 port=int(port), local_port=console.local_port)
        self._drain(console)  # the guest may have written before we bound

    def _connect(self, domid: int, name: str, ring_ref: int, port: int) -> Console:
        """``domain_create_ring``: map the console page, bind the port, open the log."""
        res = self.hv(Hypercall.memory_op, MemoryOp.add_to_physmap_batch, domid=0,
                      space=XenMapSpace.gmfn_foreign, size=1, foreign_domid=domid,
                      idxs=[ring_ref], gpfns=[0])
        if res["errs"][0]:
            raise XenError(Errno(-res["errs"][0]), f"console page {ring_ref} of domain {domid}")
        with contextlib.ExitStack() as undo:  # a failure leaves nothing open or bound
            log_file = self._open_log(name)
            if log_file is not None:
                undo.callback(log_file.close)
            mapping = Mapping(res["path"], ring_ref, 1)
            undo.callback(mapping.close)
            intf = ConsoleInterface(mapping.page(ring_ref))
            undo.callback(intf.release)
            local_port = self._bind(domid, port)
            undo.pop_all()
        intf.connection = XENCONSOLE_CONNECTED
        return Console(domid, name, port, local_port, mapping, intf, log_file,
                       deque(maxlen=self.tail_lines))

    def _open_log(self, name: str) -> BinaryIO | None:
        """The domain's log file, unbuffered: each drain is one append."""
        if self.dir is None:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        return open(self.dir / log_file_name(name), "ab", buffering=0)

    def _bind(self, domid: int, port: int) -> int:
        """Bind the guest's console port; if Dom0 holds it already (this daemon before a
        restart), close that stale port first."""
        try:
            return self._bind_interdomain(domid, port)
        except XenError as e:
            if e.errno != Errno.EINVAL:
                raise
            status = self.hv(Hypercall.event_channel_op, EvtchnOp.status, dom=domid, port=port)
            if status["status"] != EvtchnStat.interdomain or status["interdomain_dom"] != 0:
                raise
            stale = status["interdomain_port"]
        self._close_port(stale)
        self.stats["stale_closed"] += 1
        return self._bind_interdomain(domid, port)

    def _bind_interdomain(self, domid: int, port: int) -> int:
        return self.hv(Hypercall.event_channel_op, EvtchnOp.bind_interdomain,
                       remote_dom=domid, remote_port=port)["local_port"]

    def _close_port(self, port: int) -> None:
        """Close a Dom0 port of ours; one already closed is no error (the domain died)."""
        try:
            self.hv(Hypercall.event_channel_op, EvtchnOp.close, port=port)
        except XenError:
            pass

    def _drop(self, domid: int, reason: str) -> None:
        """``cleanup_domain``: close the port (errors ignored), unmap, close the log."""
        console = self.consoles.pop(domid)
        self._by_port.pop(console.local_port, None)
        self._close_port(console.local_port)
        console.close()
        self.stats["disconnected"] += 1
        self.log.info("console disconnected", domid=domid, name=console.name, reason=reason)

    # -- notifications (handle_ring_read) ----------------------------------------------

    def upcall(self, domid: int, ports: list[int]) -> None:
        """Dom0's local ports fired (``domid`` is Dom0's): drain the consoles behind them."""
        with self.lock:
            self.stats["upcalls"] += 1
            for port in ports:
                console = self._by_port.get(port)
                if console is not None:
                    self._drain(console)

    def _drain(self, console: Console) -> None:
        try:
            data = console.intf.read_out()
        except XenError as e:
            self.stats["hostile"] += 1
            self.log.warning("console ring indices out of range: no longer served",
                             domid=console.domid, name=console.name, error=str(e))
            self._drop(console.domid, "hostile ring")
            self._refused.add(console.domid)
            return
        if not data:
            return
        console.record(data)
        self.stats["bytes"] += len(data)
        try:
            self.hv(Hypercall.event_channel_op, EvtchnOp.send, port=console.local_port)
            self.stats["notifies"] += 1
        except XenError as e:
            self.log.debug("console notify failed", domid=console.domid, error=str(e))

    # -- queries -----------------------------------------------------------------------

    def _served(self, name: str) -> Console | None:
        """The most recently picked-up console with this name."""
        for console in reversed(self.consoles.values()):
            if console.name == name:
                return console
        return None

    def _find(self, name: str) -> Console | None:
        """The served console of domain ``name``; if none has that name, the names are read
        again from xenstore first, since a domain can be renamed after its pick-up (a
        migration's ``<name>--incoming`` takes ``<name>`` when it is unpaused). Its log file
        keeps the name it was opened with."""
        with self.lock:
            console = self._served(name)
            if console is not None:
                return console
            served = list(self.consoles.values())
        for console in served:
            current = self._read(f"{domain_path(console.domid)}/name")
            if current:
                console.name = current
        with self.lock:
            return self._served(name)

    def log_path(self, name: str) -> str:
        """Where domain ``name``'s console is logged (the file appears with its pick-up)."""
        if self.dir is None:
            raise RuntimeError(f"xenconsoled on {self.host} keeps no log files")
        console = self._find(name)
        if console is not None and console.log_file is not None:
            return console.log_file.name
        return str(self.dir / log_file_name(name))

    def tail(self, name: str, n: int) -> list[str]:
        """The last ``n`` console lines of domain ``name``: from memory while it is served,
        else from its log file; none if it has written nothing (yet)."""
        console = self._find(name)
        if console is not None:
            with self.lock:
                return console.tail(n)
        if self.dir is None or not (path := self.dir / log_file_name(name)).exists():
            return []
        return file_tail(path, n)

    def statistics(self) -> dict[str, Any]:
        with self.lock:
            return {
                **{k: self.stats[k] for k in ("scans", "upcalls", "bytes", "notifies",
                                              "connected", "disconnected", "hostile",
                                              "stale_closed")},
                "refused": sorted(self._refused),
                "consoles": [{"domid": c.domid, "name": c.name, "port": c.remote_port,
                              "local_port": c.local_port, "bytes": c.bytes_logged}
                             for c in self.consoles.values()],
            }

    def close(self) -> None:
        """Stop serving every console (the daemon is going away)."""
        with self.lock:
            for domid in list(self.consoles):
                self._drop(domid, "daemon stopped")
