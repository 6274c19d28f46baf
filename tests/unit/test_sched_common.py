"""Both schedulers (credit2 and credit) driven in virtual time by :mod:`tests.schedsim`: shares by
weight and cap, several pCPUs, affinity, idling, parameter ranges, and the invariants' checker."""

import pytest

from actors.hypervisor import sched as schedulers
from actors.hypervisor.sched import Switch
from actors.hypervisor.sched.base import plan_switches
from protocols.hypercall import Runstate
from tests.schedsim import HOG, Sim, check

MS = 1_000_000
S = 1_000 * MS

both = pytest.mark.parametrize("name", schedulers.SCHEDULERS)


def test_make_names_the_schedulers():
    assert schedulers.DEFAULT == "credit2"
    assert (schedulers.make("credit2", 2).sched_id, schedulers.make("credit", 2).sched_id) == (6, 5)
    assert schedulers.make("credit", 4).pcpus == 4
    with pytest.raises(ValueError, match="unknown scheduler"):
        schedulers.make("rtds", 2)


@both
def test_weights_share_one_pcpu(name):
    """Two hogs of weights 256 and 512 on one pCPU run 1:2 (within 10%) over 10 s."""
    sim = Sim(schedulers.make(name, 1))
    (a,), (b,) = sim.domain(1, HOG, weight=256), sim.domain(2, HOG, weight=512)
    sim.run(10 * S)
    assert sim.cpu(a) + sim.cpu(b) == 10 * S
    assert 1.8 <= sim.cpu(b) / sim.cpu(a) <= 2.2


@both
def test_cap_of_one_vcpu(name):
    """cap 25: a quarter of one pCPU, idle or not."""
    sim = Sim(schedulers.make(name, 1))
    (a,) = sim.domain(1, HOG, cap=25)
    sim.run(10 * S)
    assert 0.20 <= sim.cpu(a) / (10 * S) <= 0.30
    assert sim.sched.statistics()["parks"] > 0


@both
def test_cap_is_per_domain(name):
    """cap 50 on a domain of two hogs with a pCPU each: half of one pCPU between them."""
    sim = Sim(schedulers.make(name, 2))
    keys = sim.domain(1, HOG, HOG, cap=50)
    sim.run(10 * S)
    assert 0.45 <= sum(sim.cpu(k) for k in keys) / (10 * S) <= 0.55


def no_idle_pcpu_while_one_waits(sim: Sim) -> None:
    waiting = [k for k in sim.added
               if sim.sched.runstate(*k, sim.t)["state"] == Runstate.runnable]
    if waiting and None in sim.view:
        raise AssertionError(f"pCPU {sim.view.index(None)} idles while {waiting} wait")


@both
def test_three_hogs_on_two_pcpus(name):
    """Each gets about 2/3 of a pCPU, and no pCPU idles while a vCPU waits."""
    sim = Sim(schedulers.make(name, 2))
    sim.checks.append(no_idle_pcpu_while_one_waits)
    keys = [sim.domain(d, HOG)[0] for d in (1, 2, 3)]
    sim.run(10 * S)
    for k in keys:
        assert 0.6 <= sim.cpu(k) / (10 * S) <= 0.73, k
    assert sum(sim.cpu(k) for k in keys) == 20 * S


@both
def test_affinity_pins(name):
    """A vCPU pinned to pCPU 1 never runs on pCPU 0, nor does one pinned while it runs there;
    an affinity without a pCPU of the host is refused."""
    sim = Sim(schedulers.make(name, 2))
    (pinned,) = sim.domain(1, HOG, affinity=frozenset({1}))
    (free,) = sim.domain(2, HOG)
    sim.domain(3, HOG)
    sim.run(1 * S)
    assert sim.ran_on[pinned] == {1}
    for _ in range(100):
        if sim.view[0] == free:
            break
        sim.run(sim.t + 10 * MS)
    sim.apply(sim.sched.set_affinity(*free, frozenset({1}), sim.t))
    assert free != sim.view[0]
    sim.check()
    mark = sim.t
    sim.ran_on[free].clear()
    sim.run(mark + 1 * S)
    assert sim.ran_on[free] == {1}
    sim.apply(sim.sched.set_affinity(*free, None, sim.t))
    for bad in (frozenset(), frozenset({2, 7})):
        with pytest.raises(ValueError, match="no pCPU of this host"):
            sim.sched.set_affinity(*free, bad, sim.t)


@both
def test_an_idle_host_has_no_events(name):
    """With every vCPU blocked next_event is None (no periodic work); a wake an hour later
    runs at once."""
    sim = Sim(schedulers.make(name, 2))
    keys = sim.domain(1, HOG, HOG, HOG, cap=150)
    sim.run(100 * MS)
    for k in keys:
        sim.apply(sim.sched.sleep(*k, sim.t))
        sim.blocked[k] = 10**18
    sim.check()
    assert sim.view == [None, None]
    assert sim.sched.next_event(sim.t) is None
    sim.t += 3600 * S
    del sim.blocked[keys[0]]
    sim.apply(sim.sched.wake(*keys[0], sim.t))
    assert keys[0] in sim.view
    sim.check()
    assert sim.sched.next_event(sim.t) is not None


@both
def test_remove_domain(name):
    sim = Sim(schedulers.make(name, 1))
    (a,) = sim.domain(1, HOG)
    (b,) = sim.domain(2, HOG)
    sim.run(50 * MS)
    running = sim.view[0]
    sim.apply(sim.sched.remove_domain(running[0], sim.t))
    other = b if running == a else a
    assert sim.view == [other]
    with pytest.raises(ValueError, match="not scheduled"):
        sim.sched.runstate(*running, sim.t)
    sim.apply(sim.sched.remove_domain(other[0], sim.t))
    assert sim.view == [None] and sim.sched.next_event(sim.t) is None


