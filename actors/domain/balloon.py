"""The balloon driver: the guest gives memory back to Xen and takes it again, toward the
target the toolstack writes.

Linux ``drivers/xen/balloon.c`` and ``xen-balloon.c``. ``xl mem-set`` writes the target in
KiB to ``~/memory/target`` (reference 11.5); the driver's watch on it (on the kernel's
xenwatch thread, :mod:`.xenwatch`) sets ``target_pages`` and wakes the balloon thread, which
moves ``current_pages`` toward it one batch at a time (``frame_list``: the pfns that fit in a
page, 512):

* down (``decrease_reservation``): take pages the guest does not use (:class:`GuestPages`:
  never pfns 0..15, the start-info, console, kernel-data and init-directory pages and the
  grant table of :mod:`protocols.pv_layout`; never the drivers' pages or the init's memory
  regions), hand their pfns to Xen, and keep them in the balloon;
* up (``populate_physmap``): ask Xen for the pfns in the balloon again, last ballooned
  first, and give back to the guest those Xen populated. Xen gives no more than the domain's
  ``max_pages`` (the toolstack raises it first: ``libxl_set_memory_target``), and fewer
  extents than asked when it or the host has no more.

A batch that cannot be done whole (Xen populated nothing; the guest had no more pages to
give) leaves the thread waiting ``schedule_delay`` seconds, doubled each retry up to
``max_schedule_delay`` (32), and after ``max_retry_count`` (4) retries it gives up
(``BP_ECANCELED``) until the target changes: ``update_schedule``. With ``maxmem`` above
``memory`` the guest's address space (``XENMEM_memory_map``: the toolstack's e820) is larger
than start_info's ``nr_pages``: the pfns above are in the balloon from boot
(``balloon_add_regions``), so the guest may grow into them.

Decisions:

* The kernel's allocators give their pages from fixed ends (the drivers' pool from pfn 16 up,
  the init's regions from ``nr_pages`` down, ``actors.xenbus.frontend.PagePool``), so the
  balloon takes the free block just above the pool's and gives it back from its top; pages
  above ``nr_pages`` that it populated are free but no allocator's, and it takes those first.
* A target above every page the guest has (``nr_pages`` plus the extra pfns) is cut down to
  what it has, as Linux without memory hotplug (``reserve_additional_memory``).
* The thread passes the run gate before each batch: a paused or suspending domain does not
  balloon (Linux's balloon thread is freezable).
* The driver's state moves with the guest (Linux keeps its list of ballooned pages in kernel
  memory): at suspend the kernel writes it into the kernel data page (:class:`SavedBalloon`:
  the ballooned pfns and the populated pfns above ``nr_pages`` as runs) and a resumed driver
  goes on from it. If the runs do not fit in the page (a balloon scattered over more than
  253), or what the page holds is not a state this guest could have had, the resumed driver
  starts afresh from ``nr_pages``, as at boot, with a warning.
* :meth:`Balloon.step` is one iteration of Linux's ``balloon_thread`` and takes the hypercall
  and the pages it is given, so a test drives it without a hypervisor or a thread.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from actors.domain.rungate import Halted, RunGate
from actors.runtime import Runtime
from protocols.errno import Errno, XenError
from protocols.hypercall import DOMID_SELF, Hypercall, MemoryOp
from protocols.page import PAGE_SHIFT, PAGE_SIZE
from protocols.pv_layout import PFN_FIRST_FREE

BATCH = PAGE_SIZE // 8  # frame_list[PAGE_SIZE / sizeof(xen_pfn_t)]: pfns per hypercall
MAX_SCHEDULE_DELAY_S = 32
MAX_RETRY_COUNT = 4
TARGET = "memory/target"
STATIC_MAX = "memory/static-max"
WATCH_TOKEN = "balloon-target"
E820_RAM = 1
_KIB_SHIFT = PAGE_SHIFT - 10  # KiB -> pages


class State(enum.Enum):
    """``enum bp_state``."""

    DONE = "done"  # done, or nothing to do
    WAIT = "wait"
    EAGAIN = "eagain"  # an error: wait schedule_delay, then again
    ECANCELED = "ecanceled"  # given up until the target changes


class PageSource(Protocol):
    """The guest's pages the balloon may take (the guest does not use them) and give back."""

    nr_pages: int

    def populated(self) -> tuple[int, ...]: ...
    def take(self, nr: int) -> list[int]: ...
    def give(self, pfns: list[int]) -> None: ...
    def available(self) -> int: ...


