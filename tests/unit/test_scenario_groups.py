"""Groups of domains in a scenario file (cluster.scenario.spec): ``count = N`` declares
``<name>-1`` ... ``<name>-N``, placed by ``host`` (one, a list in turn, ``auto``), each config
filled in with ``${i}`` and ``${duration}``; ``domains=`` shrinks every group and ``scaled``
refills ``${duration}``; an op or a check naming the group means every member."""

import re

import pytest

from cluster.scenario import spec
from cluster.scenario.runner import Runner
from cluster.scenario.spec import ScenarioError

GROUPS = '''
name = "g"
duration = 100
[hosts]
count = 3
[[domain]]
name = "solo"
config = 'extra = "init=counter"'
[[domain]]
name = "rx"
count = 4
host = ["h2", "h3"]
image = "8M"
config = """
vif = [ "ip=10.0.1.${i}" ]
extra = "init=udpstream role=recv seconds=${duration*0.5+3}"
"""
[[domain]]
name = "spread"
count = 3
config = 'extra = "init=counter"'
[[domain]]
name = "idle"
count = 5
host = "auto"
config = 'extra = "init=idle"'
[[op]]
kind = "pause"
at = 10
domain = "spread"
[[check]]
kind = "errors"
params = { exempt = ["rx", "solo"] }
'''


def test_a_group_declares_its_members_each_filled_in_and_placed():
    s = spec.parse(GROUPS)
    assert [d.name for d in s.domains] == ["solo", "rx-1", "rx-2", "rx-3", "rx-4", "spread-1",
                                           "spread-2", "spread-3", *(f"idle-{k}"
                                                                     for k in range(1, 6))]
    assert [d.host for d in s.domains[:8]] == ["h1", "h2", "h3", "h2", "h3",
                                               "h3", "h1", "h2"]  # the file's turn goes on
    assert {d.host for d in s.domains if d.group == "idle"} == {None}  # the cluster places
    rx3 = s.domain("rx-3")
    assert rx3.group == "rx" and rx3.number == 3 and rx3.image_bytes == 8 << 20
    assert rx3.argv == ["role=recv", "seconds=53"]
    assert [v.ip for v in rx3.config().vif] == ["10.0.1.3"]
    assert rx3.config().name == "rx-3"
    assert s.groups()["spread"] == [s.domain(f"spread-{k}") for k in (1, 2, 3)]


def test_an_op_or_a_check_naming_a_group_means_every_member():
    s = spec.parse(GROUPS)
    assert [(o.kind, o.domain) for o in s.ops] == [("pause", f"spread-{k}") for k in (1, 2, 3)]
    assert s.checks[0].params["exempt"] == ["rx-1", "rx-2", "rx-3", "rx-4", "solo"]


def test_domains_shrinks_every_group_to_at_least_one_and_scaled_refills_duration():
    s = spec.parse(GROUPS, domains=0.3)
    assert [d.name for d in s.domains] == ["solo", "rx-1", "spread-1", "idle-1", "idle-2"]
    assert s.domain("rx-1").argv == ["role=recv", "seconds=53"]
    assert s.scaled(0.1).domain("rx-1").argv == ["role=recv", "seconds=8"]  # 10 * 0.5 + 3
    with pytest.raises(ScenarioError, match="domains: 0 must be above 0"):
        spec.parse(GROUPS, domains=0)


def test_a_run_too_short_for_a_config_is_refused_naming_the_domain():
    text = GROUPS.replace("${duration*0.5+3}", "${duration-20}")
    assert spec.parse(text).domain("rx-1").argv[1] == "seconds=80"
    with pytest.raises(ScenarioError, match=re.escape(
            "g.toml: scale: 0.1: domain rx-1: ${duration-20} is -10 (below 0) in a run of 10 s")):
        spec.parse(text, source="g.toml").scaled(0.1)


@pytest.mark.parametrize("replace, by, field", [
    ("count = 4", "count = 0", "domain[1].count: 0 is not a number of domains"),
    ("count = 4", 'count = "4"', "domain[1].count"),
    ('host = ["h2", "h3"]', 'host = ["h2", "h9"]', "domain[1].host[1]: 'h9' is not a host"),
    ('host = ["h2", "h3"]', "host = []", "domain[1].host: [] is not a host"),
    ("${i}", "${j}", "domain[1].config: ${j}: want ${i} or ${duration}"),
    ("${duration*0.5+3}", "${duration/2}", "domain[1].config: ${duration/2}"),
    ('name = "spread"', 'name = "rx"', "domain[2].name: 'rx' is used twice"),
    ('name = "solo"', 'name = "spread-2"', "domain[2].name: 'spread-2' is used twice"),
    ('domain = "spread"', 'domain = "nobody"', "op[0].domain: 'nobody' is not a domain"),
    ('exempt = ["rx", "solo"]', 'exempt = ["rx-9"]', "check[0].params.exempt: 'rx-9'"),
])
def test_a_bad_group_is_one_line_naming_the_field(replace, by, field):
    assert replace in GROUPS
    with pytest.raises(ScenarioError) as e:
        spec.parse(GROUPS.replace(replace, by, 1), source="g.toml")
    assert str(e.value).startswith(f"g.toml: {field}"), str(e.value)


def test_a_fault_names_one_domain_not_a_group():
    fault = '[[fault]]\nkind = "freeze"\ntarget = { name = "%s" }\nat = 5\nfor = 1\n'
    assert spec.parse(GROUPS + fault % "rx-2").faults[0].target == {"name": "rx-2"}
    with pytest.raises(ScenarioError, match=r"fault\[0\].target.name: a fault names one"):
        spec.parse(GROUPS + fault % "rx")


def test_only_a_group_of_identical_domains_placed_auto_is_created_in_one_batch():
    s = spec.parse(GROUPS)
    batches, singles = Runner._batches(list(s.domains))
    assert [[d.name for d in b] for b in batches] == [[f"idle-{k}" for k in range(1, 6)]]
    assert [d.name for d in singles] == [d.name for d in s.domains if d.group != "idle"]
    # ${i} makes each member's config its own: created one by one
    varied = spec.parse(GROUPS.replace('config = \'extra = "init=idle"\'',
                                       'config = \'extra = "init=idle n=${i}"\''))
    assert Runner._batches(list(varied.domains))[0] == []