@both
def test_runstate_of_a_vcpu(name):
    """Offline when added, runnable while it waits, blocked or offline when it sleeps; the
    times add up to the time since it was added."""
    sched = schedulers.make(name, 1)
    sched.add_domain(1)
    sched.add_vcpu(1, 0, 0)
    sched.add_vcpu(1, 1, 0)
    assert sched.runstate(1, 0, 5)["state"] == Runstate.offline
    assert sched.wake(1, 0, 10) == [Switch(0, None, (1, 0))]
    assert sched.runstate(1, 0, 20) == {"state": Runstate.running, "state_entry_time": 10,
                                        "time": [10, 0, 0, 10]}
    assert sched.sleep(1, 0, 30) == [Switch(0, (1, 0), None)]
    assert sched.wake(1, 1, 40) == [Switch(0, None, (1, 1))]
    assert sched.wake(1, 0, 40) == []
    assert sched.runstate(1, 0, 50) == {"state": Runstate.runnable, "state_entry_time": 40,
                                        "time": [20, 10, 10, 10]}
    sched.sleep(1, 0, 60, state=Runstate.offline)
    assert sched.runstate(1, 0, 60) == {"state": Runstate.offline, "state_entry_time": 60,
                                        "time": [20, 20, 10, 10]}
    assert sched.where(1, 1) == 0
    with pytest.raises(ValueError, match="blocked .2. or offline .3."):
        sched.sleep(1, 1, 40 * MS, state=Runstate.running)
    with pytest.raises(ValueError, match="backwards"):
        sched.tick(59)


@both
def test_yield_gives_the_pcpu_away(name):
    """Within the ratelimit a hog keeps its pCPU; a yield lets the other one run."""
    sim = Sim(schedulers.make(name, 1))
    sim.domain(1, HOG, HOG)
    sim.run(40 * MS)
    running = sim.view[0]
    sim.apply(sim.sched.yield_(*running, sim.t))
    assert sim.view[0] not in (None, running)
    sim.check()


@both
def test_parameter_ranges(name):
    """Weight 1..65535, cap 0..100 per vCPU; refusals are one line."""
    sched = schedulers.make(name, 2)
    for bad in (0, 65536):
        with pytest.raises(ValueError, match="weight") as e:
            sched.add_domain(1, weight=bad)
        assert "\n" not in str(e.value)
    sched.add_domain(1, weight=65535)
    sched.add_vcpu(1, 0, 0)
    sched.add_vcpu(1, 1, 0)
    assert sched.set_params(1, 0, weight=1, cap=200) == []
    assert sched.get_params(1) == {"weight": 1, "cap": 200}
    for kw in ({"weight": 0}, {"weight": 65536}, {"cap": 201}, {"cap": -1}):
        with pytest.raises(ValueError, match="out of range") as e:
            sched.set_params(1, 0, **kw)
        assert "\n" not in str(e.value)
    assert sched.set_params(1, 0, cap=0) == []
    assert sched.get_params(1) == {"weight": 1, "cap": 0}
    with pytest.raises(ValueError, match="ratelimit 99 us out of range"):
        sched.set_global(0, ratelimit_us=99)
    with pytest.raises(ValueError, match="ratelimit"):
        schedulers.make(name, 2, ratelimit_us=500_001)
    sched.set_global(0, ratelimit_us=0)
    assert sched.get_global()["ratelimit_us"] == 0


@both
def test_the_checker_fails_on_a_corrupted_state(name):
    sim = Sim(schedulers.make(name, 2))
    (a,), (b,) = sim.domain(1, HOG), sim.domain(2, HOG)
    sim.run(20 * MS)
    sim.check()
    twice = [a, a]
    with pytest.raises(AssertionError, match="on two pCPUs"):
        check(sim.sched, twice, [], sim.added, sim.t)
    with pytest.raises(AssertionError, match="is running"):
        check(sim.sched, [None, None], [], sim.added, sim.t)
    with pytest.raises(AssertionError, match="blocked"):
        check(sim.sched, sim.view, [b], sim.added, sim.t)
    sim.sched.units[a].time[Runstate.running] += 1
    with pytest.raises(AssertionError, match="do not add up"):
        sim.check()
    with pytest.raises(AssertionError, match="but pCPU"):
        sim.apply([Switch(0, None, (9, 9))])


def test_switches_are_safe_to_apply_in_order():
    """A vCPU moving between pCPUs leaves its old one first; a swap goes through idle."""
    a, b, c = (1, 0), (2, 0), (3, 0)
    assert plan_switches([a, None], [None, a]) == [Switch(0, a, None), Switch(1, None, a)]
    assert plan_switches([a, b], [b, a]) == [Switch(0, a, None), Switch(1, b, a),
                                             Switch(0, None, b)]
    assert plan_switches([a, b, c], [b, c, a]) == [Switch(0, a, None), Switch(2, c, a),
                                                   Switch(1, b, c), Switch(0, None, b)]
    assert plan_switches([a, b], [a, b]) == []


@both
def test_time_need_not_start_at_zero(name):
    """The host's clock may read days when its first domain starts (a monotonic clock): the
    timers that were due meanwhile catch up at once."""
    start = 10 * 24 * 3600 * S
    sim = Sim(schedulers.make(name, 1), start=start)
    (a,) = sim.domain(1, HOG, cap=50)
    sim.run(start + 1 * S)
    assert 0.45 <= sim.cpu(a) / S <= 0.55
