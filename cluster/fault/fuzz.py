"""``xenray fuzz TARGET``: a hostile guest beside honest ones on one host, and the verdict.

Issue 12's promise, checked: a DomU fuzzing its own interfaces (``init=hostile``,
:mod:`actors.guest.hostile`) crashes no other component, has no effect on any other domain,
and gets Xen's error for each input. :func:`fuzz` creates honest guests on the host, each
leaning on a part the hostile one attacks: ``counter``, with a vif that ``ping`` (a second
guest) targets across the host's bridge; once they go, the hostile guest, with a disk and a
vif of its own, and beside it a ``blkverify`` writer on the same blkback. It waits for the
hostile guest's result and watches the others go on. :func:`judge` turns what it saw into
checks:

* **answers**: every input got the answer Xen gives (the guest's own verdict, input by
  input), and no target was skipped;
* **Dom0**: each Dom0 component of the host (hypervisor, xenstored, xenconsoled, blkback,
  netback, xl) answers, as the same process (pid) as before the campaign;
* **honest guests**: each still runs as the domain it was (same domid); the counter and
  the pinger made progress during the campaign and after it (their console lines:
  :mod:`cluster.scenario.progress`); the writer read back every block it wrote.

Everything it created is destroyed at the end, whatever happened.
"""

from __future__ import annotations

import concurrent.futures
import tempfile
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from actors.blkback.vbd import create_image
from actors.guest.hostile_inputs import TARGETS
from cluster.api import HostUnreachable
from cluster.scenario.progress import Consoles, Progress
from cluster.scenario.report import verdict_table
from cluster.xlcfg import parse_config

if TYPE_CHECKING:
    from cluster.api import Cluster

METERED = {"counter": "counter", "pinger": "ping"}  # honest guests' roles: their init
DOM0 = ("hypervisor", "xenstored", "xenconsoled", "blkback", "netback", "xl")
WRITER_BLOCKS = 4096  # blkverify's 4 KiB blocks: a few seconds of writes beside the campaign
START_S = 60.0  # for an honest guest's first progress
PROGRESS_S = 20.0  # for each honest guest to go on after the campaign
RESULT_S = 120.0  # for the hostile guest's result, plus a little per input


def fuzz(cluster: Cluster, target: str, count: int, seed: int, host: str | None = None,
         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a campaign of ``count`` inputs per target (``target``: one of
    :data:`~actors.guest.hostile_inputs.TARGETS` or ``all``) from ``seed`` on ``host`` (the
    first by default); the verdict (:func:`judge`), with the campaign's parameters and the
    hostile guest's name."""
    if target != "all" and target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; targets are {', '.join(TARGETS)}, all")
    if count < 1:
        raise ValueError(f"count={count}: want 1 or more")
    host = host or cluster.hosts[0]
    tag = uuid.uuid4().hex[:6]
    names = {role: f"fuzz{tag}-{role}" for role in (*METERED, "writer", "hostile")}
    campaign = _Campaign(cluster, host, names, progress or (lambda text: None))
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="xenray-fuzz-") as tmp:
        try:
            observed = campaign.run(_configs(names, target, count, seed, tmp),
                                    count * (len(TARGETS) if target == "all" else 1))
        finally:
            campaign.destroy()
    return {"target": target, "count": count, "seed": seed, "host": host,
            "hostile": names["hostile"], **judge(observed)}


