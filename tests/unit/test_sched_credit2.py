"""credit2 (``credit2.c``): credit resets, time slices, ratelimit, budgets for caps."""

from actors.hypervisor.sched.credit2 import (CSCHED2_CARRYOVER_MAX, CSCHED2_CREDIT_INIT,
                                             CSCHED2_MAX_TIMER, Credit2)
from protocols.hypercall import Runstate
from tests.schedsim import HOG, Load, Sim

US = 1_000
MS = 1_000 * US
S = 1_000 * MS


def test_credit_resets_and_the_weights_still_hold():
    sched = Credit2(1)
    sim = Sim(sched)
    (a,), (b,) = sim.domain(1, HOG, weight=256), sim.domain(2, HOG, weight=512)
    sim.run(10 * S)
    # the heavier burns 1 per ns: a reset every ~10 ms of its running, ~15 ms in all
    assert 500 <= sched.statistics()["credit_resets"] <= 1000
    assert 1.9 <= sim.cpu(b) / sim.cpu(a) <= 2.1
    assert all(u.credit <= CSCHED2_CREDIT_INIT + CSCHED2_CARRYOVER_MAX for u in sched.svc)


def test_a_hog_alone_runs_max_timer_slices():
    sched = Credit2(1)
    sim = Sim(sched)
    sim.domain(1, HOG)
    sim.run(1 * S)
    assert sched.statistics()["schedules"] <= 1 * S // CSCHED2_MAX_TIMER + 2


def test_a_woken_vcpu_preempts_after_the_ratelimit():
    """A vCPU with more credit preempts one that has run for the ratelimit; before that, the
    tickle is refused and it waits for the running one's slice to end."""
    for ratelimit_us, runs_at_once in ((0, True), (1000, False)):
        sched = Credit2(1, ratelimit_us=ratelimit_us)
        sim = Sim(sched)
        (hog,), (woken,) = sim.domain(1, HOG), sim.domain(2, HOG)
        sim.apply(sched.sleep(*woken, sim.t))
        sim.run(2 * MS)  # the hog burns: the other has more credit now
        sim.apply(sched.sleep(*hog, sim.t))
        sim.apply(sched.wake(*hog, sim.t))
        sim.run(sim.t + 200 * US)
        sim.apply(sched.wake(*woken, sim.t))
        assert (sim.view == [woken]) is runs_at_once


def test_an_io_vcpu_beside_a_hog():
    """It wakes with more credit than the hog and preempts it."""
    sim = Sim(Credit2(1))
    sim.domain(1, HOG)
    (io,) = sim.domain(2, Load(run_ns=200 * US, block_ns=2 * MS))
    sim.run(10 * S)
    assert sim.median_latency(io) < 1 * MS
    assert sim.cpu(io) / (10 * S) > 0.09 * 0.98


def test_a_capped_vcpu_is_parked_until_the_budget_is_replenished():
    sched = Credit2(1)
    sim = Sim(sched)
    (k,) = sim.domain(1, HOG, cap=20)
    sim.run(3 * MS)
    assert sim.view == [None] and sched.units[k].paused  # ran its 2 ms of 10
    assert sched.runstate(*k, sim.t)["state"] == Runstate.runnable
    sim.run(11 * MS)
    assert sim.view == [k]
    assert sched.statistics()["replenishments"] == 1
    sim.run(1 * S)
    assert 0.19 <= sim.cpu(k) / S <= 0.21


def test_lifting_a_cap_unparks():
    sched = Credit2(1)
    sim = Sim(sched)
    (k,) = sim.domain(1, HOG, cap=20)
    sim.run(3 * MS)
    assert sim.view == [None]
    sim.apply(sched.set_params(1, sim.t, cap=0))
    assert sim.view == [k] and sched.units[k].budget is None
    assert not any(key[1] == "repl" for key in sched.timers)


def test_globals():
    sched = Credit2(2)
    assert sched.get_global() == {"ratelimit_us": 1000}
    sched.set_global(0, ratelimit_us=500_000)
    assert sched.get_global() == {"ratelimit_us": 500_000}
