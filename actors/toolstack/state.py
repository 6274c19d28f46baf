"""The toolstack's pure core (xl and libxl): domain records, the create pipeline and what
undoes it, and what to do when a domain shuts down.

* **Records and names.** One :class:`Record` per domain this host's agent created, by name.
  :meth:`Toolstack.begin_create` refuses a name it already has (EEXIST) in the same step that
  takes it, under the shell's lock, so two creates of one name at once never both start; the
  cluster-wide reservation is the pipeline's first step (:attr:`Step.RESERVE`). Each record
  has a token of its own, which its reservation carries (``actors.registry.state``), so the
  late release of a destroyed record cannot free the name of a newer record of that name.
* **The pipeline** is libxl's ``domcreate``, in order (:class:`Step`); the shell runs each
  step (``actors.toolstack.builder``) and reports it done. If one fails, :meth:`Toolstack.abort`
  returns the effects that undo what was done, as libxl's error paths do
  (``domcreate_complete`` → ``libxl__domain_destroy``): the hypervisor's domain and its
  xenstore directories first, then xenstored's connection, then the vCPUs' process, then the
  name. A create that fails therefore leaves nothing behind.
* **Shutdown policy** (reference 12.3, ``xl_vmcontrol.c`` ``handle_domain_death``): a domain of
  a :attr:`Phase.RUNNING` record that the hypervisor reports shut down gets its ``on_*``
  action once: destroy, restart (rebuilt under the same, still reserved, name),
  rename-restart, preserve; a suspend is no action ("domain has suspended").
* **Restart of the agent.** A built record is also kept as libxl keeps a domain's config
  (``libxl__userdata_store``, "libxl-json"): :meth:`Record.userdata`, in a file beside the
  domain's memory. A restarted agent adopts every domain the hypervisor still has from it
  (:meth:`Toolstack.adopt`); a domain with no userdata was being built when the agent died and
  is destroyed, as its build's undo would have done. A domain that shut down meanwhile gets its
  ``on_*`` action once the agent's ``@releaseDomain`` watch fires on registration.

Events in, effects out: the shell calls these methods under one lock and carries out the
effects they return (:mod:`actors.toolstack.effects`). Nothing else changes the state.
:meth:`Toolstack.shutdowns` returns one group of effects per domain, so the shell can carry
out each domain's apart: one that fails does not keep the others from theirs.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable
from typing import Any

from actors.toolstack.effects import (ConfirmName, Create, DestroyDomain, Effect, KillVcpus, Note,
                                      Rebuild, ReleaseName, ReleaseXenstored, RenameDomain)
from protocols.errno import Errno, XenError
from protocols.hypercall import DomInfoFlag, ShutdownReason, dominf_shutdown_code
from protocols.libxl_types import Action, DomainConfig

REASON_LETTERS = "-rscwS"  # xl_info.c: the State column's fifth letter, by shutdown code
ON_SHUTDOWN = {ShutdownReason.poweroff: "on_poweroff", ShutdownReason.reboot: "on_reboot",
               ShutdownReason.crash: "on_crash", ShutdownReason.watchdog: "on_watchdog",
               ShutdownReason.soft_reset: "on_soft_reset"}


class Step(enum.Enum):
    """The create pipeline, in the order it runs (``libxl_create.c``)."""

    RESERVE = "reserve the name in the cluster"
    CREATEDOMAIN = "createdomain"
    MEMORY = "max_mem and populate_physmap"
    BOOT_PAGES = "console event channel, start_info and console pages"
    CONSOLE_PORT = "console event channel (a restore: the pages come in the stream)"
    XENSTORE = "xenstore directories"
    INTRODUCE = "take a process for the vCPUs; introduce to xenstored"
    VCPUS = "the process runs the domain's vCPUs"
    BACKENDS = "wait for the backends"
    STREAM_START = "start reading the stream into memory (while the rest is built)"
    STREAM = "the rest of the stream: the last pages, the vCPU context"
    UNPAUSE = "unpausedomain"
    INIT = "wait for the guest's init"


CREATE_STEPS = tuple(s for s in Step
                     if s not in (Step.CONSOLE_PORT, Step.STREAM_START, Step.STREAM))
# A restore (libxl's domcreate with a restore stream) reads the stream into memory from the
# moment the memory exists, while it builds everything else the domain needs (the vCPUs'
# process is started, paused, and told it resumes), so that a migration's round 0 is not
# held up by the build and its downtime is its last round plus the unpause.
RESTORE_STEPS = (Step.RESERVE, Step.CREATEDOMAIN, Step.MEMORY, Step.STREAM_START,
                 Step.CONSOLE_PORT, Step.XENSTORE, Step.INTRODUCE, Step.VCPUS, Step.BACKENDS,
                 Step.STREAM)


class Phase(enum.Enum):
    BUILDING = "building"  # the pipeline runs (first create, or a restart's rebuild)
    RUNNING = "running"  # built: xl list shows it, its shutdowns get their on_* action
    SHUTDOWN = "shutdown"  # its shutdown was handled and it is preserved (or suspended)
    MIGRATING = "migrating"  # being saved or migrated: its suspend is the toolstack's own


@dataclasses.dataclass
class Record:
    """xl's view of one domain: what was built so far, and what the pipeline learnt."""

    name: str
    config: DomainConfig
    phase: Phase = Phase.BUILDING
    done: list[Step] = dataclasses.field(default_factory=list)
    domid: int | None = None
    secret: str = ""
    uuid: str = ""
    memory_path: str = ""
    console_port: int = 0
    pid: int = 0
    endpoint: str = ""  # the process that runs its vCPUs (taken at INTRODUCE)
    steps_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # what each step took
    token: str = ""  # unique to this record: its reservation in the registry carries it
    steps: tuple[Step, ...] = CREATE_STEPS  # the pipeline this record's build runs
    resume: bool = False  # its vCPUs resume a saved domain (a restore) rather than boot
    restored: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the stream held

    USERDATA = ("name", "domid", "secret", "uuid", "memory_path", "console_port", "pid",
                "endpoint", "token")

    def userdata(self) -> dict[str, Any]:
        """What a restarted agent needs to adopt this (built) domain."""
        return {**{key: getattr(self, key) for key in self.USERDATA},
                "config": self.config.to_dict()}

    @classmethod
    def adopted(cls, data: dict[str, Any]) -> Record:
        """The record of a running domain, from its :meth:`userdata`."""
        return cls(config=DomainConfig.from_dict(data["config"]), phase=Phase.RUNNING,
                   done=list(CREATE_STEPS), **{key: data[key] for key in cls.USERDATA})


