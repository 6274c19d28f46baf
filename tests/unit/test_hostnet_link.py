"""The inter-host wire (actors/hostnet/link.py): netem-like bandwidth, latency with jitter,
loss, duplication and reordering, seeded fates, and a fault composed on top of shaping."""

import dataclasses
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.hostnet.link import Link, LinkSpec, compose, parse_link_spec


def one(link: Link, now: float, nbytes: int) -> float | None:
    """The arrival of a frame on a link that neither duplicates nor loses more than it."""
    arrivals = link.schedule(now, nbytes)
    assert len(arrivals) <= 1
    return arrivals[0] if arrivals else None


def test_link_defaults_are_unlimited_lossless_and_instant():
    link = Link(LinkSpec())
    assert [link.schedule(5.0, 1500) for _ in range(1000)] == [[5.0]] * 1000
    assert link.statistics() == {"sent": 1000, "lost": 0, "bytes": 1_500_000,
                                 "duplicated": 0, "reordered": 0}


def test_link_serialises_at_the_bandwidth():
    link = Link(LinkSpec(bandwidth_bps=100e6))  # 1500 bytes = 120 us at 100 Mbit/s
    arrivals = [one(link, 0.0, 1500) for _ in range(10)]
    assert arrivals == pytest.approx([120e-6 * (k + 1) for k in range(10)])
    # An idle wire starts the next frame at once; a busy one queues it behind the last.
    assert one(link, 1.0, 1250) == pytest.approx(1.0 + 100e-6)
    assert one(link, 1.00005, 1250) == pytest.approx(1.0 + 200e-6)


def test_link_latency_is_added_after_serialisation():
    link = Link(LinkSpec(bandwidth_bps=1e9, latency_s=0.005))
    first = one(link, 2.0, 125_000)  # 1 ms on the wire
    second = one(link, 2.0, 125_000)
    assert (first, second) == (pytest.approx(2.006), pytest.approx(2.007))
    assert one(Link(LinkSpec(latency_s=0.2)), 3.0, 10**6) == pytest.approx(3.2)


def test_link_throughput_of_a_long_stream_matches_the_bandwidth():
    link = Link(LinkSpec(bandwidth_bps=10e6, latency_s=0.001))
    last = max(one(link, k * 1e-6, 1000) for k in range(5000))
    assert (5000 * 1000 * 8) / (last - 0.001) == pytest.approx(10e6, rel=1e-3)


def _within(count: int, n: int, p: float) -> bool:
    """``count`` of ``n`` is within 4 standard deviations of ``n * p``."""
    return abs(count - n * p) < 4 * math.sqrt(n * p * (1 - p))


def test_link_loss_rate_within_tolerance_with_a_seeded_rng():
    n, p = 20000, 0.05
    link = Link(LinkSpec(loss=p), rng=random.Random(1234))
    lost = sum(one(link, 0.0, 100) is None for _ in range(n))
    assert _within(lost, n, p)
    again = Link(LinkSpec(loss=p), rng=random.Random(1234))
    assert sum(one(again, 0.0, 100) is None for _ in range(n)) == lost  # reproducible
    assert all(one(Link(LinkSpec(loss=1.0)), 0.0, 1) is None for _ in range(100))


def test_link_a_lost_frame_takes_no_wire_time():
    rng = random.Random(7)
    link = Link(LinkSpec(bandwidth_bps=8e6, loss=0.5), rng=rng)  # 1 byte = 1 us
    arrivals = [one(link, 0.0, 1000) for _ in range(200)]
    kept = [a for a in arrivals if a is not None]
    assert kept == pytest.approx([1e-3 * (k + 1) for k in range(len(kept))])
    assert link.statistics()["lost"] == 200 - len(kept)


def test_link_jitter_spreads_delays_uniformly_and_reorders_without_a_bandwidth():
    """netem's ``delay 20ms 10ms``: uniform over 10..30 ms; each frame leaves when its own
    delay is over, so a later frame may overtake an earlier one."""
    link = Link(LinkSpec(latency_s=0.020, jitter_s=0.010, seed=1))
    arrivals = [one(link, k * 1e-3, 100) for k in range(4000)]
    delays = [a - k * 1e-3 for k, a in enumerate(arrivals)]
    assert 0.010 <= min(delays) < 0.0102 and 0.0298 < max(delays) <= 0.030
    assert sum(delays) / len(delays) == pytest.approx(0.020, abs=3e-4)
    assert sum(d < 0.015 for d in delays) == pytest.approx(1000, rel=0.15)  # a quarter
    overtaken = sum(b < a for a, b in zip(arrivals, arrivals[1:]))
    assert overtaken > 500
    assert link.statistics()["reordered"] == 0  # reordering by jitter is not netem's reorder