class PoolLike(Protocol):
    """The part of :class:`actors.xenbus.frontend.PagePool` the balloon uses."""

    def balloon_take(self, nr: int) -> list[int]: ...
    def balloon_give(self, pfns: list[int]) -> None: ...
    def balloon_room(self) -> int: ...


class GuestPages:
    """The pages the balloon may take: the drivers' pool's spare block (``pool``), and the
    pfns from ``nr_pages`` up that Xen populated for the balloon and no allocator uses
    (taken first)."""

    def __init__(self, pool: PoolLike, nr_pages: int, populated: tuple[int, ...] = ()) -> None:
        self.pool, self.nr_pages = pool, nr_pages
        self._extra: list[int] = list(populated)  # populated pfns >= nr_pages, free

    def take(self, nr: int) -> list[int]:
        got = self._extra[len(self._extra) - min(nr, len(self._extra)):]
        del self._extra[len(self._extra) - len(got):]
        return got + (self.pool.balloon_take(nr - len(got)) if nr > len(got) else [])

    def give(self, pfns: list[int]) -> None:
        self._extra.extend(p for p in pfns if p >= self.nr_pages)
        low = [p for p in pfns if p < self.nr_pages]
        if low:
            self.pool.balloon_give(low)

    def available(self) -> int:
        return len(self._extra) + self.pool.balloon_room()

    def populated(self) -> tuple[int, ...]:
        """The populated pfns from ``nr_pages`` up, the next to take last."""
        return tuple(self._extra)


