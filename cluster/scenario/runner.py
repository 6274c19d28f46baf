"""Running a scenario on a cluster: set it up, carry out its schedule while sampling every
domain's progress, tear it down, judge it, and write what happened.

The run, step by step: shape the links; make each domain's fresh image; read each host's
free memory (for ``memory``); create the initial domains (:data:`CREATE_PARALLEL` at a time;
a group of identical domains placed ``auto`` through ``Cluster.create_many``); the workload
starts, and from then on the schedule's steps happen at their seconds (an op runs on a
thread of its own, as a client would, so a long migration does not hold the faults back;
injects and heals are the nemesis's, one at a time) while the consoles are sampled
:data:`SAMPLE_HZ` times a second; at the end anything still injected is healed, the run's
domains listed (``census``), every domain of the scenario destroyed, each host's free memory
read again once it is back (for ``memory``; at most :data:`MEMORY_SETTLE_S` later), the
cluster audited (for ``leaks``), and each checker judges the history. ``DIR`` gets
``history.jsonl`` (as it happens), ``results.json``, ``timeline.png`` and
``consoles/<name>.log``.

The cluster is the caller's: an embedded one ``xenray run`` started for the scenario, or a
running one; the run changes only what its scenario names (links it shaped are unshaped).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import pathlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from actors.blkback.vbd import create_image
from cluster.audit import audit
from cluster.fault import nemesis
from cluster.fault.net import guest_clock_offset
from cluster.scenario import history as h
from cluster.scenario import schedule
from cluster.scenario.checkers import CHECKERS, Verdict, recovery_times
from cluster.scenario.history import History
from cluster.scenario.plot import write_timeline
from cluster.scenario.progress import Consoles, Progress
from cluster.scenario.spec import Domain, Op, Scenario, render
from cluster.xlcfg import DomainConfig

if TYPE_CHECKING:
    from cluster.api import Cluster

SAMPLE_HZ = 4
CREATE_PARALLEL = 8  # creates (and destroys) in flight at once: enough to keep 4 hosts busy
MEMORY_SETTLE_S = 10.0  # a destroyed domain's pages return once its last grant is unmapped
OP_JOIN_S = 300.0  # ops still running at the end (a long migration) are waited for this long


class SetupFailed(ValueError):
    """The scenario cannot run on this cluster (a host it names is missing, a domain of it
    could not be created): there is no experiment to run."""


class _Sampler(threading.Thread):
    """Reads the followed consoles every 1/SAMPLE_HZ s into ``progress`` events."""

    def __init__(self, hist: History, consoles: Consoles) -> None:
        super().__init__(name="scenario-sampler", daemon=True)
        self.hist, self.consoles = hist, consoles
        self.meters: dict[str, Progress] = {}
        self.lines: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()

    def follow(self, name: str, init: str) -> None:
        with self._lock:
            self.consoles.follow(name)
            self.meters.setdefault(name, Progress(init))
            self.lines.setdefault(name, [])

    def sample(self) -> None:
        with self._lock:
            for name, meter in self.meters.items():
                for line in self.consoles.read(name):
                    self.lines[name].append(line)
                    result = meter.feed(line)
                    if result is not None:
                        self.hist.record("result", domain=name, result=result,
                                         final=bool(meter.meter and meter.meter.final))
            units = {n: m.units for n, m in self.meters.items() if m.measured}
        if units:
            self.hist.record("progress", units=units)

    def run(self) -> None:
        while not self._done.wait(1 / SAMPLE_HZ):
            self.sample()

    def finish(self) -> None:
        self._done.set()
        self.join()
        self.sample()


class Runner:
    def __init__(self, scenario: Scenario, cluster: Cluster, out: str | pathlib.Path, *,
                 say: Callable[[str], None] = lambda text: None,
                 tick: Callable[[float], None] = lambda seconds: None) -> None:
        """``say``: a line for each thing that happens; ``tick``: seconds of workload done,
        several times a second."""
        self.scenario, self.cluster = scenario, cluster
        self.out = pathlib.Path(out)
        self.say, self.tick = say, tick
        self.steps = schedule.build(scenario)
        self.images: dict[str, str] = {}
        self._injected: dict[tuple[int, int], nemesis.Injected] = {}
        self._ops: list[tuple[int, threading.Thread]] = []
        self._audits = any(c.kind == "leaks" for c in scenario.checks)
        self._weighs = any(c.kind == "memory" for c in scenario.checks)
        self._leaks_before: set = set()

    def run(self) -> dict[str, Any]:
        """The run, start to verdicts; the results (also in ``results.json``)."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "images").mkdir(exist_ok=True)
        s = self.scenario
        self.hist = History(self.out / "history.jsonl")
        self.sampler = _Sampler(self.hist, Consoles(self.cluster.log_dir, self.cluster.hosts))
        self.hist.record("run", scenario=s.name, source=s.source, seed=s.seed,
                         duration=s.duration, hosts=list(s.hosts.names),
                         steps=[st.as_dict() for st in self.steps])
        try:
            self._setup()
            self._workload()
        finally:
            observations = self._teardown()
            self.hist.close()
        return self._judge(observations)

    # -- the run's parts ---------------------------------------------------------------------

    def _setup(self) -> None:
        s = self.scenario
        missing = [n for n in s.hosts.names if n not in self.cluster.hosts]
        if missing:
            raise SetupFailed(f"the cluster has no host {missing[0]!r} (it has "
                              f"{', '.join(self.cluster.hosts)})")
        for link in s.links:
            spec = self.cluster.set_link(link.a, link.b, bandwidth=link.bandwidth,
                                         latency=link.latency, loss=link.loss,
                                         both_ways=not link.one_way)
            self.hist.record("link", a=link.a, b=link.b, spec=spec)
        for d in s.domains:
            if d.image_bytes is not None:
                path = self.out / "images" / f"{d.name}.img"
                create_image(path, d.image_bytes, overwrite=True)
                self.images[d.name] = str(path)
        if self._audits:  # what was there before is not this run's doing
            self._leaks_before = set(audit(self.cluster, errors={}))  # fails: no experiment
        if self._weighs:
            self.hist.record("memory", phase="before", **self._free_pages())
        initial = s.initial_domains
        self.say(f"creating {len(initial)} domains")
        batches, singles = self._batches(initial)
        with concurrent.futures.ThreadPoolExecutor(CREATE_PARALLEL) as pool:
            many = [pool.submit(self._create_many, batch) for batch in batches]
            one = [pool.submit(self._create, d.name) for d in singles]
        created = [e for job in many for e in job.result()] + [job.result() for job in one]
        for group in dict.fromkeys(d.group for d in initial if d.name != d.group):
            where = collections.Counter(e["host"] for e in created
                                        if e["ok"] and e["group"] == group)
            self.say(f"{group}-*: {sum(where.values())} domains, on "
                     f"{', '.join(f'{host} {n}' for host, n in sorted(where.items()))}")
        failed = [e for e in created if not e["ok"]]
        if failed:
            raise SetupFailed(f"{len(failed)} of {len(created)} domains could not be created; "
                              f"{failed[0]['domain']}: {failed[0]['error']}")

    @staticmethod
    def _batches(domains: list[Domain]) -> tuple[list[list[Domain]], list[Domain]]:
        """The groups ``Cluster.create_many`` can create (several identical domains, no image
        of their own, placed ``auto``), and the domains created one by one."""
        groups: dict[str, list[Domain]] = {}
        for d in domains:
            groups.setdefault(d.group, []).append(d)
        batches = [members for members in groups.values() if len(members) > 1
                   and all(m.host is None and m.image_bytes is None for m in members)
                   and len({render(m.template, m.number, m.duration) for m in members}) == 1]
        batched = {m.name for members in batches for m in members}
        return batches, [d for d in domains if d.name not in batched]

    def _facts(self, d: Domain, cfg: DomainConfig, op: int | None) -> dict[str, Any]:
        """What the history keeps of a domain's create (the checkers' view of it)."""
        self.sampler.follow(d.name, d.init)  # before it boots: its console from the start
        return {"domain": d.name, "group": d.group, "init": d.init, "argv": d.argv, "op": op,
                "disks": [disk.target for disk in cfg.disk if disk.target],
                "vifs": len(cfg.vif), "ips": [v.ip for v in cfg.vif if v.ip]}

    def _create(self, name: str, op: int | None = None) -> dict[str, Any]:
        d = self.scenario.domain(name)
        cfg = d.config(self.images.get(name))
        facts = self._facts(d, cfg, op)
        started = time.monotonic()
        try:
            info = self.cluster.create(cfg, host=d.host)
        except Exception as e:  # recorded; the caller decides what it means
            return self.hist.record("create", ok=False, error=str(e), host=d.host, **facts)
        if d.group == d.name:
            self.say(f"{name}: domid {info['domid']} on {info['host']}")
        return self.hist.record("create", ok=True, domid=info["domid"], host=info["host"],
                                took_s=round(time.monotonic() - started, 3), **facts)

    def _create_many(self, members: list[Domain]) -> list[dict[str, Any]]:
        """A group of identical domains, through ``Cluster.create_many``: each recorded as
        it is done."""
        cfg = members[0].config()
        facts = {d.name: self._facts(d, cfg, None) for d in members}
        records: list[dict[str, Any]] = []

        def done(_n: int, _count: int, r: dict[str, Any]) -> None:
            outcome = {"ok": True, "domid": r["domid"]} if r["ok"] else \
                {"ok": False, "error": r["error"]}
            records.append(self.hist.record("create", host=r["host"], **outcome,
                                            took_s=round(r["latency_s"], 3), **facts[r["name"]]))

        try:
            self.cluster.create_many(cfg, len(members), name=members[0].group,
                                     parallel=CREATE_PARALLEL, progress=done)
        except Exception as e:  # none was created (no host to place them on)
            return [self.hist.record("create", ok=False, error=str(e), host=None, **f)
                    for f in facts.values()]
        return records

    def _workload(self) -> None:
        self._t0 = t0 = self.hist.record("workload")["t"]
        self.sampler.start()
        for step in self.steps:
            self._wait_until(t0 + step.at)
            if step.action == "op":
                thread = threading.Thread(target=self._op, args=(step.index,), daemon=True)
                thread.start()
                self._ops.append((step.index, thread))
            elif step.action == "inject":
                self._inject(step)
            else:
                self._heal(step.index, step.occurrence)
        self._wait_until(t0 + self.scenario.duration)
        self.hist.record("end")
        deadline = time.monotonic() + OP_JOIN_S
        for index, thread in self._ops:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():  # Jepsen's :info: it may yet happen, or not
                op = self.scenario.ops[index]
                self.hist.record("op", phase="info", index=index, kind=op.kind,
                                 domain=op.domain, args=op.args,
                                 error=f"still running {OP_JOIN_S:g} s after the end")

    def _wait_until(self, t: float) -> None:
        """Until ``t`` on the history's clock (a scheduled step's time), ticking."""
        while (left := t - self.hist.now()) > 0:
            self.tick(self.hist.now() - self._t0)
            time.sleep(min(left, 1 / SAMPLE_HZ))
        self.tick(self.hist.now() - self._t0)

    def _op(self, index: int) -> None:
        op: Op = self.scenario.ops[index]
        fields = {"index": index, "kind": op.kind, "domain": op.domain, "args": op.args}
        self.hist.record("op", phase="invoke", **fields)
        self.say(f"op {op.kind} {op.domain}")
        try:
            result = self._do(op, index)
        except Exception as e:
            self.hist.record("op", phase="fail", error=str(e), **fields)
            self.say(f"op {op.kind} {op.domain} failed: {e}")
            return
        self.hist.record("op", phase="ok", result=result, **fields)

    def _do(self, op: Op, index: int) -> Any:
        xen, name, args = self.cluster, op.domain, dict(op.args)
        if op.kind == "create":
            created = self._create(name, op=index)
            if not created["ok"]:
                raise RuntimeError(created["error"])
            return {"domid": created["domid"]}
        if op.kind == "migrate":
            report = xen.migrate(name, args.pop("host"), **args)
            return {k: report.get(k) for k in ("total_s", "downtime_ms", "bytes_sent")}
        getattr(xen, op.kind)(name)  # destroy, pause, unpause, reboot, shutdown
        return None

    def _inject(self, step: schedule.Step) -> None:
        fault = self.scenario.faults[step.index]
        fields = {"index": step.index, "occurrence": step.occurrence, "kind": fault.kind,
                  "target": fault.target, "params": fault.params, "at": step.at,
                  "started": round(self.hist.now(), 4)}
        try:
            injected = nemesis.inject(self.cluster, fault.kind, fault.target, fault.params,
                                      step.rng())
        except Exception as e:
            self.hist.record("inject", error=str(e), **fields)
            self.say(f"{fault.kind} failed: {e}")
            return
        if not fault.instant:
            self._injected[(step.index, step.occurrence)] = injected
        self.hist.record("inject", **{**fields, **injected.as_dict()})
        self.say(f"{fault.kind} {', '.join(injected.targets)}")

    def _heal(self, index: int, occurrence: int) -> None:
        injected = self._injected.pop((index, occurrence), None)
        if injected is None:
            return  # its inject failed
        fields = {"index": index, "occurrence": occurrence, "kind": injected.kind,
                  "targets": injected.targets}
        try:
            nemesis.heal(injected)
        except Exception as e:
            self.hist.record("heal", error=str(e), **fields)
            self.say(f"heal of {injected.kind} failed: {e}")
            return
        self.hist.record("heal", **fields)
        what = "the power is cut" if injected.kind == "powercut" else "healed"  # its heal
        self.say(f"{injected.kind} {', '.join(injected.targets)}: {what}")

    def _teardown(self) -> dict[str, Any]:
        """Heal, stop sampling, destroy the scenario's domains, unshape its links; what the
        checkers need beyond the history."""
        for key in list(self._injected):
            self._heal(*key)
        if self.sampler.is_alive():
            self.sampler.finish()
        offsets = {}
        for d in self.scenario.domains:
            if d.init in ("ping", "udpstream"):  # the network checker's losses are on its clock
                try:
                    offsets[d.name] = guest_clock_offset(self.cluster, d.name, self.hist.now)
                except Exception as e:
                    self.hist.record("clock", domain=d.name, error=str(e))
        self._census()
        with concurrent.futures.ThreadPoolExecutor(CREATE_PARALLEL) as pool:
            list(pool.map(self._destroy, self.scenario.domains))
        if self._weighs:
            self._memory_after()
        for link in self.scenario.links:
            try:
                self.cluster.set_link(link.a, link.b, both_ways=not link.one_way)
            except Exception as e:
                self.hist.record("link", a=link.a, b=link.b, error=str(e))
        observations: dict[str, Any] = {}
        if self._audits:
            errors: dict[str, str] = {}
            try:
                found = audit(self.cluster, errors=errors)
            except Exception as e:  # judged as a host not audited
                found, errors["cluster"] = [], f"the audit failed: {e!r}"
            observations["audit"] = {
                "leaks": [dataclasses.asdict(x) for x in found if x not in self._leaks_before],
                "before": [dataclasses.asdict(x) for x in self._leaks_before], "errors": errors}
        consoles = self.out / "consoles"
        consoles.mkdir(exist_ok=True)
        for name, lines in self.sampler.lines.items():
            (consoles / f"{name}.log").write_text("".join(f"{line}\n" for line in lines))
        return {**observations, "consoles": self.sampler.lines, "clock_offsets": offsets}

    def _destroy(self, d: Domain) -> None:
        try:
            if self.cluster.find(d.name) is not None:
                self.cluster.destroy(d.name)
                self.hist.record("destroy", domain=d.name, ok=True)
        except Exception as e:
            self.hist.record("destroy", domain=d.name, ok=False, error=str(e))

    def _census(self) -> None:
        """``xl list``'s State of each of the run's domains still there at the end."""
        errors: dict[str, str] = {}
        try:
            rows = self.cluster.list(errors)
        except Exception as e:  # the registry: judged as every host not listed
            rows, errors["cluster"] = [], f"the list failed: {e!r}"
        names = {d.name for d in self.scenario.domains}
        self.hist.record("census", errors=errors, states={
            r["name"]: r["state"] for r in rows if r["name"] in names})

    def _free_pages(self) -> dict[str, Any]:
        """Each host's free memory, in pages, as its hypervisor counts it (``free_pages``
        of its statistics: Xen's ``xl info`` free_memory), and the hosts that did not
        answer."""
        errors: dict[str, str] = {}
        found = self.cluster._each_host(
            lambda host: (host, self.cluster._call(host, "hypervisor", "statistics")
                          ["free_pages"]), errors)
        return {"free_pages": dict(found), "errors": errors}

    def _memory_after(self) -> None:
        """Each host's free memory once every domain is destroyed: read again until it is
        what it was before the run, for at most :data:`MEMORY_SETTLE_S` (a zombie's pages
        come back when its last grant is unmapped)."""
        before = next((e["free_pages"] for e in h.of(self.hist.events, "memory")), None)
        if before is None:
            return  # the run stopped before it was read
        deadline = time.monotonic() + MEMORY_SETTLE_S
        while True:
            try:
                now = self._free_pages()
            except Exception as e:  # the registry: judged as no host read
                now = {"free_pages": {}, "errors": {"cluster": f"not read: {e!r}"}}
            back = all(before.get(host) == n for host, n in now["free_pages"].items())
            if back or time.monotonic() > deadline:
                break
            time.sleep(1 / SAMPLE_HZ)
        self.hist.record("memory", phase="after", **now)

    def _judge(self, observations: dict[str, Any]) -> dict[str, Any]:
        events = self.hist.events
        verdicts = [self._schedule_verdict(events)]
        verdicts += [CHECKERS[c.kind].fn(events, observations, c.params)
                     for c in self.scenario.checks]
        s = self.scenario
        results = {"scenario": s.name, "source": s.source, "seed": s.seed,
                   "duration": s.duration, "ok": all(v.ok for v in verdicts),
                   "verdicts": [v.as_dict() for v in verdicts],
                   "faults": [{"index": w.index, "occurrence": w.occurrence, "kind": w.kind,
                               "targets": list(w.targets),
                               "start_s": h.into_workload(events, w.start),
                               "end_s": h.into_workload(events, w.end)}
                              for w in h.fault_windows(events)],
                   "recoveries": recovery_times(events),
                   "history": str(self.out / "history.jsonl"),
                   "timeline": str(write_timeline(events, self.out / "timeline.png",
                                                  title=s.name))}
        (self.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        return results

    def _schedule_verdict(self, events: list[dict]) -> Verdict:
        """Was the experiment carried out: every fault injected and healed, every op done
        (or allowed to fail)?"""
        problems = [f"{e['event']} of fault {e['index']} ({e['kind']}): {e['error']}"
                    for e in events if e["event"] in ("inject", "heal") and "error" in e]
        problems += [f"op {e['index']} ({e['kind']} {e['domain']}): {e['error']}"
                     for e in h.of(events, "op") if e["phase"] in ("fail", "info")
                     and not self.scenario.ops[e["index"]].may_fail]
        injects = sum(1 for e in h.of(events, "inject") if "error" not in e)
        ends = [e["phase"] for e in h.of(events, "op") if e["phase"] != "invoke"]
        failed = f" ({len(ends) - ends.count('ok')} failed, as allowed)" \
            if len(ends) > ends.count("ok") else ""
        return Verdict("schedule", not problems, "; ".join(problems) or
                       f"{injects} faults injected, {len(ends)} ops done{failed}, as "
                       "scheduled", {"problems": problems})