def test_link_jitter_never_reorders_with_a_bandwidth_and_delays_never_go_below_zero():
    """With netem's ``rate`` a frame starts after the one before it has left."""
    link = Link(LinkSpec(bandwidth_bps=100e6, latency_s=0.002, jitter_s=0.005, seed=2))
    arrivals = [one(link, k * 1e-3, 1250) for k in range(2000)]  # 100 us on the wire
    assert arrivals == sorted(arrivals)
    assert all(a >= k * 1e-3 + 100e-6 - 1e-12 for k, a in enumerate(arrivals))
    assert min(a - k * 1e-3 for k, a in enumerate(arrivals)) == pytest.approx(100e-6)


def test_link_duplicates_a_fraction_and_each_copy_meets_the_link_on_its_own():
    n, p = 20000, 0.1
    link = Link(LinkSpec(latency_s=0.010, jitter_s=0.005, duplicate=p, seed=3))
    fates = [link.schedule(0.0, 100) for _ in range(n)]
    twice = [f for f in fates if len(f) == 2]
    assert _within(len(twice), n, p)
    assert sum(a != b for a, b in twice) == len(twice)  # each copy has its own delay
    stats = link.statistics()
    assert (stats["duplicated"], stats["sent"], stats["lost"]) == (len(twice), n + len(twice), 0)


def test_link_duplicate_is_drawn_before_loss_as_netem_does():
    """A frame drawn both duplicated and lost goes once (netem's ``count`` goes 2, then 1)."""
    link = Link(LinkSpec(loss=1.0, duplicate=1.0))
    assert [link.schedule(0.0, 100) for _ in range(10)] == [[0.0]] * 10
    assert link.statistics() == {"sent": 10, "lost": 0, "bytes": 1000, "duplicated": 0,
                                 "reordered": 0}
    # A copy is offered again, loss included: half the duplicated frames lose one copy.
    link = Link(LinkSpec(loss=0.5, duplicate=1.0, seed=8))
    fates = [len(link.schedule(0.0, 100)) for _ in range(4000)]
    stats = link.statistics()
    assert stats["duplicated"] == fates.count(2) + stats["lost"]
    assert _within(fates.count(1), 4000, 0.75) and fates.count(0) == 0


def test_link_reorder_sends_a_fraction_at_once_while_the_others_wait_the_latency():
    n, p = 20000, 0.25
    link = Link(LinkSpec(latency_s=0.050, reorder=p, seed=4))
    arrivals = [one(link, 1.0, 100) for _ in range(n)]
    at_once = arrivals.count(1.0)
    assert _within(at_once, n, p)
    assert arrivals.count(1.05) == n - at_once
    assert link.statistics()["reordered"] == at_once


def test_link_same_seed_same_fates_and_a_change_reseeds():
    spec = LinkSpec(latency_s=0.01, jitter_s=0.01, loss=0.2, duplicate=0.2, reorder=0.2,
                    seed=99)
    a, b = Link(spec), Link(spec, rng=random.Random(5))  # the seed wins over the rng

    def fates(link):
        return [link.schedule(k * 1e-3, 100) for k in range(500)]

    first = fates(a)
    assert fates(b) == first and a.statistics() == b.statistics()
    assert fates(a) != first  # the draws go on
    a.change(spec)  # as netem_change: a seeded spec starts the same draws again
    assert fates(a) == first
    assert fates(Link(dataclasses.replace(spec, seed=100))) != first


def test_link_change_keeps_counts_and_the_wire_busy():
    link = Link(LinkSpec(bandwidth_bps=8e3))  # 1 byte = 1 ms
    assert one(link, 0.0, 100) == pytest.approx(0.1)
    link.change(LinkSpec(bandwidth_bps=16e3))
    assert one(link, 0.0, 100) == pytest.approx(0.15)  # after the frame on the wire
    assert link.statistics()["sent"] == 2


def test_link_fault_composes_on_the_base_and_none_is_the_base():
    base = LinkSpec(bandwidth_bps=100e6, latency_s=0.005, loss=0.1, seed=1)
    fault = LinkSpec(bandwidth_bps=1e9, latency_s=0.020, jitter_s=0.004, loss=0.5,
                     duplicate=0.1, reorder=0.3, seed=7)
    both = compose(base, fault)
    assert (both.bandwidth_bps, both.latency_s, both.jitter_s) == (100e6, 0.025, 0.004)
    assert (both.loss, both.duplicate, both.reorder, both.seed) == \
        (pytest.approx(0.55), 0.1, 0.3, 7)
    assert compose(base, None) == base
    assert compose(LinkSpec(), LinkSpec(bandwidth_bps=1e6)).bandwidth_bps == 1e6
    assert compose(base, LinkSpec(loss=0.2)).seed == 1
    assert compose(base, LinkSpec(reorder=0.5)).reorder == 0.5  # the base's latency serves
    with pytest.raises(ValueError, match="reordering needs a latency"):
        compose(LinkSpec(), LinkSpec(reorder=0.5))