class Balloon:
    """One guest's balloon: ``current_pages`` (what Xen gave it, as it counts) moving toward
    ``target_pages``; ``extra``: pfns the guest has no page for at boot (in the balloon from
    the start). ``hypercall`` is the kernel's client. Thread-safe: :meth:`set_target` from
    xenwatch, :meth:`step` from the balloon thread, :meth:`statistics` from anywhere."""

    def __init__(self, hypercall: Callable[..., Any], pages: PageSource, current_pages: int,
                 *, extra: range | tuple[int, ...] = range(0), log: Any = None) -> None:
        self.hypercall, self.pages, self.log = hypercall, pages, log
        self.cv = threading.Condition()
        self.current_pages = current_pages
        self.target_pages = current_pages
        self.ballooned: list[int] = list(reversed(extra))  # a stack: the next to populate last
        self.state = State.DONE
        self.schedule_delay, self.retry_count = 1, 1
        self.stats = dict.fromkeys(("inflated", "deflated", "batches", "populate_short",
                                    "decrease_short"), 0)

    @classmethod
    def resumed(cls, hypercall: Callable[..., Any], pool: PoolLike, saved: SavedBalloon,
                log: Any = None) -> Balloon:
        """The driver as it was at suspend (the pool has its ballooned block again:
        :meth:`SavedBalloon.pool_block`)."""
        return cls(hypercall, GuestPages(pool, saved.nr_pages, saved.populated),
                   saved.current_pages, extra=saved.ballooned[::-1], log=log)

    def saved(self) -> SavedBalloon:
        """What a resumed driver goes on from (the kernel writes it at suspend)."""
        with self.cv:
            return SavedBalloon(self.pages.nr_pages, self.current_pages, tuple(self.ballooned),
                                self.pages.populated())

    # -- the target (xen-balloon.c) ---------------------------------------------------------

    def set_target(self, pages: int) -> None:
        """``balloon_set_new_target``: the thread moves toward ``pages`` from now on."""
        with self.cv:
            self.target_pages = max(0, pages)
            self.cv.notify_all()

    def credit(self) -> int:
        """``current_credit``: pages to take (positive) or give back (negative)."""
        return self.target_pages - self.current_pages

    # -- one iteration of balloon_thread ---------------------------------------------------

    def step(self) -> State:
        """Move one batch toward the target; the state the thread then waits in."""
        with self.cv:
            credit = self.credit()
            if credit > 0:
                if self.ballooned:
                    self.state = self._increase(credit)
                else:  # reserve_additional_memory without hotplug: no more to have
                    self.target_pages = self.current_pages
                    self.state = State.ECANCELED
            elif credit < 0:
                n = min(-credit, self.pages.available())
                self.state = self._decrease(n) if n else State.EAGAIN
            self._update_schedule()
            return self.state

    def timeout(self) -> float:
        """How long the thread waits before the next step unless the credit changes."""
        if self.state is State.EAGAIN:
            return float(self.schedule_delay)
        return 1.0 if self.state is State.WAIT else 3600.0

    def _increase(self, nr: int) -> State:
        """``increase_reservation``: populate up to a batch of ballooned pfns, last in first."""
        pfns = self.ballooned[-min(nr, BATCH, len(self.ballooned)):][::-1]
        rc = self._memory_op(MemoryOp.populate_physmap, pfns)
        if rc <= 0:
            self.stats["populate_short"] += 1
            return State.EAGAIN
        got = pfns[:rc]
        del self.ballooned[len(self.ballooned) - rc:]
        self.pages.give(got)
        self.current_pages += rc
        self.stats["deflated"] += rc
        self.stats["batches"] += 1
        return State.DONE

    def _decrease(self, nr: int) -> State:
        """``decrease_reservation``: a batch of pages the guest does not use, given back."""
        want = min(nr, BATCH)
        pfns = self.pages.take(want)
        state = State.DONE if len(pfns) == want else State.EAGAIN
        if not pfns:
            return State.EAGAIN
        rc = self._memory_op(MemoryOp.decrease_reservation, pfns)
        if rc < len(pfns):  # Linux: BUG_ON(ret != nr_pages); here the rest go back unused
            self.stats["decrease_short"] += 1
            self.pages.give(pfns[max(rc, 0):][::-1])
            if self.log is not None:
                self.log.warning("Xen took back fewer pages than the balloon gave",
                                 given=len(pfns), taken=rc)
            state = State.EAGAIN
        rc = max(rc, 0)
        self.ballooned.extend(pfns[:rc])
        self.current_pages -= rc
        self.stats["inflated"] += rc
        self.stats["batches"] += 1
        return state

    def _memory_op(self, op: MemoryOp, pfns: list[int]) -> int:
        try:
            return self.hypercall(Hypercall.memory_op, op, extent_start=pfns,
                                  nr_extents=len(pfns), extent_order=0, mem_flags=0,
                                  domid=DOMID_SELF)
        except XenError as e:
            if self.log is not None:
                self.log.warning("balloon hypercall failed", op=op.name, error=str(e))
            return 0

    def _update_schedule(self) -> None:
        """``update_schedule``: the retry delay, doubled per retry; give up after a few."""
        if self.state in (State.WAIT, State.ECANCELED):
            return
        if self.state is State.DONE:
            self.schedule_delay, self.retry_count = 1, 1
            return
        self.retry_count += 1
        if self.retry_count > MAX_RETRY_COUNT:
            self.schedule_delay, self.retry_count = 1, 1
            self.state = State.ECANCELED
            return
        self.schedule_delay = min(self.schedule_delay * 2, MAX_SCHEDULE_DELAY_S)
        self.state = State.EAGAIN

    # -- what it reports (/sys/devices/system/xen_memory/xen_memory0) ---------------------

    def statistics(self) -> dict[str, Any]:
        with self.cv:
            return {"current_kb": self.current_pages << _KIB_SHIFT,
                    "target_kb": self.target_pages << _KIB_SHIFT,
                    "low_kb": len(self.ballooned) << _KIB_SHIFT, "high_kb": 0,
                    "ballooned_pages": len(self.ballooned), "state": self.state.value,
                    "schedule_delay": self.schedule_delay,
                    "max_schedule_delay": MAX_SCHEDULE_DELAY_S,
                    "retry_count": self.retry_count, "max_retry_count": MAX_RETRY_COUNT,
                    **self.stats}

    # -- the thread ------------------------------------------------------------------------

    def run(self, gate: RunGate) -> None:
        """``balloon_thread``: wait for the credit to change (or the state's timeout), pass
        the gate, step; until the domain shuts down."""
        try:
            while True:
                with self.cv:
                    credit = 0 if self.state is State.DONE else self.credit()
                    self.cv.wait_for(lambda: self.credit() != credit, self.timeout())
                gate.enter(vcpu=False)
                try:
                    self.step()
                except Exception:  # the driver lives on, and tries again later
                    if self.log is not None:
                        self.log.exception("balloon step failed")
                    with self.cv:
                        self.state = State.EAGAIN
                        self._update_schedule()
        except Halted:
            pass


