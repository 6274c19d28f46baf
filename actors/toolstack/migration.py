"""xl's save, restore and migrate, as the part of the toolstack agent's shell that runs them.

``xl migrate`` (``tools/xl/xl_migrate.c``, reference 15.2) runs the save on the source and
``xl migrate-receive`` the restore on the destination, and the two talk through a handshake
so that the domain always has exactly one owner:

1. the receiver creates ``<name>--incoming``, paused (:meth:`MigrationShell.on_migrate_receive`
   starts the restore pipeline, which builds everything up front and then reads the stream);
2. the sender writes the stream (:mod:`.save`, in chunks: :mod:`.channel`); before it
   suspends the domain for the last round it waits until the receiver is built and has
   read every chunk sent (:meth:`on_migrate_prepared`), so no backlog is worked off while
   the domain is down;
3. the receiver says "domain received, ready to unpause" (:meth:`on_migrate_received`);
4. the sender renames its copy ``<name>--migratedaway`` and says "domain is yours, you are
   cleared to unpause" (:meth:`on_migrate_go`): the receiver renames its domain ``<name>``
   and unpauses it;
5. the sender destroys its copy.

Until step 4 has been answered, any failure (the destination dying, the stream breaking, the
receiver refusing it) cancels the migration: the receiver's copy is destroyed, the sender's
name given back, and the suspended domain resumed in place (``XEN_DOMCTL_resumedomain``; the
guest's suspend hypercall returns 1). If step 4 itself fails, the sender asks the receiver
whether its copy runs and resumes its own only if not, so no migration leaves two live copies
or none.

``xl save`` and ``xl restore`` are the same two halves joined by a file: xl's header, the
domain's configuration, then the libxl stream (:mod:`protocols.migration.savefile`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from actors.toolstack import builder
from actors.toolstack.channel import CHUNK_BYTES, ChunkReceiver, ChunkSender
from actors.toolstack.precopy import policy_named
from actors.toolstack.restore import DomainRestorer
from actors.toolstack.save import DomainSaver
from actors.toolstack.state import Phase, Record
from actors.transport import PeerGone
from actors.transport.naming import actor_name
from protocols.errno import Errno, XenError
from protocols.hypercall import Domctl, DomInfoFlag, Hypercall, ShutdownReason, \
    dominf_shutdown_code
from protocols.libxl_types import DomainConfig
from protocols.migration import savefile
from protocols.page import PAGES_PER_MIB
from protocols.pv_layout import PFN_FIRST_FREE
from protocols.xenstore.paths import domain_path

INCOMING, MIGRATEDAWAY = "--incoming", "--migratedaway"  # xl_migrate.c's suffixes
HANDSHAKE_TIMEOUT_S = 120.0  # a step of the handshake that takes longer has failed
CHUNK_CALL_TIMEOUT_S = 60.0


@dataclasses.dataclass
class MigrateOptions:
    """``xl migrate``'s options (and xenray's: the precopy policy and its knobs)."""

    live: bool = True
    debug: bool = False
    max_iters: int = 5
    dirty_threshold: int = 50
    policy: str = "libxc"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MigrateOptions:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise XenError(Errno.EINVAL, f"unknown migrate options {sorted(unknown)}")
        opts = cls(**d)
        try:
            policy_named(opts.policy, opts.max_iters, opts.dirty_threshold)
        except (ValueError, TypeError) as e:
            raise XenError(Errno.EINVAL, str(e)) from None
        return opts


@dataclasses.dataclass
class Incoming:
    """A domain this host is receiving: its record, its stream, and the build's outcome."""

    session: str
    name: str  # the name it will take once the sender clears it
    rec: Record
    chunks: ChunkReceiver
    built: threading.Event = dataclasses.field(default_factory=threading.Event)
    prepared: threading.Event = dataclasses.field(default_factory=threading.Event)
    error: BaseException | None = None
    unpaused_at: float = 0.0


