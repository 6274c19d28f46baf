"""Xen's credit2 scheduler, the default since Xen 4.12 (``xen/common/sched/credit2.c``;
reference 16.2).

Credit is time in ns: a running vCPU burns ``time * max_weight / weight`` (``burn_credits``),
so the heaviest burns 1 per ns. The run queue is sorted by credit; when the best candidate has
none left, every vCPU of the run queue gets ``CREDIT_INIT`` (10 ms) more, clipped to 10.5 ms
(``reset_credit``). A vCPU runs until its credit falls to the next one's, within [500 us,
10 ms] and not below the ratelimit (``csched2_runtime``). A cap is a per-domain budget,
``cap``% of 10 ms, refilled every 10 ms; a vCPU that finds it empty is parked until the
refill (``unit_grab_budget``, ``replenish_domain_budget``). Names follow ``credit2.c``.

Decisions:

* One run queue per host (one socket, Xen's default ``credit2_runqueue=socket``): no load
  tracking, as averages serve only to balance between run queues. No SMT, so an idle
  untickled pCPU is also an idle core (``smt_idle``).
* No soft affinity: every pCPU is in every vCPU's soft affinity, as by default.
* A vCPU added to a capped domain takes its share of the budget (Xen leaves it uncapped until
  the cap is set again; libxl sets it after creating the vCPUs).
* A flag set in ``csched2_schedule`` and read in ``csched2_context_saved`` lives within one
  call here, so ``CSFLAG_scheduled`` is ``is_running``.
"""

from __future__ import annotations

import collections
import dataclasses

from actors.hypervisor.sched.base import (MICROSECS, MILLISECS, SCHED_DEFAULT_RATELIMIT_US, Dom,
                                          SchedCore, Unit, check_ratelimit, cycle)

XEN_SCHEDULER_CREDIT2 = 6
CSCHED2_MIN_TIMER = 500 * MICROSECS
CSCHED2_CREDIT_INIT = 10 * MILLISECS
CSCHED2_CREDIT_MIN = -CSCHED2_CREDIT_INIT
CSCHED2_IDLE_CREDIT = CSCHED2_CREDIT_MIN - 1
CSCHED2_CARRYOVER_MAX = CSCHED2_MIN_TIMER
CSCHED2_MIGRATE_RESIST = 500 * MICROSECS
CSCHED2_MIGRATE_COMPENSATION = 50 * MICROSECS
CSCHED2_RATELIMIT_TICKLE_TOLERANCE = 50 * MICROSECS
CSCHED2_CREDIT_RESET = 0
CSCHED2_MAX_TIMER = CSCHED2_CREDIT_INIT
CSCHED2_BDGT_REPL_PERIOD = 10 * MILLISECS


def _repl_timer(domid: int) -> tuple:
    return (0, "repl", domid)


@dataclasses.dataclass(eq=False)
class Csched2Dom(Dom):
    tot_budget: int = 0
    budget: int = 0  # the pool the domain's units grab from
    next_repl: int = 0
    parked_units: list[Csched2Unit] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class Csched2Unit(Unit):
    credit: int = CSCHED2_CREDIT_INIT
    residual: int = 0
    start_time: int = 0
    budget: int | None = None  # what it grabbed of its domain's; None: no cap (STIME_MAX)
    budget_quota: int = 0
    tickled_cpu: int = -1
    yielding: bool = False  # CSFLAG_unit_yield
    delayed_runq_add: bool = False  # back into the run queue once it has left its pCPU


