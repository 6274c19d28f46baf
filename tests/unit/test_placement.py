"""Placement by free memory (``create --host auto``, ``create_many``) and the summary a
``create --count`` prints."""

from cluster.api import place_by_free_memory
from cluster.report import creation_summary


def test_each_domain_goes_to_the_host_with_the_most_free_memory_left():
    assert place_by_free_memory({"h1": 100, "h2": 300}, 64, 5) == ["h2", "h2", "h2", "h2", "h1"]


def test_equal_hosts_are_filled_in_turn_and_a_tie_goes_to_the_first_named():
    assert place_by_free_memory({"h1": 512, "h2": 512, "h3": 512}, 32, 6) == \
        ["h1", "h2", "h3", "h1", "h2", "h3"]


def test_a_full_cluster_still_places_so_that_the_host_says_enomem():
    """Placement is advice: the hypervisor refuses what does not fit, with Xen's error."""
    assert place_by_free_memory({"h1": 10}, 32, 2) == ["h1", "h1"]


def test_creation_summary_counts_per_host_and_the_rate():
    results = [{"host": "h2", "ok": True, "latency_s": 0.5},
               {"host": "h10", "ok": False, "latency_s": 0.1},
               {"host": "h2", "ok": True, "latency_s": 0.25},
               {"host": "h2", "ok": True, "latency_s": 1.0}]
    assert creation_summary(results, 2.0).splitlines() == [
        "Host  Created  Failed  Median s  Max s",
        "h2          3       0      0.50   1.00",
        "h10         0       1         -      -",
        "created 3 of 4 domains in 2.0 s (1.5/s)"]
