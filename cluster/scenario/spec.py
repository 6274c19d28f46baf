"""A scenario file (TOML), read and checked whole before anything is started.

A scenario is an experiment written down: the hosts and the links between them, the domains
(an inline xl.cfg or a path, plus an optional fresh disk image each), the operations and
faults to carry out at given seconds into the run, the checkers that judge it, how long it
lasts, and the seed its random choices come from. Every mistake is one line naming the file
and the field (``blk.toml: fault[1].at: 40 is past the duration (30 s)``), raised as
:class:`ScenarioError` before a host is booted.

Times (``duration``, ``at``, ``for``, ``every``) are seconds counted from the moment every
domain of the scenario is up (the workload's start).

A ``[[domain]]`` with ``count = N`` declares a group of N domains, ``<name>-1`` ...
``<name>-N``, each with a fresh image of its own if it has one; an op (or a checker's list of
domains) that names the group means every member. A config may hold ``${i}`` (the member's
number) and ``${duration}`` (the run's seconds, after ``--scale``), each optionally times a
factor and plus or minus a number, rounded to an integer: ``ip=10.0.1.${i}``,
``seconds=${duration*0.9-6}``. So one file serves a run of any size and length:
``parse(..., domains=0.1)`` keeps a tenth of each group (at least one).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import tomllib
from typing import Any

from actors.guest.api import parse_init
from actors.hostnet.link import parse_link_spec
from cluster.fault import nemesis
from cluster.fault.net import partition_plan
from cluster.scenario.checkers import CHECKERS
from cluster.xlcfg import DomainConfig, XlCfgError, parse_config
from protocols.blkif import parse_size

LIBRARY = pathlib.Path(__file__).parent / "library"
OP_KINDS = ("create", "destroy", "migrate", "pause", "unpause", "reboot", "shutdown")
MAX_COUNT = 1000  # domains in one [[domain]] entry
INSTANT_KINDS = ("crash",)  # faults with nothing to heal: no `for`
BETWEEN_HOSTS = ("partition", "link")  # faults whose params name hosts, with no target


class ScenarioError(ValueError):
    """A bad scenario file: ``FILE: FIELD: what is wrong`` (a ValueError, so the CLI prints
    it as one line)."""


@dataclasses.dataclass(frozen=True)
class Hosts:
    names: tuple[str, ...]
    memory_mib: int = 2048
    cpus: int = 2


@dataclasses.dataclass(frozen=True)
class Link:
    a: str
    b: str
    bandwidth: str | None = None
    latency: str | None = None
    loss: str | None = None
    one_way: bool = False


_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_EXPRESSION = re.compile(r"\s*(i|duration)\s*(?:\*\s*(\d+(?:\.\d*)?))?"
                         r"\s*(?:([+-])\s*(\d+(?:\.\d*)?))?\s*")


def render(template: str, number: int, duration: float) -> str:
    """``template`` with each ``${VAR[*FACTOR][+-NUMBER]}`` replaced by its value, rounded:
    ``i`` is ``number``, ``duration`` the run's seconds. ValueError for a bad one, or a value
    below 0 (a run too short for what the config asks)."""
    def value(m: re.Match) -> str:
        e = _EXPRESSION.fullmatch(m.group(1))
        if e is None:
            raise ValueError(f"${{{m.group(1)}}}: want ${{i}} or ${{duration}}, optionally "
                             f"*FACTOR and +NUMBER or -NUMBER")
        var, factor, sign, term = e.groups()
        x = (number if var == "i" else duration) * float(factor or 1)
        x += float(term or 0) * (-1 if sign == "-" else 1)
        if x < 0:
            raise ValueError(f"${{{m.group(1)}}} is {x:g} (below 0) in a run of {duration:g} s")
        return str(round(x))

    return _VARIABLE.sub(value, template)


@dataclasses.dataclass(frozen=True)
class Domain:
    """A domain of the scenario: created at the start, or by a ``create`` op that names it
    (or its group)."""

    name: str
    host: str | None  # None: "auto", where the cluster places it when it is created
    template: str  # the xl.cfg text as written, its ${...} not filled in
    duration: float  # the run's, for ${duration}
    image_bytes: int | None = None  # a fresh sparse raw image of this size, as xvda
    group: str = ""  # the [[domain]] it is one of: its own name, or N members' (<group>-<i>)
    number: int = 1  # ${i}: which member of its group

    @property
    def config_text(self) -> str:
        """The xl.cfg text, filled in, with the scenario's name appended."""
        return f'{render(self.template, self.number, self.duration)}\nname = "{self.name}"\n'

    def config(self, image: str | None = None) -> DomainConfig:
        """The parsed config; ``image``: the path of its fresh image, attached as xvda."""
        text = self.config_text
        if image is not None:
            text += f'\ndisk = [ "{image},raw,xvda,rw" ]\n'
        return parse_config(text, filename=f"<domain {self.name}>")[0]

    @property
    def init(self) -> str:
        """The init program its command line names (the kernel's default if none)."""
        return parse_init(self.config().cmdline or "")[0]

    @property
    def argv(self) -> list[str]:
        """The init program's arguments."""
        return list(parse_init(self.config().cmdline or "")[1])