class Credit2(SchedCore):
    name = "credit2"
    sched_id = XEN_SCHEDULER_CREDIT2

    def __init__(self, pcpus: int, *, ratelimit_us: int = SCHED_DEFAULT_RATELIMIT_US) -> None:
        check_ratelimit(ratelimit_us)
        super().__init__(pcpus)
        self.ratelimit = ratelimit_us * MICROSECS
        self.runq: list[Csched2Unit] = []  # runnable, waiting, by credit
        self.svc: dict[Csched2Unit, None] = {}  # every unit assigned to the run queue, in order
        self._weights: collections.Counter[int] = collections.Counter()  # of self.svc's units
        self.max_weight = 1
        self.idle = set(self.all_cpus)
        self.tickled: set[int] = set()
        self.pick_bias = 0
        self.stats.update(credit_resets=0, tickles=0, migrations=0, parks=0, unparks=0,
                          replenishments=0)

    def get_global(self) -> dict:
        return {"ratelimit_us": self.ratelimit // MICROSECS}

    def set_global(self, now: int, *, ratelimit_us: int | None = None) -> None:
        """``csched2_sys_cntl``: ratelimit 0 (off) or 100..500000 us."""
        if ratelimit_us is not None:
            check_ratelimit(ratelimit_us)
            self.ratelimit = ratelimit_us * MICROSECS

    # -- domains and units ----------------------------------------------------------------

    def _alloc_dom(self, domid: int) -> Dom:
        return Csched2Dom(domid)

    def _free_dom(self, dom: Csched2Dom) -> None:
        self._set_timer(_repl_timer(dom.domid), None)

    def _alloc_unit(self, dom: Dom, vcpu: int, processor: int) -> Unit:
        return Csched2Unit(dom, vcpu, processor)

    def _insert_unit(self, u: Csched2Unit, now: int) -> None:
        """``csched2_unit_insert``: placed, and assigned to the run queue (``runq_assign``)."""
        u.processor = self._pick_resource(u)
        self.svc[u] = None
        self._count_weight(u.dom.weight, 1)
        self._update_max_weight()
        if u.dom.cap:
            self._set_quotas(u.dom)
            u.budget = 0

    def _remove_unit(self, u: Csched2Unit, now: int) -> None:
        del self.svc[u]
        self._count_weight(u.dom.weight, -1)
        self._update_max_weight()

    def _count_weight(self, weight: int, n: int) -> None:
        self._weights[weight] += n
        if not self._weights[weight]:
            del self._weights[weight]

    def _update_max_weight(self) -> None:
        """``update_max_weight``, over the weights in use rather than every unit (a host with
        hundreds of domains has a handful of weights)."""
        self.max_weight = max(self._weights, default=1)

    def _set_quotas(self, dom: Csched2Dom) -> None:
        """Each unit grabs 1/N of the budget at a time, at least ``MIN_TIMER``."""
        for u in dom.units:
            u.budget_quota = max(dom.tot_budget // len(dom.units), CSCHED2_MIN_TIMER)

    def _dom_cntl(self, dom: Csched2Dom, now: int, weight: int | None, cap: int | None) -> None:
        """``csched2_dom_cntl``."""
        if weight is not None:
            assigned = sum(1 for u in dom.units if u in self.svc)
            self._count_weight(dom.weight, -assigned)
            dom.weight = weight
            self._count_weight(weight, assigned)
            self._update_max_weight()
        if cap is None:
            return
        if cap:
            dom.tot_budget = CSCHED2_BDGT_REPL_PERIOD * cap // 100
            self._set_quotas(dom)
            if not dom.cap:
                # the domain gets its budget; its units must grab from it before they run
                dom.budget = dom.tot_budget
                dom.next_repl = now + CSCHED2_BDGT_REPL_PERIOD
                self._set_timer(_repl_timer(dom.domid), dom.next_repl)
                for u in dom.units:
                    if u.is_running:
                        self._burn_credits(u, now)
                        self._tickle_cpu(u.processor)
                    u.budget = 0
            dom.cap = cap
        elif dom.cap:
            self._set_timer(_repl_timer(dom.domid), None)
            for u in dom.units:
                u.budget, u.budget_quota = None, 0
            dom.cap = 0
            parked, dom.parked_units = dom.parked_units, []
            self._unpark_parked_units(parked, now)

    # -- credit and budget ----------------------------------------------------------------

    def _burn_credits(self, u: Csched2Unit, now: int) -> None:
        """``burn_credits`` / ``t2c_update``: the remainder of the division carries over."""
        delta = now - u.start_time
        if delta <= 0:
            return
        val, u.residual = divmod(delta * self.max_weight + u.residual, u.dom.weight)
        u.credit = max(u.credit - val, CSCHED2_CREDIT_MIN)
        if u.budget is not None:
            u.budget -= delta
        u.start_time = now

    def _reset_credit(self, now: int, snext: Csched2Unit) -> None:
        """``reset_credit``: every unit of the run queue, running or not, gets CREDIT_INIT
        (twice that if ``snext`` is at the minimum), clipped to CREDIT_INIT + CARRYOVER_MAX."""
        reset = CSCHED2_CREDIT_INIT
        if snext.credit == CSCHED2_CREDIT_MIN:
            reset += CSCHED2_CREDIT_INIT
        for svc in self.svc:
            if self.curr[svc.processor] is svc:
                self._burn_credits(svc, now)
                if svc.budget is not None and svc.budget <= 0:
                    self._tickle_cpu(svc.processor)
            svc.credit = min(svc.credit + reset, CSCHED2_CREDIT_INIT + CSCHED2_CARRYOVER_MAX)
            svc.start_time = now
        self.stats["credit_resets"] += 1

    def _park_unit(self, u: Csched2Unit) -> None:
        u.paused = True
        if u in self.runq:
            self.runq.remove(u)
        u.dom.parked_units.insert(0, u)
        self.stats["parks"] += 1

    def _unit_grab_budget(self, u: Csched2Unit) -> bool:
        """Its quota from the domain's pool, less what it overran; parked if the pool is
        empty."""
        if u.budget > 0:
            return True
        dom = u.dom
        dom.budget += u.budget
        if dom.budget > 0:
            u.budget = min(u.budget_quota, dom.budget)
            dom.budget -= u.budget
        else:
            u.budget = 0
            self._park_unit(u)
        return u.budget > 0

    def _unit_return_budget(self, u: Csched2Unit) -> list[Csched2Unit]:
        """What it did not use goes back to the pool; the parked units to try again."""
        dom = u.dom
        dom.budget += u.budget
        u.budget = 0
        if dom.budget > 0:
            parked, dom.parked_units = dom.parked_units, []
            return parked
        return []

    def _unpark_parked_units(self, units: list[Csched2Unit], now: int) -> None:
        for u in units:
            u.paused = False
            self.stats["unparks"] += 1
            if u.runnable:
                self._runq_insert(u)
                self._runq_tickle(u, now)

    def _replenish_domain_budget(self, dom: Csched2Dom, now: int) -> None:
        """Refill the pool once per period missed (a late timer catches up), at most to
        ``tot_budget``, and unpark."""
        self.stats["replenishments"] += 1
        periods = (now - dom.next_repl) // CSCHED2_BDGT_REPL_PERIOD + 1  # Xen loops
        dom.next_repl += periods * CSCHED2_BDGT_REPL_PERIOD
        dom.budget += periods * dom.tot_budget
        if dom.budget > 0:
            dom.budget = min(dom.budget, dom.tot_budget)
            parked, dom.parked_units = dom.parked_units, []
            self._unpark_parked_units(parked, now)
        self._set_timer(_repl_timer(dom.domid), dom.next_repl)

    def _fire(self, key: tuple, deadline: int, now: int) -> None:
        self._replenish_domain_budget(self.doms[key[2]], now)

    # -- run queue ------------------------------------------------------------------------

    def _runq_insert(self, u: Csched2Unit) -> None:
        """By credit, behind those with as much."""
        i = next((i for i, s in enumerate(self.runq) if u.credit > s.credit), len(self.runq))
        self.runq.insert(i, u)

    def _tickle_cpu(self, cpu: int) -> None:
        self.tickled.add(cpu)
        self._raise_softirq(cpu)

    def _is_preemptable(self, cur: Csched2Unit, now: int) -> bool:
        """It has run for the ratelimit (less a tolerance)."""
        if self.ratelimit <= CSCHED2_RATELIMIT_TICKLE_TOLERANCE:
            return True
        return now - cur.state_entry_time > self.ratelimit - CSCHED2_RATELIMIT_TICKLE_TOLERANCE

    def _tickle_score(self, new: Csched2Unit, cpu: int, now: int) -> int:
        """How much more credit ``new`` has than what runs on ``cpu``; negative: no
        preemption. The soft-affinity bonus (every pCPU is in it) is kept as in Xen."""
        cur = self.curr[cpu]
        if cur is None or not self._is_preemptable(cur, now):
            return -1
        self._burn_credits(cur, now)
        score = new.credit - cur.credit
        if new.processor != cpu:
            score -= CSCHED2_MIGRATE_RESIST
        if score > 0:
            score += CSCHED2_CREDIT_INIT
        return score

    def _runq_tickle(self, new: Csched2Unit, now: int) -> None:
        """``runq_tickle``: make a pCPU pick ``new`` up, if one should."""
        ipid = self._tickle_target(new, now)
        if ipid == -1:
            return
        self.stats["tickles"] += 1
        self._tickle_cpu(ipid)
        new.tickled_cpu = ipid

    def _tickle_target(self, new: Csched2Unit, now: int) -> int:
        """An idle untickled pCPU of its affinity (its own first); else its own pCPU if it
        beats what runs there (it is in its soft affinity); else the busy pCPU it beats by
        most; -1: none."""
        cpu = new.processor
        hard = self._hard(new)
        idle = (self.idle - self.tickled) & hard
        if idle:
            return cpu if cpu in idle else cycle(cpu, idle)
        busy = (self.all_cpus - self.idle - self.tickled) & hard
        if cpu in busy and self._tickle_score(new, cpu, now) > 0:
            return cpu
        ipid, best = -1, 0
        for i in sorted(busy - {cpu}):
            score = self._tickle_score(new, i, now)
            if score > best:
                ipid, best = i, score
        return ipid

    # -- wake, sleep, yield, place ------------------------------------------------------------

    def _unit_wake(self, u: Csched2Unit, now: int) -> None:
        if u.is_running or u in self.runq:
            return
        self._runq_insert(u)
        self._runq_tickle(u, now)

    def _unit_sleep(self, u: Csched2Unit, now: int) -> None:
        if u.is_running:
            self._tickle_cpu(u.processor)
        elif u in self.runq:
            self.runq.remove(u)
        else:
            u.delayed_runq_add = False

    def _unit_yield(self, u: Csched2Unit) -> None:
        u.yielding = True

    def _pick_resource(self, u: Csched2Unit) -> int:
        """``csched2_res_pick`` with one run queue: its pCPUs in turn."""
        self.pick_bias = cycle(self.pick_bias, self._hard(u))
        return self.pick_bias

    def _context_saved(self, prev: Csched2Unit, now: int) -> None:
        """``csched2_context_saved``: unused budget back to the pool; back into the run
        queue if it was preempted."""
        were_parked = []
        if prev.budget is not None and prev.budget > 0:
            were_parked = self._unit_return_budget(prev)
        if prev.delayed_runq_add:
            prev.delayed_runq_add = False
            if prev.runnable:
                self._runq_insert(prev)
                self._runq_tickle(prev, now)
        self._unpark_parked_units(were_parked, now)

    # -- schedule -------------------------------------------------------------------------

    def _runq_candidate(self, scurr: Csched2Unit | None, cpu: int,
                        now: int) -> Csched2Unit | None:
        """``runq_candidate``: the current unit within its ratelimit; else the best of the run
        queue that beats it, may run here, is not left for a tickled pCPU, beats it by the
        migration resistance if it comes from another pCPU, and has budget."""
        yielding = False
        if scurr is not None:
            yielding, scurr.yielding = scurr.yielding, False
            if (not yielding and self.ratelimit and scurr.runnable
                    and now - scurr.state_entry_time < self.ratelimit):
                return scurr
        snext = scurr if scurr is not None and scurr.runnable else None
        for svc in list(self.runq):
            snext_credit = CSCHED2_IDLE_CREDIT if snext is None else snext.credit
            if not yielding and svc.credit <= snext_credit:
                break
            if cpu not in self._hard(svc):
                continue
            if svc.tickled_cpu not in (-1, cpu) and svc.tickled_cpu in self.tickled:
                continue
            if svc.processor != cpu and snext_credit + CSCHED2_MIGRATE_RESIST > svc.credit:
                continue
            if svc.budget is not None and not self._unit_grab_budget(svc):
                continue
            return svc
        return snext

    def _runtime(self, snext: Csched2Unit, now: int, inflight_credit: int) -> int:
        """``csched2_runtime``: until its credit falls to the next one's, within [MIN_TIMER
        or the ratelimit, MAX_TIMER], and no longer than its budget."""
        min_time = CSCHED2_MIN_TIMER
        if self.ratelimit:
            ratelimit_min = self.ratelimit
            if snext.is_running:
                ratelimit_min = snext.state_entry_time + self.ratelimit - now
            min_time = max(min_time, ratelimit_min)
        swait_credit = self.runq[0].credit if self.runq and self.runq[0].credit > 0 else 0
        swait_credit = max(swait_credit, inflight_credit)
        rt_credit = snext.credit - swait_credit if swait_credit > 0 else snext.credit
        time = rt_credit * snext.dom.weight // self.max_weight if rt_credit > 0 else 0
        if snext.budget is not None:
            time = min(time, snext.budget)
        if time < min_time:
            return min_time
        return min(time, CSCHED2_MAX_TIMER)

    def _do_schedule(self, cpu: int, now: int) -> tuple[Unit | None, int | None]:
        """``csched2_schedule``."""
        self.tickled.discard(cpu)
        scurr = self.curr[cpu]
        if scurr is not None:
            self._burn_credits(scurr, now)
            if scurr.budget is not None and scurr.budget <= 0:
                self._unit_grab_budget(scurr)  # over its budget: more, or parked
        snext = self._runq_candidate(scurr, cpu, now)
        if snext is not scurr and scurr is not None and scurr.runnable:
            scurr.delayed_runq_add = True
        if snext is None:
            self.idle.add(cpu)
            return None, None
        if snext is not scurr:
            self.runq.remove(snext)
        self.idle.discard(cpu)
        top_credit = max(snext.credit, self.runq[0].credit) if self.runq else snext.credit
        if top_credit <= CSCHED2_CREDIT_RESET:
            self._reset_credit(now, snext)
        inflight_credit = scurr.credit if scurr is not None and scurr.delayed_runq_add else 0
        snext.start_time = now
        snext.tickled_cpu = -1
        if snext.processor != cpu:
            snext.credit += CSCHED2_MIGRATE_COMPENSATION
            snext.processor = cpu
            self.stats["migrations"] += 1
        return snext, self._runtime(snext, now, inflight_credit)
