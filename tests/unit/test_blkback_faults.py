"""Disk faults on a vbd (actors/blkback/faults.py, issue 12): the pure model, then blkback's
data path (``BlkbackRings`` over real image files, a FrontRing in the test playing blkfront),
then the blkback shell serving real ``blkverify`` guests on the in-process host, with the
durability checker (cluster/fault/disk.py) judging a power cut: it passes an honest cache and
catches one that lies about flushes.

Time is the test's (``clock``): a response held back by a latency is answered when the test
moves the clock, never after a sleep."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.blkback.actor import BlkbackShell
from actors.blkback.faults import DiskFault, DiskFaultSpec
from actors.blkback.ring import BlkbackRings
from actors.blkback.vbd import create_image
from actors.blkback.xenbus import BlkifParams, VbdConfig
from actors.console.actor import ConsoleShell
from cluster.fault.disk import lost_writes, parse_acks
from protocols.blkif import (BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ,
                             BLKIF_OP_WRITE, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, REQUEST_SIZE,
                             RESPONSE_SIZE, BlkifRequest, BlkifRequestSegment, BlkifResponse)
from protocols.errno import Errno, XenError
from protocols.libxl_types import DiskSpec, DomainConfig
from protocols.ring import FrontRing
from tests.inprocess import HOST, XL

# -- the pure model ---------------------------------------------------------------------------

READ, WRITE, FLUSH, DISCARD = BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE, \
    BLKIF_OP_DISCARD


def fault(**spec) -> DiskFault:
    return DiskFault(DiskFaultSpec.parse(spec))


def test_a_spec_reads_back_as_it_was_given():
    spec = {"eio": "write", "sectors": [8, 15], "probability": 0.5, "latency_ms": 5,
            "enospc_after": 1000, "volatile": True, "ignore_flush": True, "seed": 7}
    parsed = DiskFaultSpec.parse(spec)
    assert parsed.as_dict() == spec
    assert DiskFaultSpec.parse(parsed.as_dict()) == parsed
    assert DiskFaultSpec.parse({"latency_ms": 1}).as_dict() == {"latency_ms": 1.0}


@pytest.mark.parametrize("spec, word", [
    ({}, "does nothing"), (["eio"], "want a dict"), ({"eoi": "read"}, "unknown key 'eoi'"),
    ({"eio": "all"}, "eio='all'"), ({"sectors": [0, 1]}, "give eio"),
    ({"eio": "read", "sectors": [5, 4]}, "sectors="), ({"eio": "read", "sectors": 5}, "sectors="),
    ({"eio": "read", "sectors": [0, True]}, "sectors="),
    ({"eio": "read", "probability": 1.5}, "probability=1.5 is out of range"),
    ({"eio": "read", "probability": "x"}, "not a number"),
    ({"latency_ms": -1}, "latency_ms=-1"), ({"latency_ms": 10**9}, "latency_ms="),
    ({"enospc_after": 1.5}, "not an integer"), ({"enospc_after": -1}, "enospc_after=-1"),
    ({"volatile": "yes"}, "not true or false"), ({"ignore_flush": True}, "needs volatile"),
    ({"volatile": True, "seed": True}, "seed=True"),
])
def test_a_bad_spec_is_einval_in_one_line_naming_what_is_wrong(spec, word):
    with pytest.raises(XenError) as e:
        DiskFaultSpec.parse(spec)
    assert e.value.errno == Errno.EINVAL and word in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("eio, fails", [
    ("read", {READ}), ("write", {WRITE, FLUSH, DISCARD}), ("both", {READ, WRITE, FLUSH, DISCARD}),
])
def test_eio_fails_the_ops_it_names_and_no_other(eio, fails):
    f = fault(eio=eio)
    for op in (READ, WRITE, FLUSH, DISCARD):
        assert f.check(op, 0, 8) == (Errno.EIO if op in fails else None), op
    assert f.counts["eio"] == len(fails)


def test_eio_on_a_sector_range_hits_requests_that_touch_it_inclusive():
    f = fault(eio="both", sectors=[16, 23])
    assert [f.check(READ, s, 8) for s in (0, 8, 9, 16, 23, 24)] == \
        [None, None, Errno.EIO, Errno.EIO, Errno.EIO, None]
    assert f.check(FLUSH, 0, 0) is None  # a flush without data touches no sector


def test_eio_with_a_probability_is_the_same_for_the_same_seed():
    def run(seed):
        f = fault(eio="write", probability=0.25, seed=seed)
        return [f.check(WRITE, i * 8, 8) is not None for i in range(400)]

    first = run(1)
    assert run(1) == first and run(2) != first
    assert 60 < sum(first) < 140  # a quarter of 400, give or take
    f = fault(eio="write", probability=0.25, seed=1)
    assert [f.check(READ, 0, 8) for _ in range(50)] == [None] * 50  # reads draw nothing
    assert [f.check(WRITE, i * 8, 8) is not None for i in range(400)] == first


def test_enospc_fails_writes_reaching_past_the_store_and_nothing_else():
    f = fault(enospc_after=64)
    assert f.check(WRITE, 56, 8) is None  # sectors 56..63: the last that fit
    assert f.check(WRITE, 60, 8) == Errno.ENOSPC
    assert f.check(FLUSH, 64, 8) == Errno.ENOSPC  # the data a flush carries
    assert [f.check(op, 100, n) for op, n in ((READ, 8), (DISCARD, 8), (FLUSH, 0))] == \
        [None] * 3
    assert fault(enospc_after=0).check(WRITE, 0, 1) == Errno.ENOSPC
    assert f.counts["enospc"] == 2


def test_latency_delays_every_response_until_the_power_goes():
    f = fault(latency_ms=250, volatile=True)
    assert f.delay == 0.25 and f.check(READ, 0, 8) is None and f.counts["delayed"] == 1
    f.power_cut()
    assert f.delay == 0.0


def test_a_power_cut_hands_back_the_unflushed_writes_newest_first_then_fails_everything():
    f = fault(volatile=True)
    f.record(0, b"a" * 512)
    f.flushed()
    f.record(8, b"b" * 512)
    f.record(8, b"c" * 512)
    assert f.unflushed == 2
    assert f.power_cut() == [(8, b"c" * 512), (8, b"b" * 512)]
    assert [f.check(op, 0, 8) for op in (READ, WRITE, FLUSH)] == [Errno.EIO] * 3
    assert (f.counts["rolled_back"], f.counts["powered_off"], f.counts["flushes"]) == (2, 3, 1)


def test_a_lying_cache_keeps_its_log_across_flushes():
    f = fault(volatile=True, ignore_flush=True)
    assert not f.honours_flush()
    f.record(0, b"x" * 512)
    f.flushed()
    assert f.unflushed == 1 and f.counts["ignored_flushes"] == 1
    assert f.power_cut() == [(0, b"x" * 512)]


def test_a_new_volatile_fault_adopts_the_unflushed_writes_and_a_plain_one_drops_them():
    old = fault(volatile=True)
    old.record(0, b"o" * 512)
    kept, dropped = fault(volatile=True, latency_ms=1), fault(latency_ms=1)
    kept.adopt(old)
    dropped.adopt(old)
    assert (kept.unflushed, dropped.unflushed) == (1, 0)


WRITES = st.lists(st.one_of(
    st.tuples(st.integers(0, 15), st.integers(1, 4), st.integers(1, 255)),  # sector, n, fill
    st.just("flush")), max_size=40)


@settings(max_examples=100)
@given(WRITES, st.booleans())
def test_a_power_cut_leaves_every_sector_as_at_the_last_honoured_flush(ops, lying):
    """Any mix of overlapping writes and flushes: writing back what ``power_cut`` returns
    leaves the image exactly as the last flush left it (as it was armed, if flushes lie)."""
    image = bytearray(range(256)) * 32  # 16 sectors
    f = fault(volatile=True, ignore_flush=lying)
    at_flush = bytes(image)
    for op in ops:
        if op == "flush":
            f.flushed()
            if not lying:
                at_flush = bytes(image)
            continue
        sector, n, fill = op
        span = slice(sector * 512, min(16, sector + n) * 512)
        f.record(sector, image[span])
        image[span] = bytes([fill]) * (span.stop - span.start)
    for sector, old in f.power_cut():
        image[sector * 512:sector * 512 + len(old)] = old
    assert bytes(image) == at_flush


# -- the data path over a real image ------------------------------------------------------------

KEY, OTHER = (3, 51712), (4, 51712)
SECTORS = 256  # a 128 KiB image


class Hv:
    """Dom0's hypercall client, as far as the data path uses it: the kicks it posts."""

    def __init__(self):
        self.kicks = []

    def post(self, op, subop, *, port):
        self.kicks.append(port)


