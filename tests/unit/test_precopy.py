"""libxc's pre-copy loop and policies (actors.toolstack.precopy), against
``tools/libs/guest/xg_sr_save.c`` (reference 15.3): which rounds run, what each sends, and
where it stops."""

import itertools

import pytest

from actors.toolstack.precopy import (ClarkPolicy, Decision, PrecopyStats, SimplePolicy,
                                      policy_named, send_memory_live)


def run(nr_pages, dirtied_per_round, policy=None):
    """The loop over a guest that dirties the given page counts, round after round (then 0)."""
    sent: list[list[int]] = []
    counts = itertools.chain(dirtied_per_round, itertools.repeat(0))
    clock = itertools.count()

    def clean():
        return list(range(next(counts)))

    rounds = send_memory_live(nr_pages, policy or SimplePolicy(),
                              lambda pfns, rate: sent.append(list(pfns)), clean,
                              clock=lambda: float(next(clock)))
    return rounds, sent


def test_a_quiet_guest_gets_one_full_pass_then_its_few_dirty_pages_live():
    rounds, sent = run(1000, [10])
    assert sent[0] == list(range(1000))
    # 10 < 50: the policy stops, but the pages of that round are still sent live (libxc)
    assert [len(s) for s in sent] == [1000, 10]
    assert [r.pages_dirtied for r in rounds] == [10, 0]


def test_a_busy_guest_stops_at_libxcs_five_iterations():
    rounds, sent = run(1000, [900] * 20)
    assert len(sent) == 5  # one full pass and four dirty passes, then stop-and-copy
    assert [len(s) for s in sent] == [1000, 900, 900, 900, 900]


def test_the_knobs_of_xl_migrate_change_where_it_stops():
    _, sent = run(1000, [900] * 20, SimplePolicy(max_iters=2))
    assert len(sent) == 2
    _, sent = run(1000, [100, 100, 40], SimplePolicy(dirty_threshold=200))
    assert [len(s) for s in sent] == [1000, 100]


def test_simple_policy_is_libxcs_rule():
    p = SimplePolicy()
    assert p(PrecopyStats(0, 65536)) is Decision.CONTINUE
    assert p(PrecopyStats(1, 49)) is Decision.STOP_AND_COPY
    assert p(PrecopyStats(1, -1)) is Decision.CONTINUE  # not known yet
    assert p(PrecopyStats(5, -1)) is Decision.STOP_AND_COPY


def test_clark_policy_starts_slow_and_raises_the_rate_with_the_dirtying_rate():
    from actors.toolstack.precopy import Round

    p = ClarkPolicy()
    assert p.rate_limit([]) == 100e6 / 8  # round 0 at the minimum
    # a round that dirtied 2000 pages in 1 s: 65.5 Mbit/s dirtying, so the next round runs
    # at that plus 50 Mbit/s
    assert p.rate_limit([Round(0, 1000, 2000, 1.0)]) == pytest.approx(
        (2000 * 4096 * 8 / 1e6 + 50) * 1e6 / 8)
    # dirtying faster than the maximum allows: capped, and the next decision stops
    assert p.rate_limit([Round(1, 1000, 100_000, 1.0)]) == 500e6 / 8
    from actors.toolstack.precopy import PrecopyStats
    assert p(PrecopyStats(2, 5000)) is Decision.STOP_AND_COPY
    assert SimplePolicy()(PrecopyStats(2, 5000)) is Decision.CONTINUE


def test_unknown_policy_and_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="unknown precopy policy"):
        policy_named("fast")
    with pytest.raises(ValueError, match="max-iters"):
        policy_named("libxc", max_iters=0)