class _Campaign:
    """One campaign's steps on ``host``: the Dom0 pids, the honest guests and their
    progress (their console lines), the hostile guest and its result."""

    def __init__(self, cluster: Cluster, host: str, names: dict[str, str],
                 say: Callable[[str], None]) -> None:
        self.cluster, self.host, self.names, self.say = cluster, host, names, say
        self.consoles = Consoles(cluster.log_dir, [host])
        self.meters = {names[role]: Progress(init) for role, init in METERED.items()}
        self.made: list[str] = []

    def run(self, configs: dict[str, Any], inputs: int) -> dict[str, Any]:
        """Counter and pinger first, the hostile guest and the writer at once once they go,
        then what each did (:func:`judge`'s ``observed``)."""
        cluster, names, say = self.cluster, self.names, self.say
        dom0 = {c: [pid, None] for c, pid in dom0_pids(cluster, self.host).items()}
        say(f"{self.host}: Dom0 pids {', '.join(f'{c} {p[0]}' for c, p in dom0.items())}")
        for name in names.values():
            self.consoles.follow(name)
        say(f"creating {names['counter']} and {names['pinger']}, which pings it")
        domids = self.create_all(configs, ("counter", "pinger"))
        cluster.wait_for(lambda: all(self.units().values()), START_S,
                         "the honest guests to start")
        before = self.units()
        say(f"creating {names['hostile']} ({configs[names['hostile']].cmdline}) and "
            f"{names['writer']}, writing beside it")
        domids.update(self.create_all(configs, ("hostile", "writer")))
        result = self.wait(lambda: cluster.result(names["hostile"]), RESULT_S + 0.5 * inputs)
        if result is not None:
            say(f"it sent {result['inputs']} inputs in {result['seconds']} s; "
                f"{result['unexpected_count']} got another answer than Xen's")
        during = self.units()
        self.wait(lambda: all(u > during[n] for n, u in self.units().items()), PROGRESS_S)
        after = self.units()
        writer = self.wait(lambda: cluster.result(names["writer"]), PROGRESS_S)
        for c, pid in dom0_pids(cluster, self.host, errors=True).items():
            dom0[c][1] = pid
        honest = {}
        for name in (names[role] for role in (*METERED, "writer")):
            found = cluster.find(name)
            honest[name] = {"domid": [domids[name], found[1] if found else None],
                            **({"units": [before[name], during[name], after[name]]}
                               if name in self.meters else {"result": writer})}
        return {"result": result, "inputs": inputs, "dom0": dom0, "honest": honest}

    def create_all(self, configs: dict[str, Any], roles: tuple[str, ...]) -> dict[str, int]:
        """Create the guests of ``roles`` at once; their domids by name."""
        with concurrent.futures.ThreadPoolExecutor(len(roles)) as pool:
            return dict(pool.map(lambda role: (self.names[role], self.create(
                configs[self.names[role]])["domid"]), roles))

    def create(self, cfg: Any) -> dict[str, Any]:
        self.made.append(cfg.name)  # first: a create failing half way may hold the name
        return self.cluster.create(cfg, host=self.host)

    def units(self) -> dict[str, int]:
        """Each metered honest guest's progress so far."""
        for name, meter in self.meters.items():
            for line in self.consoles.read(name):
                meter.feed(line)
        return {name: meter.units for name, meter in self.meters.items()}

    def wait(self, condition: Callable[[], Any], timeout: float) -> Any:
        """``condition()``'s value once it holds, or None at the deadline (judged later)."""
        try:
            return self.cluster.wait_for(condition, timeout, "the campaign")
        except TimeoutError:
            return None

    def destroy(self) -> None:
        """Destroy every guest it created (or began to), all at once."""
        def one(name: str) -> None:
            try:
                self.cluster.destroy(name)
            except Exception as e:  # noqa: BLE001 - destroy the others all the same
                self.say(f"could not destroy {name}: {e}")

        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.made))) as pool:
            list(pool.map(one, self.made))


def _configs(names: dict[str, str], target: str, count: int, seed: int, tmp: str
             ) -> dict[str, Any]:
    """The four guests' xl.cfg, their disks made in ``tmp``. The IPs are on a subnet of
    their own, so another test's guests on the bridge never answer for them."""
    writer_img, hostile_img = f"{tmp}/writer.img", f"{tmp}/hostile.img"
    create_image(writer_img, 32 << 20)
    create_image(hostile_img, 16 << 20)
    devices = {
        "counter": ('vif = [ "ip=10.212.0.1" ]', "init=counter interval=0.2"),
        "pinger": ('vif = [ "ip=10.212.0.2" ]',
                   "init=ping 10.212.0.1 count=100000 interval=0.2 timeout=1"),
        "writer": (f'disk = [ "{writer_img},raw,xvda,rw" ]',
                   f"init=blkverify blocks={WRITER_BLOCKS} iodepth=8 seed={seed}"),
        "hostile": (f'disk = [ "{hostile_img},raw,xvda,rw" ]\nvif = [ "ip=10.212.0.66" ]',
                    f"init=hostile target={target} count={count} seed={seed}"),
    }
    return {names[role]: parse_config(f'name = "{names[role]}"\nmemory = 32\n{lines}\n'
                                      f'extra = "{extra}"\n')[0]
            for role, (lines, extra) in devices.items()}


