"""The toolstack agent's CPU commands: ``xl sched-credit``/``sched-credit2`` and ``xl vcpu-list``,
``vcpu-pin`` and ``vcpu-set`` (``tools/xl/xl_sched.c``, ``xl_vcpu.c`` over ``libxl_sched.c``
and ``libxl_domain.c``), as the part of its shell that runs them.

Why a module of its own: these are one concept, what libxl does with the hypervisor's
scheduler (reference 16), and the rest of the shell is the create pipeline and its effects.
:class:`CpuShell` is a base of :class:`~actors.toolstack.actor.ToolstackShell`, as
:class:`~actors.toolstack.migration.MigrationShell` is: it uses its ``hv`` and ``xs`` clients,
``host``, ``lock``, ``core`` (the records) and ``_domid``. libxl's checks and words come
before any hypercall, and a set reads what it does not change first, as libxl's
``*_params_set`` do. Dom0 has no rows: its vCPUs are not scheduled here
(:mod:`actors.hypervisor.vcpus`).
"""

from __future__ import annotations

from typing import Any

from protocols.cpumap import format_cpus, from_bitmap, parse_cpulist, to_bitmap
from protocols.errno import Errno, XenError
from protocols.hypercall import Domctl, Hypercall, SchedCmd, Sysctl
from protocols.xenstore.paths import domain_path


