"""The inter-host wire (actors/hostnet/link.py): netem-like bandwidth, latency and loss."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.hostnet.link import Link, LinkSpec, parse_link_spec


def test_link_defaults_are_unlimited_lossless_and_instant():
    link = Link(LinkSpec())
    assert [link.schedule(5.0, 1500) for _ in range(1000)] == [5.0] * 1000
    assert link.statistics() == {"sent": 1000, "lost": 0, "bytes": 1_500_000}


def test_link_serialises_at_the_bandwidth():
    link = Link(LinkSpec(bandwidth_bps=100e6))  # 1500 bytes = 120 us at 100 Mbit/s
    arrivals = [link.schedule(0.0, 1500) for _ in range(10)]
    assert arrivals == pytest.approx([120e-6 * (k + 1) for k in range(10)])
    # An idle wire starts the next frame at once; a busy one queues it behind the last.
    assert link.schedule(1.0, 1250) == pytest.approx(1.0 + 100e-6)
    assert link.schedule(1.00005, 1250) == pytest.approx(1.0 + 200e-6)


def test_link_latency_is_added_after_serialisation():
    link = Link(LinkSpec(bandwidth_bps=1e9, latency_s=0.005))
    first = link.schedule(2.0, 125_000)  # 1 ms on the wire
    second = link.schedule(2.0, 125_000)
    assert (first, second) == (pytest.approx(2.006), pytest.approx(2.007))
    assert Link(LinkSpec(latency_s=0.2)).schedule(3.0, 10**6) == pytest.approx(3.2)


def test_link_throughput_of_a_long_stream_matches_the_bandwidth():
    link = Link(LinkSpec(bandwidth_bps=10e6, latency_s=0.001))
    last = max(link.schedule(k * 1e-6, 1000) for k in range(5000))
    assert (5000 * 1000 * 8) / (last - 0.001) == pytest.approx(10e6, rel=1e-3)


def test_link_loss_rate_within_tolerance_with_a_seeded_rng():
    n, p = 20000, 0.05
    link = Link(LinkSpec(loss=p), rng=random.Random(1234))
    lost = sum(link.schedule(0.0, 100) is None for _ in range(n))
    assert abs(lost - n * p) < 4 * math.sqrt(n * p * (1 - p))
    again = Link(LinkSpec(loss=p), rng=random.Random(1234))
    assert sum(again.schedule(0.0, 100) is None for _ in range(n)) == lost  # reproducible
    assert all(Link(LinkSpec(loss=1.0)).schedule(0.0, 1) is None for _ in range(100))


def test_link_a_lost_frame_takes_no_wire_time():
    rng = random.Random(7)
    link = Link(LinkSpec(bandwidth_bps=8e6, loss=0.5), rng=rng)  # 1 byte = 1 us
    arrivals = [link.schedule(0.0, 1000) for _ in range(200)]
    kept = [a for a in arrivals if a is not None]
    assert kept == pytest.approx([1e-3 * (k + 1) for k in range(len(kept))])
    assert link.statistics()["lost"] == 200 - len(kept)


@pytest.mark.parametrize("kw, word", [
    ({"bandwidth_bps": -1.0}, "bandwidth"), ({"bandwidth_bps": 0.0}, "bandwidth"),
    ({"latency_s": -0.001}, "latency"), ({"latency_s": math.inf}, "latency"),
    ({"loss": -0.1}, "loss"), ({"loss": 1.01}, "loss"), ({"loss": math.nan}, "loss")])
def test_link_spec_rejects_impossible_values(kw, word):
    with pytest.raises(ValueError, match=word):
        LinkSpec(**kw)


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


@pytest.mark.parametrize("args, word", [
    (("fast", None, None), "bandwidth"), (("-5M", None, None), "bandwidth"),
    (("0", None, None), "bandwidth"), (("100MB", None, None), "bandwidth"),
    ((None, "5", None), "unit"), ((None, "5 parsecs", None), "latency"),
    ((None, None, "lots"), "loss"), ((None, None, "150%"), "loss"),
    ((None, None, -0.5), "loss")])
def test_link_parse_link_spec_errors_are_clear(args, word):
    with pytest.raises(ValueError, match=word):
        parse_link_spec(*args)


@given(st.lists(st.tuples(st.floats(0, 1e-3), st.integers(0, 65535)), max_size=50),
       st.floats(1e3, 1e10), st.floats(0, 1))
def test_link_arrivals_are_in_order_and_never_early(offers, bw, latency):
    link = Link(LinkSpec(bandwidth_bps=bw, latency_s=latency))
    now, last = 0.0, -1.0
    for dt, nbytes in offers:
        now += dt
        arrival = link.schedule(now, nbytes)
        assert arrival >= now + latency + nbytes * 8 / bw - 1e-9
        assert arrival >= last
        last = arrival
