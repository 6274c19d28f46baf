"""The frames in flight between hosts (actors.hostnet.uplink): when each arrives, batching,
the backlog bound, partitions, duplicated and reordered frames in flight, the peers kept in
xenstore, and the sender thread (on the ``clock`` fixture's time). Link shaping itself is
link.py's (tc netem)."""

import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.hostnet.link import LinkSpec
from actors.hostnet.uplink import (PEERS, Peer, UplinkSchedule, UplinkSender, load_peers,
                                   save_peers)
from tests.clock import ManualRuntime
from tests.waits import wait_until


def _schedule(**specs: LinkSpec) -> UplinkSchedule:
    s = UplinkSchedule(rng=random.Random(1))
    s.set_links(specs)
    return s


def test_uplink_latency_decides_arrival_and_due_frames_leave_batched_per_peer_and_bridge():
    s = _schedule(h2=LinkSpec(latency_s=0.010), h3=LinkSpec())
    assert s.submit(0.0, "h2", "xenbr0", b"f1") == [0.010]
    s.submit(0.0, "h2", "xenbr0", b"f2")
    assert s.submit(0.0, "h3", "xenbr0", b"f3") == [0.0]
    s.submit(0.0, "h2", "xenbr1", b"f4")
    assert s.next_due() == 0.0
    assert s.pop_due(0.0) == [("h3", "xenbr0", [b"f3"])]
    assert s.pop_due(0.009) == []
    assert s.pop_due(0.010) == [("h2", "xenbr0", [b"f1", b"f2"]), ("h2", "xenbr1", [b"f4"])]
    assert s.next_due() is None
    assert s.statistics()["frames"] == 4 and s.statistics()["batches"] == 3


def test_uplink_bandwidth_serialises_frames_one_after_another():
    s = _schedule(h2=LinkSpec(bandwidth_bps=8000))  # 100 bytes take 0.1 s
    dues = [s.submit(0.0, "h2", "xenbr0", bytes(100))[0] for _ in range(3)]
    assert dues == pytest.approx([0.1, 0.2, 0.3])
    assert len(s.pop_due(0.15)[0][2]) == 1
    assert s.statistics()["queued"] == 2


def test_uplink_loss_no_link_and_full_backlog_drop_and_count():
    s = UplinkSchedule(rng=random.Random(1), backlog_max=2)
    s.set_links({"lossy": LinkSpec(loss=1.0), "slow": LinkSpec(latency_s=1.0)})
    assert s.submit(0.0, "lossy", "xenbr0", b"x") == []
    assert s.submit(0.0, "h9", "xenbr0", b"x") == []
    assert [s.submit(0.0, "slow", "xenbr0", b"x") for _ in range(3)] == [[1.0], [1.0], []]
    stats = s.statistics()
    assert (stats["lost"], stats["no_link"], stats["backlog_dropped"]) == (1, 1, 1)
    assert stats["links"]["lossy"]["lost"] == 1
    s.pop_due(1.0)
    assert s.submit(1.0, "slow", "xenbr0", b"x") == [2.0]  # room again


def test_uplink_set_links_changes_known_links_in_place_and_drops_frames_of_removed_peers():
    s = _schedule(h2=LinkSpec(bandwidth_bps=8000), h3=LinkSpec(latency_s=0.5))
    h2 = s.links["h2"]
    s.submit(0.0, "h2", "xenbr0", bytes(100))
    s.submit(0.0, "h3", "xenbr0", b"queued")
    s.set_links({"h2": LinkSpec(bandwidth_bps=8000), "h4": LinkSpec()})
    assert s.links["h2"] is h2
    assert s.pop_due(1.0) == [("h2", "xenbr0", [bytes(100)])]
    assert s.statistics()["no_link"] == 1
    s.set_links({"h2": LinkSpec(bandwidth_bps=16000)})  # tc qdisc change
    assert s.links["h2"] is h2 and h2.spec.bandwidth_bps == 16000
    assert s.statistics()["links"]["h2"]["sent"] == 1  # its counts go on


def test_uplink_partition_drops_frames_both_ways_in_flight_too_until_healed():
    s = _schedule(h2=LinkSpec(latency_s=0.5), h3=LinkSpec())
    s.submit(0.0, "h2", "xenbr0", b"on the wire")
    s.set_partition(["h2"])
    assert s.submit(0.1, "h2", "xenbr0", b"cut off") == []
    assert s.submit(0.1, "h3", "xenbr0", b"h3 is not") == [0.1]
    assert not s.admit("h2", 3) and s.admit("h3", 3)
    assert s.pop_due(1.0) == [("h3", "xenbr0", [b"h3 is not"])]  # the pulled cable's frame
    stats = s.statistics()
    assert (stats["partitioned"], stats["blocked"], stats["queued"]) == (5, ["h2"], 0)
    assert stats["links"]["h2"]["partitioned"] == 5 and stats["links"]["h3"]["partitioned"] == 0
    s.set_partition([])
    assert s.admit("h2", 1) and s.submit(2.0, "h2", "xenbr0", b"healed") == [2.5]
    assert s.pop_due(2.5) == [("h2", "xenbr0", [b"healed"])]