class CpuShell:
    """The CPU commands of :class:`~actors.toolstack.actor.ToolstackShell` (module
    docstring)."""

    def on_sched(self, name: str | None = None, weight: int | None = None,
                 cap: int | None = None, tslice_ms: int | None = None,
                 ratelimit_us: int | None = None) -> dict[str, Any]:
        """``xl sched-credit`` / ``sched-credit2``: set what is given (a domain's weight and
        cap; the host's timeslice and ratelimit), then answer the host's parameters and a
        row per domain (Name, ID, Weight, Cap). As libxl's ``*_params_set``, each set reads
        the current values and changes only those given, and libxl's range checks come
        first (Xen takes weight 0 and cap 0xFFFF as "unchanged")."""
        sched_id = self.hv(Hypercall.sysctl, Sysctl.sched_id)["sched_id"]

        def pool_op(cmd: SchedCmd, **values: int) -> dict[str, Any]:
            return self.hv(Hypercall.sysctl, Sysctl.scheduler_op, cpupool_id=0,
                           sched_id=sched_id, cmd=cmd, **{"tslice_ms": 0, "ratelimit_us": 0,
                                                          **values})

        if tslice_ms is not None or ratelimit_us is not None:
            current = pool_op(SchedCmd.getinfo)
            given = {"tslice_ms": tslice_ms, "ratelimit_us": ratelimit_us}
            pool_op(SchedCmd.putinfo, **{k: current[k] if given[k] is None else given[k]
                                         for k in ("tslice_ms", "ratelimit_us")
                                         if k in current})
        if name is not None and (weight is not None or cap is not None):
            domid = self._domid(name)
            if weight is not None and not 1 <= weight <= 65535:
                raise XenError(Errno.EINVAL, "Cpu weight out of range, valid values are "
                                             "within range from 1 to 65535")
            max_cap = 100 * (self.hv(Hypercall.domctl, Domctl.getdomaininfo,
                                     domain=domid)["max_vcpu_id"] + 1)
            if cap is not None and not 0 <= cap <= max_cap:
                raise XenError(Errno.EINVAL, f"Cpu cap out of range, valid range is from 0 to "
                                             f"{max_cap} for specified number of vcpus")
            self.hv(Hypercall.domctl, Domctl.scheduler_op, domain=domid, sched_id=sched_id,
                    cmd=SchedCmd.putinfo, weight=0 if weight is None else weight,
                    cap=0xFFFF if cap is None else cap)
        pool = pool_op(SchedCmd.getinfo)
        rows = []
        for row in self._named_domains(name):
            if row["domid"] == 0:
                continue  # Dom0's processes are not scheduled here (actors.hypervisor.vcpus)
            params = self.hv(Hypercall.domctl, Domctl.scheduler_op, domain=row["domid"],
                             sched_id=sched_id, cmd=SchedCmd.getinfo, weight=0, cap=0)
            rows.append({**row, "weight": params["weight"], "cap": params["cap"]})
        return {"host": self.host, "pool": pool, "rows": rows}

    def on_vcpu_list(self, name: str | None = None) -> list[dict[str, Any]]:
        """``xl vcpu-list``: a row per vCPU (Name, ID, VCPU, CPU, State, Time(s), Affinity)."""
        nr_cpus = self.hv(Hypercall.sysctl, Sysctl.physinfo)["nr_cpus"]
        rows = []
        for row in self._named_domains(name):
            if row["domid"] == 0:
                continue
            info = self.hv(Hypercall.domctl, Domctl.getdomaininfo, domain=row["domid"])
            for vcpu in range(info["max_vcpu_id"] + 1):
                v = self.hv(Hypercall.domctl, Domctl.getvcpuinfo, domain=row["domid"], vcpu=vcpu)
                aff = self.hv(Hypercall.domctl, Domctl.getvcpuaffinity, domain=row["domid"],
                              vcpu=vcpu, flags=1)
                rows.append({**row, "vcpu": vcpu, "cpu": v["cpu"], "online": v["online"],
                             "running": v["running"], "blocked": v["blocked"],
                             "time": v["cpu_time"] / 1e9, "host": self.host,
                             "hard": format_cpus(from_bitmap(aff["cpumap_hard"], nr_cpus),
                                                 nr_cpus),
                             "soft": format_cpus(from_bitmap(aff["cpumap_soft"], nr_cpus),
                                                 nr_cpus)})
        return rows

    def on_vcpu_pin(self, name: str, vcpu: int | None, cpus: str) -> None:
        """``xl vcpu-pin DOM VCPU|all CPUS``: hard affinity (xl's words for a bad list)."""
        domid = self._domid(name)
        nr_cpus = self.hv(Hypercall.sysctl, Sysctl.physinfo)["nr_cpus"]
        try:
            chosen = parse_cpulist(cpus, nr_cpus)
        except ValueError as e:
            raise XenError(Errno.EINVAL, str(e)) from None
        info = self.hv(Hypercall.domctl, Domctl.getdomaininfo, domain=domid)
        vcpus = range(info["max_vcpu_id"] + 1) if vcpu is None else [vcpu]
        for v in vcpus:
            self.hv(Hypercall.domctl, Domctl.setvcpuaffinity, domain=domid, vcpu=v, flags=1,
                    cpumap_hard=to_bitmap(chosen, nr_cpus),
                    cpumap_soft=to_bitmap(None, nr_cpus))

    def on_vcpu_set(self, name: str, count: int, check_host: bool = True) -> None:
        """``xl vcpu-set``: vCPUs 0..count-1 online, the rest offline, as the PV guest reads
        ``cpu/N/availability`` (``libxl_set_vcpuonline``); more than maxvcpus or fewer than
        one is -EINVAL, with libxl's words. ``check_host`` (xl's, unless ``-i``): more vCPUs
        than online now and than the host has pCPUs is -EINVAL too."""
        domid = self._domid(name)
        info = self.hv(Hypercall.domctl, Domctl.getdomaininfo, domain=domid)
        maxvcpus = info["max_vcpu_id"] + 1
        if count < 1:
            raise XenError(Errno.EINVAL, f"Requested {count} VCPUs!")
        if count > maxvcpus:
            raise XenError(Errno.EINVAL, f"Requested {count} VCPUs, however maxcpus is "
                                         f"{maxvcpus}!")
        if check_host and count > info["nr_online_vcpus"] and \
                count > (host_cpus := self.hv(Hypercall.sysctl, Sysctl.physinfo)["nr_cpus"]):
            raise XenError(Errno.EINVAL, f"You are overcommmitting! You have {host_cpus} "
                                         f"physical CPUs and want {count} vCPUs! Aborting, "
                                         "use --ignore-host to continue")
        dom = domain_path(domid)

        def body(t: int) -> None:
            for n in range(maxvcpus):
                self.xs.write(f"{dom}/cpu/{n}/availability",
                              "online" if n < count else "offline", t)
        self.xs.transact(body)

    def _named_domains(self, name: str | None) -> list[dict[str, Any]]:
        """This host's domains as (name, domid), or just ``name`` (ENOENT if not here)."""
        if name is not None:
            return [{"name": name, "domid": self._domid(name)}]
        with self.lock:
            recs = sorted((r.domid, r.name) for r in self.core.records.values()
                          if r.domid is not None)
        return [{"name": n, "domid": d} for d, n in recs]
