"""The toolstack agent of one host (Dom0's ``xl``/libxl): the Ray shell over its core.

:class:`~actors.toolstack.state.Toolstack` decides (records, the create pipeline and its undo,
the ``on_*`` policy); this shell runs the pipeline's steps with the builder
(:mod:`actors.toolstack.builder`) and Dom0's clients, and carries out the core's effects: the
cluster's name registry, xenstored's introduce and release, starting and killing a domain's
actor (by kind, through :mod:`actors.transport.launch`).

Shutdowns: xenstored fires ``@releaseDomain`` when the hypervisor raises ``VIRQ_DOM_EXC``;
the agent reads the domain list and lets the core decide each newly shut-down domain's action.
Reactions run on one thread, in order, so a restart never races the destroy before it.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import msgpack
import ray

from actors import log as xlog
from actors.toolstack import builder
from actors.toolstack.devices import with_macs
from actors.toolstack.effects import (ConfirmName, Create, DestroyDomain, Effect, KillVcpus, Note,
                                      Rebuild, ReleaseName, ReleaseXenstored, RenameDomain)
from actors.toolstack.state import Phase, Record, Step, Toolstack, state_string
from actors.transport import PeerGone, launch
from actors.transport.clients import host_clients
from actors.transport.naming import CLUSTER, actor_name
from actors.transport.raycall import RayEndpoint
from protocols.errno import Errno, XenError
from protocols.hypercall import Domctl, Hypercall, ShutdownReason, Sysctl
from protocols.libxl_types import DomainConfig
from protocols.xenstore.paths import RELEASE_DOMAIN, domain_path

SHUTDOWN_WORDS = {"poweroff": ShutdownReason.poweroff, "reboot": ShutdownReason.reboot}
HOLDER_TIMEOUT_S = 5.0  # how long to wait for another host's agent to say if a name is its
BUILD_WAIT_S = 120.0  # how long a destroy waits for a build of that domain to end


@ray.remote(max_restarts=0, max_concurrency=8)
class ToolstackActor(RayEndpoint):
    def __init__(self, host: str, dom0_secret: str, log_dir: str | None) -> None:
        self.host, self.log_dir = host, log_dir
        self.log = xlog.setup(host=host, component="xl", log_dir=log_dir)
        dom0 = host_clients(host, 0, dom0_secret, "xl", self.deliver, self.log)
        self.transport, self.hv, self.xs = dom0.transport, dom0.hv, dom0.xs
        self.xenstored = actor_name(host, "xenstored")
        self.registry = actor_name(CLUSTER, "registry")
        self.core = Toolstack(host)
        self.lock = threading.Lock()
        self.built = threading.Condition(self.lock)  # notified when a build ends
        self._steps = {Step.RESERVE: self._reserve, Step.CREATEDOMAIN: self._createdomain,
                       Step.MEMORY: self._memory, Step.BOOT_PAGES: self._boot_pages,
                       Step.XENSTORE: self._xenstore, Step.INTRODUCE: self._introduce,
                       Step.VCPUS: self._vcpus, Step.BACKENDS: self._backends,
                       Step.UNPAUSE: self._unpause, Step.INIT: self._init}
        builder.init_dom0(self.xs)
        self.reactions: queue.SimpleQueue[None] = queue.SimpleQueue()
        threading.Thread(target=self._react, name="xl-reactions", daemon=True).start()
        self.xs.watch(RELEASE_DOMAIN, "xl-release", lambda path, token: self.reactions.put(None))

    # -- commands ------------------------------------------------------------------------

    def on_create(self, config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        cfg = with_macs(DomainConfig.from_dict(config))
        builder.check_config(cfg)
        with self.lock:
            rec = self.core.begin_create(name or cfg.name, cfg)
        self._build(rec)
        return {"name": rec.name, "domid": rec.domid, "host": self.host, "pid": rec.pid,
                "kernel": cfg.kernel or f"built-in {cfg.type} kernel"}

    def on_destroy(self, name: str) -> None:
        """``xl destroy``; a domain being (re)built is destroyed once its build ends."""
        with self.built:
            self.built.wait_for(lambda: name not in self.core.records or
                                self.core.records[name].phase is not Phase.BUILDING,
                                BUILD_WAIT_S)
            effects = self.core.destroy(name)
        self._carry_out(effects)

    def on_pause(self, name: str) -> None:
        self.hv(Hypercall.domctl, Domctl.pausedomain, domain=self._domid(name))

    def on_unpause(self, name: str) -> None:
        self.hv(Hypercall.domctl, Domctl.unpausedomain, domain=self._domid(name))

    def on_shutdown(self, name: str, word: str) -> None:
        """The PV control protocol: write the command; the guest acks and shuts down."""
        if word not in SHUTDOWN_WORDS:
            raise XenError(Errno.EINVAL, f"unknown shutdown command {word!r}")
        self.xs.write(f"{domain_path(self._domid(name))}/control/shutdown", word)

    def on_list(self) -> list[dict[str, Any]]:
        """xl list's rows for this host, Dom0 first."""
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
            rows.append({"name": name, "domid": domid, "mem": info["tot_pages"] * 4096 >> 20,
                         "vcpus": info["nr_online_vcpus"], "state": state_string(info["flags"]),
                         "time": info["cpu_time"] / 1e9, "host": self.host, "pid": pid})
        return rows

    def on_names(self) -> dict[str, int | None]:
        with self.lock:
            return self.core.names()

    def on_holds(self, name: str) -> bool:
        """Is ``name`` one of this host's domains (the registry asks, for a stale entry)?"""
        with self.lock:
            return name in self.core.records

    def on_xs_event(self, data: bytes) -> None:
        self.xs.on_event(data)

    def on_upcall(self, domid: int, ports: list[int]) -> None:
        """Dom0's xl binds no ports of its own; nothing to service."""

    # -- the create pipeline ---------------------------------------------------------------

    def _build(self, rec: Record) -> None:
        """Run the steps ``rec`` still needs, in order; on any failure undo what was done."""
        try:
            for step in self.core.pending(rec):
                learnt = self._steps[step](rec) or {}
                with self.lock:
                    self.core.step_done(rec, step, **learnt)
        except BaseException as e:
            self.log.warning("create failed", name=rec.name, domid=rec.domid, error=str(e))
            with self.lock:
                effects = self.core.abort(rec)
                self.built.notify_all()
            self._carry_out(effects)
            raise
        with self.lock:
            effects = self.core.finish(rec)
            self.built.notify_all()
        self._carry_out(effects)

    def _reserve(self, rec: Record) -> None:
        held = self._registry("reserve", rec.name, self.host)
        if held is None:
            return
        if self._stale(rec.name, held) and self._registry("take_over", rec.name, held,
                                                          self.host):
            return
        raise XenError(Errno.EEXIST, f"a domain named {rec.name!r} already exists on "
                                     f"{held['host']}")

    def _stale(self, name: str, held: dict) -> bool:
        """Does the holder's host say it no longer has ``name``? (Not when it cannot say.)"""
        try:
            return not self.transport.call(actor_name(held["host"], "xl"), "holds", name,
                                           timeout=HOLDER_TIMEOUT_S)
        except (PeerGone, TimeoutError):
            return False

    def _createdomain(self, rec: Record) -> dict[str, Any]:
        domid, secret, uuid = builder.create_domain(self.hv, rec.config)
        return {"domid": domid, "secret": secret, "uuid": uuid}

    def _memory(self, rec: Record) -> dict[str, Any]:
        return {"memory_path": builder.populate(self.hv, rec.domid, rec.config, rec.name)}

    def _boot_pages(self, rec: Record) -> dict[str, Any]:
        return {"console_port": builder.write_boot_pages(self.hv, rec.domid, rec.memory_path,
                                                         rec.config)}

    def _xenstore(self, rec: Record) -> None:
        builder.write_xenstore(self.xs, rec.domid, rec.uuid, rec.name, rec.config,
                               rec.console_port)

    def _introduce(self, rec: Record) -> None:
        self.transport.call(self.xenstored, "introduce", rec.domid, rec.secret,
                            self._endpoint(rec.domid))

    def _vcpus(self, rec: Record) -> dict[str, Any]:
        """Start the domain's actor (its vCPUs' process) and hand it over to the hypervisor;
        an actor started by a failed step is killed here (the core only undoes done steps)."""
        actor = launch.start("domain", self.host, f"dom{rec.domid}", self.host, rec.domid,
                             rec.secret, rec.memory_path, self.log_dir)
        try:
            pid = launch.ask(actor, "process")["pid"]
            self.hv(Hypercall.domctl, Domctl.setvcpucontext, domain=rec.domid, vcpu=0,
                    ctxt=msgpack.packb({"pid": pid, "endpoint": self._endpoint(rec.domid)}))
        except BaseException:
            self._kill_vcpus(rec.domid)
            raise
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
                case ReleaseXenstored(domid):
                    self.transport.call(self.xenstored, "release", domid)
                case KillVcpus(domid):
                    self._kill_vcpus(domid)
                case ReleaseName(name):
                    self._registry("release", name, self.host, missing_ok=True)
                case ConfirmName(name, domid):
                    self._registry("confirm", name, self.host, domid, missing_ok=True)
                case RenameDomain(domid, old, new):
                    taken = self._registry("rename", old, new, self.host)
                    if taken is None:
                        self.xs.write(f"{domain_path(domid)}/name", new)
                    with self.lock:
                        effects = self.core.renamed(old, new, ok=taken is None)
                    self._carry_out(effects)
                case Rebuild(name):
                    with self.lock:
                        rec = self.core.records[name]
                    self._build(rec)
                case Create(name, config):
                    self.on_create(config.to_dict(), name)
                case Note(what, fields):
                    self.log.info(what, **fields)

    def _kill_vcpus(self, domid: int) -> None:
        launch.kill(self.host, f"dom{domid}")
        self.transport.forget(self._endpoint(domid))

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
        while True:
            self.reactions.get()
            try:
                infos = self.hv(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=1,
                                max_domains=1 << 15)
                with self.lock:
                    effects = self.core.shutdowns({i["domain"]: i["flags"] for i in infos})
                self._carry_out(effects)
            except Exception:  # one bad reaction must not stop the agent
                self.log.exception("reacting to @releaseDomain failed")

    # -- helpers ----------------------------------------------------------------------------

    def _domid(self, name: str) -> int:
        with self.lock:
            rec = self.core.record(name)
            if rec.domid is None or rec.phase is Phase.BUILDING:
                raise XenError(Errno.EBUSY, f"{name!r} is being built")
            return rec.domid

    def _endpoint(self, domid: int) -> str:
        return actor_name(self.host, f"dom{domid}")
