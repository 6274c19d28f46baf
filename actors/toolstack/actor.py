"""The toolstack agent of one host (Dom0's ``xl``/libxl), as a Ray actor.

It builds domains (:mod:`actors.toolstack.builder`), starts each DomU's actor, and reacts to
domains shutting down the way xl does (reference 12.3): xenstored fires ``@releaseDomain``
when the hypervisor raises ``VIRQ_DOM_EXC``; the agent then reads the domain list and, for
each newly shut-down domain, applies ``on_poweroff`` / ``on_reboot`` / ``on_crash`` (destroy,
restart, rename-restart, preserve). Reactions run on one worker thread, in order, so a
restart never races the destroy before it.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from typing import Any

import msgpack
import ray

from actors import log as xlog
from actors.toolstack.builder import (
    build_pv_domain,
    destroy_domain,
    vbd_backend_path,
    vif_backend_path,
)
from actors.transport import launch
from actors.transport.clients import host_clients
from actors.transport.naming import actor_name
from actors.transport.raycall import Endpoint
from protocols.errno import Errno, XenError
from protocols.hypercall import (
    Domctl,
    DomInfoFlag,
    Hypercall,
    ShutdownReason,
    Sysctl,
    dominf_shutdown_code,
)
from protocols.libxl_types import Action, DomainConfig
from protocols.netif import xen_mac

SHUTDOWN_WORDS = {"poweroff": ShutdownReason.poweroff, "reboot": ShutdownReason.reboot}
REASON_LETTERS = "-rscwS"  # xl_info.c: indexed by shutdown code


@dataclasses.dataclass
class Record:
    """xl's view of one domain it created."""

    name: str
    domid: int
    config: dict[str, Any]
    secret: str
    pid: int = 0
    handled_shutdown: bool = False


def state_string(flags: int) -> str:
    """xl list's State column: ``r b p s <reason> d`` (``tools/xl/xl_info.c``)."""
    shutdown = bool(flags & DomInfoFlag.shutdown)
    return "".join([
        "r" if flags & DomInfoFlag.running else "-",
        "b" if flags & DomInfoFlag.blocked else "-",
        "p" if flags & DomInfoFlag.paused else "-",
        "s" if shutdown else "-",
        REASON_LETTERS[dominf_shutdown_code(flags)] if shutdown and
        dominf_shutdown_code(flags) < len(REASON_LETTERS) else "-",
        "d" if flags & DomInfoFlag.dying else "-",
    ])


def check_devices(cfg: DomainConfig) -> None:
    """Refuse, before anything is built, devices this host cannot back (xl does the same)."""
    for disk in cfg.disk:
        where = f"disk {disk.vdev}"
        if not disk.target or not os.path.exists(disk.target):
            raise XenError(Errno.ENOENT, f"{where}: target {disk.target} does not exist on "
                                         "this host")
        if (reason := disk.unsupported_reason()) is not None:
            raise XenError(Errno.EOPNOTSUPP, f"{where}: {reason}")
        if disk.mode == "w" and not os.stat(disk.target).st_mode & 0o222:
            raise XenError(Errno.EROFS, f"{where}: {disk.target} is read-only but the disk "
                                        "asks for write access (use access=ro)")
    for vif in cfg.vif:
        if vif.backend not in (None, "0", "Domain-0"):
            raise XenError(Errno.EOPNOTSUPP, f"vif {vif.devid}: backend {vif.backend}: driver "
                                             "domains are not emulated; netback runs in Dom0")


def with_macs(cfg: DomainConfig) -> DomainConfig:
    """Give every vif without a ``mac`` one under Xen's OUI, at create (libxl does), so the
    domain keeps it across reboots: the record holds the config with the MACs in it."""
    return dataclasses.replace(cfg, vif=[v if v.mac else v.with_mac(xen_mac(os.urandom(3)))
                                         for v in cfg.vif])


HOTPLUG_TIMEOUT_S = 40.0  # LIBXL_HOTPLUG_TIMEOUT