@dataclasses.dataclass(frozen=True, slots=True)
class SavedBalloon:
    """The driver's state across a suspend, in the kernel data page from
    ``actors.domain.kdata.BALLOON_OFFSET`` (module docstring).

    Layout, little-endian: ``magic[8]`` = ``balloon\\0``, ``u32 nr_pages``, ``u32
    current_pages``, ``u32`` runs of ``ballooned``, ``u32`` runs of ``populated``, then the runs,
    ``u64 first pfn, s64 count`` each (a negative count: pfns going down). ``ballooned`` is the
    stack from its bottom, ``populated`` the free pfns from ``nr_pages`` up (GuestPages')."""

    nr_pages: int
    current_pages: int
    ballooned: tuple[int, ...]
    populated: tuple[int, ...]

    MAGIC: ClassVar[bytes] = b"balloon\0"
    _HEAD: ClassVar[struct.Struct] = struct.Struct("<8sIIII")
    _RUN: ClassVar[struct.Struct] = struct.Struct("<Qq")

    @classmethod
    def max_runs(cls, area: memoryview) -> int:
        return (len(area) - cls._HEAD.size) // cls._RUN.size

    def write(self, area: memoryview) -> bool:
        """Into ``area``; False, and ``area`` holds no state, if the runs do not fit."""
        ballooned, populated = _runs(self.ballooned), _runs(self.populated)
        if len(ballooned) + len(populated) > self.max_runs(area):
            area[:self._HEAD.size] = bytes(self._HEAD.size)
            return False
        self._HEAD.pack_into(area, 0, self.MAGIC, self.nr_pages, self.current_pages,
                             len(ballooned), len(populated))
        for i, run in enumerate(ballooned + populated):
            self._RUN.pack_into(area, self._HEAD.size + i * self._RUN.size, *run)
        return True

    @classmethod
    def read(cls, area: memoryview, nr_pages: int, max_pfn: int) -> SavedBalloon | None:
        """The state a suspended driver left for a guest of ``nr_pages`` whose pfns end at
        ``max_pfn``; None if it left none; EINVAL if it is not a state such a guest can have
        (the page came in a migration stream: every pfn is checked before it is used)."""
        magic, nr, current, n_ballooned, n_populated = cls._HEAD.unpack_from(area)
        if magic != cls.MAGIC:
            return None
        if nr != nr_pages:
            raise XenError(Errno.EINVAL, f"balloon state for {nr} pages, not {nr_pages}")
        if n_ballooned + n_populated > cls.max_runs(area):
            raise XenError(Errno.EINVAL, "balloon state: more runs than the page holds")
        runs = [cls._RUN.unpack_from(area, cls._HEAD.size + i * cls._RUN.size)
                for i in range(n_ballooned + n_populated)]
        if any(n == 0 or min(first, first + n + (n < 0)) < PFN_FIRST_FREE
               or max(first + 1, first + n) > max_pfn for first, n in runs):
            raise XenError(Errno.EINVAL, f"balloon state: a pfn outside {PFN_FIRST_FREE}.."
                                         f"{max_pfn - 1}")
        if sum(abs(n) for _, n in runs) > max_pfn:
            raise XenError(Errno.EINVAL, "balloon state: more pfns than the guest has")
        ballooned = tuple(p for first, n in runs[:n_ballooned] for p in _pfns(first, n))
        populated = tuple(p for first, n in runs[n_ballooned:] for p in _pfns(first, n))
        low = [p for p in ballooned if p < nr_pages]
        high = len(ballooned) - len(low) + len(populated)
        if (len(set(ballooned + populated)) != len(ballooned) + len(populated)
                or min(populated, default=nr_pages) < nr_pages
                or high != max(0, max_pfn - nr_pages)
                or low != list(range(low[0] if low else 0, low[-1] + 1 if low else 0))
                or current != nr_pages - len(low) + len(populated)):
            raise XenError(Errno.EINVAL, "balloon state: not a state of this guest's balloon")
        return cls(nr, current, ballooned, populated)

    def pool_block(self) -> tuple[int, int]:
        """The drivers' pool's pfns in the balloon, ``[lo, hi)`` (PagePool's block)."""
        low = [p for p in self.ballooned if p < self.nr_pages]
        return (low[0], low[-1] + 1) if low else (PFN_FIRST_FREE, PFN_FIRST_FREE)


