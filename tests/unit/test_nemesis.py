"""What a nemesis refuses before it touches anything (cluster.fault.nemesis): a bad target or
kind is a one-line ValueError. (The faults themselves are carried out on real processes in
tests/integration/test_recovery.py and the scenario tests.)"""

import random

import pytest

from cluster.fault import nemesis


@pytest.mark.parametrize("target, words", [
    ({"role": "nosuch"}, "unknown role 'nosuch'"),
    ({"role": "blkback", "name": "web"}, "a target with a name is a domain"),
    ({"host": "h1", "colour": "red"}, "unknown target key 'colour'"),
])
def test_a_bad_target_is_refused_in_one_line(target, words):
    with pytest.raises(ValueError, match=words) as refused:
        nemesis.check_target(target)
    assert "\n" not in str(refused.value)


def test_an_unknown_kind_is_refused_before_any_target_is_looked_up():
    with pytest.raises(ValueError, match="unknown fault kind 'melt'; kinds are crash"):
        nemesis.inject(None, "melt", {}, {}, random.Random(0))  # no cluster is touched


def test_injected_says_what_it_did_without_its_undo():
    done = nemesis.Injected("freeze", ["web"], {"pids": [7]}, undo=lambda: None)
    assert done.as_dict() == {"kind": "freeze", "targets": ["web"], "pids": [7]}
