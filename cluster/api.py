"""The experiment API: a Mininet-like ``Cluster`` of emulated Xen hosts.

    with Cluster(hosts=2) as xen:
        xen.create("examples/counter.cfg", host="h1")
        print(xen.list())
        xen.pause("counter1")

Embedded mode (the default) starts a local multi-node Ray cluster, one node per host, boots
every host and the cluster's name registry, and tears it all down on exit. Attach mode
(``address=``) joins an existing Ray cluster whose nodes carry the ``xen-host`` label and
changes nothing in it: it only talks to the hosts it finds (``boot=True`` also boots hosts
that have no actors yet, and stops just those on exit). A host that does not answer is
reported (:class:`HostUnreachable`), and calls about other hosts go on working. The CLI's
daemon holds one of these and serves the commands through it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from actors.transport import PeerGone
from actors.transport.naming import CLUSTER, actor_name, ray_environment
from cluster import home
from cluster.fault.processes import Process, kill_all, node_processes
from cluster.health import HostWatch
from cluster.hosts import (LAUNCHERS, POOL_SIZE, HostSpec, boot_host, boot_registry, stop_host,
                           stop_registry, xenstored_socket)
from cluster.runtime import EmbeddedRay, connect, disconnect, discover_hosts, is_local
from cluster.xlcfg import DomainConfig, load_config, parse_config
from protocols.errno import Errno, XenError
from protocols.page import PAGES_PER_MIB

CALL_TIMEOUT_S = 30.0  # a host that takes longer than this to answer is reported unreachable
CREATE_TIMEOUT_S = 300.0  # create waits for the backends (40 s) and the init (30 s) itself
AUTO = "auto"  # create --host auto: placed by free memory
BOOT_PARALLEL = 4  # hosts booted at once
MIGRATE_TIMEOUT_S = 1800.0  # a save or migration of a large, busy domain takes long


class DomainNotFound(KeyError):
    def __str__(self) -> str:
        return f"no domain named {self.args[0]!r}"


class HostUnreachable(Exception):
    """A host's actor did not answer (gone, or busy past the timeout)."""

    def __init__(self, host: str, component: str, why: str) -> None:
        self.host, self.component = host, component
        super().__init__(f"host {host} does not answer: its {component} {why}")


