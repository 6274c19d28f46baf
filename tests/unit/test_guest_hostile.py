"""The hostile guest (actors.guest.hostile, actors.guest.hostile_inputs): its inputs are a
pure function of target, seed and context; on the in-process host, with the real
hypervisor, xenstored, blkback and netback beside an honest guest, every input of every
target gets the answer Xen gives it, the honest guest goes on, and a component that gives
another answer is caught."""

import argparse

import pytest

from actors.blkback.actor import BlkbackShell
from actors.blkback.vbd import create_image
from actors.guest.hostile import unexpected
from actors.guest.hostile_inputs import NO_ANSWER, TARGETS, Context, Input, generate
from actors.netback.actor import NetbackShell
from cluster.cli.cmdtable import lookup
from protocols import evtchn
from protocols.libxl_types import DiskSpec, VifSpec
from tests.inprocess import HOST
from tests.unit.test_domain_kernel import BLKBACK, NETBACK, XVDA, toolstack

CTX = Context(domid=5, others=(0, 1, 2, 3, 4, 6, 0x7FEF), own_ports=(1, 2, 3), nr_ports=64,
              nr_grefs=4096, bad_grefs=tuple(range(700, 732)), foreign_gref=600, ro_gref=601,
              scratch_pfn=40, nr_pages=8192, sectors=32768)
FATAL = {t for t in TARGETS if t in NO_ANSWER}  # the targets whose last input is fatal
SUCCESS = {"OK", "GNTST_okay", "BLKIF_RSP_OKAY", "NETIF_RSP_OKAY"}


# -- the inputs: deterministic, replayable, each with Xen's error ------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_hostile_inputs_are_the_same_for_a_seed_and_differ_for_another(target):
    assert generate(target, 40, 7, CTX) == generate(target, 40, 7, CTX)
    assert [i.data for i in generate(target, 40, 7, CTX)] != \
        [i.data for i in generate(target, 40, 8, CTX)]


@pytest.mark.parametrize("target", TARGETS)
def test_hostile_input_is_replayed_from_target_seed_and_index_alone(target):
    """Input i does not depend on the others: a campaign of 10 is the first inputs of one of
    100 (but its last, which is the fatal one where the target has one)."""
    short, long = generate(target, 10, 3, CTX), generate(target, 100, 3, CTX)
    kept = 9 if target in FATAL else 10
    assert short[:kept] == long[:kept]
    assert [i.index for i in long] == list(range(100))


@pytest.mark.parametrize("target", TARGETS)
def test_hostile_inputs_expect_errors_only_and_no_answer_only_last(target):
    inputs = generate(target, 200, 11, CTX)
    for inp in inputs:
        assert inp.expect and all(e and not e & SUCCESS for e in inp.expect), inp
    silent = [i.index for i in inputs if any("none" in e for e in i.expect)]
    assert silent == ([199] if target in FATAL else [])


def test_hostile_inputs_depend_on_the_context():
    """The guest's own facts shape the inputs (ports it owns are never sent on)."""
    other = Context(**{**CTX.__dict__, "own_ports": tuple(range(1, 60))})
    sends = [i for i in generate("evtchn", 300, 1, other) if i.what.startswith("send port")]
    assert sends and all(int(i.what.split()[-1]) not in range(1, 60) for i in sends)


def test_an_answer_other_than_xens_is_unexpected():
    inp = Input("evtchn", 3, "status of domain 1", None, (frozenset({"EPERM", "ESRCH"}),))
    assert not unexpected(inp, ["EPERM"])
    assert unexpected(inp, ["OK"]) and unexpected(inp, ["raised RuntimeError"])
    assert unexpected(inp, ["EPERM", "ENOSYS"]) and unexpected(inp, [])


def test_fuzz_command_takes_every_target_and_all():
    spec = lookup("fuzz")
    parser = argparse.ArgumentParser(exit_on_error=False)
    for flags, kw in spec.args:
        parser.add_argument(*flags, **kw)
    assert dict(spec.args)[("target",)]["choices"] == (*TARGETS, "all")
    a = parser.parse_args(["netif", "--count", "5", "--seed", "9", "--json"])
    assert (a.target, a.count, a.seed, a.json) == ("netif", 5, 9, True)


# -- the campaign, against the real components of the in-process host -------------------------

@pytest.fixture
def xl(threaded_host, tmp_path):
    """xenconsoled, blkback and netback on the host; every guest parked at the end, and no
    backend effect may have failed."""
    backs = [threaded_host.start(endpoint, shell(HOST, threaded_host.clients(endpoint),
                                                 threaded_host.log))
             for endpoint, shell in ((BLKBACK, BlkbackShell), (NETBACK, NetbackShell))]
    with toolstack(threaded_host, tmp_path) as xl:
        yield xl
    assert [b.backend.effect_errors for b in backs] == [0, 0]


def campaign(xl, tmp_path, target: str, count: int, seed: int = 1) -> tuple[dict, object]:
    """An honest counter, then the hostile guest with a disk and a vif; its result, and the
    counter."""
    honest = xl.create("init=counter interval=0.02")
    honest.wait_counts(1)
    img = tmp_path / "hostile.img"
    create_image(img, "4M")
    hostile = xl.create(f"init=hostile target={target} count={count} seed={seed}",
                        disk=(DiskSpec("xvda", XVDA, target=str(img)),),
                        vif=(VifSpec(devid=0, mac="00:16:3e:00:66:66", ip="10.66.0.6"),))
    [result] = xl.until(hostile.results, "the hostile guest's result", timeout=60)
    return result, honest


@pytest.mark.parametrize("target", TARGETS)
def test_hostile_guest_gets_xens_answer_to_every_input_and_the_other_goes_on(
        xl, tmp_path, target):
    result, honest = campaign(xl, tmp_path, target, 30)
    assert (result["inputs"], result["skipped"]) == (30, {})
    assert result["unexpected_count"] == 0, result["unexpected"]
    answers = result["answers"][target]
    assert sum(answers.values()) == 30 and not set(answers) & SUCCESS
    assert ("none" in answers) == (target in FATAL)  # the fatal last one, and only there
    assert set(result["no_answer"]) == ({target} if target in FATAL else set())
    at_result = honest.counts()[-1]
    honest.wait_counts(at_result + 2)  # the honest guest goes on
    assert honest.shutdown_code() is None


def test_hostile_guest_names_what_a_hypervisor_let_through(xl, tmp_path, monkeypatch):
    """A hypervisor whose event channels skip XSM_TARGET (any domain may act on another's
    ports) lets the hostile guest's reads of other domains' ports succeed: the guest lists
    those inputs, by index, as answered otherwise than Xen would."""
    monkeypatch.setattr(evtchn.EventChannels, "_check_target", staticmethod(lambda c, d: None))
    result, _ = campaign(xl, tmp_path, "evtchn", 60, seed=2)
    assert result["unexpected_count"] > 0
    odd = result["unexpected"][0]
    replayed = generate("evtchn", 60, 2, CTX)  # another context: the same kind at that index
    assert odd["target"] == "evtchn" and "EPERM" in odd["expected"][0]
    assert odd["answers"] == ["OK"] and replayed[odd["index"]].what.split()[0] == \
        odd["what"].split()[0]