class Grants:
    """The frontend's data pages, mapped by gref."""

    def __init__(self):
        self.pages = {gref: bytearray(4096) for gref in range(8, 16)}

    def map(self, gref, readonly):
        return memoryview(self.pages[gref])

    def unmap(self, gref, page):
        pass


class Vbd:
    """One vbd of ``rings``: a real image, a ring page whose front end the test drives."""

    def __init__(self, rings, tmp_path, key, port):
        self.rings, self.key, self.port = rings, key, port
        self.path = tmp_path / f"d{key[0]}.img"
        create_image(self.path, SECTORS * 512)
        rings.probe(key, VbdConfig(str(self.path), readonly=False))
        self.page = bytearray(4096)
        self.front = FrontRing(self.page, REQUEST_SIZE)
        self.front.init()
        self.grants = Grants()
        rings.connect(key, 1, ((2, memoryview(self.page)),), self.grants, port,
                      BlkifParams(persistent=True, discard=True))

    def push(self, *reqs):
        for r in reqs:
            self.front.put_request(r.pack())
        self.front.push_requests()
        self.rings.upcall([self.port])

    def responses(self):
        return [(r.id, r.status) for r in map(BlkifResponse.unpack,
                                              self.front.get_responses(RESPONSE_SIZE))]

    def submit(self, *reqs):
        self.push(*reqs)
        return self.responses()

    def write(self, id_, sector, fill):
        self.grants.pages[8 + id_ % 8][:] = bytes([fill]) * 4096
        return BlkifRequest(WRITE, 1, 0, id_, sector, (BlkifRequestSegment(8 + id_ % 8, 0, 7),))

    def read(self, id_, sector):
        return BlkifRequest(READ, 1, 0, id_, sector, (BlkifRequestSegment(8 + id_ % 8, 0, 7),))

    def block(self, sector):
        with open(self.path, "rb") as f:
            f.seek(sector * 512)
            return f.read(4096)

    def stats(self):
        return self.rings.statistics(self.key)


