"""The toolstack agent of one host (Dom0's ``xl``/libxl): the shell over its core.

:class:`~actors.toolstack.state.Toolstack` decides (records, the create pipeline and its undo,
the ``on_*`` policy); :class:`ToolstackShell` runs the pipeline's steps with the builder
(:mod:`actors.toolstack.builder`) and Dom0's clients, and carries out the core's effects: the
cluster's name registry, xenstored's introduce and release, starting and killing a domain's
process through its :class:`Launcher`. It is a plain class, so the in-process test host runs
this very shell (with a launcher that runs the domain in the test's process);
:class:`ToolstackActor` is it as a Ray actor, whose launcher is the host's pool of started
``DomainActor`` s (:mod:`actors.toolstack.pool`).

Shutdowns: xenstored fires ``@releaseDomain`` when the hypervisor raises ``VIRQ_DOM_EXC``;
the agent reads the domain list and lets the core decide each newly shut-down domain's action.
Reactions run on one thread (from the injected runtime), in order, so a domain's teardown is
done before its restart begins; each domain's effects are carried out apart from the others',
and a restart's rebuild runs on a thread of its own, so neither a failure nor a slow build
holds up another domain's reaction.

Undo is best-effort, as ``libxl_domain_destroy`` is: each effect of a teardown is tried on its
own and a failure is logged, so the vCPUs' process is still killed and the name still given
back when xenstored is down; a failed create then raises its own error, not the undo's.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import ray

from actors import log as xlog
from actors import memory, procstat
from actors.runtime import THREADS, Runtime
from actors.toolstack import builder
from actors.toolstack.devices import with_macs
from actors.toolstack.effects import (ConfirmName, Create, DestroyDomain, Effect, KillVcpus, Note,
                                      Rebuild, ReleaseName, ReleaseXenstored, RenameDomain)
from actors.toolstack.cpus import CpuShell
from actors.toolstack.migration import MigrationShell
from actors.toolstack.forked import ForkLauncher
from actors.toolstack.pool import DomainPool
from actors.toolstack.state import Phase, Record, Step, Toolstack, state_string
from actors.transport import Endpoint, PeerGone
from actors.transport.clients import HostClients, host_clients
from actors.transport.naming import CLUSTER, actor_name
from actors.transport.partition import PartitionedTransport
from actors.transport.raycall import RayEndpoint
from protocols.errno import Errno, XenError
from protocols.hypercall import Domctl, DomInfoFlag, Hypercall, ShutdownReason, Sysctl
from protocols.libxl_types import DomainConfig
from protocols.page import PAGES_PER_MIB
from protocols.xenstore.paths import RELEASE_DOMAIN, domain_path

SHUTDOWN_WORDS = {"poweroff": ShutdownReason.poweroff, "reboot": ShutdownReason.reboot}
HOLDER_TIMEOUT_S = 5.0  # how long to wait for another host's agent to say if a name is its
BUILD_WAIT_S = 120.0  # how long a destroy waits for a build of that domain to end
RESERVE_TRIES = 3  # reserve, or take a stale holder over, again if the holder changed meanwhile
_STOP = object()


class Launcher(Protocol):
    """Gives each domain the process that runs its vCPUs, and kills it."""

    def take(self, domid: int) -> str:
        """A process for domain ``domid``, not yet running it: its endpoint."""

    def start(self, domid: int, secret: str, memory_path: str, resume: bool = False) -> int:
        """Make the process taken for ``domid`` run it, with its credential and memory file;
        its pid. ``resume``: its kernel resumes a saved domain (a restore) rather than
        boots."""

    def kill(self, domid: int) -> None:
        """Stop it for good (nothing if there is none)."""

    def adopt(self, endpoints: dict[int, str]) -> None:
        """The agent (re)started with these domains (domid -> endpoint) running: their
        processes are its own; any other is a leftover."""

    def close(self) -> None:
        """The host is going away."""

    def statistics(self) -> dict[str, Any]:
        """What ``xl pool`` shows: the launcher, its processes started ahead, its creates."""


class ToolstackShell(MigrationShell, CpuShell, Endpoint):
    """One host's xl over Dom0's ``clients`` (endpoint ``<host>/xl``). Commands may come from
    several threads at once; the core is only touched under ``lock``."""

    def __init__(self, host: str, clients: HostClients, log: Any, launcher: Launcher,
                 runtime: Runtime = THREADS) -> None:
        self.host, self.log, self.launcher, self.runtime = host, log, launcher, runtime
        self.hv, self.xs = clients.hv, clients.xs
        self.transport = PartitionedTransport(clients.transport)  # to other hosts' agents
        self.xenstored = actor_name(host, "xenstored")
        self.registry = actor_name(CLUSTER, "registry")
        self.transport.prefetch(self.registry)  # a migration's rename must not wait for it
        self.core = Toolstack(host)
        self.lock = threading.Lock()
        self.built = threading.Condition(self.lock)  # notified when a build ends
        self._xs_lock = threading.Lock()  # the create pipeline's xenstore transactions
        self._steps: dict[Step, Callable[[Record], dict[str, Any] | None]] = {
            Step.RESERVE: self._reserve, Step.CREATEDOMAIN: self._createdomain,
            Step.MEMORY: self._memory, Step.BOOT_PAGES: self._boot_pages,
            Step.CONSOLE_PORT: self._console_port, Step.XENSTORE: self._xenstore,
            Step.INTRODUCE: self._introduce, Step.VCPUS: self._vcpus,
            Step.BACKENDS: self._backends, Step.STREAM_START: self._stream_start,
            Step.STREAM: self._stream,
            Step.UNPAUSE: self._unpause, Step.INIT: self._init}
        self._init_migration()
        self._userdata: dict[int, str] = {}  # domid -> its userdata file
        builder.init_dom0(self.xs)
        self._adopt()
        self.reactions: queue.SimpleQueue[Any] = queue.SimpleQueue()
        runtime.spawn(self._react, name="xl-reactions")
        try:
            self.xs.watch(RELEASE_DOMAIN, "xl-release",
                          lambda path, token: self.reactions.put(None))
        except XenError as e:
            if e.errno != Errno.EEXIST:  # our connection's watch survived a restart
                raise
        self.reactions.put(None)  # a domain that shut down while no agent ran is acted on

    def _adopt(self) -> None:
        """A restarted agent takes back every domain the hypervisor has that it built
        (from its userdata); one with none was being built when the agent died, and is
        destroyed, as that build's undo would have been."""
        infos = self.hv(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=1,
                        max_domains=1 << 15)
        for info in infos:
            domid = info["domain"]
            if info["flags"] & DomInfoFlag.dying:
                continue
            try:
                data = builder.load_userdata(builder.memory_path(self.hv, domid))
            except XenError as e:
                if e.errno != Errno.ESRCH:
                    raise
                continue  # destroyed meanwhile
            if data is not None and data.get("domid") == domid:
                with self.lock:
                    rec = self.core.adopt(data)
                self._userdata[domid] = builder.userdata_path(rec.memory_path)
                self.log.info("domain adopted", domid=domid, name=rec.name)
            else:  # its process, if it had one, is no adopted domain's: adopt() kills it
                self.log.warning("domain half-built when the agent died: destroyed",
                                 domid=domid)
                self._carry_out_each([DestroyDomain(domid), ReleaseXenstored(domid)])
        with self.lock:
            endpoints = {r.domid: r.endpoint for r in self.core.records.values()}
        self.launcher.adopt(endpoints)

    def close(self) -> None:
        """Stop the reaction thread and the launcher (the host is going away)."""
        self.reactions.put(_STOP)
        self.launcher.close()

    # -- commands ------------------------------------------------------------------------

    def on_create(self, config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        cfg = with_macs(DomainConfig.from_dict(config))
        builder.check_config(cfg)
        with self.lock:
            rec = self.core.begin_create(name or cfg.name, cfg)
        self._build(rec)
        return {"name": rec.name, "domid": rec.domid, "host": self.host, "pid": rec.pid,
                "kernel": cfg.kernel or f"built-in {cfg.type} kernel",
                "steps_ms": dict(rec.steps_ms)}

    def on_destroy(self, name: str) -> None:
        """``xl destroy``; a domain being (re)built is destroyed once its build ends. Every
        part of the teardown is tried; the first that failed is raised afterwards."""
        with self.built:
            self.built.wait_for(lambda: name not in self.core.records or
                                self.core.records[name].phase is not Phase.BUILDING,
                                BUILD_WAIT_S)
            effects = self.core.destroy(name)
        error = self._carry_out_each(effects)
        if error is not None:
            raise error

    def on_pause(self, name: str) -> None:
        self.hv(Hypercall.domctl, Domctl.pausedomain, domain=self._domid(name))

    def on_unpause(self, name: str) -> None:
        self.hv(Hypercall.domctl, Domctl.unpausedomain, domain=self._domid(name))

    def on_mem_set(self, name: str, target_kib: int) -> int:
        """``xl mem-set``: the balloon target, max_mem with it (``builder.set_memory_target``)."""
        return builder.set_memory_target(self.hv, self.xs, self._domid(name), target_kib)

    def on_mem_max(self, name: str, max_kib: int) -> int:
        """``xl mem-max``: the maximum reservation (``builder.set_max_memory``)."""
        return builder.set_max_memory(self.hv, self.xs, self._domid(name), max_kib)

    def on_shutdown(self, name: str, word: str) -> None:
        """The PV control protocol: write the command; the guest acks and shuts down."""
        if word not in SHUTDOWN_WORDS:
            raise XenError(Errno.EINVAL, f"unknown shutdown command {word!r}")
        self.xs.write(f"{domain_path(self._domid(name))}/control/shutdown", word)

    def on_list(self) -> list[dict[str, Any]]:
        """xl list's rows for this host, Dom0 first. Xen's State cannot tell a domain whose
        process is stopped (SIGSTOP) from a running one: ``health`` does (``frozen``)."""
        infos = self.hv(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=0,
                        max_domains=1 << 15)
        with self.lock:
            recs = {r.domid: (r.name, r.pid) for r in self.core.records.values()
                    if r.domid is not None}
        rows = []
        for info in infos:
            domid = info["domain"]
            if domid != 0 and domid not in recs:
                continue
            name, pid = recs.get(domid, ("Domain-0", os.getpid()))  # Dom0's pid: this agent
            rows.append({"name": name, "domid": domid,
                         "mem": info["tot_pages"] // PAGES_PER_MIB,
                         "vcpus": info["nr_online_vcpus"], "state": state_string(info["flags"]),
                         "time": info["cpu_time"] / 1e9, "host": self.host, "pid": pid,
                         "health": "frozen" if procstat.stopped(pid) else "ok"})
        return rows

    def on_xenstat(self) -> dict[str, Any]:
        """What ``xentop`` reads of this host, in one call (libxenstat's node,
        :mod:`actors.toolstack.xenstat`): the hypervisor's domain list and physinfo, and the
        device counters of this host's netback and blkback."""
        from actors.toolstack import xenstat

        with self.lock:
            names = {r.domid: r.name for r in self.core.records.values()
                     if r.domid is not None}
        return xenstat.gather(
            self.host, self.hv, names, self.runtime.monotonic,
            lambda component: self.transport.call(actor_name(self.host, component),
                                                  "statistics",
                                                  timeout=xenstat.BACKEND_TIMEOUT_S))

    def on_pool(self) -> dict[str, Any]:
        """The domain process pool: its size, its idle processes' components, how many are
        starting, and how many creates it served (``taken``) or could not (``missed``)."""
        return self.launcher.statistics()

    def on_endpoint(self, name: str) -> str:
        """The endpoint of the process that runs domain ``name``'s vCPUs."""
        with self.lock:
            return self.core.record(name).endpoint

    def on_set_partition(self, hosts: list[str]) -> None:
        """A partition nemesis: calls to these hosts' agents are lost until set to []."""
        self.transport.set_blocked(hosts)
        self.log.warning("partitioned from hosts", hosts=hosts)

    def on_names(self) -> dict[str, int | None]:
        with self.lock:
            return self.core.names()

    def on_holds(self, token: str) -> bool:
        """Does the record that reserved a name with ``token`` still exist here (the agent
        of another host asks, for a holder it thinks stale)?"""
        with self.lock:
            return self.core.holds(token)

    def on_xs_event(self, data: bytes) -> None:
        self.xs.on_event(data)

    def on_upcall(self, domid: int, ports: list[int], vcpu: int = 0) -> None:
        """Dom0's xl binds no ports of its own; nothing to service."""

    # -- the create pipeline ---------------------------------------------------------------

    def _build(self, rec: Record) -> None:
        """Run the steps ``rec`` still needs, in order; on any failure undo what was done
        (best-effort) and raise the failure itself."""
        try:
            for step in self.core.pending(rec):
                t0 = time.perf_counter()
                learnt = self._steps[step](rec) or {}
                with self.lock:
                    self.core.step_done(rec, step, (time.perf_counter() - t0) * 1e3, **learnt)
        except BaseException as e:
            self.log.warning("create failed", name=rec.name, domid=rec.domid, error=str(e))
            with self.lock:
                effects = self.core.abort(rec)
                self.built.notify_all()
            self._carry_out_each(effects)
            raise
        with self.lock:
            effects = self.core.finish(rec)
        try:  # the userdata and the name's confirm, before a shutdown reaction may destroy it
            self._store_userdata(rec)
            self._carry_out(effects)
        finally:
            with self.lock:
                self.core.running(rec)
                self.built.notify_all()
            self.reactions.put(None)  # a shutdown while it was being built is acted on now

    def _reserve(self, rec: Record) -> None:
        """The name, cluster-wide, for this record's token; a stale holder is taken over."""
        for _ in range(RESERVE_TRIES):
            held = self._registry("reserve", rec.name, self.host, rec.token)
            if held is None:
                return
            if not self._stale(held):
                break
            if self._registry("take_over", rec.name, held, self.host, rec.token):
                return
        raise XenError(Errno.EEXIST, f"a domain named {rec.name!r} already exists on "
                                     f"{held['host']}")

    def _stale(self, held: dict) -> bool:
        """Does the holder's host say the record that reserved the name is gone? (Not when it
        cannot say.) This host answers for its own records."""
        if held["host"] == self.host:
            return not self.on_holds(held["token"])
        try:
            return not self.transport.call(actor_name(held["host"], "xl"), "holds",
                                           held["token"], timeout=HOLDER_TIMEOUT_S)
        except (PeerGone, TimeoutError):
            return False

    def _createdomain(self, rec: Record) -> dict[str, Any]:
        domid, secret, uuid = builder.create_domain(self.hv, rec.config)
        return {"domid": domid, "secret": secret, "uuid": uuid}

    def _memory(self, rec: Record) -> dict[str, Any]:
        """A restore's memory is populated by its stream (:mod:`.restore`)."""
        build = builder.prepare_restore if rec.resume else builder.populate
        return {"memory_path": build(self.hv, rec.domid, rec.config, rec.name)}

    def _boot_pages(self, rec: Record) -> dict[str, Any]:
        return {"console_port": builder.write_boot_pages(self.hv, rec.domid, rec.memory_path,
                                                         rec.config)}

    def _xenstore(self, rec: Record) -> None:
        """One domain's transaction at a time (libxl's ctx lock): the transactions of
        creates run at once all add children to ``/local/domain``, ``/vm`` and ``/libxl``,
        so each commit would make the others fail with EAGAIN and run again (20 creates at
        once spent 13 s each here retrying; one after another, 70 ms each)."""
        with self._xs_lock:
            builder.write_xenstore(self.xs, rec.domid, rec.uuid, rec.name, rec.config,
                                   rec.console_port)

    def _introduce(self, rec: Record) -> dict[str, Any]:
        """Take the process that will run the domain (its endpoint is where xenstored sends
        the domain's watch events), then introduce the domain; a process taken by a failed
        step is killed here (the core only undoes done steps)."""
        endpoint = self.launcher.take(rec.domid)
        try:
            self.transport.call(self.xenstored, "introduce", rec.domid, rec.secret, endpoint)
        except BaseException:
            self._carry_out_each([KillVcpus(rec.domid, endpoint)])
            raise
        return {"endpoint": endpoint}

    def _vcpus(self, rec: Record) -> dict[str, Any]:
        """Make the taken process run the domain (its vCPUs) and hand it over to the
        hypervisor."""
        pid = self.launcher.start(rec.domid, rec.secret, rec.memory_path, rec.resume)
        self.hv(Hypercall.domctl, Domctl.setvcpucontext, domain=rec.domid, vcpu=0,
                ctxt=msgpack.packb({"pid": pid, "endpoint": rec.endpoint}))
        self.transport.call(rec.endpoint, "connect")
        return {"pid": pid}

    def _backends(self, rec: Record) -> None:
        builder.wait_backends(self.xs, rec.domid, rec.config)

    def _unpause(self, rec: Record) -> None:
        self.hv(Hypercall.domctl, Domctl.unpausedomain, domain=rec.domid)

    def _init(self, rec: Record) -> None:
        builder.wait_init(self.xs, self.hv, rec.domid)

    # -- effects ----------------------------------------------------------------------------

    def _carry_out(self, effects: list[Effect]) -> None:
        for e in effects:
            match e:
                case DestroyDomain(domid):
                    builder.destroy_domain(self.hv, self.xs, domid)
                    if (path := self._userdata.pop(domid, None)) is not None:
                        memory.remove(path)
                case ReleaseXenstored(domid):
                    self.transport.call(self.xenstored, "release", domid)
                case KillVcpus(domid, endpoint):
                    self.launcher.kill(domid)
                    self.transport.forget(endpoint)
                case ReleaseName(name, token):
                    self._registry("release", name, self.host, token, missing_ok=True)
                case ConfirmName(name, domid, token):
                    self._registry("confirm", name, self.host, token, domid, missing_ok=True)
                case RenameDomain(domid, old, new, token):
                    taken = self._registry("rename", old, new, self.host, token)
                    if taken is None:
                        self.xs.write(f"{domain_path(domid)}/name", new)
                    with self.lock:
                        effects = self.core.renamed(old, new, ok=taken is None)
                    if taken is None:
                        self._store_userdata(self.core.records[new])
                    self._carry_out(effects)
                case Rebuild(name):
                    self._background(f"restart of {name}", self._rebuild, name)
                case Create(name, config):
                    self._background(f"create of {name}", self.on_create, config.to_dict(),
                                     name)
                case Note(what, fields):
                    self.log.info(what, **fields)

    def _carry_out_each(self, effects: list[Effect]) -> Exception | None:
        """Carry out every effect on its own: one that fails is logged and the rest still
        run (a teardown is best-effort). Returns the first failure."""
        first = None
        for e in effects:
            try:
                self._carry_out([e])
            except Exception as err:
                self.log.warning("effect failed", effect=repr(e), error=str(err))
                first = first or err
        return first

    def _rebuild(self, name: str) -> None:
        """``restart``: build the record again, under its still reserved name."""
        with self.lock:
            rec = self.core.records.get(name)
        if rec is not None and rec.phase is Phase.BUILDING:
            self._build(rec)

    def _background(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a thread of its own (a build takes seconds); log a failure."""
        def run() -> None:
            try:
                fn(*args)
            except Exception as e:
                self.log.warning(f"{what} failed", error=str(e))

        self.runtime.spawn(run, name=f"xl-{what}")

    def _registry(self, kind: str, *args: Any, missing_ok: bool = False) -> Any:
        try:
            return self.transport.call(self.registry, kind, *args)
        except PeerGone:
            if missing_ok:
                self.log.warning("the cluster's name registry is gone", call=kind)
                return None
            raise XenError(Errno.ENOTCONN, "the cluster's name registry is not running") \
                from None

    # -- shutdown reactions (xl_vmcontrol.c handle_domain_death) ----------------------------

    def _react(self) -> None:
        """One @releaseDomain at a time; each domain's effects apart from the others'."""
        while self.reactions.get() is not _STOP:
            try:
                infos = self.hv(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=1,
                                max_domains=1 << 15)
                with self.lock:
                    groups = self.core.shutdowns({i["domain"]: i["flags"] for i in infos})
            except Exception:  # one bad reaction must not stop the agent
                self.log.exception("reacting to @releaseDomain failed")
                continue
            for effects in groups:
                self._carry_out_each(effects)

    # -- helpers ----------------------------------------------------------------------------

    def _store_userdata(self, rec: Record) -> None:
        """Keep the built record where a restarted agent finds it (libxl's userdata)."""
        with self.lock:
            data = rec.userdata()
        self._userdata[rec.domid] = builder.store_userdata(rec.memory_path, data)

    def _domid(self, name: str) -> int:
        with self.lock:
            rec = self.core.record(name)
            if rec.domid is None or rec.phase is Phase.BUILDING:
                raise XenError(Errno.EBUSY, f"{name!r} is being built")
            return rec.domid


# Restarted when killed: it adopts its domains (its in-flight calls fail, never re-run: a
# create or migration retried on a new agent would act twice). 32 threads: migrations hold
# threads for their length.
@ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=32)
class ToolstackActor(RayEndpoint, ToolstackShell):
    """``launcher``: ``fork`` (the host's fork server forks each domain's process) or
    ``ray`` (each domain is a Ray actor, ``pool`` of them started ahead)."""

    def __init__(self, host: str, dom0_secret: str, log_dir: str | None, launcher: str,
                 pool: int) -> None:
        log = xlog.setup(host=host, component="xl", log_dir=log_dir)
        clients = host_clients(host, 0, dom0_secret, "xl", self.deliver, log)
        super().__init__(host, clients, log,
                         ForkLauncher(host, clients.transport) if launcher == "fork"
                         else DomainPool(host, log_dir, pool))
