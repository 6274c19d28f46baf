"""A scenario file (TOML), read and checked whole before anything is started.

A scenario is an experiment written down: the hosts and the links between them, the domains
(an inline xl.cfg or a path, plus an optional fresh disk image each), the operations and
faults to carry out at given seconds into the run, the checkers that judge it, how long it
lasts, and the seed its random choices come from. Every mistake is one line naming the file
and the field (``blk.toml: fault[1].at: 40 is past the duration (30 s)``), raised as
:class:`ScenarioError` before a host is booted.

Times (``duration``, ``at``, ``for``, ``every``) are seconds counted from the moment every
domain of the scenario is up (the workload's start).
"""

from __future__ import annotations

import dataclasses
import pathlib
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


@dataclasses.dataclass(frozen=True)
class Domain:
    """A domain of the scenario: created at the start, or by a ``create`` op that names it."""

    name: str
    host: str
    config_text: str  # the xl.cfg text, with the scenario's name (and image) appended
    image_bytes: int | None = None  # a fresh sparse raw image of this size, as xvda

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

    def scaled(self, factor: float) -> Scenario:
        """The same run with every time multiplied by ``factor`` (a shortened run)."""
        if factor <= 0:
            raise ScenarioError(f"{self.source}: scale: {factor:g} must be above 0")

        def s(x: float | None) -> float | None:
            return None if x is None else x * factor

        return dataclasses.replace(
            self, duration=self.duration * factor,
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


def load(name_or_path: str | pathlib.Path) -> Scenario:
    path = resolve(name_or_path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: cannot read it: {e}") from None
    return parse(text, source=str(path), base=path.parent)


def parse(text: str, *, source: str = "<string>",
          base: pathlib.Path | None = None) -> Scenario:
    """A checked :class:`Scenario` from TOML text; ``base``: where ``path =`` is relative to."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{source}: not valid TOML: {e}") from None
    return _Reader(source, base or pathlib.Path.cwd()).scenario(data)


class _Reader:
    """Typed fields out of the parsed TOML, each error naming its field."""

    def __init__(self, source: str, base: pathlib.Path) -> None:
        self.source, self.base = source, base

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
        domains = tuple(self.domain(d, i, hosts) for i, d in enumerate(self.tables(top, "domain")))
        names = [d.name for d in domains]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise self.error(f"domain[{i}].name", f"{name!r} is used twice")
        links = tuple(self.link(x, i, hosts) for i, x in enumerate(self.tables(top, "link")))
        ops = tuple(self.op(x, i, hosts, names, duration)
                    for i, x in enumerate(self.tables(top, "op")))
        created = [op.domain for op in ops if op.kind == "create"]
        for i, op in enumerate(ops):
            if op.kind == "create" and created.count(op.domain) > 1:
                raise self.error(f"op[{i}].domain", f"{op.domain!r} is created by two ops")
        faults = tuple(self.fault(x, i, hosts, names, duration)
                       for i, x in enumerate(self.tables(top, "fault")))
        checks = tuple(self.check(x, i, names) for i, x in enumerate(self.tables(top, "check")))
        return Scenario(name=self.string(top["name"], "name"), seed=seed, duration=duration,
                        hosts=hosts, domains=domains, links=links, ops=ops, faults=faults,
                        checks=checks, description=str(top.get("description", "")),
                        source=self.source)

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

    def domain(self, data: Any, i: int, hosts: Hosts) -> Domain:
        f = f"domain[{i}]"
        t = self.table(data, f, {"name", "host", "config", "path", "image"}, {"name"})
        name = self.string(t["name"], f"{f}.name")
        host = self.host(t.get("host", hosts.names[i % len(hosts.names)]), f"{f}.host", hosts)
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
        domain = Domain(name, host, f'{text}\nname = "{name}"\n')
        try:
            cfg = domain.config()
        except XlCfgError as e:
            raise self.error(f"{f}.{'path' if 'path' in t else 'config'}", str(e)) from None
        if "image" in t:
            if cfg.disk:
                raise self.error(f"{f}.image", "the config has disks of its own")
            try:
                size = parse_size(self.string(t["image"], f"{f}.image"))
            except ValueError as e:
                raise self.error(f"{f}.image", str(e)) from None
            domain = dataclasses.replace(domain, image_bytes=size)
        return domain

    def op(self, data: Any, i: int, hosts: Hosts, names: list[str], duration: float) -> Op:
        f = f"op[{i}]"
        t = self.table(data, f, {"kind", "at", "domain", "args", "may_fail"},
                       {"kind", "at", "domain"})
        kind = self.choice(t["kind"], f"{f}.kind", OP_KINDS)
        at = self.at(t["at"], f"{f}.at", duration)
        domain = self.choice(t["domain"], f"{f}.domain", tuple(names))
        args = self.table(t.get("args", {}), f"{f}.args",
                          {"host", "live", "debug", "max_iters", "dirty_threshold", "policy"}
                          if kind == "migrate" else set())
        if kind == "migrate":
            if "host" not in args:
                raise self.error(f"{f}.args.host", "is required (where to migrate to)")
            self.host(args["host"], f"{f}.args.host", hosts)
        return Op(kind, at, domain, dict(args), bool(t.get("may_fail", False)))

    def at(self, value: Any, field: str, duration: float) -> float:
        at = self.number(value, field)
        if at >= duration:
            raise self.error(field, f"{value!r} is past the duration ({duration:g} s)")
        return at

    def fault(self, data: Any, i: int, hosts: Hosts, names: list[str],
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
            if "name" in target:
                self.choice(target["name"], f"{f}.target.name", tuple(names))
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

    def check(self, data: Any, i: int, names: list[str]) -> Check:
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
                for name in value:
                    self.choice(name, field, tuple(names))
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise self.error(field, f"{value!r} is not a number")
            elif value < 0:
                raise self.error(field, f"{value!r} must be at least 0")
        return Check(kind, {**defaults, **params})
