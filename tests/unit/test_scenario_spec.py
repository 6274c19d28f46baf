"""Scenario files (cluster.scenario.spec): a good one reads into what it says, a bad one is
refused with one line naming the file and the field, and every shipped scenario reads."""

import re

import pytest

from cluster.scenario import spec
from cluster.scenario.spec import ScenarioError

GOOD = '''
name = "t"
seed = 7
duration = 30
[hosts]
count = 2
[[link]]
a = "h1"
b = "h2"
latency = "2ms"
[[domain]]
name = "c1"
host = "h1"
config = """
memory = 32
extra = "init=counter"
"""
[[domain]]
name = "w1"
host = "h2"
image = "16M"
config = 'extra = "init=blkverify"'
[[domain]]
name = "late"
config = 'extra = "init=counter"'
[[op]]
kind = "create"
at = 2
domain = "late"
[[op]]
kind = "migrate"
at = 4
domain = "c1"
args = { host = "h2" }
[[fault]]
kind = "freeze"
target = { role = "domu", random = true }
at = 5
for = 2
every = 10
[[check]]
kind = "isolation"
params = { max_gap = 3 }
'''


def test_a_scenario_reads_into_what_it_says():
    s = spec.parse(GOOD, source="t.toml")
    assert (s.name, s.seed, s.duration, s.hosts.names) == ("t", 7, 30.0, ("h1", "h2"))
    assert [d.name for d in s.initial_domains] == ["c1", "w1"]  # late comes from its op
    assert s.domain("late").host == "h1"  # the third domain, round robin over two hosts
    assert s.domain("w1").init == "blkverify" and s.domain("w1").image_bytes == 16 << 20
    cfg = s.domain("w1").config("/dev/shm/w1.img")
    assert cfg.name == "w1" and [d.target for d in cfg.disk] == ["/dev/shm/w1.img"]
    assert s.faults[0].lasts == 2.0 and s.faults[0].every == 10.0
    assert s.checks[0].params == {"max_gap": 3, "exempt": []}  # the defaults filled in
    assert s.links[0].latency == "2ms"


def test_scaled_multiplies_every_time():
    s = spec.parse(GOOD).scaled(0.5)
    assert s.duration == 15 and [o.at for o in s.ops] == [1, 2]
    f = s.faults[0]
    assert (f.at, f.lasts, f.every) == (2.5, 1.0, 5.0)


def bad(replace: str, by: str) -> str:
    assert replace in GOOD
    return GOOD.replace(replace, by, 1)


@pytest.mark.parametrize("text, field", [
    (bad("duration = 30", "duration = -1"), "duration"),
    (bad("duration = 30", ""), "duration: is required"),
    (bad("seed = 7", 'seed = "x"'), "seed"),
    (bad("count = 2", "count = 0"), "hosts.count"),
    (bad('latency = "2ms"', 'latency = "fast"'), "link[0]"),
    (bad('a = "h1"', 'a = "h9"'), "link[0].a"),
    (bad('host = "h1"', 'host = "h3"'), "domain[0].host"),
    (bad('memory = 32', 'memory = -5'), "domain[0].config"),
    (bad('image = "16M"', 'image = "lots"'), "domain[1].image"),
    (bad('name = "w1"', 'name = "c1"'), "domain[1].name"),
    (bad('kind = "create"', 'kind = "explode"'), "op[0].kind"),
    (bad('at = 2', 'at = 31'), "op[0].at"),
    (bad('args = { host = "h2" }', 'args = { hots = "h2" }'), "op[1].args.hots"),
    (bad('kind = "freeze"', 'kind = "crashh"'), "fault[0].kind"),
    (bad('role = "domu"', 'role = "blkbak"'), "fault[0].target"),
    (bad('for = 2', 'for = 12'), "fault[0].every"),
    (bad('kind = "freeze"', 'kind = "crash"'), "fault[0].for"),
    (bad('kind = "isolation"', 'kind = "durabilty"'), "check[0].kind"),
    (bad('max_gap = 3', 'max_gapp = 3'), "check[0].params.max_gapp"),
    (bad('max_gap = 3', 'exempt = ["nobody"]'), "check[0].params.exempt"),
    (GOOD + "\nsurprise = 1\n", "surprise: unknown field"),
    ("name = ", "not valid TOML"),
])
def test_a_bad_scenario_is_one_line_naming_the_field(text, field):
    with pytest.raises(ScenarioError) as e:
        spec.parse(text, source="t.toml")
    message = str(e.value)
    assert message.startswith("t.toml: ") and field in message and "\n" not in message


NET = GOOD + '''
[[fault]]
kind = "partition"
at = 3
for = 2
params = { groups = [["h1"], ["h2"]] }
[[fault]]
kind = "link"
at = 6
params = { a = "h1", b = "h2", loss = "10%" }
'''


def test_a_fault_between_hosts_names_them_in_its_params():
    s = spec.parse(NET)
    assert [(f.kind, f.target, f.params.get("groups")) for f in s.faults[1:]] == [
        ("partition", {}, [["h1"], ["h2"]]), ("link", {}, None)]


@pytest.mark.parametrize("replace, by, field", [
    ('groups = [["h1"], ["h2"]]', 'groups = [["h1"], ["h9"]]',
     "fault[1].params.groups: no host 'h9'"),
    ('groups = [["h1"], ["h2"]]', 'groups = "h1/h1"',
     "fault[1].params.groups: host 'h1' is in two groups"),
    ('params = { a = "h1", b = "h2"', 'params = { a = "h1"', "fault[2].params.b: is required"),
    ('kind = "link"', 'kind = "link"\ntarget = { host = "h1" }', "fault[2].target: a link names"),
])
def test_a_bad_fault_between_hosts_names_the_field(replace, by, field):
    assert replace in NET
    with pytest.raises(ScenarioError, match=re.escape(f"t.toml: {field}")):
        spec.parse(NET.replace(replace, by, 1), source="t.toml")


def test_a_domain_config_path_is_relative_to_the_scenario(tmp_path):
    (tmp_path / "c.cfg").write_text('memory = 32\nextra = "init=counter"\n')
    (tmp_path / "s.toml").write_text(
        'name = "s"\nduration = 5\n[hosts]\ncount = 1\n'
        '[[domain]]\nname = "a"\npath = "c.cfg"\n[[domain]]\nname = "b"\npath = "no.cfg"\n')
    with pytest.raises(ScenarioError, match=r"s.toml: domain\[1\].path: cannot read"):
        spec.load(tmp_path / "s.toml")


def test_every_library_scenario_reads():
    names = spec.library_names()
    assert len(names) == 8
    for name in names:
        s = spec.load(name)
        assert s.name == name and s.checks, name


def test_a_library_name_or_unique_prefix_resolves():
    assert spec.resolve("blkback").name == "blkback-killed.toml"
    with pytest.raises(ScenarioError, match="no scenario of that name"):
        spec.resolve("nosuch")


def test_xenray_run_of_a_bad_file_is_one_line_and_starts_nothing(tmp_path, capsys):
    from cluster.cli import main

    bad_file = tmp_path / "bad.toml"
    bad_file.write_text(bad("at = 2", "at = 99"))
    out = tmp_path / "out"
    assert main(["run", str(bad_file), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"xenray run: {bad_file}: op[0].at: 99 is past the duration (30 s)\n"
    assert not out.exists()