class Toolstack:
    """One host's toolstack records. Call every method under the shell's one lock."""

    def __init__(self, host: str, new_token: Callable[[], str] = lambda: uuid.uuid4().hex
                 ) -> None:
        self.host = host
        self.records: dict[str, Record] = {}
        self._new_token = new_token

    # -- queries -----------------------------------------------------------------------

    def record(self, name: str) -> Record:
        rec = self.records.get(name)
        if rec is None or rec.domid is None and rec.phase is not Phase.BUILDING:
            raise XenError(Errno.ESRCH, f"no domain named {name!r} on {self.host}")
        return rec

    def names(self) -> dict[str, int | None]:
        """Every name this host holds and its domid (None while the first build runs)."""
        return {r.name: r.domid for r in self.records.values()}

    def holds(self, token: str) -> bool:
        """Does the record that made a reservation with ``token`` still exist? (Under that
        name, or under the new one of a rename-restart whose registry rename is under way.)"""
        return any(rec.token == token for rec in self.records.values())

    def adopt(self, data: dict[str, Any]) -> Record:
        """A restarted agent takes back a domain it built (:meth:`Record.userdata`); EEXIST
        if it already has that name."""
        rec = Record.adopted(data)
        if rec.name in self.records:
            raise XenError(Errno.EEXIST, f"a domain named {rec.name!r} already exists on "
                                         f"{self.host}")
        self.records[rec.name] = rec
        return rec

    # -- the create pipeline -------------------------------------------------------------

    def begin_create(self, name: str, config: DomainConfig) -> Record:
        """Take ``name`` on this host for a new domain (EEXIST if it is taken here)."""
        if name in self.records:
            raise XenError(Errno.EEXIST, f"a domain named {name!r} already exists on "
                                         f"{self.host}")
        rec = self.records[name] = Record(name, config, token=self._new_token())
        return rec

    def begin_restore(self, name: str, config: DomainConfig, *, unpause: bool) -> Record:
        """Take ``name`` for a domain restored from a stream: :data:`RESTORE_STEPS`, then,
        if ``unpause``, the unpause and the wait for its init (``xl restore`` without
        ``-p``); a migration's receiver unpauses later, once the sender says so."""
        rec = self.begin_create(name, config)
        rec.steps = RESTORE_STEPS + ((Step.UNPAUSE, Step.INIT) if unpause else ())
        rec.resume = True
        return rec

    def pending(self, rec: Record) -> list[Step]:
        """The steps still to run for ``rec``, in order."""
        return [step for step in rec.steps if step not in rec.done]

    def step_done(self, rec: Record, step: Step, took_ms: float = 0.0, **learnt: Any) -> None:
        """``step`` succeeded in ``took_ms``; ``learnt`` are the record fields it produced
        (domid, pid...)."""
        for key, value in learnt.items():
            setattr(rec, key, value)
        rec.done.append(step)
        rec.steps_ms[step.name.lower()] = round(took_ms, 1)

    def finish(self, rec: Record) -> list[Effect]:
        """Every step done: the registry learns its domid. The record stays BUILDING until
        ``running``, so a shutdown reaction cannot release the name before it is confirmed."""
        return [ConfirmName(rec.name, rec.domid, rec.token),
                Note("domain created", {"domid": rec.domid, "name": rec.name})]

    def running(self, rec: Record) -> None:
        """The finish effects are carried out: the domain is no longer being built."""
        rec.phase = Phase.RUNNING

    def abort(self, rec: Record) -> list[Effect]:
        """A step failed: forget the record and undo every step done, newest resources
        first but the hypervisor's domain before its vCPUs' process (libxl's error path)."""
        self.records.pop(rec.name, None)
        return self._teardown(rec) + ([ReleaseName(rec.name, rec.token)]
                                      if Step.RESERVE in rec.done else [])

    def _teardown(self, rec: Record) -> list[Effect]:
        """``libxl_domain_destroy`` for what ``rec`` has: destroydomain (so the vCPUs'
        process exiting next is not a crash), xenstored's release, then the process."""
        effects: list[Effect] = []
        if Step.CREATEDOMAIN in rec.done:
            effects.append(DestroyDomain(rec.domid))
        if Step.INTRODUCE in rec.done:
            effects += [ReleaseXenstored(rec.domid), KillVcpus(rec.domid, rec.endpoint)]
        return effects

    # -- save and migration (xl save, xl migrate) -----------------------------------------

    def begin_migrate(self, name: str) -> Record:
        """The domain is to be saved or migrated: it must be running (EBUSY while it is being
        built, migrated already, or shut down). Its suspend is then no ``on_*`` matter."""
        rec = self.record(name)
        if rec.phase is not Phase.RUNNING:
            raise XenError(Errno.EBUSY, f"{name!r} is {rec.phase.value}; only a running "
                                        "domain can be saved or migrated")
        rec.phase = Phase.MIGRATING
        return rec

    def migrate_cancelled(self, rec: Record) -> None:
        """The save or migration failed and the domain runs on here (suspend cancelled)."""
        if self.records.get(rec.name) is rec:
            rec.phase = Phase.RUNNING

    def rename(self, old: str, new: str) -> Record:
        """xl's ``libxl_domain_rename`` of a record (the registry and ``~/name`` are the
        shell's): EEXIST if ``new`` is taken here."""
        if new in self.records:
            raise XenError(Errno.EEXIST, f"a domain named {new!r} already exists on "
                                         f"{self.host}")
        rec = self.records.pop(old)
        rec.name = new
        self.records[new] = rec
        return rec

    def migrated_away(self, rec: Record) -> list[Effect]:
        """The domain runs elsewhere now (or was saved): destroy this copy, give its name
        back."""
        return self.abort(rec) + [Note("domain migrated away",
                                       {"domid": rec.domid, "name": rec.name})]

    # -- destroy --------------------------------------------------------------------------

    def destroy(self, name: str) -> list[Effect]:
        """``xl destroy``: tear the domain down and give its name back."""
        rec = self.record(name)
        if rec.phase in (Phase.BUILDING, Phase.MIGRATING):
            doing = "built" if rec.phase is Phase.BUILDING else "saved or migrated"
            raise XenError(Errno.EBUSY, f"{name!r} is being {doing}; destroy it once that "
                                        "has ended")
        return self.abort(rec) + [Note("domain destroyed", {"domid": rec.domid, "name": name})]

    # -- shutdown policy (xl_vmcontrol.c handle_domain_death) ----------------------------

    def shutdowns(self, infos: dict[int, int]) -> list[list[Effect]]:
        """The hypervisor's domain list (domid -> getdomaininfo flags) after VIRQ_DOM_EXC:
        each running domain newly shut down gets its ``on_*`` action, one group of effects
        per domain (each group in order; the groups independent of each other)."""
        groups: list[list[Effect]] = []
        for rec in list(self.records.values()):
            flags = infos.get(rec.domid) if rec.domid is not None else None
            if rec.phase is Phase.RUNNING and flags is not None and \
                    flags & DomInfoFlag.shutdown:
                groups.append(self._on_shutdown(rec, dominf_shutdown_code(flags)))
        return groups

    def _on_shutdown(self, rec: Record, reason: int) -> list[Effect]:
        key = ON_SHUTDOWN.get(reason)
        rec.phase = Phase.SHUTDOWN
        if key is None:  # suspend is not an action
            return [Note("domain has suspended", {"domid": rec.domid, "name": rec.name})]
        action: Action = getattr(rec.config, key)
        note = Note("domain shut down", {"domid": rec.domid, "name": rec.name,
                                         "reason": ShutdownReason(reason).name,
                                         "action": action.xl_name})
        if action in (Action.DESTROY, Action.COREDUMP_DESTROY):
            return [note, *self.abort(rec)]
        if action in (Action.RESTART, Action.COREDUMP_RESTART, Action.SOFT_RESET):
            teardown = self._teardown(rec)
            rec.done, rec.phase, rec.domid = [Step.RESERVE], Phase.BUILDING, None
            return [note, *teardown, Rebuild(rec.name)]
        if action is Action.RENAME_RESTART:
            new = f"{rec.name}-{rec.domid}"
            old = self.records.pop(rec.name)
            self.records[new] = dataclasses.replace(old, name=new)
            return [note, RenameDomain(rec.domid, rec.name, new, rec.token)]
        return [note]  # PRESERVE: left shut down, for the user to inspect or destroy

    def renamed(self, old: str, new: str, ok: bool) -> list[Effect]:
        """The rename-restart's rename was done (``ok``), or ``new`` was taken: restart the
        original config under ``old`` (a fresh create), or keep the domain preserved."""
        if not ok:
            rec = self.records.pop(new)
            self.records[old] = dataclasses.replace(rec, name=old)
            return [Note("rename-restart failed: name taken; domain preserved",
                         {"name": old, "new": new})]
        rec = self.records[new]
        return [Note("domain renamed", {"domid": rec.domid, "old": old, "new": new}),
                Create(old, rec.config)]


def state_string(flags: int) -> str:
    """xl list's State column: ``r b p s <reason> d`` (``tools/xl/xl_info.c``)."""
    shutdown = bool(flags & DomInfoFlag.shutdown)
    code = dominf_shutdown_code(flags) if shutdown else 0
    return "".join([
        "r" if flags & DomInfoFlag.running else "-",
        "b" if flags & DomInfoFlag.blocked else "-",
        "p" if flags & DomInfoFlag.paused else "-",
        "s" if shutdown else "-",
        REASON_LETTERS[code] if code < len(REASON_LETTERS) else "?",  # a code xl has no letter for
        "d" if flags & DomInfoFlag.dying else "-",
    ])