@dataclasses.dataclass(frozen=True)
class Op:
    kind: str
    at: float
    domain: str
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    may_fail: bool = False


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    target: dict[str, Any]
    at: float
    lasts: float | None = None  # the file's `for`: seconds until the heal (None: end of run)
    every: float | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def instant(self) -> bool:
        return self.kind in INSTANT_KINDS


@dataclasses.dataclass(frozen=True)
class Check:
    kind: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    duration: float
    hosts: Hosts
    domains: tuple[Domain, ...]
    links: tuple[Link, ...] = ()
    ops: tuple[Op, ...] = ()
    faults: tuple[Fault, ...] = ()
    checks: tuple[Check, ...] = ()
    description: str = ""
    source: str = "<string>"

    @property
    def created_by_ops(self) -> set[str]:
        return {op.domain for op in self.ops if op.kind == "create"}

    @property
    def initial_domains(self) -> list[Domain]:
        """The domains created before the workload starts (those no ``create`` op names)."""
        return [d for d in self.domains if d.name not in self.created_by_ops]

    def domain(self, name: str) -> Domain:
        return next(d for d in self.domains if d.name == name)

    def groups(self) -> dict[str, list[Domain]]:
        """Each ``[[domain]]`` entry's domains, by the entry's name, in the file's order."""
        out: dict[str, list[Domain]] = {}
        for d in self.domains:
            out.setdefault(d.group, []).append(d)
        return out

    def scaled(self, factor: float) -> Scenario:
        """The same run with every time multiplied by ``factor`` (a shortened run), the
        configs' ``${duration}`` included."""
        if factor <= 0:
            raise ScenarioError(f"{self.source}: scale: {factor:g} must be above 0")

        def s(x: float | None) -> float | None:
            return None if x is None else x * factor

        domains = tuple(dataclasses.replace(d, duration=d.duration * factor)
                        for d in self.domains)
        for d in domains:
            try:
                d.config()
            except (ValueError, XlCfgError) as e:
                raise ScenarioError(f"{self.source}: scale: {factor:g}: domain {d.name}: "
                                    f"{e}") from None
        return dataclasses.replace(
            self, duration=self.duration * factor, domains=domains,
            ops=tuple(dataclasses.replace(o, at=o.at * factor) for o in self.ops),
            faults=tuple(dataclasses.replace(f, at=f.at * factor, lasts=s(f.lasts),
                                             every=s(f.every)) for f in self.faults))


# -- reading --------------------------------------------------------------------------------

def library_names() -> list[str]:
    """The scenarios shipped in the package (``xenray run NAME``)."""
    return sorted(p.stem for p in LIBRARY.glob("*.toml"))


def resolve(name_or_path: str | pathlib.Path) -> pathlib.Path:
    """A path to a scenario file, or the name of one in the library (a unique prefix too)."""
    path = pathlib.Path(name_or_path)
    if path.is_file():
        return path
    names = library_names()
    exact = [n for n in names if n == str(name_or_path)]
    matches = exact or [n for n in names if n.startswith(str(name_or_path))]
    if len(matches) == 1:
        return LIBRARY / f"{matches[0]}.toml"
    if matches:
        raise ScenarioError(f"{name_or_path}: ambiguous: {', '.join(matches)}")
    raise ScenarioError(f"{name_or_path}: no such file, and no scenario of that name in the "
                        f"library ({', '.join(names)})")