def wait_for_backends(xs, domid: int, cfg: DomainConfig) -> None:
    """libxl waits for each backend to reach InitWait (or report an error) before unpausing."""
    devices = [(vbd_backend_path(domid, d.devid), f"disk {d.vdev}", "blkback") for d in cfg.disk]
    devices += [(vif_backend_path(domid, v.devid), f"vif {v.devid}", "netback") for v in cfg.vif]
    for be, what, backend in devices:
        deadline = time.monotonic() + HOTPLUG_TIMEOUT_S
        while (state := xs.read_str(f"{be}/state", default="0")) != "2":
            error = xs.read_str(f"{be}/hotplug-error", default="") or \
                xs.read_str(f"{be}/error", default="")
            if error or state == "6":
                raise XenError(Errno.EIO, f"{what}: {backend} refused it: "
                                          f"{error or 'backend closed'}")
            if time.monotonic() > deadline:
                raise XenError(Errno.ETIMEDOUT, f"{what}: {backend} did not answer "
                                                f"within {HOTPLUG_TIMEOUT_S:.0f} s")
            time.sleep(0.05)


@ray.remote(max_restarts=0, max_concurrency=8)
class ToolstackActor(Endpoint):
    def __init__(self, host: str, dom0_secret: str, log_dir: str | None) -> None:
        self.host, self.log_dir = host, log_dir
        self.log = xlog.setup(host=host, component="xl", log_dir=log_dir)
        dom0 = host_clients(host, 0, dom0_secret, "xl", self.deliver, self.log)
        self.transport, self.hv, self.xs = dom0.transport, dom0.hv, dom0.xs
        self.records: dict[str, Record] = {}
        self.lock = threading.RLock()
        self.reactions: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._react, name="xl-reactions", daemon=True).start()
        self.xs.watch("@releaseDomain", "xl-release", lambda path, token: self.reactions.put(
            "release"))

    # -- commands ------------------------------------------------------------------------

    def on_create(self, config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        cfg = DomainConfig.from_dict(config)
        name = name or cfg.name
        check_devices(cfg)
        cfg = with_macs(cfg)
        config = cfg.to_dict()
        with self.lock:
            if name in self.records:
                raise XenError(Errno.EEXIST, f"domain {name!r} already exists on {self.host}")
        built = build_pv_domain(self.hv, self.xs, cfg, name=name)
        endpoint = actor_name(self.host, f"dom{built.domid}")
        try:
            self.transport.call(actor_name(self.host, "xenstored"), "introduce", built.domid,
                                built.secret, endpoint)
            actor = launch.start("domain", self.host, f"dom{built.domid}", self.host,
                                 built.domid, built.secret, built.memory_path, self.log_dir)
            pid = launch.ask(actor, "process")["pid"]
            self.hv(Hypercall.domctl, Domctl.setvcpucontext, domain=built.domid, vcpu=0,
                    ctxt=msgpack.packb({"pid": pid, "endpoint": endpoint}))
            with self.lock:
                self.records[name] = Record(name, built.domid, config, built.secret, pid)
            wait_for_backends(self.xs, built.domid, cfg)
            self.hv(Hypercall.domctl, Domctl.unpausedomain, domain=built.domid)
        except BaseException:
            self._teardown(built.domid)
            with self.lock:
                self.records.pop(name, None)
            raise
        self.log.info("domain created", domid=built.domid, name=name)
        return {"name": name, "domid": built.domid, "host": self.host, "pid": pid,
                "kernel": cfg.kernel or f"built-in {cfg.type} kernel"}

    def on_destroy(self, name: str) -> None:
        rec = self._record(name)
        self._teardown(rec.domid)
        with self.lock:
            self.records.pop(name, None)
        self.log.info("domain destroyed", domid=rec.domid, name=name)

    def on_pause(self, name: str) -> None:
        self.hv(Hypercall.domctl, Domctl.pausedomain, domain=self._record(name).domid)

    def on_unpause(self, name: str) -> None:
        self.hv(Hypercall.domctl, Domctl.unpausedomain, domain=self._record(name).domid)

    def on_shutdown(self, name: str, word: str) -> None:
        """The PV control protocol: write the command; the guest acks and shuts down."""
        if word not in SHUTDOWN_WORDS:
            raise ValueError(f"unknown shutdown command {word!r}")
        rec = self._record(name)
        self.xs.write(f"/local/domain/{rec.domid}/control/shutdown", word)

    def on_list(self) -> list[dict[str, Any]]:
        """xl list's rows for this host, Dom0 first."""
        infos = self.hv(Hypercall.sysctl, Sysctl.getdomaininfolist, first_domain=0,
                        max_domains=1 << 15)
        with self.lock:
            names = {r.domid: r.name for r in self.records.values()}
            pids = {r.domid: r.pid for r in self.records.values()}
        rows = []
        for info in infos:
            domid = info["domain"]
            if domid != 0 and domid not in names:
                continue
            rows.append({
                "name": "Domain-0" if domid == 0 else names[domid], "domid": domid,
                "mem": info["tot_pages"] * 4096 >> 20, "vcpus": info["nr_online_vcpus"],
                "state": state_string(info["flags"]), "time": info["cpu_time"] / 1e9,
                "host": self.host, "pid": pids.get(domid, os.getpid()),  # Dom0: this agent
            })
        return rows

    def on_names(self) -> dict[str, int]:
        with self.lock:
            return {r.name: r.domid for r in self.records.values()}

    def on_xs_event(self, data: bytes) -> None:
        self.xs.on_event(data)

    def on_upcall(self, domid: int, ports: list[int]) -> None:
        """Dom0's xl binds no ports of its own; nothing to service."""

    # -- shutdown reactions (xl_vmcontrol.c handle_domain_death) ------------------------

    def _react(self) -> None:
        while True:
            self.reactions.get()
            try:
                self._handle_release()
            except Exception:  # one bad reaction must not stop the agent
                self.log.exception("reacting to @releaseDomain failed")

    def _handle_release(self) -> None:
        infos = {i["domain"]: i for i in self.hv(Hypercall.sysctl, Sysctl.getdomaininfolist,
                                                 first_domain=1, max_domains=1 << 15)}
        with self.lock:
            pending = [r for r in self.records.values() if not r.handled_shutdown
                       and r.domid in infos and infos[r.domid]["flags"] & DomInfoFlag.shutdown]
            for rec in pending:
                rec.handled_shutdown = True
        for rec in pending:
            self._apply(rec, dominf_shutdown_code(infos[rec.domid]["flags"]))

    def _apply(self, rec: Record, reason: int) -> None:
        key = {ShutdownReason.poweroff: "on_poweroff", ShutdownReason.reboot: "on_reboot",
               ShutdownReason.crash: "on_crash", ShutdownReason.watchdog: "on_watchdog",
               ShutdownReason.soft_reset: "on_soft_reset"}.get(reason)
        if key is None:  # suspend is not an action: "domain has suspended"
            self.log.info("domain has suspended", domid=rec.domid, name=rec.name)
            return
        action = Action.from_xl_name(rec.config[key])
        self.log.info("domain shut down", domid=rec.domid, name=rec.name,
                      reason=ShutdownReason(reason).name, action=action.xl_name)
        if action in (Action.DESTROY, Action.COREDUMP_DESTROY):
            self.on_destroy(rec.name)
        elif action in (Action.RESTART, Action.COREDUMP_RESTART, Action.SOFT_RESET):
            self.on_destroy(rec.name)
            self.on_create(rec.config, rec.name)
        elif action is Action.RENAME_RESTART:
            with self.lock:
                self.records.pop(rec.name)
                rec.name = f"{rec.name}-{rec.domid}"
                self.records[rec.name] = rec
            self.xs.write(f"/local/domain/{rec.domid}/name", rec.name)
            self.on_create(rec.config, rec.config["name"])
        # PRESERVE: leave it shut down, for the user to inspect or destroy.

    # -- helpers ------------------------------------------------------------------------

    def _record(self, name: str) -> Record:
        with self.lock:
            rec = self.records.get(name)
        if rec is None:
            raise KeyError(f"no domain named {name!r} on {self.host}")
        return rec

    def _teardown(self, domid: int) -> None:
        """Destroy in the hypervisor first (so the vCPU exit is not a crash), then the actor."""
        destroy_domain(self.hv, self.xs, domid)
        self.transport.call(actor_name(self.host, "xenstored"), "release", domid)
        launch.kill(self.host, f"dom{domid}")
        self.transport.forget(actor_name(self.host, f"dom{domid}"))