FLUSH_REQ = BlkifRequest(FLUSH, 0, 0, 99, 0)
OK, ERR = BLKIF_RSP_OKAY, BLKIF_RSP_ERROR


@pytest.fixture
def rings(clock):
    return BlkbackRings(Hv(), runtime=clock)


@pytest.fixture
def vbd(rings, tmp_path):
    return Vbd(rings, tmp_path, KEY, port=5)


def test_an_eio_write_fault_answers_blkif_rsp_error_and_leaves_the_image_as_it_was(vbd):
    assert vbd.rings.set_fault(KEY, {"eio": "write", "sectors": [8, 15]}) == \
        {"eio": "write", "sectors": [8, 15]}
    assert vbd.submit(vbd.write(1, 0, 0x11), vbd.write(2, 8, 0x22), vbd.write(3, 16, 0x33),
                      vbd.read(4, 8)) == [(1, OK), (2, ERR), (3, OK), (4, OK)]
    assert vbd.block(0) == b"\x11" * 4096 and vbd.block(16) == b"\x33" * 4096
    assert vbd.block(8) == bytes(4096)  # the failed write never reached the image
    stats = vbd.stats()
    assert (stats["fault_eio"], stats["errors"], stats["wr_req"]) == (1, 1, 2)
    assert vbd.rings.clear_fault(KEY)["fault_eio"] == 1
    assert vbd.submit(vbd.write(5, 8, 0x55)) == [(5, OK)]  # healed
    assert vbd.block(8) == b"\x55" * 4096
    assert vbd.stats()["fault_eio"] == 1 and "fault_unflushed" not in vbd.stats()


def test_enospc_past_the_store_answers_error_and_writes_nothing(vbd):
    vbd.rings.set_fault(KEY, {"enospc_after": 16})
    assert vbd.submit(vbd.write(1, 8, 0x11), vbd.write(2, 12, 0x22), vbd.read(3, 200)) == [
        (1, OK), (2, ERR), (3, OK)]
    assert vbd.block(8) == b"\x11" * 4096 and vbd.block(16) == bytes(4096)
    assert vbd.stats()["fault_enospc"] == 1


def test_a_latency_holds_the_response_back_without_holding_the_ring_or_another_vbd(
        rings, vbd, tmp_path, clock):
    other = Vbd(rings, tmp_path, OTHER, port=6)
    rings.set_fault(KEY, {"latency_ms": 50})
    assert vbd.submit(vbd.write(1, 0, 0x11)) == []  # done, not yet answered
    assert vbd.block(0) == b"\x11" * 4096
    assert other.submit(other.write(1, 0, 0x22)) == [(1, OK)]  # the other vbd: at once
    assert vbd.submit(vbd.read(2, 0)) == []  # the ring is served on meanwhile
    clock.advance(0.049)
    assert vbd.responses() == []
    clock.advance(0.002)
    assert vbd.responses() == [(1, OK), (2, OK)]
    assert rings.hv.kicks.count(5) == 1 and clock.pending() == 0
    assert vbd.stats()["fault_delayed"] == 2