def test_uplink_duplicated_and_reordered_frames_leave_in_arrival_order():
    s = _schedule(h2=LinkSpec(latency_s=0.010, duplicate=1.0, seed=1))
    assert s.submit(0.0, "h2", "xenbr0", b"twice") == [0.010, 0.010]
    assert s.pop_due(0.010) == [("h2", "xenbr0", [b"twice", b"twice"])]
    s.set_links({"h2": LinkSpec(latency_s=0.010, reorder=0.5, seed=3)})
    dues = [s.submit(1.0, "h2", "xenbr0", bytes([i]))[0] for i in range(20)]
    first = [bytes([i]) for i, due in enumerate(dues) if due == 1.0]
    assert 0 < len(first) < 20
    sent = s.pop_due(1.010)[0][2]
    assert sent[:len(first)] == first and sorted(sent) == [bytes([i]) for i in range(20)]
    links = s.statistics()["links"]["h2"]
    assert (links["duplicated"], links["reordered"]) == (1, len(first))


def test_uplink_peer_is_its_fault_on_its_base_and_refuses_what_does_not_compose():
    peer = Peer(LinkSpec(latency_s=0.010), LinkSpec(latency_s=0.005, reorder=0.5))
    assert peer.spec == LinkSpec(latency_s=0.015, reorder=0.5)
    assert Peer.from_json(peer.to_json()) == peer
    with pytest.raises(ValueError, match="latency"):
        Peer(LinkSpec(), LinkSpec(reorder=0.5))


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
        if s.submit(now, host, bridge, f):
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


def test_uplink_sender_sends_a_reordered_frame_ahead_of_a_delayed_one(clock):
    got = []
    sender = UplinkSender(lambda *batch: got.append(batch), runtime=clock)
    try:
        sender.set_links({"h2": LinkSpec(latency_s=0.05)})
        sender.submit("h2", "xenbr0", b"waits")
        sender.set_links({"h2": LinkSpec(latency_s=0.05, reorder=1.0)})
        sender.submit("h2", "xenbr0", b"at once")
        wait_until(lambda: got, "the reordered frame")
        assert got == [("h2", "xenbr0", [b"at once"])]
        clock.advance(0.05)
        wait_until(lambda: len(got) == 2, "the delayed frame")
        assert got[1] == ("h2", "xenbr0", [b"waits"])
    finally:
        sender.close()


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


class _SlowSenderClock(ManualRuntime):
    """A test clock that moves ``step`` on each time the sender's thread reads it: the time a
    loaded machine may take between two lines of that thread."""

    step = 0.0

    def monotonic(self) -> float:
        if threading.current_thread().name == "uplink-sender":
            with self._lock:
                self.now += self.step
        return super().monotonic()


def test_uplink_sender_sends_a_frame_that_came_due_while_it_went_to_sleep():
    """The frame is not due when the thread looks for due frames but is by the time it
    would set its timer (the stall seen in CI: 3.4 s until an unrelated notify)."""
    clock, got = _SlowSenderClock(), []
    sender = UplinkSender(lambda *batch: got.append(batch), runtime=clock)
    try:
        sender.set_links({"h2": LinkSpec(latency_s=0.015)})
        sender.submit("h2", "xenbr0", b"late")
        clock.step = 0.01  # pop_due reads +0.01 (not due), the timer's arming +0.02 (due)
        sender.set_links({"h2": LinkSpec(latency_s=0.015)})  # the thread looks again
        wait_until(lambda: got, "the frame, without the clock moved by the test")
        assert got == [("h2", "xenbr0", [b"late"])]
    finally:
        sender.close()


def test_uplink_peers_kept_in_xenstore_survive_a_restart(host):
    assert load_peers(host.xs) == {}
    peers = {"h2": Peer(LinkSpec(bandwidth_bps=1e8, latency_s=0.005, loss=0.01),
                        LinkSpec(jitter_s=0.002, duplicate=0.1, seed=5), blocked=True),
             "h3": Peer()}
    save_peers(host.xs, peers)
    assert load_peers(host.xs) == peers
    save_peers(host.xs, {"h3": Peer(LinkSpec(latency_s=0.001))})  # h2 left the cluster
    assert load_peers(host.xs) == {"h3": Peer(LinkSpec(latency_s=0.001))}
    assert host.xs.directory(PEERS) == ["h3"]