def _runs(pfns: tuple[int, ...]) -> list[tuple[int, int]]:
    """``pfns`` as (first, count) runs, in order; a negative count goes down."""
    runs: list[tuple[int, int]] = []
    for pfn in pfns:
        if runs:
            first, n = runs[-1]
            if n == 1 and pfn == first - 1:  # a run of one goes either way
                n = -1
            if pfn == first + n:
                runs[-1] = (first, n + (1 if n > 0 else -1))
                continue
        runs.append((pfn, 1))
    return runs


def _pfns(first: int, n: int) -> range:
    return range(first, first + n) if n > 0 else range(first, first + n, -1)


def memory_map_pfns(hypercall: Callable[..., Any]) -> int | None:
    """The end of the guest's RAM in its e820 (``XENMEM_memory_map``), in pfns; None if the
    toolstack set no map (``-ENOSYS``)."""
    try:
        answer = hypercall(Hypercall.memory_op, MemoryOp.memory_map, nr_entries=128)
    except XenError:
        return None
    ends = [e["addr"] + e["size"] for e in answer["map"] if e["type"] == E820_RAM]
    return max(ends) // PAGE_SIZE if ends else None


def guest_max_pfn(hypercall: Callable[..., Any], nr_pages: int, mapped_pfns: int) -> int:
    """The end of the guest's pfns: its e820's end or ``mapped_pfns`` (the memory it maps),
    whichever is less, and at least ``nr_pages``."""
    return max(nr_pages, min(memory_map_pfns(hypercall) or nr_pages, mapped_pfns))


def start(hypercall: Callable[..., Any], xs: Any, xenwatch: Any, gate: RunGate,
          runtime: Runtime, pool: PoolLike, nr_pages: int, mapped_pfns: int,
          log: Any, printk: Callable[[str], None] = lambda line: None,
          saved: SavedBalloon | None = None) -> Balloon:
    """``balloon_init`` and ``xen_balloon_init``: the balloon over the guest's pages (the
    pfns from ``nr_pages`` up to :func:`guest_max_pfn` in the balloon; a resumed guest's as
    ``saved`` left them), its thread, and the watch on ``memory/target``. ``printk``: where
    Linux's boot line goes (the kernel keeps its console for the init's lines, so it passes
    none)."""
    printk("xen:balloon: Initialising balloon driver")
    if saved is not None:
        balloon = Balloon.resumed(hypercall, pool, saved, log=log)
    else:
        max_pfn = guest_max_pfn(hypercall, nr_pages, mapped_pfns)
        balloon = Balloon(hypercall, GuestPages(pool, nr_pages), nr_pages,
                          extra=range(nr_pages, max_pfn), log=log)
    if log is not None:
        log.info("balloon driver up", nr_pages=nr_pages, current_pages=balloon.current_pages,
                 ballooned=len(balloon.ballooned))

    def watch_target() -> None:
        """``watch_target``: the target in KiB, in pages (PV: no ``target_diff``)."""
        try:
            kib = int(xs.read(TARGET))
        except (XenError, ValueError):
            return  # no target (yet): nothing to do
        balloon.set_target(kib >> _KIB_SHIFT)

    runtime.spawn(balloon.run, gate, name="xen-balloon")
    xenwatch.register_watch(TARGET, WATCH_TOKEN, watch_target)
    return balloon