def test_a_power_cut_rolls_back_every_unflushed_write_and_no_flushed_one(vbd):
    vbd.rings.set_fault(KEY, {"volatile": True})
    assert vbd.submit(vbd.write(1, 0, 0xAA), FLUSH_REQ, vbd.write(2, 8, 0xBB),
                      vbd.write(3, 0, 0xCC)) == [(1, OK), (99, OK), (2, OK), (3, OK)]
    assert vbd.block(0) == b"\xcc" * 4096 and vbd.stats()["fault_unflushed"] == 2
    assert vbd.rings.power_cut(KEY) == {"rolled_back": 2, "sectors": 16}
    assert vbd.block(0) == b"\xaa" * 4096  # the flushed write, not the later one
    assert vbd.block(8) == bytes(4096)  # never flushed: gone
    assert vbd.submit(vbd.read(4, 0), vbd.write(5, 16, 0xDD), FLUSH_REQ) == [
        (4, ERR), (5, ERR), (99, ERR)]  # no power: nothing is served
    assert vbd.block(16) == bytes(4096)
    assert vbd.rings.faults() == [{"domid": 3, "devid": 51712, "spec": {"volatile": True},
                                   "powered": False, "unflushed": 0, "fault_eio": 0,
                                   "fault_enospc": 0, "fault_delayed": 0, "fault_flushes": 1,
                                   "fault_ignored_flushes": 0, "fault_rolled_back": 2,
                                   "fault_powered_off": 3}]
    vbd.rings.clear_fault(KEY)  # the power comes back
    assert vbd.submit(vbd.write(6, 8, 0xEE)) == [(6, OK)]
    assert vbd.block(8) == b"\xee" * 4096 and vbd.rings.faults() == []


def test_a_power_cut_fails_the_responses_a_latency_still_holds(vbd, clock):
    vbd.rings.set_fault(KEY, {"volatile": True, "latency_ms": 100})
    assert vbd.submit(vbd.write(1, 0, 0x11)) == []
    assert vbd.rings.power_cut(KEY)["rolled_back"] == 1
    assert vbd.responses() == [(1, ERR)]  # at once: the disk is dead, not slow
    assert vbd.block(0) == bytes(4096)
    clock.advance(1)
    assert vbd.responses() == []


def test_a_lying_cache_loses_flushed_writes_in_a_power_cut(vbd):
    vbd.rings.set_fault(KEY, {"volatile": True, "ignore_flush": True})
    assert vbd.submit(vbd.write(1, 0, 0x11), FLUSH_REQ) == [(1, OK), (99, OK)]
    assert vbd.rings.power_cut(KEY)["rolled_back"] == 1
    assert vbd.block(0) == bytes(4096)
    assert vbd.stats()["fault_ignored_flushes"] == 1


def test_a_replaced_fault_keeps_the_volatile_log_and_the_counts(vbd):
    vbd.rings.set_fault(KEY, {"volatile": True, "eio": "read"})
    assert vbd.submit(vbd.read(1, 0), vbd.write(2, 0, 0x11)) == [(1, ERR), (2, OK)]
    vbd.rings.set_fault(KEY, {"volatile": True, "latency_ms": 1})
    assert vbd.stats()["fault_eio"] == 1 and vbd.stats()["fault_unflushed"] == 1
    assert vbd.rings.power_cut(KEY)["rolled_back"] == 1
    assert vbd.block(0) == bytes(4096)


def test_the_fault_outlives_a_reconnect_and_held_responses_die_with_their_ring(
        rings, vbd, clock):
    rings.set_fault(KEY, {"latency_ms": 10, "eio": "read"})
    assert vbd.submit(vbd.write(1, 0, 0x11)) == []
    rings.disconnect(KEY)
    assert clock.pending() == 0  # its timer went with the ring
    page = bytearray(4096)
    front = FrontRing(page, REQUEST_SIZE)
    front.init()
    rings.connect(KEY, 2, ((2, memoryview(page)),), vbd.grants, 7, BlkifParams(True, True))
    vbd.front, vbd.page, vbd.port = front, page, 7
    assert vbd.submit(vbd.read(2, 0)) == []
    clock.advance(0.011)
    assert vbd.responses() == [(2, ERR)]  # only the new ring's, and still faulty