def load(name_or_path: str | pathlib.Path, *, domains: float = 1.0) -> Scenario:
    path = resolve(name_or_path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: cannot read it: {e}") from None
    return parse(text, source=str(path), base=path.parent, domains=domains)


def parse(text: str, *, source: str = "<string>", base: pathlib.Path | None = None,
          domains: float = 1.0) -> Scenario:
    """A checked :class:`Scenario` from TOML text; ``base``: where ``path =`` is relative to;
    ``domains``: each group's ``count`` is multiplied by it (rounded, at least 1)."""
    if domains <= 0:
        raise ScenarioError(f"{source}: domains: {domains:g} must be above 0")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{source}: not valid TOML: {e}") from None
    return _Reader(source, base or pathlib.Path.cwd(), domains).scenario(data)


class _Reader:
    """Typed fields out of the parsed TOML, each error naming its field."""

    def __init__(self, source: str, base: pathlib.Path, sizing: float = 1.0) -> None:
        self.source, self.base, self.sizing = source, base, sizing

    def error(self, field: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {field}: {message}")

    def table(self, data: dict, field: str, allowed: set[str], required: set[str] = frozenset()
              ) -> dict:
        if not isinstance(data, dict):
            raise self.error(field, "must be a table")
        for key in data:
            if key not in allowed:
                raise self.error(f"{field}.{key}" if field else key,
                                 f"unknown field; known: {', '.join(sorted(allowed))}")
        for key in sorted(required - set(data)):
            raise self.error(f"{field}.{key}" if field else key, "is required")
        return data

    def tables(self, data: dict, key: str) -> list[dict]:
        items = data.get(key, [])
        if not isinstance(items, list):
            raise self.error(key, f"must be an array of tables ([[{key}]])")
        return items

    def number(self, value: Any, field: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(field, f"{value!r} is not a number (seconds)")
        if value < 0 or (positive and value == 0):
            raise self.error(field, f"{value!r} must be {'above' if positive else 'at least'} 0")
        return float(value)

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(field, f"{value!r} is not a non-empty string")
        return value

    def choice(self, value: Any, field: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.error(field, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def scenario(self, data: dict) -> Scenario:
        top = self.table(data, "", {"name", "description", "seed", "duration", "hosts", "link",
                                    "domain", "op", "fault", "check"},
                         {"name", "duration", "hosts", "domain"})
        seed = top.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise self.error("seed", f"{seed!r} is not an integer")
        duration = self.number(top["duration"], "duration", positive=True)
        hosts = self.hosts(top["hosts"])
        domains: list[Domain] = []
        groups: dict[str, list[str]] = {}  # each entry's name -> its domains' names
        for i, entry in enumerate(self.tables(top, "domain")):
            members = self.domain(entry, i, hosts, duration, len(domains))
            taken = {d.name for d in domains} | set(groups)
            clash = next((n for n in (members[0].group, *(m.name for m in members))
                          if n in taken), None)
            if clash:
                raise self.error(f"domain[{i}].name", f"{clash!r} is used twice")
            groups[members[0].group] = [m.name for m in members]
            domains += members
        links = tuple(self.link(x, i, hosts) for i, x in enumerate(self.tables(top, "link")))
        ops: list[Op] = []
        created: set[str] = set()
        for i, x in enumerate(self.tables(top, "op")):
            for op in self.op(x, i, hosts, groups, duration):
                if op.kind == "create" and op.domain in created:
                    raise self.error(f"op[{i}].domain", f"{op.domain!r} is created by two ops")
                if op.kind == "create":
                    created.add(op.domain)
                ops.append(op)
        faults = tuple(self.fault(x, i, hosts, groups, duration)
                       for i, x in enumerate(self.tables(top, "fault")))
        checks = tuple(self.check(x, i, groups) for i, x in enumerate(self.tables(top, "check")))
        return Scenario(name=self.string(top["name"], "name"), seed=seed, duration=duration,
                        hosts=hosts, domains=tuple(domains), links=links, ops=tuple(ops),
                        faults=faults, checks=checks,
                        description=str(top.get("description", "")), source=self.source)

    def hosts(self, data: Any) -> Hosts:
        t = self.table(data, "hosts", {"count", "names", "memory_mib", "cpus"})
        if ("count" in t) == ("names" in t):
            raise self.error("hosts", "give either count or names")
        if "count" in t:
            count = t["count"]
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
                raise self.error("hosts.count", f"{count!r} is not a number of hosts (1..64)")
            names = tuple(f"h{i + 1}" for i in range(count))
        else:
            names = t["names"]
            if (not isinstance(names, list) or not names
                    or not all(isinstance(n, str) and n.isidentifier() for n in names)
                    or len(set(names)) != len(names)):
                raise self.error("hosts.names", "must be distinct names (letters, digits, _)")
            names = tuple(names)
        size = {}
        for key in ("memory_mib", "cpus"):
            if key in t:
                v = t[key]
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise self.error(f"hosts.{key}", f"{v!r} is not a positive integer")
                size[key] = v
        return Hosts(names, **size)

    def host(self, value: Any, field: str, hosts: Hosts) -> str:
        if value not in hosts.names:
            raise self.error(field, f"{value!r} is not a host; hosts are "
                                    f"{', '.join(hosts.names)}")
        return value

    def link(self, data: Any, i: int, hosts: Hosts) -> Link:
        f = f"link[{i}]"
        t = self.table(data, f, {"a", "b", "bandwidth", "latency", "loss", "one_way"}, {"a", "b"})
        a, b = self.host(t["a"], f"{f}.a", hosts), self.host(t["b"], f"{f}.b", hosts)
        if a == b:
            raise self.error(f"{f}.b", "a link joins two different hosts")
        shape = {k: t.get(k) for k in ("bandwidth", "latency", "loss")}
        try:
            parse_link_spec(**shape)
        except ValueError as e:
            raise self.error(f, str(e)) from None
        return Link(a, b, **shape, one_way=bool(t.get("one_way", False)))

    def placement(self, value: Any, field: str, hosts: Hosts) -> list[str | None] | None:
        """A ``host``: one, a list to spread a group over, ``"auto"`` ([None]: the cluster
        places each), or absent (None: the file's domains in turn over every host)."""
        if value is None:
            return None
        if value == "auto":
            return [None]
        if isinstance(value, list) and value:
            return [self.host(h, f"{field}[{k}]", hosts) for k, h in enumerate(value)]
        return [self.host(value, field, hosts)]

    def domain(self, data: Any, i: int, hosts: Hosts, duration: float,
               position: int) -> list[Domain]:
        """An entry's domains: itself, or its ``count`` members; ``position``: how many
        domains the entries before it declared (where the default placement goes on)."""
        f = f"domain[{i}]"
        t = self.table(data, f, {"name", "count", "host", "config", "path", "image"}, {"name"})
        name = self.string(t["name"], f"{f}.name")
        count = t.get("count")
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or \
                    not 1 <= count <= MAX_COUNT:
                raise self.error(f"{f}.count", f"{count!r} is not a number of domains "
                                               f"(1..{MAX_COUNT})")
            count = max(1, round(count * self.sizing))
        placement = self.placement(t.get("host"), f"{f}.host", hosts)
        if ("config" in t) == ("path" in t):
            raise self.error(f, "give either config (inline xl.cfg) or path")
        if "path" in t:
            path = self.base / self.string(t["path"], f"{f}.path")
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise self.error(f"{f}.path", f"cannot read {path}: {e}") from None
        else:
            text = self.string(t["config"], f"{f}.config")
        size = None
        if "image" in t:
            try:
                size = parse_size(self.string(t["image"], f"{f}.image"))
            except ValueError as e:
                raise self.error(f"{f}.image", str(e)) from None
        members = []
        for k in range(1, (count or 1) + 1):
            host = hosts.names[(position + k - 1) % len(hosts.names)] if placement is None \
                else placement[(k - 1) % len(placement)]
            member = Domain(name if count is None else f"{name}-{k}", host, text, duration,
                            size, group=name, number=k)
            try:
                cfg = member.config()
            except (XlCfgError, ValueError) as e:
                raise self.error(f"{f}.{'path' if 'path' in t else 'config'}", str(e)) from None
            if size is not None and cfg.disk:
                raise self.error(f"{f}.image", "the config has disks of its own")
            members.append(member)
        return members

    def named(self, value: Any, field: str, groups: dict[str, list[str]]) -> list[str]:
        """The domains ``value`` names: a domain, or every domain of a group."""
        if isinstance(value, str):
            if value in groups:
                return groups[value]
            if any(value in members for members in groups.values()):
                return [value]
        raise self.error(field, f"{value!r} is not a domain of the scenario, nor a group; "
                                f"they are {', '.join(groups)}")

    def op(self, data: Any, i: int, hosts: Hosts, groups: dict[str, list[str]],
           duration: float) -> list[Op]:
        """The op, once for each domain it names (every domain of a group)."""
        f = f"op[{i}]"
        t = self.table(data, f, {"kind", "at", "domain", "args", "may_fail"},
                       {"kind", "at", "domain"})
        kind = self.choice(t["kind"], f"{f}.kind", OP_KINDS)
        at = self.at(t["at"], f"{f}.at", duration)
        domains = self.named(t["domain"], f"{f}.domain", groups)
        args = self.table(t.get("args", {}), f"{f}.args",
                          {"host", "live", "debug", "max_iters", "dirty_threshold", "policy"}
                          if kind == "migrate" else set())
        if kind == "migrate":
            if "host" not in args:
                raise self.error(f"{f}.args.host", "is required (where to migrate to)")
            self.host(args["host"], f"{f}.args.host", hosts)
        return [Op(kind, at, d, dict(args), bool(t.get("may_fail", False))) for d in domains]

    def at(self, value: Any, field: str, duration: float) -> float:
        at = self.number(value, field)
        if at >= duration:
            raise self.error(field, f"{value!r} is past the duration ({duration:g} s)")
        return at

    def fault(self, data: Any, i: int, hosts: Hosts, groups: dict[str, list[str]],
              duration: float) -> Fault:
        f = f"fault[{i}]"
        t = self.table(data, f, {"kind", "target", "at", "for", "every", "params"},
                       {"kind", "at"})
        kind = self.choice(t["kind"], f"{f}.kind", nemesis.KINDS)
        params = t.get("params", {})
        if not isinstance(params, dict):
            raise self.error(f"{f}.params", "must be a table")
        if kind in BETWEEN_HOSTS:
            if "target" in t:
                raise self.error(f"{f}.target", f"a {kind} names its hosts in params")
            self.between_hosts(kind, params, f"{f}.params", hosts)
            target: dict[str, Any] = {}
        else:
            if "target" not in t:
                raise self.error(f"{f}.target", "is required")
            target = self.table(t["target"], f"{f}.target", set(nemesis.TARGET_KEYS))
            try:
                nemesis.check_target(target)
            except ValueError as e:
                raise self.error(f"{f}.target", str(e)) from None
            if "host" in target:
                self.host(target["host"], f"{f}.target.host", hosts)
            if "name" in target and self.named(target["name"], f"{f}.target.name",
                                               groups) != [target["name"]]:
                raise self.error(f"{f}.target.name", "a fault names one domain, not a group")
        at = self.at(t["at"], f"{f}.at", duration)
        lasts = self.number(t["for"], f"{f}.for", positive=True) if "for" in t else None
        every = self.number(t["every"], f"{f}.every", positive=True) if "every" in t else None
        if kind in INSTANT_KINDS and lasts is not None:
            raise self.error(f"{f}.for", f"a {kind} is not healed: it has no `for`")
        if every is not None and kind not in INSTANT_KINDS and (lasts is None or lasts >= every):
            raise self.error(f"{f}.every", f"a repeated {kind} needs a `for` shorter than "
                                           f"`every` (it is healed before it comes again)")
        return Fault(kind, target, at, lasts, every, dict(params))

    def between_hosts(self, kind: str, params: dict, field: str, hosts: Hosts) -> None:
        """A partition's ``groups`` or a link fault's ``a`` and ``b``: the scenario's hosts."""
        if kind == "link":
            for key in ("a", "b"):
                if key not in params:
                    raise self.error(f"{field}.{key}", "is required (the link's hosts)")
                self.host(params[key], f"{field}.{key}", hosts)
            return
        groups = params.get("groups")
        if isinstance(groups, str):
            groups = [group.split(",") for group in groups.split("/")]
        if not isinstance(groups, list) or not all(isinstance(g, list) and g for g in groups):
            raise self.error(f"{field}.groups", 'want groups of hosts: [["h1"], ["h2"]]')
        try:
            partition_plan(hosts.names, groups)
        except ValueError as e:
            raise self.error(f"{field}.groups", str(e)) from None

    def check(self, data: Any, i: int, groups: dict[str, list[str]]) -> Check:
        f = f"check[{i}]"
        t = self.table(data, f, {"kind", "params"}, {"kind"})
        kind = self.choice(t["kind"], f"{f}.kind", tuple(CHECKERS))
        defaults = CHECKERS[kind].defaults
        params = self.table(t.get("params", {}), f"{f}.params", set(defaults))
        for key, value in params.items():
            field = f"{f}.params.{key}"
            if isinstance(defaults[key], list):
                if not isinstance(value, list):
                    raise self.error(field, f"{value!r} is not a list of domain names")
                params[key] = [d for name in value for d in self.named(name, field, groups)]
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise self.error(field, f"{value!r} is not a number")
            elif value < 0:
                raise self.error(field, f"{value!r} must be at least 0")
        return Check(kind, {**defaults, **params})
