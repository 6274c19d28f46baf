"""``xenray fuzz`` (cluster.fault.fuzz) on the session cluster: a hostile guest on h1 sends
tens of inputs to each of its interfaces beside three honest guests; every input gets Xen's
answer, Dom0's components are the same processes after, the honest guests go on, and the
campaign leaves nothing behind. The verdict is then shown to fail on the same observations
with one thing changed: a Dom0 component replaced, an honest guest stopped or gone, a block
lost, an input answered otherwise."""

import copy

import pytest

from actors.guest.hostile_inputs import TARGETS
from actors.transport.naming import actor_name
from cluster.fault.fuzz import DOM0, fuzz, judge

COUNT = 20


@pytest.fixture(scope="module")
def campaign(xen):
    def hostile_devices() -> list[int]:
        return [xen._transport.call(actor_name("h1", b), "statistics")["hostile"]
                for b in ("blkback", "netback")]

    before = hostile_devices()
    verdict = fuzz(xen, "all", COUNT, seed=5, host="h1")
    return verdict, before, hostile_devices()


def test_fuzz_every_input_gets_xens_answer_and_nothing_else_notices(xen, campaign):
    verdict, before, after = campaign
    assert verdict["ok"], [c for c in verdict["checks"] if not c["ok"]]
    observed = verdict["observed"]
    result = observed["result"]
    assert result["inputs"] == COUNT * len(TARGETS) and result["unexpected_count"] == 0
    assert set(result["answers"]) == set(TARGETS) and not result["skipped"]
    assert set(result["no_answer"]) == {"xenstore", "blkif", "netif"}  # their fatal last one
    assert {c: pids[0] == pids[1] for c, pids in observed["dom0"].items()} == \
        dict.fromkeys(DOM0, True)
    assert len(observed["honest"]) == 3
    assert [a - b for a, b in zip(after, before)] == [1, 1]  # its own vbd and vif, alone


def test_fuzz_destroys_what_it_created(xen, campaign):
    verdict = campaign[0]
    for name in (verdict["hostile"], *verdict["observed"]["honest"]):
        assert xen.find(name) is None, name


def _judged_with(verdict, change) -> dict:
    observed = copy.deepcopy(verdict["observed"])
    change(observed)
    return judge(observed)


def _failed(judged) -> list[str]:
    assert not judged["ok"]
    return [c["check"] for c in judged["checks"] if not c["ok"]]


def test_fuzz_verdict_fails_when_a_dom0_component_is_another_process(campaign):
    def replaced(o):
        o["dom0"]["blkback"][1] += 1  # restarted: a new pid

    def gone(o):
        o["dom0"]["xenstored"][1] = None  # does not answer

    assert _failed(_judged_with(campaign[0], replaced)) == ["Dom0 blkback"]
    assert _failed(_judged_with(campaign[0], gone)) == ["Dom0 xenstored"]


def test_fuzz_verdict_fails_when_an_honest_guest_stops_or_goes(campaign):
    verdict = campaign[0]
    counter, pinger, writer = sorted(verdict["observed"]["honest"],
                                     key=lambda n: ("counter", "pinger", "writer").index(
                                         n.rsplit("-", 1)[1]))

    def stopped(o):
        units = o["honest"][pinger]["units"]
        units[2] = units[1]  # no reply since the campaign ended

    def crashed(o):
        o["honest"][counter]["domid"][1] = None

    def lost_a_block(o):
        o["honest"][writer]["result"] = {**o["honest"][writer]["result"], "bad": [17]}

    assert _failed(_judged_with(verdict, stopped)) == [f"honest {pinger}"]
    assert _failed(_judged_with(verdict, crashed)) == [f"honest {counter}"]
    assert _failed(_judged_with(verdict, lost_a_block)) == [f"honest {writer}"]


def test_fuzz_verdict_fails_on_an_answer_xen_would_not_give(campaign):
    def let_through(o):
        o["result"] = {**o["result"], "unexpected_count": 1, "unexpected": [
            {"target": "grant", "index": 4, "what": "map_grant_ref foreign dom 1 ref 8",
             "answers": ["GNTST_okay"], "expected": [["GNTST_general_error"]]}]}

    def silent(o):
        o["result"] = None

    judged = _judged_with(campaign[0], let_through)
    assert _failed(judged) == ["answers"] and "grant #4" in judged["checks"][0]["summary"]
    assert _failed(_judged_with(campaign[0], silent)) == ["answers"]
