"""The network nemeses' pure parts (cluster/fault/net.py): who a partition cuts off from
whom, and the checker that finds the losses no fault window explains, shown to catch a loss
planted outside every window."""

import pytest

from cluster.fault.net import Loss, losses, losses_outside, partition_plan

HOSTS = ["h1", "h2", "h3", "h4"]


def test_partition_plan_cuts_every_pair_in_different_groups_both_ways():
    plan = partition_plan(HOSTS, [["h1"], ["h2", "h3"]])  # h4, named nowhere: a group of its own
    assert plan == {"h1": ["h2", "h3", "h4"], "h2": ["h1", "h4"], "h3": ["h1", "h4"],
                    "h4": ["h1", "h2", "h3"]}
    assert all(h in plan[other] for h in HOSTS for other in plan[h])  # both ways
    assert partition_plan(HOSTS, [["h1", "h2"]]) == {"h1": ["h3", "h4"], "h2": ["h3", "h4"],
                                                      "h3": ["h1", "h2"], "h4": ["h1", "h2"]}
    assert partition_plan(HOSTS, []) == {h: [] for h in HOSTS}


@pytest.mark.parametrize("groups, word", [([["h1"], ["h9"]], "no host 'h9'"),
                                          ([["h1", "h2"], ["h2"]], "two groups")])
def test_partition_plan_refuses_unknown_or_twice_named_hosts(groups, word):
    with pytest.raises(ValueError, match=word):
        partition_plan(HOSTS, groups)


PING = {"init": "ping", "transmitted": 30, "received": 26, "timeout": 0.5,
        "unanswered": [[11, 10.0], [12, 11.0], [13, 12.0], [25, 24.0]]}
SENT = {"init": "udpstream", "role": "send", "packets": 1000, "t0": 100.0, "t_end": 110.0}
RECEIVED = {"init": "udpstream", "role": "recv", "highest": 989, "last_sent": 109.89,
            "gaps": [[0, 4, 5, None, 100.05], [300, 349, 50, 102.99, 103.5],
                     [700, 700, 1, 107.0, 107.02]]}


def test_losses_of_a_ping_are_its_unanswered_requests_until_their_timeout():
    assert losses(PING) == [Loss(11, 11, 1, 10.0, 10.5), Loss(12, 12, 1, 11.0, 11.5),
                            Loss(13, 13, 1, 12.0, 12.5), Loss(25, 25, 1, 24.0, 24.5)]


def test_losses_of_a_stream_are_its_gaps_with_the_head_and_tail_from_the_sender():
    assert losses(RECEIVED, SENT) == [
        Loss(0, 4, 5, 100.0, 100.05), Loss(300, 349, 50, 102.99, 103.5),
        Loss(700, 700, 1, 107.0, 107.02), Loss(990, 999, 10, 109.89, 110.0)]
    nothing = {**RECEIVED, "highest": -1, "gaps": []}
    assert losses(nothing, SENT) == [Loss(0, 999, 1000, 100.0, 110.0)]
    with pytest.raises(ValueError, match="sender"):
        losses(RECEIVED)
    with pytest.raises(ValueError, match="not a ping"):
        losses(SENT)


def test_losses_outside_passes_losses_inside_a_window_and_catches_a_planted_one():
    # The partition ran 10.2..12.1 on the caller's clock, where the guest's 0 is 0.0.
    windows = [(10.2, 12.1)]
    inside = {**PING, "unanswered": PING["unanswered"][:3]}
    assert losses_outside(losses(inside), windows) == []
    assert losses_outside(losses(PING), windows) == [Loss(25, 25, 1, 24.0, 24.5)]  # planted
    assert losses_outside(losses(PING), windows + [(23.9, 24.2)]) == []  # a second window


def test_losses_outside_moves_guest_time_by_the_offset_and_allows_the_slack():
    found = [Loss(1, 1, 1, 5.0, 5.0)]  # guest time 5.0 is the caller's 1005.0
    assert losses_outside(found, [(1005.1, 1006.0)], offset=1000.0) == []  # in flight
    assert losses_outside(found, [(1005.1, 1006.0)], offset=1000.0, slack=0.05) == found
    assert losses_outside(found, [(1005.1, 1006.0)]) == found  # without the offset
    assert losses_outside(found, [(4000.0, 4001.0)], offset=1000.0) == found


def test_losses_outside_judges_a_stream_against_a_partition():
    windows = [(100.0, 100.04), (103.0, 103.45), (109.95, 112.0)]  # start, middle, end
    left = losses_outside(losses(RECEIVED, SENT), windows, slack=0.05)
    assert left == [Loss(700, 700, 1, 107.0, 107.02)]  # a datagram lost with no fault on
