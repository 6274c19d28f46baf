"""The frames in flight between hosts (actors.hostnet.uplink): when each arrives, batching,
the backlog bound, and the sender thread (on the ``clock`` fixture's time). Link shaping
itself is link.py's (tc netem)."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.hostnet.link import LinkSpec
from actors.hostnet.uplink import PEERS, UplinkSchedule, UplinkSender, load_peers, save_peers
from tests.waits import wait_until


def _schedule(**specs: LinkSpec) -> UplinkSchedule:
    s = UplinkSchedule(rng=random.Random(1))
    s.set_links(specs)
    return s


def test_uplink_latency_decides_arrival_and_due_frames_leave_batched_per_peer_and_bridge():
    s = _schedule(h2=LinkSpec(latency_s=0.010), h3=LinkSpec())
    assert s.submit(0.0, "h2", "xenbr0", b"f1") == 0.010
    s.submit(0.0, "h2", "xenbr0", b"f2")
    assert s.submit(0.0, "h3", "xenbr0", b"f3") == 0.0
    s.submit(0.0, "h2", "xenbr1", b"f4")
    assert s.next_due() == 0.0
    assert s.pop_due(0.0) == [("h3", "xenbr0", [b"f3"])]
    assert s.pop_due(0.009) == []
    assert s.pop_due(0.010) == [("h2", "xenbr0", [b"f1", b"f2"]), ("h2", "xenbr1", [b"f4"])]
    assert s.next_due() is None
    assert s.statistics()["frames"] == 4 and s.statistics()["batches"] == 3


def test_uplink_bandwidth_serialises_frames_one_after_another():
    s = _schedule(h2=LinkSpec(bandwidth_bps=8000))  # 100 bytes take 0.1 s
    dues = [s.submit(0.0, "h2", "xenbr0", bytes(100)) for _ in range(3)]
    assert dues == pytest.approx([0.1, 0.2, 0.3])
    assert len(s.pop_due(0.15)[0][2]) == 1
    assert s.statistics()["queued"] == 2


def test_uplink_loss_no_link_and_full_backlog_drop_and_count():
    s = UplinkSchedule(rng=random.Random(1), backlog_max=2)
    s.set_links({"lossy": LinkSpec(loss=1.0), "slow": LinkSpec(latency_s=1.0)})
    assert s.submit(0.0, "lossy", "xenbr0", b"x") is None
    assert s.submit(0.0, "h9", "xenbr0", b"x") is None
    assert [s.submit(0.0, "slow", "xenbr0", b"x") for _ in range(3)] == [1.0, 1.0, None]
    stats = s.statistics()
    assert (stats["lost"], stats["no_link"], stats["backlog_dropped"]) == (1, 1, 1)
    assert stats["links"]["lossy"]["lost"] == 1
    s.pop_due(1.0)
    assert s.submit(1.0, "slow", "xenbr0", b"x") == 2.0  # room again


def test_uplink_set_links_keeps_unchanged_links_and_drops_frames_of_removed_peers():
    s = _schedule(h2=LinkSpec(bandwidth_bps=8000), h3=LinkSpec(latency_s=0.5))
    h2 = s.links["h2"]
    s.submit(0.0, "h3", "xenbr0", b"queued")
    s.set_links({"h2": LinkSpec(bandwidth_bps=8000), "h4": LinkSpec()})
    assert s.links["h2"] is h2  # its serialisation state goes on
    assert s.pop_due(1.0) == []
    assert s.statistics()["no_link"] == 1
    s.set_links({"h2": LinkSpec(bandwidth_bps=16000)})
    assert s.links["h2"] is not h2


@given(st.lists(st.tuples(st.sampled_from(["h2", "h3"]), st.sampled_from(["b0", "b1"]),
                          st.integers(14, 1514), st.floats(0, 0.01)), max_size=40),
       st.floats(0, 0.3))
def test_uplink_every_frame_is_sent_once_in_order_or_counted_dropped(offers, loss):
    s = UplinkSchedule(rng=random.Random(7), backlog_max=10)
    s.set_links({"h2": LinkSpec(bandwidth_bps=1e6, latency_s=0.002, loss=loss),
                 "h3": LinkSpec(latency_s=0.001)})
    now, accepted, sent = 0.0, {}, {}
    for i, (host, bridge, size, gap) in enumerate(offers):
        now += gap
        for h, b, frames in s.pop_due(now):
            sent.setdefault((h, b), []).extend(frames)
        f = i.to_bytes(2, "big") + bytes(size - 2)
        if s.submit(now, host, bridge, f) is not None:
            accepted.setdefault((host, bridge), []).append(f)
    for h, b, frames in s.pop_due(now + 60):
        sent.setdefault((h, b), []).extend(frames)
    assert sent == accepted  # per (peer, bridge), in the order offered
    stats = s.statistics()
    dropped = stats["lost"] + stats["backlog_dropped"]
    assert stats["frames"] + dropped == len(offers) and stats["queued"] == 0


def test_uplink_sender_thread_sends_each_batch_when_due_and_survives_send_errors(clock):
    got = []

    def send(host, bridge, frames):
        if frames == [b"boom"]:
            raise ConnectionError("peer gone")
        got.append((host, bridge, frames, clock.monotonic()))

    sender = UplinkSender(send, rng=random.Random(1), runtime=clock)
    try:
        sender.set_links({"h2": LinkSpec(latency_s=0.05)})
        t0 = clock.monotonic()
        sender.submit("h2", "xenbr0", b"boom")
        sender.submit("h2", "xenbr1", b"late")
        assert clock.pending() == 1  # one timer: the earliest frame's
        clock.advance(0.04)
        assert got == [] and sender.statistics()["queued"] == 2  # not before its link delivers
        clock.advance(0.02)
        wait_until(lambda: got and sender.statistics()["send_errors"] == 1, "both batches")
        host, bridge, frames, at = got[0]
        assert (host, bridge, frames) == ("h2", "xenbr1", [b"late"])
        assert at >= t0 + 0.05
        assert sender.statistics()["queued"] == 0 and clock.pending() == 0
    finally:
        sender.close()
    assert sender.stopped.is_set()


def test_uplink_sender_sends_an_undelayed_frame_without_a_timer(clock):
    got = []
    sender = UplinkSender(lambda *batch: got.append(batch), runtime=clock)
    try:
        sender.set_links({"h2": LinkSpec()})
        sender.submit("h2", "xenbr0", b"now")
        wait_until(lambda: got, "the frame")
        assert got == [("h2", "xenbr0", [b"now"])] and clock.pending() == 0
    finally:
        sender.close()


def test_uplink_peers_kept_in_xenstore_survive_a_restart(host):
    assert load_peers(host.xs) == {}
    specs = {"h2": LinkSpec(bandwidth_bps=1e8, latency_s=0.005, loss=0.01),
             "h3": LinkSpec()}
    save_peers(host.xs, specs)
    assert load_peers(host.xs) == specs
    save_peers(host.xs, {"h3": LinkSpec(latency_s=0.001)})  # h2 left the cluster
    assert load_peers(host.xs) == {"h3": LinkSpec(latency_s=0.001)}
    assert host.xs.directory(PEERS) == ["h3"]