class MigrationShell:
    """Mixed into :class:`~actors.toolstack.actor.ToolstackShell`: the commands and handshake
    handlers of save, restore and migrate, and the two restore-only pipeline steps."""

    # provided by ToolstackShell
    host: str
    hv: Any
    xs: Any
    transport: Any
    core: Any
    lock: threading.Lock
    log: Any
    runtime: Any
    registry: str
    reactions: Any
    _build: Callable[[Record], None]
    _carry_out_each: Callable[[list], Exception | None]
    on_destroy: Callable[[str], None]

    def _init_migration(self) -> None:
        self._incoming: dict[str, Incoming] = {}
        self._streams: dict[str, Callable[[], bytes]] = {}  # record token -> its stream
        self._readings: dict[str, StreamReading] = {}  # record token -> its reader

    # -- xl migrate: the sender ------------------------------------------------------------

    def on_migrate(self, name: str, host: str, options: dict[str, Any]) -> dict[str, Any]:
        """Migrate ``name`` to ``host``; the metrics of the migration."""
        opts = MigrateOptions.from_dict(options)
        with self.lock:
            rec = self.core.begin_migrate(name)
        dest, session = actor_name(host, "xl"), uuid.uuid4().hex
        t0 = time.perf_counter()
        sender = None
        try:
            config = dataclasses.replace(self._retrieve_config(rec), uuid=rec.uuid)
            self.transport.call(dest, "migrate_receive", session, name, config.to_dict(),
                                timeout=HANDSHAKE_TIMEOUT_S)
            sender = ChunkSender(lambda seq, data: self.transport.call(
                dest, "migrate_chunk", session, seq, data, timeout=CHUNK_CALL_TIMEOUT_S))
            saver = self._saver(rec, sender.write, opts, ready=lambda: self.transport.call(
                dest, "migrate_prepared", session, sender.drain(),
                timeout=HANDSHAKE_TIMEOUT_S))
            try:
                report = saver.run()
                sender.close()
            finally:
                saver.close()
            self.transport.call(dest, "migrate_end", session, sender.chunks_sent,
                                timeout=HANDSHAKE_TIMEOUT_S)
            sent = time.perf_counter()
            received = self.transport.call(dest, "migrate_received", session,
                                           timeout=HANDSHAKE_TIMEOUT_S)
            ready = time.perf_counter()
            self._rename(rec.name, name + MIGRATEDAWAY)
            self._go(dest, session, name)
            unpaused = time.perf_counter()
        except BaseException as e:
            self.log.warning("migration failed", name=name, dest=host, error=str(e))
            if sender is not None:
                sender.abandon()
            if isinstance(e, Undefined):
                raise XenError(Errno.EIO, str(e)) from None
            resumed = self._cancel(rec, name, dest, session)
            where = (f"{name} runs on {self.host}" if resumed else
                     f"{rec.name} stays suspended on {self.host}: check both hosts")
            if isinstance(e, XenError):
                raise XenError(e.errno, f"migration to {host} failed: {e.detail or e}; "
                                        f"{where}") from None
            raise XenError(Errno.EIO, f"migration to {host} failed: {e}; {where}") from None
        with self.lock:
            effects = self.core.migrated_away(rec)
        self._carry_out_each(effects)
        resumed = self._ask_resumed(dest, session)
        return {"name": name, "from": self.host, "to": host, "domid": received["domid"],
                "live": opts.live, "policy": opts.policy, **report.as_dict(),
                "total_s": round(unpaused - t0, 4),
                "downtime_ms": round((unpaused - report.suspended_at) * 1e3, 2),
                "downtime_parts_ms": _ms({
                    "guest suspends": report.guest_suspended_at - report.suspended_at,
                    "last round": sent - report.guest_suspended_at,
                    "receiver ready": ready - sent, "renames and unpause": unpaused - ready}),
                "resume_ms": resumed, "verify_mismatches": received.get("verify_mismatches"),
                "restore_steps_ms": received["steps_ms"]}

    def _saver(self, rec: Record, sink: Callable[[Any], None], opts: MigrateOptions,
               ready: Callable[[], Any] = lambda: None) -> DomainSaver:
        return DomainSaver(self.hv, rec.domid, rec.memory_path, sink,
                           lambda: builder.suspend_domain(self.xs, self.hv, rec.domid),
                           live=opts.live, debug=opts.debug, ready=ready,
                           policy=policy_named(opts.policy, opts.max_iters,
                                               opts.dirty_threshold))

    def _retrieve_config(self, rec: Record) -> DomainConfig:
        """``libxl_retrieve_domain_configuration``: the creation config with what
        ``mem-set``, ``mem-max`` and ``vcpu-set`` changed since, from xenstore: the memory
        target and static-max (KiB, rounded up to MiB) and the online vCPUs (the set, gaps
        and all: ``libxl__update_avail_vcpus_xenstore``), which a save
        or migration recreates the domain with."""
        dom = domain_path(rec.domid)

        def mib(key: str) -> int:
            text = self.xs.read_str(f"{dom}/memory/{key}")
            if not text.isdigit():
                raise XenError(Errno.EINVAL, f"invalid memory {text!r} in {dom}/memory/{key}")
            return -(-int(text) // 1024)

        online = tuple(n for n in range(rec.config.maxvcpus)
                       if self.xs.read_str(f"{dom}/cpu/{n}/availability", default="")
                       == "online") or (0,)
        return dataclasses.replace(rec.config, memory=mib("target"), maxmem=mib("static-max"),
                                   vcpus=len(online), avail_vcpus=online)

    def _go(self, dest: str, session: str, name: str) -> None:
        """"you are cleared to unpause". If the answer is lost, ask whether the copy runs;
        if nobody can say, the domain's state is undefined, as xl's ``failed_badly``: the
        source copy stays suspended (never two running copies)."""
        try:
            self.transport.call(dest, "migrate_go", session, timeout=HANDSHAKE_TIMEOUT_S)
        except (PeerGone, TimeoutError) as e:
            try:
                runs = self.transport.call(dest, "migrate_runs", session, timeout=10.0)
            except (PeerGone, TimeoutError):
                raise Undefined(f"the destination did not answer 'cleared to unpause' ({e}); "
                                f"{name}'s state is undefined: its copy here stays suspended "
                                f"as {name}{MIGRATEDAWAY}, check both hosts") from None
            if not runs:
                raise XenError(Errno.EIO, f"the destination did not take the domain: {e}") \
                    from None

    def _ask_resumed(self, dest: str, session: str) -> float | None:
        """How long the guest took, once unpaused, to reconnect and re-run its init (ms)."""
        try:
            return self.transport.call(dest, "migrate_resumed", session,
                                       timeout=HANDSHAKE_TIMEOUT_S)
        except (PeerGone, TimeoutError, XenError) as e:
            self.log.warning("the migrated guest did not report its resume", error=str(e))
            return None

    def _cancel(self, rec: Record, name: str, dest: str, session: str) -> bool:
        """The migration failed before the destination owned the domain: drop its copy, take
        the name back, resume the domain here. The name is the commit point: a domain whose
        name could not be taken back is not resumed (the destination may hold it). True if
        the domain runs here again."""
        try:
            self.transport.call(dest, "migrate_abort", session, timeout=HANDSHAKE_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a dead receiver's copy died with it
            self.log.warning("cancelling the migration: could not abort the receiver",
                             error=str(e))
        try:
            if rec.name != name:
                self._rename(rec.name, name)
            self._resume_suspended(rec)
        except Exception as e:  # noqa: BLE001 - said in the error the user gets
            self.log.warning("cancelling the migration: the domain stays suspended",
                             error=str(e))
            return False
        finally:
            with self.lock:
                self.core.migrate_cancelled(rec)
            self.reactions.put(None)  # a shutdown meanwhile was not acted on
        return True

    def _resume_suspended(self, rec: Record) -> None:
        """``XEN_DOMCTL_resumedomain`` if the domain is suspended: the guest runs on in
        place, its suspend hypercall returning 1 (cancelled)."""
        flags = self.hv(Hypercall.domctl, Domctl.getdomaininfo, domain=rec.domid)["flags"]
        if flags & DomInfoFlag.shutdown and \
                dominf_shutdown_code(flags) == ShutdownReason.suspend:
            self.hv(Hypercall.domctl, Domctl.resumedomain, domain=rec.domid)

    def _rename(self, old: str, new: str) -> None:
        """``libxl_domain_rename``: the registry, the record, then ``~/name``."""
        with self.lock:
            rec = self.core.record(old)
        taken = self.transport.call(self.registry, "rename", old, new, self.host, rec.token)
        if taken is not None:
            raise XenError(Errno.EEXIST, f"a domain named {new!r} already exists on "
                                         f"{taken['host']}")
        with self.lock:
            self.core.rename(old, new)
        self.xs.write(f"{domain_path(rec.domid)}/name", new)
        if rec.phase is not Phase.BUILDING:
            self._store_userdata(rec)

    # -- xl migrate-receive: the receiver ---------------------------------------------------

    def on_migrate_receive(self, session: str, name: str, config: dict[str, Any]) -> dict:
        """Start restoring ``<name>--incoming`` from the stream the sender is about to send."""
        cfg = DomainConfig.from_dict(config)
        builder.check_config(cfg)
        with self.lock:
            rec = self.core.begin_restore(name + INCOMING, cfg, unpause=False)
        inc = self._incoming[session] = Incoming(session, name, rec, ChunkReceiver())
        self._streams[rec.token] = inc.chunks.read
        self.runtime.spawn(self._receive, inc, name=f"xl-receive-{name}")
        return {"name": rec.name}

    def _receive(self, inc: Incoming) -> None:
        try:
            self._build(inc.rec)
        except BaseException as e:  # noqa: BLE001 - the sender learns it from received
            inc.error = e
            inc.chunks.fail(str(e))
        finally:
            self._end_stream(inc.rec)
            inc.built.set()
            inc.prepared.set()  # a sender waiting to suspend learns the outcome

    def on_migrate_chunk(self, session: str, seq: int, data: bytes) -> None:
        self._session(session).chunks.put(seq, data)

    def on_migrate_end(self, session: str, count: int) -> None:
        self._session(session).chunks.end(count)

    def on_migrate_prepared(self, session: str, sent: int) -> None:
        """Is everything but the stream's end built, and has the restore read the ``sent``
        chunks of the live rounds? The sender suspends the domain only then. Waits for both;
        the build's error if it failed. Without the second wait the restore's backlog (up to
        the chunks buffered and in flight, 44 MiB) is worked off while the domain is down;
        through xl's ssh pipe the backlog is a socket buffer's."""
        inc = self._session(session)
        if type(sent) is not int:
            raise XenError(Errno.EINVAL, "migrate_prepared: the chunks sent are a count")
        if not inc.prepared.wait(HANDSHAKE_TIMEOUT_S):
            raise XenError(Errno.ETIMEDOUT, "the destination was not built in time")
        if inc.error is not None:
            raise inc.error
        try:
            caught_up = inc.chunks.wait_read(sent, HANDSHAKE_TIMEOUT_S)
        except XenError as e:  # the stream failed: the build's error says why, if it failed
            raise inc.error or e from None
        if not caught_up:
            raise XenError(Errno.ETIMEDOUT, "the destination did not read the stream in time")

    def on_migrate_received(self, session: str) -> dict[str, Any]:
        """"domain received, ready to unpause" once the restore is built, or its error."""
        inc = self._session(session)
        if not inc.built.wait(HANDSHAKE_TIMEOUT_S):
            raise XenError(Errno.ETIMEDOUT, "the restore did not finish")
        if inc.error is not None:
            self._incoming.pop(session, None)
            raise inc.error
        # xl migrate-receive destroys its copy when the sender goes away: so here, if no
        # "cleared to unpause" (nor abort) comes in time
        self.runtime.call_later(HANDSHAKE_TIMEOUT_S, self._give_up, session)
        return {"domid": inc.rec.domid, "steps_ms": dict(inc.rec.steps_ms),
                "verify_mismatches": inc.rec.restored.get("verify_mismatches")}

    def on_migrate_go(self, session: str) -> None:
        """"you are cleared to unpause": take the domain's name, unpause it."""
        inc = self._session(session)
        self._rename(inc.rec.name, inc.name)
        self.hv(Hypercall.domctl, Domctl.unpausedomain, domain=inc.rec.domid)
        inc.unpaused_at = time.perf_counter()

    def _give_up(self, session: str) -> None:
        inc = self._incoming.get(session)
        if inc is not None and not inc.unpaused_at:
            self.log.warning("the sender never cleared the incoming domain: destroying it",
                             name=inc.rec.name)
            try:
                self.on_migrate_abort(session)
            except Exception as e:  # noqa: BLE001 - on a timer thread
                self.log.warning("destroying an abandoned incoming domain failed",
                                 error=str(e))

    def on_migrate_runs(self, session: str) -> bool:
        """Does this host run the domain it received (was it unpaused)?"""
        inc = self._incoming.get(session)
        return inc is not None and inc.unpaused_at > 0

    def on_migrate_resumed(self, session: str) -> float:
        """Wait for the resumed guest's init; milliseconds from the unpause."""
        inc = self._incoming.pop(session, None)
        if inc is None or not inc.unpaused_at:
            raise XenError(Errno.ESRCH, "no unpaused incoming domain for this migration")
        builder.wait_init(self.xs, self.hv, inc.rec.domid)
        return round((time.perf_counter() - inc.unpaused_at) * 1e3, 2)

    def on_migrate_abort(self, session: str) -> None:
        """The sender cancelled: break the stream and destroy what was built."""
        inc = self._incoming.pop(session, None)
        if inc is None:
            return
        inc.chunks.fail("the sender cancelled the migration")
        inc.built.wait(HANDSHAKE_TIMEOUT_S)
        with self.lock:
            exists = self.core.records.get(inc.rec.name) is inc.rec
        if exists and inc.error is None:
            self.on_destroy(inc.rec.name)

    def _session(self, session: str) -> Incoming:
        inc = self._incoming.get(session)
        if inc is None:
            raise XenError(Errno.ESRCH, "no such incoming migration")
        return inc

    # -- xl save and xl restore -------------------------------------------------------------

    def on_save(self, name: str, path: str, checkpoint: bool = False) -> dict[str, Any]:
        """``xl save [-c]``: suspend, write xl's save file; then destroy the domain, or with
        ``checkpoint`` let it run on (its suspend cancelled)."""
        with self.lock:
            rec = self.core.begin_migrate(name)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.part"
        try:
            with open(tmp, "xb") as f:
                config = self._retrieve_config(rec).to_dict()
                f.write(savefile.encode(json.dumps(config), json=True))
                saver = self._saver(rec, f.write, MigrateOptions(live=False))
                try:
                    report = saver.run()
                finally:
                    saver.close()
            os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            self._cancel_save(rec)
            raise
        if checkpoint:
            self._cancel_save(rec)
        else:
            with self.lock:
                effects = self.core.migrated_away(rec)
            self._carry_out_each(effects)
        return {"name": name, "path": path, "bytes": os.path.getsize(path),
                "downtime_ms": None if not checkpoint else
                round((time.perf_counter() - report.suspended_at) * 1e3, 2),
                **report.as_dict()}

    def _cancel_save(self, rec: Record) -> None:
        try:
            self._resume_suspended(rec)
        finally:
            with self.lock:
                self.core.migrate_cancelled(rec)
            self.reactions.put(None)  # a shutdown meanwhile was not acted on

    def on_restore(self, path: str, paused: bool = False) -> dict[str, Any]:
        """``xl restore [-p]``: rebuild the domain of a save file on this host."""
        try:
            f = open(path, "rb")
        except OSError as e:
            raise XenError(Errno.ENOENT, f"cannot open {path}: {e.strerror}") from None
        with f:
            header = _read_header(f, path)
            try:
                cfg = DomainConfig.from_dict(json.loads(header.config))
                _check_types(cfg)
                builder.check_config(cfg)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise XenError(Errno.EINVAL, f"{path}: the saved configuration is not "
                                             f"valid: {e}") from None
            with self.lock:
                rec = self.core.begin_restore(cfg.name, cfg, unpause=not paused)
            self._streams[rec.token] = lambda: f.read(CHUNK_BYTES)
            try:
                self._build(rec)
            finally:
                self._end_stream(rec)
        return {"name": rec.name, "domid": rec.domid, "host": self.host,
                "steps_ms": dict(rec.steps_ms)}

    # -- the restore pipeline's own steps -----------------------------------------------------

    def _console_port(self, rec: Record) -> dict[str, Any]:
        return {"console_port": builder.alloc_console_port(self.hv, rec.domid)}

    def _stream_start(self, rec: Record) -> None:
        """Start reading the stream into the new domain's memory, on a thread of its own, so
        that the sender's round 0 goes on while the rest of the domain is built."""
        read = self._streams.get(rec.token)
        if read is None:
            raise XenError(Errno.EIO, "the record has no stream to restore from")
        fail = next((inc.chunks.fail for inc in self._incoming.values() if inc.rec is rec),
                    lambda why: None)
        reading = self._readings[rec.token] = StreamReading(DomainRestorer(
            self.hv, rec.domid, rec.memory_path, rec.config.maxmem * PAGES_PER_MIB,
            rec.config.maxvcpus, populated=range(PFN_FIRST_FREE)), fail)
        self.runtime.spawn(reading.run, read, name=f"xl-restore-{rec.name}")

    def _stream(self, rec: Record) -> dict[str, Any]:
        """Wait for the rest of the stream, then give the new domain's start_info its new
        console port (and check the domain did not die meanwhile)."""
        for inc in list(self._incoming.values()):
            if inc.rec is rec:
                inc.prepared.set()  # the sender may suspend the domain now
        restored = self._readings[rec.token].result()
        builder.rewrite_start_info(rec.memory_path, rec.console_port, restored["p2m_size"])
        flags = self.hv(Hypercall.domctl, Domctl.getdomaininfo, domain=rec.domid)["flags"]
        if flags & DomInfoFlag.shutdown:  # its vCPUs' process died while the stream came
            raise XenError(Errno.EIO, "the restored domain crashed before it could resume")
        return {"restored": restored}

    def _end_stream(self, rec: Record) -> None:
        """The restore is over, built or undone: stop a reader still running and forget it."""
        self._streams.pop(rec.token, None)
        reading = self._readings.pop(rec.token, None)
        if reading is not None:
            reading.cancel()


class StreamReading:
    """A :class:`DomainRestorer` running on its own thread: its outcome, or cancel it."""

    def __init__(self, restorer: DomainRestorer, fail: Callable[[str], None]) -> None:
        self.restorer, self._fail = restorer, fail  # fail: break the stream's source
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._value: dict[str, Any] | None = None
        self._error: BaseException | None = None

    def run(self, read: Callable[[], bytes]) -> None:
        def checked() -> bytes:
            if self._cancelled.is_set():
                raise XenError(Errno.EINTR, "the restore was cancelled")
            return read()

        try:
            self._value = self.restorer.run(checked)
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for it
            self._error = e
            self._fail(str(e))  # the sender hears it now, not at its next timeout
        finally:
            self._done.set()

    def result(self) -> dict[str, Any]:
        """Wait for the end of the stream (the reader's own timeouts bound the wait)."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self) -> None:
        self._cancelled.set()


class Undefined(Exception):
    """Neither side can say whether the destination took the domain (xl: failed_badly)."""


def _check_types(cfg: DomainConfig) -> None:
    """A saved configuration came from a file anyone could have written: its name is text and
    its sizes are positive integers (TypeError/ValueError otherwise)."""
    if not isinstance(cfg.name, str) or not cfg.name:
        raise TypeError(f"name {cfg.name!r} is not a domain name")
    for key in ("memory", "maxmem", "vcpus", "maxvcpus"):
        value = getattr(cfg, key)
        if type(value) is not int or value < 1:
            raise ValueError(f"{key} {value!r} is not a positive integer")


def _ms(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1e3, 2) for k, v in seconds.items()}


def _read_header(f: Any, path: str) -> savefile.SaveFileHeader:
    """xl's save-file header and the configuration in it; the file is left at the stream."""
    prefix = f.read(savefile.FIXED_SIZE)
    size = savefile.header_size(prefix)
    if size is None:
        raise XenError(Errno.EINVAL, f"{path}: too short for an xl save file")
    header = savefile.decode(prefix + f.read(size - len(prefix)))
    if not header.json:
        raise XenError(Errno.EINVAL, f"{path}: its configuration is not libxl JSON")
    return header


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
