"""pCPU lists as xl writes them (protocols.cpumap): libxl's parse_cpurange and xl's
print_bitmap, and the bitmaps the domctls carry."""

import re

import pytest

from protocols.cpumap import format_cpus, from_bitmap, parse_cpulist, to_bitmap


@pytest.mark.parametrize("text, cpus", [
    ("all", {0, 1, 2, 3}), ("2", {2}), ("0-2", {0, 1, 2}), ("0,3", {0, 3}),
    ("all,^1", {0, 2, 3}), ("0-3,^1-2", {0, 3}), ("nodes:0", {0, 1, 2, 3}),
    ("node:0", {0, 1, 2, 3}), ("nodes:all,^3", {0, 1, 2}),
    ("^0,1", {1}), (" 1 , 2 ", {1, 2}),
])
def test_parse_cpulist_as_libxl(text, cpus):
    assert parse_cpulist(text, 4) == frozenset(cpus)


@pytest.mark.parametrize("text, words", [
    ("4", "pcpu 4 does not exist (the host has 4)"), ("3-1", "Invalid pcpu range: 3-1."),
    ("x", "Invalid pcpu range: x."), ("^all", 'Can\'t combine "^" and "all".'),
    ("^nodes:all", 'Can\'t combine "^" and "all".'), ("0,^0", "leaves no pcpu"),
    ("nodes:1", "no NUMA node 1"), ("node:0-1", "no NUMA node 1"),
    ("", "Invalid pcpu range: ."),
])
def test_parse_cpulist_refuses_with_one_line(text, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_cpulist(text, 4)


@pytest.mark.parametrize("cpus, text", [
    (None, "all"), ({0, 1, 2, 3}, "all"), ({1}, "1"), ({0, 1, 3}, "0-1,3"), (set(), "none"),
])
def test_format_cpus_as_print_bitmap(cpus, text):
    assert format_cpus(None if cpus is None else frozenset(cpus), 4) == text


def test_bitmaps_round_trip_and_ignore_bits_beyond_the_host():
    assert to_bitmap(frozenset({0, 9}), 10) == b"\x01\x02"
    assert from_bitmap(b"\x01\x02", 10) == {0, 9}
    assert from_bitmap(b"\xff\xff", 3) == {0, 1, 2}
    assert to_bitmap(None, 3) == b"\x07"
