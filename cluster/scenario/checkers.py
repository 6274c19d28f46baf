"""Checkers: each judges a finished run from its history (and what the runner observed after
it) and returns a :class:`Verdict`. They are pure functions of what they are given, so a
test hands one a history that violates its property and sees it fail.

``observations`` holds what the history does not: ``consoles`` (each domain's console lines
during the run), ``clock_offsets`` (for each domain, what to add to its guest clock to get the
history's ``t``, and how far off that may be), ``audit`` (the cluster's leak audit after
every domain was destroyed).

* ``isolation``: every measured domain that no fault stalls by design
  (:func:`history.affected`), nor an op (pause, reboot, shutdown, destroy), kept making
  progress: no gap between two advances, or at the start or end of its time (until its
  workload's final result), longer than ``max_gap`` seconds. ``exempt`` names more domains to
  leave out (a pinger whose peer a fault stalls).
* ``durability``: no acknowledged block write is lost. Each domain whose console logged
  ``ACK`` lines (blkverify ``acklog=1``) has its image read after the run
  (:func:`cluster.fault.disk.lost_writes`); after a power cut of its disk, only the writes a
  completed flush covered must be there. ``domains`` narrows which are judged.
* ``network``: packets lost only inside fault windows. Each ``ping`` and each ``udpstream``
  receiver says, in its result, what it lost and when on its sender's clock
  (:func:`cluster.fault.net.losses`); every loss must fall in a window of a partition or
  link fault, or of a fault that stalled either end (:func:`cluster.fault.net.losses_outside`,
  the guest's clock put on the history's with ``clock_offsets``).
* ``leaks``: once every domain of the scenario is destroyed, nothing of theirs remains
  (:func:`cluster.audit.audit`: grant maps, event channels, memory files, xenstore nodes,
  consoles, backend devices; leaks the cluster had before the run are not counted), and
  every host answered but those a fault crashed.
* ``recovery``: from each heal (a crash: the kill) to the first progress after it, of each
  domain the fault stalled; ``max_s`` bounds it if given (a domain that never recovered
  fails it then); the numbers are reported either way.
* ``memory``: every host's free memory, as its hypervisor counts it, is back to the page
  where it was before the run's domains were created, once they are destroyed (the
  ``memory`` readings the runner takes; hosts a fault crashed are left out).
* ``errors``: no domain met an error: every one was created, none said so on its console
  (a kernel panic, a device that did not connect, a failed disk request retried), no
  result counts a bad block or a failed step, and each one no op or fault ended
  (destroy, shutdown, a crash of it or its host) was still running at the end (the
  ``census``). ``exempt`` names domains to leave out.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from actors.guest.api import options
from cluster.fault.disk import lost_writes, parse_acks
from cluster.fault.net import SLACK_S, losses, losses_outside
from cluster.scenario import history as h

Events = list[dict[str, Any]]


@dataclasses.dataclass
class Verdict:
    check: str
    ok: bool
    summary: str  # one line for the verdict table
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Checker:
    fn: Callable[[Events, dict[str, Any], dict[str, Any]], Verdict]
    defaults: dict[str, Any]  # its params; a list default takes domain names


STALLING_OPS = ("pause", "reboot", "shutdown", "destroy")  # a migration stalls for its downtime
ENDING_OPS = ("shutdown", "destroy")
# A guest's own word that something failed: the kernel's panic, xenbus's device timeout,
# blkverify's failed request (done again).
ERROR_LINE = re.compile(r"Kernel panic|Timeout connecting to device|; retrying in ")
PAGES_PER_MIB = 256


def _span(events: Events, name: str) -> tuple[float, float]:
    """When a domain's workload ran: from its create (or the workload's start) to the end
    of the run or its final result."""
    created = h.domains(events)[name]["t"]
    start = max(h.workload_start(events), created)
    return start, min(h.end(events), h.finished(events).get(name, float("inf")))


def _measured(events: Events) -> list[str]:
    series = h.progress(events)
    return sorted(n for n in h.domains(events) if n in series)


def isolation(events: Events, obs: dict[str, Any], params: dict[str, Any]) -> Verdict:
    stalled: dict[str, list[str]] = {}
    for w in h.fault_windows(events):
        for name in h.affected(events, w):
            stalled.setdefault(name, []).append(f"{w.kind} {', '.join(w.targets)}")
    for e in h.of(events, "op"):
        if e["kind"] in STALLING_OPS and e["phase"] == "invoke":
            stalled.setdefault(e["domain"], []).append(f"op {e['kind']}")
    for name in params["exempt"]:
        stalled.setdefault(name, []).append("exempt")
    series = h.progress(events)
    worst: dict[str, dict[str, float]] = {}
    for name in _measured(events):
        if name in stalled:
            continue
        start, stop = _span(events, name)
        if stop <= start:
            continue  # created after the run's end (or finished before it began)
        marks = [start, *(t for t in h.advances(series[name]) if start < t < stop), stop]
        gap, at = max((b - a, a) for a, b in zip(marks, marks[1:]))
        worst[name] = {"max_gap_s": round(gap, 3), "from_s": h.into_workload(events, at)}
    bad = {n: w for n, w in worst.items() if w["max_gap_s"] > params["max_gap"]}
    judged = ", ".join(sorted(worst)) or "none"
    if bad:
        summary = "; ".join(f"{n} made no progress for {w['max_gap_s']:.1f} s from "
                            f"{w['from_s']:.1f} s" for n, w in sorted(bad.items()))
    else:
        longest = max((w["max_gap_s"] for w in worst.values()), default=0.0)
        summary = (f"{judged} kept making progress (longest gap {longest:.1f} s, bound "
                   f"{params['max_gap']:g} s)")
    return Verdict("isolation", bool(worst) and not bad, summary if worst else
                   "no domain was left to judge: every measured one was stalled by a fault",
                   {"gaps": worst, "left_out": stalled, "bound_s": params["max_gap"]})


def recovery_times(events: Events) -> list[dict[str, Any]]:
    """For each fault occurrence and each measured domain it stalled: seconds from its heal
    to the first progress after it (None: none by the run's end). Progress is counted from
    the first sample taken after the heal, so what was done before it is not mistaken for a
    recovery (the figure is exact to one sampling period)."""
    series = h.progress(events)
    rows = []
    for w in h.fault_windows(events):
        for name in sorted(h.affected(events, w) & set(series)):
            samples = series[name]
            after = [(t, u) for t, u in samples if t >= w.end]
            first = next((t for t, u in after if after and u > after[0][1]), None)
            rows.append({"fault": w.index, "occurrence": w.occurrence, "kind": w.kind,
                         "targets": list(w.targets), "domain": name,
                         "heal_s": h.into_workload(events, w.end),
                         "recovery_s": None if first is None else round(first - w.end, 3)})
    return rows


def _seconds(s: float | None) -> str:
    return "never" if s is None else f"{s:.1f} s"


def recovery(events: Events, obs: dict[str, Any], params: dict[str, Any]) -> Verdict:
    rows = recovery_times(events)
    bound = params["max_s"]
    late = [r for r in rows if bound is not None and
            (r["recovery_s"] is None or r["recovery_s"] > bound)]
    text = "; ".join(f"{r['domain']} {_seconds(r['recovery_s'])} after {r['kind']} "
                     f"{', '.join(r['targets'])}" for r in (late or rows))
    if not rows:
        text = "no fault stalled a measured domain"
    elif late:
        text = f"over the {bound:g} s bound: {text}"
    return Verdict("recovery", not late, text, {"recoveries": rows, "bound_s": bound})


def durability(events: Events, obs: dict[str, Any], params: dict[str, Any]) -> Verdict:
    created = h.domains(events)
    cut = {name for w in h.fault_windows(events) if w.kind == "powercut"
           for name in h.affected(events, w)}
    judged: dict[str, dict[str, Any]] = {}
    for name, lines in sorted(obs.get("consoles", {}).items()):
        acks = parse_acks(lines)
        if not acks or (params["domains"] and name not in params["domains"]):
            continue
        image = created[name]["disks"][0]
        lost = lost_writes(image, acks, flushed_only=name in cut)
        judged[name] = {"image": image, "acks": len(acks), "power_cut": name in cut,
                        "blocks": sum(len(a.blocks()) for a in acks),
                        "flushed_blocks": sum(len(a.blocks()) for a in acks if a.flushed),
                        "lost": [str(w) for w in lost[:16]], "lost_count": len(lost)}
    missing = [n for n in params["domains"] if n not in judged]
    if not judged or missing:
        return Verdict("durability", False, f"no acknowledged writes were logged by "
                       f"{', '.join(missing) or 'any domain'} (blkverify acklog=1)",
                       {"domains": judged})
    bad = {n: j for n, j in judged.items() if j["lost_count"]}
    if bad:
        text = "; ".join(f"{n}: {j['lost_count']} acknowledged blocks lost, first "
                         f"{j['lost'][0]}" for n, j in bad.items())
    else:
        text = "; ".join(
            f"{n}: all {j['flushed_blocks']} flushed of {j['blocks']} acknowledged blocks in "
            f"the image after a power cut" if j["power_cut"] else
            f"{n}: all {j['blocks']} acknowledged blocks in the image" for n, j in judged.items())
    return Verdict("durability", not bad, text, {"domains": judged})


def _results(events: Events) -> dict[str, dict[str, Any]]:
    """Each domain's final result (a ping's summary, a stream's totals)."""
    return {e["domain"]: e["result"] for e in h.of(events, "result") if e.get("final")}


def _peer(created: dict[str, dict], name: str) -> str | None:
    """The domain a ping or udpstream sender sends to (by its vif's ip), if one of the run's."""
    argv = created[name].get("argv", [])
    opts = options(argv)
    dst = opts.get("dst") or next((w for w in argv if "=" not in w), None)
    return next((n for n, c in created.items() if dst in c.get("ips", [])), None)


def network(events: Events, obs: dict[str, Any], params: dict[str, Any]) -> Verdict:
    created, results = h.domains(events), _results(events)
    windows = h.fault_windows(events)
    offsets = obs.get("clock_offsets", {})
    senders = {_peer(created, n): n for n, c in created.items()
               if c["init"] == "udpstream" and options(c.get("argv", [])).get("role") == "send"}
    judged: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name, c in sorted(created.items()):
        role = options(c.get("argv", [])).get("role", "recv")
        if c["init"] not in ("ping", "udpstream") or (c["init"] == "udpstream" and role != "recv"):
            continue
        sender = name if c["init"] == "ping" else senders.get(name)
        peer = _peer(created, name) if c["init"] == "ping" else sender
        if name not in results or sender not in results:
            problems.append(f"{name}: no result from {name if name not in results else sender}"
                            " (its run outlasted the scenario?)")
            continue
        if sender not in offsets:
            problems.append(f"{name}: the clock of {sender} was not read")
            continue
        spans = [(w.start, w.end) for w in windows if w.kind in ("partition", "link")
                 or {name, peer} & h.affected(events, w)]
        offset, error = offsets[sender]
        found = losses(results[name], results[sender] if sender != name else None)
        outside = losses_outside(found, spans, offset=offset, slack=SLACK_S + error)
        sent = results[sender].get("transmitted" if c["init"] == "ping" else "packets", "?")
        judged[name] = {"sent": sent, "lost": sum(x.count for x in found),
                        "lost_outside": sum(x.count for x in outside),
                        "outside": [{"first": x.first, "last": x.last, "count": x.count,
                                     "sent_s": h.into_workload(events, x.start + offset)}
                                    for x in outside[:16]]}
        if outside:
            first = judged[name]["outside"][0]
            problems.append(f"{name}: {judged[name]['lost_outside']} lost outside any fault "
                            f"window, first #{first['first']} sent at {first['sent_s']:.1f} s")
    if not judged and not problems:
        problems.append("no ping or udpstream receiver to judge")
    text = "; ".join(problems) or "; ".join(
        f"{n}: {j['lost']} of {j['sent']} lost" + (", all inside fault windows" if j["lost"]
                                                    else "") for n, j in judged.items())
    return Verdict("network", not problems, text, {"domains": judged})


def _crashed(events: Events) -> list[h.Window]:
    """The faults that ended domains: a crash of a domain, of a host or its hypervisor, a
    power cut (a ``<domain>`` or ``<host>[/hypervisor]`` target)."""
    return [w for w in h.fault_windows(events) if w.kind in ("crash", "powercut")
            and all(t.partition("/")[2] in ("", "hypervisor") for t in w.targets)]


def _crashed_hosts(events: Events) -> set[str]:
    """The hosts a fault crashed (which may not answer after the run)."""
    return {t.partition("/")[0] for w in _crashed(events) if w.kind == "crash"
            for t in w.targets}


def leaks(events: Events, obs: dict[str, Any], params: dict[str, Any]) -> Verdict:
    audit = obs.get("audit", {"leaks": [], "errors": {"*": "the cluster was not audited"}})
    crashed = _crashed_hosts(events)
    unheard = {host: why for host, why in audit["errors"].items() if host not in crashed}
    problems = [f"{x['host']} {x['kind']}: {x['what']}" for x in audit["leaks"]]
    problems += [f"{host} was not audited: {why}" for host, why in unheard.items()]
    text = (f"{len(audit['leaks'])} leaks: " if audit["leaks"] else "") + "; ".join(problems)
    return Verdict("leaks", not problems, text or "nothing of the destroyed domains remains"
                   + (f" (crashed, not audited: {', '.join(sorted(crashed))})" if crashed
                      else ""), audit)


def memory(events: Events, obs: dict[str, Any], params: dict[str, Any]) -> Verdict:
    readings = {e["phase"]: e for e in h.of(events, "memory")}
    if set(readings) != {"before", "after"}:
        return Verdict("memory", False, "the hosts' free memory was not read both before "
                       "the domains were created and after they were destroyed", readings)
    before, after = readings["before"]["free_pages"], readings["after"]["free_pages"]
    crashed = _crashed_hosts(events)
    hosts: dict[str, dict[str, int]] = {}
    problems = []
    for host, pages in sorted(before.items()):
        if host in crashed:
            continue
        if host not in after:
            why = readings["after"]["errors"].get(host) or "no answer"
            problems.append(f"{host} was not read after the run: {why}")
            continue
        diff = after[host] - pages
        hosts[host] = {"before": pages, "after": after[host], "difference": diff}
        if diff:
            problems.append(f"{host}: {abs(diff)} pages ({abs(diff) / PAGES_PER_MIB:.1f} MiB) "
                            f"{'fewer' if diff < 0 else 'more'} free than before "
                            f"({pages} -> {after[host]})")
    text = "; ".join(problems) or "every host's free memory is back, to the page: " + \
        ", ".join(f"{host} {r['after'] / PAGES_PER_MIB:.0f} MiB" for host, r in hosts.items())
    if crashed:
        text += f" (crashed, not judged: {', '.join(sorted(crashed))})"
    return Verdict("memory", bool(hosts) and not problems, text,
                   {"hosts": hosts, "crashed": sorted(crashed)})


def errors(events: Events, obs: dict[str, Any], params: dict[str, Any]) -> Verdict:
    exempt = set(params["exempt"])
    created = {n: c for n, c in h.domains(events).items() if n not in exempt}
    ended = {e["domain"] for e in h.of(events, "op") if e["kind"] in ENDING_OPS}
    ended |= {name for w in _crashed(events) for name in h.affected(events, w)}
    problems = [f"{e['domain']}: not created: {e['error']}" for e in h.of(events, "create")
                if not e.get("ok") and e["domain"] not in exempt
                and e["domain"] not in created]
    for name, lines in sorted(obs.get("consoles", {}).items()):
        bad = [line for line in lines if ERROR_LINE.search(line)]
        if name in created and bad:
            problems.append(f"{name} said: {bad[0]!r}" +
                            (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    results = _results(events)
    for name, r in sorted(results.items()):
        if name in created and (r.get("bad") or r.get("errors")):
            problems.append(f"{name}: its result counts {len(r.get('bad') or [])} bad blocks, "
                            f"{r.get('errors') or 0} failed steps")
    census = h.of(events, "census")
    states = census[-1]["states"] if census else {}
    for name in sorted(set(created) - ended):
        state = states.get(name)
        if state is None:
            unheard = "; ".join(f"{k}: {v}" for k, v in census[-1]["errors"].items()) \
                if census else "the domains were not listed"
            problems.append(f"{name} was not running at the end" +
                            (f" ({unheard})" if unheard else ""))
        elif state[3] == "s" or state[5] == "d":
            problems.append(f"{name} was {state} at the end (shut down or dying)")
    text = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8
                                      else "")
    return Verdict("errors", not problems, text or
                   f"{len(created)} domains, no error: {len(set(created) - ended)} running at "
                   f"the end, no panic or failed request on a console, {len(results)} "
                   f"results clean", {"problems": problems})


CHECKERS: dict[str, Checker] = {
    "durability": Checker(durability, {"domains": []}),
    "isolation": Checker(isolation, {"max_gap": 5.0, "exempt": []}),
    "recovery": Checker(recovery, {"max_s": None}),
    "network": Checker(network, {}),
    "leaks": Checker(leaks, {}),
    "memory": Checker(memory, {}),
    "errors": Checker(errors, {"exempt": []}),
}
