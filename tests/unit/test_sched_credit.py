"""credit1 (``credit.c``): BOOST, accounting, yield, parking, load balancing, its globals."""

import pytest

from actors.hypervisor.sched.credit import (CSCHED_PRI_TS_BOOST, CSCHED_PRI_TS_OVER,
                                            CSCHED_PRI_TS_UNDER, Credit)
from protocols.hypercall import Runstate
from tests.schedsim import HOG, Load, Sim

US = 1_000
MS = 1_000 * US
S = 1_000 * MS


def io_beside_a_hog(boost: bool, run_ns: int = 200 * US) -> tuple[Sim, tuple[int, int]]:
    sim = Sim(Credit(1, boost=boost))
    sim.domain(1, HOG)
    (io,) = sim.domain(2, Load(run_ns=run_ns, block_ns=2 * MS))
    sim.run(10 * S)
    return sim, io


def test_boost_gives_an_io_vcpu_low_latency():
    """Woken from a block while UNDER, it is BOOSTed past the hog: it runs within the ratelimit
    and gets all the CPU it asks for (200 us in every 2.2 ms)."""
    sim, io = io_beside_a_hog(boost=True)
    latency = sorted(sim.latency[io])
    assert sim.median_latency(io) < 1 * MS
    assert latency[int(len(latency) * 0.99)] < 1 * MS
    assert sim.cpu(io) / (10 * S) > 0.09 * 0.98


def test_without_boost_an_io_vcpu_waits_for_the_hogs_slice():
    """Without BOOST it waits behind the hog (both UNDER) for the rest of the hog's 30 ms slice.
    It goes at once only while the hog is OVER: those phases have a wake every 2.2 ms, the
    others one every 30 ms, so the median wake is still quick, but a quarter of the wakes wait
    10 ms or more and it gets a quarter of the CPU it asks for."""
    sim, io = io_beside_a_hog(boost=False)
    latency = sorted(sim.latency[io])
    assert latency[int(len(latency) * 0.9)] >= 10 * MS
    assert sum(x >= 10 * MS for x in latency) >= 0.2 * len(latency)
    assert sim.cpu(io) / (10 * S) < 0.04


def test_a_short_sleeper_waits_a_median_slice_without_boost():
    """Bursts of 20 us (a cyclictest) are seldom caught running by a tick: the vCPU stays
    inactive and UNDER, and so does the hog. Without BOOST the median wake waits for the rest
    of the hog's slice; with it, none waits."""
    sim, io = io_beside_a_hog(boost=False, run_ns=20 * US)
    assert sim.median_latency(io) >= 10 * MS
    sim, io = io_beside_a_hog(boost=True, run_ns=20 * US)
    assert max(sim.latency[io][1:]) < 1 * MS  # the first wake is a placement: no BOOST


def test_boost_ends_at_the_first_tick_that_finds_it_running():
    sched = Credit(1)
    sim = Sim(sched)
    sim.domain(1, HOG)
    (waker,) = sim.domain(2, HOG)
    sim.apply(sched.sleep(*waker, sim.t))
    sim.run(95 * MS)
    sim.apply(sched.wake(*waker, sim.t))
    assert sched.units[waker].pri == CSCHED_PRI_TS_BOOST
    assert sim.view == [waker]  # the hog had run for more than the ratelimit
    sim.run(100 * MS)
    assert sched.units[waker].pri == CSCHED_PRI_TS_UNDER
    assert sched.statistics()["boosts"] == 1


def test_accounting_every_tslice_and_ticks_every_third():
    sched = Credit(2)
    sim = Sim(sched)
    sim.domain(1, HOG)
    sim.run(300 * MS)
    assert sched.statistics()["acct"] == 10
    assert sched.statistics()["ticks"] == 30


def test_an_idle_vcpu_above_300_credits_stops_earning_with_half():
    """A blocked vCPU keeps earning until it has more than credits_per_tslice; then it leaves
    the active list with half."""
    sched = Credit(1)
    sim = Sim(sched)
    sim.domain(1, HOG)
    (idle,) = sim.domain(2, HOG)
    sim.run(100 * MS)
    assert sched.units[idle].active
    sim.apply(sched.sleep(*idle, sim.t))
    sim.blocked[idle] = 10**18
    sim.run(300 * MS)
    u = sched.units[idle]
    assert not u.active and 150 < u.credit <= 300


def test_yield_puts_it_behind_one_lower_priority_vcpu():
    sched = Credit(1)
    sim = Sim(sched)
    (a,), (b,), (c,) = sim.domain(1, HOG), sim.domain(2, HOG), sim.domain(3, HOG)
    assert sim.view == [a] and [u.key for u in sched.pc[0].runq] == [b, c]
    sched.units[c].pri = CSCHED_PRI_TS_OVER
    sim.t = 5 * MS
    sim.apply(sched.yield_(*a, sim.t))
    assert sim.view == [b] and [u.key for u in sched.pc[0].runq] == [c, a]


def test_a_parked_vcpu_is_runnable():
    """Capped out, it is paused until accounting brings its credit back to 0: RUNSTATE_runnable
    all the while."""
    sched = Credit(1)
    sim = Sim(sched)
    (k,) = sim.domain(1, HOG, cap=10)
    for _ in range(100):
        sim.run(sim.t + 10 * MS)
        if sched.units[k].parked:
            break
    assert sim.view == [None]
    assert sched.runstate(*k, sim.t)["state"] == Runstate.runnable
    sim.run(sim.t + 1 * S)
    assert sched.statistics()["unparks"] > 0


def test_idle_pcpus_steal_work():
    sched = Credit(2)
    sim = Sim(sched)
    for d in (1, 2, 3):
        sim.domain(d, HOG)
    sim.run(1 * S)
    assert sched.statistics()["steals"] > 0


def test_globals():
    sched = Credit(2)
    assert sched.get_global() == {"tslice_ms": 30, "ratelimit_us": 1000}
    sched.set_global(0, tslice_ms=2, ratelimit_us=100)
    assert sched.get_global() == {"tslice_ms": 2, "ratelimit_us": 100}
    assert (sched.tick_period, sched.credits_per_tslice, sched.credit) == (2 * MS, 20, 40)
    for kw, match in (({"tslice_ms": 0}, "tslice 0 ms out of range 1..1000"),
                      ({"tslice_ms": 1001}, "tslice 1001 ms out of range"),
                      ({"ratelimit_us": 99}, "ratelimit 99 us out of range"),
                      ({"tslice_ms": 1, "ratelimit_us": 1001}, "longer than the tslice")):
        with pytest.raises(ValueError, match=match) as e:
            sched.set_global(0, **kw)
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match=match):
            Credit(2, **kw)