class Cluster:
    def __init__(self, hosts: int | Sequence[str] = 2, *, address: str | None = None,
                 boot: bool | None = None, host_memory_mib: int = 2048,
                 host_cpus: int | None = None, sched: str = "credit2",
                 sched_params: dict[str, Any] | None = None,
                 dom0_memory_mib: int = 256, pool: int = POOL_SIZE, launcher: str = "fork",
                 run_id: str | None = None, run_dir: str | os.PathLike | None = None,
                 progress: Callable[[str], None] | None = None):
        """``run_dir``: where the hosts' xenstored sockets go; by default a directory of this
        run's own, so clusters sharing one ``$XENRAY_HOME`` never take each other's (the
        daemon of ``xenray up`` passes ``$XENRAY_HOME/run``). ``launcher``: ``fork`` (each
        host's fork server forks its domains' processes) or ``ray`` (each domain is a Ray
        actor, of which each host keeps ``pool`` started ahead of need). ``host_cpus``: each
        host's pCPUs (default: this machine's CPUs), which its hypervisor's ``sched``
        (credit2 or credit) hands to the vCPUs."""
        from actors.hypervisor.sched import SCHEDULERS

        if launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")
        if sched not in SCHEDULERS:
            raise ValueError(f"sched must be one of {', '.join(SCHEDULERS)}, not {sched!r}")
        host_cpus = host_cpus or os.cpu_count() or 1
        if host_cpus < 1:
            raise ValueError(f"a host needs at least one pCPU, not {host_cpus}")
        names = [f"h{i + 1}" for i in range(hosts)] if isinstance(hosts, int) else list(hosts)
        self.specs = {n: HostSpec(n, host_memory_mib, host_cpus, dom0_memory_mib, pool,
                                  launcher, sched, tuple(sorted((sched_params or {}).items())))
                      for n in names}
        self.address = address
        self.boot = address is None if boot is None else boot
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.run_dir = str(run_dir or home.run_dir() / self.run_id)
        self.log_dir = str(home.logs_dir() / self.run_id)
        self._progress = progress or (lambda msg: None)
        self._embedded: EmbeddedRay | None = None
        self._booted: list[str] = []
        self._booted_registry = False
        self._raylets: dict[str, int] = {}
        self._watch: HostWatch | None = None
        ray_environment(local=address is None or is_local(address))  # before ray is imported
        from actors.transport.raycall import RayTransport

        self._transport = RayTransport()

    @classmethod
    def running(cls) -> Cluster:
        """The cluster ``xenray up`` runs, joined from a script (changes nothing in it; its
        token, from ``$XENRAY_HOME/run``, is set before Ray is imported)."""
        rec = home.read_record()
        if rec is None or not home.daemon_alive(rec["pid"]):
            raise ValueError("no cluster is running; start one with `xenray up`")
        token = pathlib.Path(rec["token"]).read_text().strip()
        if _token_in_environment() != token:
            if "ray" in sys.modules:
                raise RuntimeError("ray was imported before Cluster.running() could set the "
                                   "cluster's token; call it first")
            os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the path
            os.environ["RAY_AUTH_TOKEN_PATH"] = rec["token"]
        return cls(rec["hosts"], address=rec["address"], run_id=rec["run_id"],
                   run_dir=home.run_dir()).start()

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> Cluster:
        """Start (embedded) or join (attach) the cluster; what it started is stopped again if
        it fails half way. Once started, starting again does nothing (``with
        Cluster(...).start()`` would otherwise leave a second host watch running)."""
        if self._watch is not None or self._embedded is not None:
            return self
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Cluster:
        if self.address is None:
            self._progress(f"starting an embedded Ray cluster with {len(self.specs)} hosts")
            self._embedded = EmbeddedRay({n: {"cpus": s.pcpus} for n, s in self.specs.items()})
            self.address = self._embedded.address
        connect(self.address)
        if self._embedded is None:
            self.specs = {n: self.specs.get(n, HostSpec(n)) for n in discover_hosts()}
        if not self.boot:
            return self
        if not self._answers(CLUSTER, "registry"):
            boot_registry(self.run_id)
            self._booted_registry = True
        missing = [spec for name, spec in self.specs.items() if not self._answers(name, "xl")]
        for spec in missing:
            self._progress(f"booting host {spec.name}: hypervisor, Dom0, Dom0's daemons")
        # a few at once: sixteen hosts booting together (each starting seven processes and
        # its pool) kept 2 cores at a load of 50, and Ray declared busy nodes dead
        with concurrent.futures.ThreadPoolExecutor(max(1, min(BOOT_PARALLEL,
                                                              len(missing)))) as pool:
            futures = {pool.submit(self._boot, spec): spec.name for spec in missing}
        failed = [f.exception() for f in futures if f.exception() is not None]
        self._booted += [name for f, name in futures.items() if f.exception() is None]
        if failed:
            raise failed[0]  # what booted is stopped by stop(), as usual
        self._wire_network()
        self._each_host(self.raylet_pid, None)
        self._watch = HostWatch(self).start()  # this cluster's own hosts: fence the dead
        return self

    def _boot(self, spec: HostSpec) -> None:
        """Boot one host; a host that fails half way is stopped at once (what it started)."""
        try:
            boot_host(spec, run_id=self.run_id, run_dir=self.run_dir, log_dir=self.log_dir)
        except BaseException:
            stop_host(spec.name, run_id=self.run_id, run_dir=self.run_dir)
            raise

    def _wire_network(self) -> None:
        """Give every host's bridges an uplink to every other host: a full mesh, over Ray
        (DESIGN.md: cross-host traffic crosses Ray as it would cross a real network)."""
        for host in self.hosts:
            self._call(host, "netback", "set_peers", [h for h in self.hosts if h != host])

    def stop(self) -> None:
        """Stop what this object started (every host it booted, even if one fails to stop,
        the registry, the embedded Ray cluster); leave a joined cluster as it is. A host
        that died is cleaned up all the same: what is left of its processes on this machine
        is killed, its files removed."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        try:
            dead = self.dead_hosts() if self._booted else {}
        except HostUnreachable:  # no registry (a start that failed early)
            dead = {}
        for name in [h for h in self._booted if h not in dead]:  # first the uplinks, so no frames are in flight to a host
            try:                   # being stopped
                self._call(name, "netback", "set_peers", [], timeout=10)
            except HostUnreachable:
                pass
        failures: list[BaseException] = []
        for name in self._booted:
            self._progress(f"stopping host {name}")
            try:
                if name not in dead:  # a dead host was fenced: its actors and files are gone
                    stop_host(name, run_id=self.run_id, run_dir=self.run_dir)
            except Exception as e:  # the others are stopped all the same
                failures.append(e)
            raylet = Process.of(self._raylets.get(name, 0))
            if name in dead or raylet is None or not raylet.alive():  # a lost node's orphans
                kill_all(node_processes(self._raylets.get(name, 0)))
        self._booted.clear()
        try:
            if self._booted_registry:
                stop_registry()
                self._booted_registry = False
        finally:
            if self._embedded is not None:
                self._embedded.shutdown()
                self._embedded = None
            else:
                disconnect()
            if self._owns_run_dir():
                shutil.rmtree(self.run_dir, ignore_errors=True)
        if failures:
            raise failures[0]

    def _owns_run_dir(self) -> bool:
        """The run's own socket directory (not the daemon's ``$XENRAY_HOME/run``)."""
        return pathlib.Path(self.run_dir).name == self.run_id

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def hosts(self) -> list[str]:
        return list(self.specs)

    def raylet_pid(self, host: str) -> int:
        """The pid of the raylet of ``host``'s Ray node (0 if it was never learnt): every
        process of the host is one of its workers (:mod:`cluster.fault.processes`)."""
        if host not in self._raylets:
            self.learn_raylet(host, self._call(host, "hypervisor", "process")["raylet_pid"])
        return self._raylets.get(host, 0)

    def learn_raylet(self, host: str, pid: int) -> None:
        if pid:
            self._raylets[host] = pid

    def dead_hosts(self) -> dict[str, dict[str, Any]]:
        """Hosts declared dead and fenced (by whichever client's host watch saw it): host ->
        why, when, what the fence killed, and the domains lost with it."""
        return self._call(CLUSTER, "registry", "dead_hosts")

    def _answers(self, host: str, component: str) -> bool:
        try:
            self._call(host, component, "process")
            return True
        except HostUnreachable:
            return False

    def _call(self, host: str, component: str, kind: str, *args: Any,
              timeout: float = CALL_TIMEOUT_S) -> Any:
        """One call to a host's actor; a host that cannot answer is :class:`HostUnreachable`,
        naming the actor that is gone (the one called, or one it called in turn); what the
        actor raised arrives as what it was (a XenError stays one)."""
        dest = actor_name(host, component)
        try:
            return self._transport.call(dest, kind, *args, timeout=timeout)
        except PeerGone as e:
            gone = str(e.args[0]) if e.args else dest
            gone_host, _, gone_component = gone.partition("/")
            raise HostUnreachable(gone_host or host, gone_component or component,
                                  "is not running") from None
        except TimeoutError:
            raise HostUnreachable(host, component, f"did not answer within {timeout:g} s") \
                from None

    def _each_host(self, fn: Callable[[str], Any], errors: dict[str, str] | None) -> list[Any]:
        """``fn(host)`` for every host at once, so a hung host costs one timeout, not one
        each; a host that does not answer goes into ``errors`` (when given; else it
        raises). Answers in host order."""
        dead = self.dead_hosts() if errors is not None else {}
        for host, report in dead.items():
            errors[host] = dead_text(report)
        live = [host for host in self.hosts if host not in dead]
        with concurrent.futures.ThreadPoolExecutor(max(1, len(live))) as pool:
            futures = [(host, pool.submit(fn, host)) for host in live]
        out = []
        for host, future in futures:
            try:
                out.append(future.result())
            except HostUnreachable as e:
                if errors is None:
                    raise
                errors[host] = str(e)
        return out

    def _check_host(self, host: str) -> None:
        if host not in self.specs:
            raise ValueError(f"no host {host!r}; hosts are {', '.join(self.hosts)}")

    # -- domains -----------------------------------------------------------------------

    def create(self, config: str | os.PathLike | DomainConfig, *, host: str | None = None,
               name: str | None = None) -> dict[str, Any]:
        """Create a domain from an xl.cfg file (path), its text, or a parsed config, on
        ``host`` (None or ``"auto"``: the host with the most free memory). The name is
        reserved in the cluster before anything is built; a create that fails leaves
        nothing behind; it returns once the guest's init runs."""
        cfg = _as_config(config)
        if host in (None, AUTO):
            [host] = self.place(cfg.memory)
        self._check_host(host)
        return self._call(host, "xl", "create", cfg.to_dict(), name, timeout=CREATE_TIMEOUT_S)

    def place(self, memory_mib: int, count: int = 1,
              hosts: Sequence[str] | None = None) -> list[str]:
        """Where ``count`` domains of ``memory_mib`` each go: one at a time, to the host
        with the most free memory left (xl's placement picks by free memory too). Hosts
        that do not answer get none; ENOMEM if no host answers."""
        hosts = list(hosts or self.hosts)
        for host in hosts:
            self._check_host(host)
        errors: dict[str, str] = {}
        free = dict(self._each_host(lambda h: (h, self._call(h, "hypervisor", "statistics")
                                               ["free_pages"] // PAGES_PER_MIB), errors))
        free = {h: free[h] for h in hosts if h in free}
        if not free:
            raise XenError(Errno.ENOMEM, "no host answers: " + "; ".join(errors.values()))
        return place_by_free_memory(free, memory_mib, count)

    def create_many(self, config: str | os.PathLike | DomainConfig, count: int, *,
                    name: str | None = None, hosts: Sequence[str] | None = None,
                    parallel: int | None = None,
                    progress: Callable[[int, int, dict[str, Any]], None] | None = None
                    ) -> list[dict[str, Any]]:
        """Create ``count`` domains ``<name>-1`` ... ``<name>-<count>`` from one config (name:
        the config's), placed by free memory over ``hosts`` (default all) and created
        ``parallel`` at a time (default two per host). A failure is reported in its result
        and the rest go on. One result per domain, in name order: ``name``, ``host``,
        ``k`` (its place in its host's order), ``ok``, ``error``, ``domid``, ``latency_s``,
        ``steps_ms``. ``progress(done, count, result)`` follows each."""
        cfg = _as_config(config)
        if count < 1:
            raise ValueError(f"--count must be at least 1, not {count}")
        base = name or cfg.name
        placed = self.place(cfg.memory, count, hosts)
        per_host: dict[str, int] = {}
        jobs = []
        for i, host in enumerate(placed):
            per_host[host] = per_host.get(host, 0) + 1
            jobs.append({"name": f"{base}-{i + 1}", "host": host, "k": per_host[host]})

        def one(job: dict[str, Any]) -> dict[str, Any]:
            t = time.perf_counter()
            try:
                info = self.create(cfg, host=job["host"], name=job["name"])
                return {**job, "ok": True, "error": None, "domid": info["domid"],
                        "latency_s": time.perf_counter() - t, "steps_ms": info["steps_ms"]}
            except Exception as e:
                return {**job, "ok": False, "error": str(e), "domid": None,
                        "latency_s": time.perf_counter() - t, "steps_ms": {}}

        workers = parallel or min(count, 2 * len(set(placed)))
        results = []
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            for future in concurrent.futures.as_completed([pool.submit(one, j) for j in jobs]):
                results.append(future.result())
                if progress is not None:
                    progress(len(results), count, results[-1])
        order = {job["name"]: i for i, job in enumerate(jobs)}
        return sorted(results, key=lambda r: order[r["name"]])

    def holder(self, name: str) -> tuple[str, int | None] | None:
        """Who holds the name in the cluster's registry: ``(host, domid)``, domid None while
        its create is still building it; None if the name is free."""
        held = self._call(CLUSTER, "registry", "lookup", name)
        return None if held is None else (held["host"], held["domid"])

    def find(self, name: str) -> tuple[str, int] | None:
        """``(host, domid)`` of the domain named ``name``, or None (also while its first
        create is still building it)."""
        held = self.holder(name)
        return None if held is None or held[1] is None else held

    def _where(self, name: str) -> str:
        """The host holding ``name`` (a domain being built there too)."""
        held = self.holder(name)
        if held is None:
            raise DomainNotFound(name)
        return held[0]

    def list(self, errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """xl list's rows for every host (Name, ID, Mem, VCPUs, State, Time, host). Hosts
        that do not answer go into ``errors`` if given; otherwise they raise."""
        rows: list[dict[str, Any]] = []
        for host_rows in self._each_host(lambda h: self._call(h, "xl", "list"), errors):
            rows.extend(host_rows)
        return rows

    def info(self, errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Per host: memory, free memory, pCPUs, domains, its xenstored socket, and how many
        hypercalls it served and over how many same-host pipes."""
        def one(host: str) -> dict[str, Any]:
            stats = self._call(host, "hypervisor", "statistics")
            return {"host": host, "total_memory_mib": stats["host_pages"] // PAGES_PER_MIB,
                    "free_memory_mib": stats["free_pages"] // PAGES_PER_MIB,
                    "nr_cpus": self.specs[host].pcpus, "domains": stats["domains"],
                    "xenstored_socket": xenstored_socket(self.run_dir, host),
                    "hypercalls": stats["hypercalls"], "pipes": stats["pipes"]}

        return self._each_host(one, errors)

    def xenstat(self, errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """What ``xentop`` reads, one call per host (all at once): per host its memory,
        pCPUs and sample time, and per domain the hypervisor's counters (flags, cpu_time,
        pages) and its vifs' and vbds' counters (``actors.toolstack.xenstat``)."""
        return self._each_host(lambda h: self._call(h, "xl", "xenstat"), errors)

    def sched(self, kind: str, name: str | None = None, *, weight: int | None = None,
              cap: int | None = None, tslice_ms: int | None = None,
              ratelimit_us: int | None = None) -> list[dict[str, Any]]:
        """``xl sched-credit`` / ``sched-credit2`` (``kind``): set what is given (of domain
        ``name``; the hosts' timeslice and ratelimit), then per host its parameters and its
        domains' weights and caps. A host that runs another scheduler is a ValueError, as
        xl refuses to talk credit to a credit2 pool."""
        hosts = [self._where(name)] if name is not None else self.hosts
        running = {h: self.specs[h].sched for h in hosts}
        if any(s != kind for s in running.values()):
            raise ValueError(f"the hosts run {', '.join(sorted(set(running.values())))}, not "
                             f"{kind} (choose it with `xenray up --sched {kind}`)")
        return [self._call(h, "xl", "sched", name, weight, cap, tslice_ms, ratelimit_us)
                for h in hosts]

    def vcpu_list(self, name: str | None = None,
                  errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """``xl vcpu-list``: a row per vCPU of ``name``, or of every domain."""
        if name is not None:
            return self._call(self._where(name), "xl", "vcpu_list", name)
        rows: list[dict[str, Any]] = []
        for host_rows in self._each_host(lambda h: self._call(h, "xl", "vcpu_list"), errors):
            rows.extend(host_rows)
        return rows

    def vcpu_set(self, name: str, count: int, *, ignore_host: bool = False) -> None:
        """``xl vcpu-set [-i]``: ``count`` vCPUs of ``name`` online (the guest follows);
        more than its host's pCPUs only with ``ignore_host``."""
        self._call(self._where(name), "xl", "vcpu_set", name, count, not ignore_host)

    def vcpu_pin(self, name: str, vcpu: int | None, cpus: str) -> None:
        """``xl vcpu-pin``: vCPU ``vcpu`` (None: all) of ``name`` may run only on ``cpus``."""
        self._call(self._where(name), "xl", "vcpu_pin", name, vcpu, cpus)

    def destroy(self, name: str) -> None:
        self._call(self._where(name), "xl", "destroy", name, timeout=CREATE_TIMEOUT_S)

    def pause(self, name: str) -> None:
        self._call(self._where(name), "xl", "pause", name)

    def unpause(self, name: str) -> None:
        self._call(self._where(name), "xl", "unpause", name)

    def mem_set(self, name: str, size: str | int) -> int:
        """``xl mem-set``: the domain's memory target, ``size`` as xl reads it (``"128m"``,
        ``"1g"``; a plain number is MiB). Refused above its ``maxmem`` (static-max); its
        max_mem follows the target. The guest's balloon driver then gives pages back or takes
        them until its memory (``list``'s Mem, the host's free memory in ``info``) is the
        target; its progress is in ``domain_statistics(name)["balloon"]``. The target in
        KiB."""
        from cluster.xlcfg.memsize import parse_mem_size_kb

        kib = parse_mem_size_kb(size)
        return self._call(self._where(name), "xl", "mem_set", name, kib)

    def mem_max(self, name: str, size: str | int) -> int:
        """``xl mem-max``: the domain's maximum memory (static-max, and max_mem), ``size``
        as for :meth:`mem_set`; refused below its current target. In KiB."""
        from cluster.xlcfg.memsize import parse_mem_size_kb

        kib = parse_mem_size_kb(size)
        return self._call(self._where(name), "xl", "mem_max", name, kib)

    def shutdown(self, name: str, *, wait: bool = False, timeout: float = 60.0) -> None:
        self._control(name, "poweroff", wait, timeout)

    def reboot(self, name: str, *, wait: bool = False, timeout: float = 60.0) -> None:
        self._control(name, "reboot", wait, timeout)

    def _control(self, name: str, word: str, wait: bool, timeout: float) -> None:
        found = self.find(name)
        if found is None:
            raise DomainNotFound(name)
        self._call(found[0], "xl", "shutdown", name, word)
        if wait:  # xl -w: until that domain (this domid) is gone or replaced
            self.wait_for(lambda: self.find(name) != found, timeout, f"{name} to {word}")

    # -- save, restore, migrate (xl save / restore / migrate) ------------------------------

    def migrate(self, name: str, host: str, *, live: bool = True, debug: bool = False,
                max_iters: int = 5, dirty_threshold: int = 50,
                policy: str = "libxc") -> dict[str, Any]:
        """``xl migrate``: move a running domain to ``host`` (pre-copy over log-dirty unless
        ``live`` is False; ``debug`` has the receiver verify every page). Returns Clark's
        metrics: each round's pages, sent and dirtied, total time, downtime, bytes sent.
        On any failure before the destination owns the domain, it runs on where it was."""
        self._check_host(host)
        options = {"live": live, "debug": debug, "max_iters": max_iters,
                   "dirty_threshold": dirty_threshold, "policy": policy}
        return self._call(self._where(name), "xl", "migrate", name, host, options,
                          timeout=MIGRATE_TIMEOUT_S)

    def save(self, name: str, path: str | os.PathLike, *,
             checkpoint: bool = False) -> dict[str, Any]:
        """``xl save [-c]``: write the domain to an xl save file, then destroy it (or, with
        ``checkpoint``, let it run on). The file is written by the domain's host."""
        return self._call(self._where(name), "xl", "save", name, os.path.abspath(path),
                          checkpoint, timeout=MIGRATE_TIMEOUT_S)

    def restore(self, path: str | os.PathLike, *, host: str | None = None,
                paused: bool = False) -> dict[str, Any]:
        """``xl restore [-p]``: the domain of a save file, on ``host`` (by default the host
        with the most free memory), running unless ``paused``."""
        path = os.path.abspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no save file {path}")
        if host in (None, AUTO):
            [host] = self.place(0)
        self._check_host(host)
        return self._call(host, "xl", "restore", path, paused, timeout=MIGRATE_TIMEOUT_S)

    def domain_statistics(self, name: str) -> dict[str, Any]:
        """What the domain's kernel counts (its devices' requests, its clock), from the
        process that runs its vCPUs (wherever the host's pool placed it)."""
        host = self._where(name)
        endpoint = self._call(host, "xl", "endpoint", name)
        return self._call(host, endpoint.partition("/")[2], "statistics")

    def console(self, name: str, lines: int = 20, *, host: str | None = None) -> list[str]:
        """The last ``lines`` lines the domain wrote on its console; on ``host`` if given
        (the log of a domain that ran there before it migrated), else where it runs."""
        return self._call(host or self._where(name), "xenconsoled", "tail", name, lines)

    def result(self, name: str) -> dict[str, Any] | None:
        """The last result an init program published (a ``RESULT {json}`` console line)."""
        for line in reversed(self.console(name, 200)):
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        return None

    def follow_console(self, name: str, lines: int = 20, poll: float = 0.25,
                       stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """The last ``lines`` console lines, then each new one as it arrives (``xl console``),
        until the domain goes away or ``stop()`` says so (checked every ``poll`` s)."""
        path = pathlib.Path(self._call(self._where(name), "xenconsoled", "log_path", name))
        self.wait_for(path.exists, 30, f"{name}'s console log")
        with path.open(errors="replace") as f:
            yield from (line.rstrip("\n") for line in f.readlines()[-lines:] if lines > 0)
            while not stop():
                line = f.readline()
                if line:
                    yield line.rstrip("\n")
                elif self.find(name) is None:
                    return
                else:
                    time.sleep(poll)

    # -- the network -------------------------------------------------------------------

    def set_link(self, a: str, b: str, *, bandwidth: str | float | None = None,
                 latency: str | float | None = None, loss: str | float | None = None,
                 both_ways: bool = True) -> dict[str, Any]:
        """Shape the link between hosts ``a`` and ``b`` (bits/s, s, fraction; or "100M",
        "5ms", "1%"); None leaves that property unlimited. Returns the spec applied."""
        from actors.hostnet.link import parse_link_spec

        spec = dataclasses.asdict(parse_link_spec(bandwidth, latency, loss))
        for src, dst in ((a, b), (b, a)) if both_ways else ((a, b),):
            for host in (src, dst):
                self._check_host(host)
            self._call(src, "netback", "set_link", dst, spec)
        return spec

    def links(self, errors: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every host's uplinks: the spec and what crossed (frames sent, lost)."""
        rows = []
        for host, links in self._each_host(
                lambda h: (h, self._call(h, "netback", "links")), errors):
            for dst, row in links.items():
                rows.append({"from": host, "to": dst, **row})
        return rows

    def capture(self, host: str, bridge: str, out: str | os.PathLike, *,
                seconds: float | None = None, poll: float = 0.2,
                progress: Callable[[int], None] | None = None) -> int:
        """Write every frame ``bridge`` on ``host`` sees to a pcap file (Ethernet link type)
        for ``seconds``, or until interrupted; returns the number of frames written."""
        import dpkt

        self._check_host(host)
        cid = self._call(host, "netback", "capture_start", bridge)
        written = 0
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            with open(out, "wb") as f:
                pcap = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
                try:
                    while deadline is None or time.monotonic() < deadline:
                        written += self._drain_capture(host, cid, pcap, f)
                        if progress:
                            progress(written)
                        time.sleep(poll)
                except KeyboardInterrupt:
                    pass
                written += self._drain_capture(host, cid, pcap, f)
        finally:
            self._call(host, "netback", "capture_stop", cid)
        return written

    def _drain_capture(self, host: str, cid: int, pcap: Any, f: Any) -> int:
        frames = self._call(host, "netback", "capture_read", cid)
        for ts, frame in frames:
            pcap.writepkt(frame, ts=ts)
        f.flush()
        return len(frames)

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def place_by_free_memory(free: dict[str, int], memory_mib: int, count: int) -> list[str]:
    """``count`` domains of ``memory_mib`` each, one at a time, to the host with the most
    free memory left (``free``: MiB per host; a tie goes to the host named first)."""
    free, order = dict(free), {h: i for i, h in enumerate(free)}
    placed = []
    for _ in range(count):
        host = max(free, key=lambda h: (free[h], -order[h]))
        free[host] -= memory_mib
        placed.append(host)
    return placed


def dead_text(report: dict[str, Any]) -> str:
    """One line on a dead host, for ``list`` and ``info``."""
    lost = ", ".join(report.get("lost", [])) or "none"
    fenced = ("its processes could not be reached: they are lost" if report["unreachable"]
              else f"fenced: {len(report['killed'])} processes killed")
    return f"host {report['host']} is dead ({report['why']}); {fenced}; domains lost: {lost}"


def _token_in_environment() -> str | None:
    """The Ray token this process would present (``RAY_AUTH_TOKEN`` wins over the path)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    try:
        return pathlib.Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    except (KeyError, OSError):
        return None


def _as_config(config: str | os.PathLike | DomainConfig) -> DomainConfig:
    if isinstance(config, DomainConfig):
        return config
    if isinstance(config, os.PathLike) or (isinstance(config, str) and "\n" not in config
                                           and "=" not in config):
        return load_config(config)[0]
    return parse_config(str(config))[0]