def test_power_cut_needs_a_volatile_cache_and_an_unknown_vbd_is_enodev(vbd):
    with pytest.raises(XenError, match="volatile") as e:
        vbd.rings.power_cut(KEY)
    assert e.value.errno == Errno.EINVAL
    vbd.rings.set_fault(KEY, {"eio": "read"})
    with pytest.raises(XenError, match="volatile"):
        vbd.rings.power_cut(KEY)
    for call in (lambda: vbd.rings.set_fault(OTHER, {"eio": "read"}),
                 lambda: vbd.rings.clear_fault(OTHER), lambda: vbd.rings.power_cut(OTHER)):
        with pytest.raises(XenError) as e:
            call()
        assert e.value.errno == Errno.ENODEV
    with pytest.raises(XenError):
        vbd.rings.set_fault(KEY, {"eio": "sometimes"})
    assert vbd.rings.faults()[0]["spec"] == {"eio": "read"}  # the old fault stands


# -- the shell, serving real guests -----------------------------------------------------------

BLKBACK, CONSOLED = f"{HOST}/blkback", f"{HOST}/xenconsoled"
XVDA = 51712


@pytest.fixture
def xl(threaded_host, tmp_path, clock):
    """The real toolstack, xenconsoled and blkback (its timers on the test's clock)."""
    threaded_host.start_toolstack()
    threaded_host.start(CONSOLED, ConsoleShell(HOST, threaded_host.clients(CONSOLED),
                                               threaded_host.log, str(tmp_path / "logs")))
    back = threaded_host.start(BLKBACK, BlkbackShell(HOST, threaded_host.clients(BLKBACK),
                                                     threaded_host.log, runtime=clock))
    yield threaded_host
    for name in list(threaded_host.toolstack.core.records):
        threaded_host.call(XL, "destroy", name)
    assert back.backend.effect_errors == 0


def blkverify_guest(host, tmp_path, name, args, size=4 << 20):
    image = tmp_path / f"{name}.img"
    create_image(image, size)
    cfg = DomainConfig(name=name, memory=8, maxmem=8, cmdline=f"init=blkverify {args}",
                       disk=(DiskSpec("xvda", XVDA, str(image)),))
    return host.call(XL, "create", cfg.to_dict())["domid"]


def result(host, name):
    return next((line for line in host.call(CONSOLED, "tail", name, 5)
                 if line.startswith("RESULT ")), None)


def console_line(host, name, pattern, accept=lambda m: True):
    """Wait for a console line of ``name`` matching ``pattern`` (and ``accept``); its match."""
    return host.until(lambda: next((m for line in host.call(CONSOLED, "tail", name, 50)
                                    if (m := re.fullmatch(pattern, line)) and accept(m)), None),
                      f"{name} to print {pattern!r}")


def logged_acks(host, name):
    with open(host.call(CONSOLED, "log_path", name)) as log:  # all of it, not a tail
        return parse_acks(log)


def row(host, domid):
    return next(d for d in host.call(BLKBACK, "statistics")["devices"] if d["domid"] == domid)


LONG_WRITER = "blocks=100000 iodepth=8 acklog=1 retry=0.02"  # writes for far longer than a test
LONG_DISK = 100000 * 4096  # sparse: only what the test lets it write takes space


def test_a_slow_disk_holds_back_its_own_guest_and_no_other(xl, tmp_path, clock):
    """Two guests on one blkback: a latency on one vbd stops that guest (its responses wait
    for the clock, which the test holds still) while the other runs to its end."""
    slow = blkverify_guest(xl, tmp_path, "slow", LONG_WRITER, LONG_DISK)
    xl.call(BLKBACK, "disk_fault", slow, XVDA, {"latency_ms": 20})
    xl.until(lambda: row(xl, slow)["fault_delayed"] >= 1, "the slow guest's requests held")
    held = row(xl, slow)
    blkverify_guest(xl, tmp_path, "fast", "blocks=64 iodepth=8")
    assert '"verified": 64' in xl.until(lambda: result(xl, "fast"), "the fast guest's result")
    assert result(xl, "slow") is None
    counts = ("wr_req", "rd_req", "fault_delayed")
    assert {k: row(xl, slow)[k] for k in counts} == {k: held[k] for k in counts}
    assert xl.call(BLKBACK, "disk_fault_clear", slow, XVDA)["fault_delayed"] >= 1
    clock.advance(0.02)  # what was held is answered; the rest runs at full speed
    xl.until(lambda: row(xl, slow)["wr_req"] > held["wr_req"] + 64, "the slow guest going on")


