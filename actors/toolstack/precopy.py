"""When to stop pre-copying: libxc's policy, and Clark's rate-adaptive one.

Xen (``tools/libs/guest/xg_sr_save.c``, reference 15.3) sends every page once, then rounds of
the pages dirtied meanwhile, asking a *precopy policy* before each round whether to go on,
stop and copy (suspend, then send the rest), or abort. libxc's default
(``simple_precopy_policy``) stops once the last round dirtied fewer than
``SPP_TARGET_DIRTY_COUNT`` pages or after ``SPP_MAX_ITERATIONS`` rounds.

Clark et al. (NSDI'05, section 4) adapt the bandwidth instead: the first round runs at a
minimum rate, each later one at the previous round's dirtying rate plus a fixed increment, and
the domain is stopped once the rate would exceed the maximum, or the dirty set is small. Here
that is :class:`ClarkPolicy`: it decides like libxc and also tells the sender the rate limit
of the next round (:meth:`ClarkPolicy.rate_limit`).

:func:`send_memory_live` is libxc's loop of the same name, step for step, over two
callables, so that its choices can be tested without a domain.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Sequence
from typing import Protocol

SPP_MAX_ITERATIONS = 5  # xg_sr_save.c
SPP_TARGET_DIRTY_COUNT = 50
CLARK_MIN_MBPS = 100.0  # Clark's evaluation: 100 Mbit/s to start, at most 500 Mbit/s, +50
CLARK_MAX_MBPS = 500.0
CLARK_INCREMENT_MBPS = 50.0
PAGE_BITS = 4096 * 8


class Decision(enum.Enum):
    """``XGS_POLICY_*`` (``xenguest.h``)."""

    ABORT = -1
    CONTINUE = 0
    STOP_AND_COPY = 1


@dataclasses.dataclass
class PrecopyStats:
    """``struct precopy_stats``: the round about to start, and how many pages the last one
    dirtied (-1: not known yet, before the CLEAN that ends it)."""

    iteration: int = 0
    dirty_count: int = -1


@dataclasses.dataclass
class Round:
    """What one pass sent (Clark's figures): pages, how many the guest dirtied while it
    ran, its duration and the rate it reached. ``live`` is False for the stop-and-copy pass."""

    round: int
    pages_sent: int
    pages_dirtied: int
    duration_s: float
    live: bool = True

    @property
    def rate_pages_s(self) -> float:
        return self.pages_sent / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {"round": self.round, "pages_sent": self.pages_sent,
                "pages_dirtied": self.pages_dirtied, "duration_s": round(self.duration_s, 6),
                "rate_pages_s": round(self.rate_pages_s, 1),
                "mib_s": round(self.rate_pages_s * 4096 / 2**20, 2), "live": self.live}


class Policy(Protocol):
    def __call__(self, stats: PrecopyStats) -> Decision: ...

    def rate_limit(self, rounds: Sequence[Round]) -> float | None:
        """Bytes per second the next round may send (None: as fast as it can)."""


@dataclasses.dataclass(frozen=True)
class SimplePolicy:
    """libxc's ``simple_precopy_policy``, with its two constants as knobs
    (``xenray migrate --max-iters N --dirty-threshold P``)."""

    max_iters: int = SPP_MAX_ITERATIONS
    dirty_threshold: int = SPP_TARGET_DIRTY_COUNT

    def __call__(self, stats: PrecopyStats) -> Decision:
        if 0 <= stats.dirty_count < self.dirty_threshold or stats.iteration >= self.max_iters:
            return Decision.STOP_AND_COPY
        return Decision.CONTINUE

    def rate_limit(self, rounds: Sequence[Round]) -> float | None:
        return None


@dataclasses.dataclass(frozen=True)
class ClarkPolicy(SimplePolicy):
    """Clark's dynamic rate limiting on top of libxc's stopping rule: round 0 at
    ``min_mbps``; each later round at the last round's dirtying rate plus
    ``increment_mbps``; once that reaches ``max_mbps`` the domain is stopped and copied."""

    min_mbps: float = CLARK_MIN_MBPS
    max_mbps: float = CLARK_MAX_MBPS
    increment_mbps: float = CLARK_INCREMENT_MBPS
    _last: list[float] = dataclasses.field(default_factory=list, compare=False)

    def __call__(self, stats: PrecopyStats) -> Decision:
        decision = SimplePolicy.__call__(self, stats)
        if decision is Decision.CONTINUE and self._last and self._last[-1] >= self.max_mbps:
            return Decision.STOP_AND_COPY
        return decision

    def rate_limit(self, rounds: Sequence[Round]) -> float | None:
        if not rounds:
            mbps = self.min_mbps
        else:
            last = rounds[-1]
            dirty_mbps = (last.pages_dirtied * PAGE_BITS / last.duration_s / 1e6
                          if last.duration_s > 0 else self.max_mbps)
            mbps = min(max(dirty_mbps + self.increment_mbps, self.min_mbps), self.max_mbps)
        self._last.append(mbps)
        return mbps * 1e6 / 8


def policy_named(name: str, max_iters: int = SPP_MAX_ITERATIONS,
                 dirty_threshold: int = SPP_TARGET_DIRTY_COUNT) -> SimplePolicy:
    """``libxc`` (the default) or ``clark``; ValueError for anything else."""
    if max_iters < 1 or dirty_threshold < 0:
        raise ValueError(f"--max-iters must be at least 1 and --dirty-threshold at least 0, "
                         f"not {max_iters} and {dirty_threshold}")
    if name == "libxc":
        return SimplePolicy(max_iters, dirty_threshold)
    if name == "clark":
        return ClarkPolicy(max_iters, dirty_threshold)
    raise ValueError(f"unknown precopy policy {name!r}: libxc or clark")


def send_memory_live(nr_pages: int, policy: Policy,
                     send: Callable[[Sequence[int], float | None], None],
                     clean: Callable[[], list[int]],
                     clock: Callable[[], float] = time.perf_counter) -> list[Round]:
    """libxc's ``send_memory_live``: send every page, then what each round dirtied, until the
    policy says stop (the pages of the round it stops in are still sent, live) or abort
    (``ABORT`` raises). ``send(pfns, rate_limit)`` writes pages; ``clean()`` is
    ``SHADOW_OP_CLEAN``: the pfns dirtied since the last one. Returns the rounds."""
    stats = PrecopyStats(iteration=0, dirty_count=nr_pages)
    dirty: Sequence[int] = range(nr_pages)
    rounds: list[Round] = []
    x = 0
    while True:
        decision = policy(stats)
        x += 1
        if decision is Decision.ABORT:
            raise RuntimeError("the precopy policy aborted the migration")
        if stats.dirty_count > 0:
            t0 = clock()
            send(dirty, policy.rate_limit(rounds))
            rounds.append(Round(x - 1, len(dirty), 0, clock() - t0))
        if decision is not Decision.CONTINUE:
            break
        stats.iteration, stats.dirty_count = x, -1
        if policy(stats) is not Decision.CONTINUE:
            break
        dirty = clean()
        stats.dirty_count = len(dirty)
        if rounds:
            rounds[-1].pages_dirtied = len(dirty)
    return rounds