@pytest.mark.parametrize("kw, word", [
    ({"bandwidth_bps": -1.0}, "bandwidth"), ({"bandwidth_bps": 0.0}, "bandwidth"),
    ({"latency_s": -0.001}, "latency"), ({"latency_s": math.inf}, "latency"),
    ({"loss": -0.1}, "loss"), ({"loss": 1.01}, "loss"), ({"loss": math.nan}, "loss"),
    ({"jitter_s": -1.0}, "jitter"), ({"jitter_s": math.nan}, "jitter"),
    ({"duplicate": 2.0}, "duplicate"), ({"reorder": -0.5}, "reorder"),
    ({"seed": 1.5}, "seed"), ({"seed": True}, "seed")])
def test_link_spec_rejects_impossible_values(kw, word):
    with pytest.raises(ValueError, match=word):
        LinkSpec(**kw)


def test_link_spec_from_dict_names_what_is_not_a_property():
    assert LinkSpec.from_dict({"latency_s": 0.01, "seed": 3}) == LinkSpec(latency_s=0.01,
                                                                          seed=3)
    with pytest.raises(ValueError, match="not a link property: colour"):
        LinkSpec.from_dict({"latency_s": 0.01, "colour": "red"})


@pytest.mark.parametrize("args, spec", [
    ((None, None, None), LinkSpec()),
    (("100M", "5ms", "1%"), LinkSpec(100e6, 0.005, 0.01)),
    (("1G", "200us", 0.01), LinkSpec(1e9, 200e-6, 0.01)),
    (("10k", "1s", "0.5"), LinkSpec(10e3, 1.0, 0.5)),
    (("2.5Gbit", "1.5ms", "0%"), LinkSpec(2.5e9, 0.0015, 0.0)),
    (("100mbit/s", "0", "100%"), LinkSpec(100e6, 0.0, 1.0)),
    (("64000", "250ns", ""), LinkSpec(64000.0, 250e-9, 0.0)),
    (("", "", None), LinkSpec())])
def test_link_parse_link_spec_units(args, spec):
    got = parse_link_spec(*args)
    assert got.bandwidth_bps == pytest.approx(spec.bandwidth_bps)
    assert (got.latency_s, got.loss) == (pytest.approx(spec.latency_s), pytest.approx(spec.loss))


def test_link_parse_link_spec_faults():
    got = parse_link_spec(latency="20ms", jitter="5ms", duplicate="1%", reorder=0.25, seed=7)
    assert got == LinkSpec(latency_s=0.02, jitter_s=0.005, duplicate=0.01, reorder=0.25,
                           seed=7)


@pytest.mark.parametrize("args, kw, word", [
    (("fast", None, None), {}, "bandwidth"), (("-5M", None, None), {}, "bandwidth"),
    (("0", None, None), {}, "bandwidth"), (("100MB", None, None), {}, "bandwidth"),
    ((None, "5", None), {}, "unit"), ((None, "5 parsecs", None), {}, "latency"),
    ((None, None, "lots"), {}, "loss"), ((None, None, "150%"), {}, "loss"),
    ((None, None, -0.5), {}, "loss"), ((), {"jitter": "a bit"}, "jitter"),
    ((), {"jitter": "3"}, "unit"), ((), {"duplicate": "twice"}, "duplicate"),
    ((), {"reorder": "200%"}, "reorder"), ((), {"seed": "x"}, "seed")])
def test_link_parse_link_spec_errors_are_clear(args, kw, word):
    with pytest.raises(ValueError, match=word):
        parse_link_spec(*args, **kw)


@given(st.lists(st.tuples(st.floats(0, 1e-3), st.integers(0, 65535)), max_size=50),
       st.floats(1e3, 1e10), st.floats(0, 1), st.floats(0, 1), st.integers(0, 2**32))
def test_link_arrivals_are_in_order_and_never_early(offers, bw, latency, jitter, seed):
    link = Link(LinkSpec(bandwidth_bps=bw, latency_s=latency, jitter_s=jitter, seed=seed))
    now, last = 0.0, -1.0
    for dt, nbytes in offers:
        now += dt
        arrival = one(link, now, nbytes)
        assert arrival >= now + max(0.0, latency - jitter) + nbytes * 8 / bw - 1e-9
        assert arrival >= last
        last = arrival