def test_the_shell_refuses_bad_calls_in_one_line_and_serves_on(xl, tmp_path):
    domid = blkverify_guest(xl, tmp_path, "v", "blocks=8")
    for args, errno in [((domid, XVDA, {"eio": 1}), Errno.EINVAL),
                        ((domid, 51728, {"eio": "read"}), Errno.ENODEV),
                        ((str(domid), XVDA, {"eio": "read"}), Errno.EINVAL),
                        ((domid, [XVDA], {"eio": "read"}), Errno.EINVAL)]:
        with pytest.raises(XenError) as e:
            xl.call(BLKBACK, "disk_fault", *args)
        assert e.value.errno == errno and "\n" not in str(e.value)
    with pytest.raises(XenError) as e:
        xl.call(BLKBACK, "power_cut", domid, XVDA)
    assert e.value.errno == Errno.EINVAL
    assert xl.call(BLKBACK, "disk_fault_clear", domid, XVDA) == {}
    assert '"verified": 8' in xl.until(lambda: result(xl, "v"), "the guest's result")
    assert xl.call(BLKBACK, "disk_faults") == [] and row(xl, domid)["f_req"] == 1


def test_blkverify_reports_eio_on_its_console_and_goes_on_once_the_fault_is_cleared(
        xl, tmp_path):
    """A write fault mid-stream: the guest is not crashed, it says what failed and does the
    batch again until the fault is taken off; afterwards every write it saw acknowledged is
    in the image."""
    domid = blkverify_guest(xl, tmp_path, "e", LONG_WRITER, LONG_DISK)
    xl.call(BLKBACK, "disk_fault", domid, XVDA, {"eio": "write"})
    failed = int(console_line(xl, "e", r"blkverify: writing blocks (\d+)-\d+: EIO: 8 of 8 "
                                       r"requests failed; retrying in 0.02 s").group(1))
    assert xl.call(BLKBACK, "disk_fault_clear", domid, XVDA)["fault_eio"] >= 8
    console_line(xl, "e", r"ACK (\d+) .*", lambda m: int(m.group(1)) > failed)  # past it
    xl.call(XL, "destroy", "e")
    acks = logged_acks(xl, "e")
    assert [a.seq for a in acks] == list(range(0, acks[-1].seq + 1, 8))
    assert lost_writes(tmp_path / "e.img", acks) == []


@pytest.mark.parametrize("lying", [False, True], ids=["honest", "lying-cache"])
def test_the_durability_checker_passes_an_honest_power_cut_and_catches_a_lying_cache(
        xl, tmp_path, lying):
    """A writer flushing every 64 writes, a volatile cache, a power cut mid-stream once the
    cache has seen two flushes, the domain destroyed, then the checker on its console log and
    the image. An honest cache loses exactly the acknowledged writes after the last flush;
    one that acknowledges flushes without making anything stable loses flushed writes, and
    the checker says which."""
    domid = blkverify_guest(xl, tmp_path, "w", LONG_WRITER + " flush=64", LONG_DISK)
    xl.call(BLKBACK, "disk_fault", domid, XVDA, {"volatile": True, "ignore_flush": lying})
    seen = "fault_ignored_flushes" if lying else "fault_flushes"
    xl.until(lambda: (r := row(xl, domid))[seen] >= 2 and r["fault_unflushed"] >= 16,
             "two flushes through the armed cache, and writes since")
    cut = xl.call(BLKBACK, "power_cut", domid, XVDA)
    console_line(xl, "w", r"blkverify: .*: EIO: .*")  # it printed all it saw acknowledged
    xl.call(XL, "destroy", "w")
    acks = logged_acks(xl, "w")
    image = tmp_path / "w.img"
    lost, lost_flushed = lost_writes(image, acks), lost_writes(image, acks, flushed_only=True)
    assert len(lost) <= cut["rolled_back"] and {w.found for w in lost} <= {"zeros"}
    if lying:
        assert len(lost_flushed) >= 64 and all(w.ack.flushed for w in lost_flushed)
        assert str(lost_flushed[0]).endswith(", flushed): zeros")
    else:
        assert lost_flushed == [] and any(a.flushed for a in acks)
        unflushed = [s for a in acks if not a.flushed for s in a.blocks()]
        assert [w.sector for w in lost] == unflushed  # exactly those, every one of them