def dom0_pids(cluster: Cluster, host: str, errors: bool = False) -> dict[str, int | None]:
    """The OS pid of each Dom0 component of ``host``; with ``errors``, None for one that
    does not answer, rather than raising :class:`HostUnreachable`."""
    pids: dict[str, int | None] = {}
    for component in DOM0:
        try:
            pids[component] = cluster._call(host, component, "process")["pid"]
        except HostUnreachable:
            if not errors:
                raise
            pids[component] = None
    return pids


def judge(observed: dict[str, Any]) -> dict[str, Any]:
    """The checks (module docstring) of what a campaign saw: ``result`` (the hostile
    guest's, or None), ``inputs`` (how many it was to send), ``dom0`` (component ->
    [pid before, pid after or None]) and ``honest`` (name -> ``domid`` [before, after],
    and ``units`` of progress [before, when the result came, after] or, for the writer, its
    ``result``). ``ok`` only if every check passed; ``observed`` is what was judged."""
    checks = [_answers(observed["result"], observed["inputs"])]
    for component, (before, after) in observed["dom0"].items():
        ok = after is not None and after == before
        checks.append({"check": f"Dom0 {component}", "ok": ok,
                       "summary": f"pid {before}, still" if ok else
                       f"pid {before}, now {after or 'not answering'}"})
    for name, h in observed["honest"].items():
        checks.append(_honest(name, h))
    return {"ok": all(c["ok"] for c in checks), "checks": checks, "observed": observed}


def _answers(result: dict[str, Any] | None, inputs: int) -> dict[str, Any]:
    if result is None:
        return {"check": "answers", "ok": False, "summary": "the hostile guest published no "
                                                            "result"}
    problems = []
    if result["unexpected_count"]:
        first = result["unexpected"][0]
        problems.append(f"{result['unexpected_count']} answered otherwise than Xen would, "
                        f"first {first['target']} #{first['index']} ({first['what']}): "
                        f"{first['answers']}")
    if result["skipped"]:
        problems += [f"{t} skipped: {why}" for t, why in result["skipped"].items()]
    if result["inputs"] != inputs:
        problems.append(f"{result['inputs']} inputs of {inputs}")
    return {"check": "answers", "ok": not problems, "summary": "; ".join(problems) or
            f"each of {inputs} inputs got Xen's answer"}


def _honest(name: str, h: dict[str, Any]) -> dict[str, Any]:
    """A metered guest (``units``) must have gone on during the campaign and after it; the
    writer (``result``) must have read back every block it wrote."""
    problems = []
    was, now = h["domid"]
    if now != was:
        problems.append(f"was domid {was}, now {now if now is not None else 'gone'}")
    if "units" in h:
        before, during, after = h["units"]
        went = f"progress {before} -> {during} -> {after}"
        if not before < during < after:
            problems.append(f"{went}: stopped")
    else:
        r = h["result"]
        went = "no result" if r is None else f"{r['verified']} of {r['blocks']} blocks verified"
        if r is None or r["verified"] != r["blocks"] or r["bad"]:
            problems.append(went if r is None else f"{went}, bad {r['bad']}")
    return {"check": f"honest {name}", "ok": not problems,
            "summary": "; ".join(problems) or f"domid {was}, {went}"}


def answers_table(verdict: dict[str, Any]) -> Table:
    """Per target: inputs, and how many got each answer."""
    result = verdict["observed"]["result"] or {"answers": {}}
    table = Table(title=f"hostile guest {verdict['hostile']} (seed {verdict['seed']})",
                  title_justify="left")
    table.add_column("target")
    table.add_column("inputs", justify="right")
    table.add_column("answers", overflow="fold")
    for target in (t for t in TARGETS if t in result["answers"]):
        counts = result["answers"][target]
        table.add_row(target, str(sum(counts.values())), escape(", ".join(
            f"{label} {n}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))))
    return table


def checks_table(verdict: dict[str, Any]) -> Table:
    """The checks, as ``xenray run`` shows a scenario's."""
    return verdict_table({"scenario": f"fuzz {verdict['target']} on {verdict['host']}",
                          "seed": verdict["seed"], "verdicts": verdict["checks"]})
