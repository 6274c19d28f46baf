"""A partition of the agents' calls (actors.transport.partition): what crosses to a cut-off
host is lost, seen as silence by a caller; the rest, and the head node, still answer."""

import pytest

from actors.transport.partition import PartitionedTransport


class Recorder:
    def __init__(self):
        self.seen = []

    def call(self, dest, kind, *args, timeout=None):
        self.seen.append((dest, kind))
        return "answer"

    def send(self, dest, kind, *args):
        self.seen.append((dest, kind))

    def forget(self, dest):
        pass

    def prefetch(self, dest):
        pass


def test_a_partition_loses_calls_and_sends_to_the_far_side_only_until_healed():
    inner = Recorder()
    cut = PartitionedTransport(inner)
    cut.set_blocked(["h2"])
    with pytest.raises(TimeoutError, match="partitioned"):
        cut.call("h2/xl", "migrate_receive")
    cut.send("h2/netback", "frame")
    assert cut.call("h3/xl", "holds") == "answer"
    assert cut.call("cluster/registry", "lookup") == "answer"
    assert inner.seen == [("h3/xl", "holds"), ("cluster/registry", "lookup")]
    assert cut.dropped == 2
    cut.set_blocked([])
    assert cut.call("h2/xl", "holds") == "answer"
