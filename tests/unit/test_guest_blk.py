"""blkbench (actors.guest.blk): its fio-style options, its statistics, and the init's loop
against an in-memory disk with a virtual clock (no Ray, no blkback)."""

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.guest.api import GuestOS
from actors.guest.blk import BlkbenchSpec, io_summary, percentile
from actors.guest.inits import find
from tests.guestmem import GuestMemory

# --- options ---------------------------------------------------------------------------------

def test_blkbench_defaults_are_4k_randread_depth_8_16m_for_5_s():
    assert BlkbenchSpec.parse({}) == BlkbenchSpec(rw="randread", bs=4096, iodepth=8,
                                                  size=16 << 20, runtime=5.0, count=None)


def test_blkbench_parses_every_option_with_size_suffixes():
    spec = BlkbenchSpec.parse({"rw": "write", "bs": "64K", "iodepth": "32", "size": "1M",
                               "runtime": "2.5", "count": "100", "disk": "xvdb"})
    assert spec == BlkbenchSpec(rw="write", bs=65536, iodepth=32, size=1 << 20, runtime=2.5,
                                count=100, disk="xvdb")
    assert not spec.reads and BlkbenchSpec.parse({"rw": "read"}).reads


def test_blkbench_count_alone_has_no_time_limit():
    assert BlkbenchSpec.parse({"count": "10"}).runtime is None


@pytest.mark.parametrize("opts, word", [
    ({"rw": "randrw"}, "rw="), ({"bs": "1000"}, "multiple of 512"), ({"bs": "0"}, "bs"),
    ({"iodepth": "0"}, "iodepth="), ({"iodepth": "x"}, "iodepth="),
    ({"runtime": "-1"}, "runtime="), ({"count": "1.5"}, "count="),
    ({"size": "4K", "bs": "8K"}, "smaller than bs"),
])
def test_blkbench_refuses_bad_options_naming_them(opts, word):
    with pytest.raises(ValueError, match=word):
        BlkbenchSpec.parse(opts)


def test_blkbench_sequential_sectors_wrap_within_the_region():
    spec = BlkbenchSpec.parse({"rw": "read", "bs": "8K", "size": "32K"})
    it = spec.sectors(disk_sectors=1 << 20)
    assert [next(it) for _ in range(6)] == [0, 16, 32, 48, 0, 16]


@given(st.sampled_from(["randread", "randwrite"]), st.integers(1, 64), st.integers(1, 4096),
       st.integers(0, 2**32))
def test_blkbench_random_sectors_are_aligned_and_inside_the_disk(rw, bs_sectors, disk, seed):
    spec = BlkbenchSpec(rw=rw, bs=bs_sectors * 512, size=1 << 30)
    if disk < bs_sectors:
        with pytest.raises(ValueError, match="smaller than bs"):
            next(spec.sectors(disk, seed))
        return
    it = spec.sectors(disk, seed)
    for _ in range(50):
        s = next(it)
        assert s % bs_sectors == 0 and 0 <= s and s + bs_sectors <= disk


# --- statistics ------------------------------------------------------------------------------

def test_percentile_is_nearest_rank():
    xs = list(range(1, 101))
    assert [percentile(xs, q) for q in (0.01, 0.5, 0.9, 0.99, 1.0)] == [1, 50, 90, 99, 100]
    assert percentile([7.0], 0.99) == 7.0


@given(st.lists(st.floats(0, 1), min_size=1, max_size=200))
def test_percentiles_are_ordered_and_within_the_samples(xs):
    s = sorted(xs)
    p50, p90, p99 = (percentile(s, q) for q in (0.5, 0.9, 0.99))
    assert s[0] <= p50 <= p90 <= p99 <= s[-1]


def test_io_summary_iops_and_mib_s():
    out = io_summary([100e-6] * 2000, seconds=0.5, bs=4096)
    assert out["ios"] == 2000 and out["iops"] == 4000.0
    assert out["mib_s"] == round(4000 * 4096 / 2**20, 2)
    assert out["lat_us_p50"] == out["lat_us_p99"] == 100.0


def test_io_summary_of_nothing_is_zeros():
    assert io_summary([], 0.0, 4096) == {"ios": 0, "seconds": 0.0, "iops": 0.0, "mib_s": 0.0,
                                         "lat_us_p50": 0.0, "lat_us_p90": 0.0,
                                         "lat_us_p99": 0.0}


# --- the init, on a fake disk ----------------------------------------------------------------

class Idle(Exception):
    pass


class Done:
    """A request that completed at once."""

    def __init__(self, data):
        self.data = data

    def done(self):
        return True

    def result(self, timeout=None):
        return self.data


class FakeDisk:
    """An in-memory disk whose requests complete at once; logs (op, sector, nbytes)."""

    def __init__(self, sectors):
        self.info = {"sectors": sectors}
        self.image = bytearray(sectors * 512)
        self.log = []

    def read(self, sector, nbytes, timeout=None):
        return self.submit_read(sector, nbytes).result(timeout)

    def submit_read(self, sector, nbytes):
        self.log.append(("read", sector, nbytes))
        return Done(bytes(self.image[sector * 512:sector * 512 + nbytes]))

    def submit_write(self, sector, data):
        self.log.append(("write", sector, len(data)))
        self.image[sector * 512:sector * 512 + len(data)] = data
        return Done(None)


class Kernel(GuestMemory):
    """Each clock read advances 10 µs; the first sleep (blkbench's idle) ends the run.
    ``out``: the console's lines."""

    def __init__(self, disk):
        super().__init__()
        self.now, self.disk_, self.out = 0.0, disk, []

    def console_write(self, data):
        self.out += data.decode().splitlines()

    def sleep(self, seconds):
        raise Idle

    def clock(self):
        self.now += 10e-6
        return self.now

    def disk(self, name):
        assert name == "xvda"
        return self.disk_


def run_blkbench(*argv, sectors=2048):
    kernel = Kernel(FakeDisk(sectors))
    with pytest.raises(Idle):
        find("blkbench")(GuestOS(kernel, argv=argv, domid=3, name="b"))
    line = next(x for x in kernel.out if x.startswith("RESULT "))
    return kernel, json.loads(line[len("RESULT "):])


def test_blkbench_runs_count_requests_and_publishes_fio_numbers():
    kernel, result = run_blkbench("rw=randwrite", "bs=4096", "iodepth=4", "count=100")
    writes = [e for e in kernel.disk_.log if e[0] == "write"]
    assert len(writes) == 100 and all(n == 4096 and s % 8 == 0 for _, s, n in writes)
    assert result["init"] == "blkbench" and result["rw"] == "randwrite"
    assert (result["bs"], result["iodepth"], result["ios"]) == (4096, 4, 100)
    assert result["iops"] == pytest.approx(100 / result["seconds"], rel=0.01)
    assert 0 < result["lat_us_p50"] <= result["lat_us_p90"] <= result["lat_us_p99"]
    assert any(x.startswith("blkbench: randwrite bs=4096 iodepth=4: 100 ios") for x in kernel.out)


def test_blkbench_stays_inside_a_disk_smaller_than_size():
    kernel, result = run_blkbench("rw=read", "bs=1024", "count=40", sectors=16)
    reads = [s for op, s, _ in kernel.disk_.log[1:]]  # after the connect probe
    assert reads == [0, 2, 4, 6, 8, 10, 12, 14] * 5
    assert result["ios"] == 40


def test_blkbench_stops_at_runtime():
    kernel, result = run_blkbench("runtime=0.01", "iodepth=2")
    issued = kernel.disk_.log[1:]  # after the connect probe
    assert result["ios"] == len(issued) > 0  # every request issued completed and was counted
    # on the virtual clock (10 µs a read): it ran its 10 ms and then stopped, within the
    # few reads that reaping the requests in flight takes
    assert 0.01 <= result["seconds"] < 0.011


# --- blkverify across a migration --------------------------------------------------------------

class Frozen(Exception):
    """The vCPU was frozen at a kernel entry, and the domain moved: this run is over."""


class FreezingDisk(FakeDisk):
    """Freezes the vCPU at the ``at``-th request (each request is a kernel entry); flush is
    a request too."""

    def __init__(self, sectors, at=None):
        super().__init__(sectors)
        self.at, self.calls = at, 0

    def _entry(self):
        self.calls += 1
        if self.calls == self.at:
            raise Frozen

    def submit_read(self, sector, nbytes):
        self._entry()
        return super().submit_read(sector, nbytes)

    def submit_write(self, sector, data):
        self._entry()
        return super().submit_write(sector, data)

    def flush(self, timeout=None):
        self._entry()
        self.log.append(("flush", 0, 0))


def run_blkverify(disk, *argv, resume_from=None):
    kernel = Kernel(disk)
    if resume_from is not None:
        GuestMemory.__init__(kernel, data=bytes(resume_from.buf))
    with pytest.raises((Idle, Frozen)):
        find("blkverify")(GuestOS(kernel, argv=argv, domid=3, name="b",
                                   resumed=resume_from is not None))
    return kernel


# frozen at: mid-write, a batch's last write, the flush, the first read, mid-verify
@pytest.mark.parametrize("at", [3, 12, 17, 18, 25])
def test_blkverify_frozen_anywhere_resumes_redoing_only_its_unacknowledged_step(at):
    """Requests 1..16 are the writes (4 batches of 4), 17 the flush, 18.. the reads."""
    argv = ("blocks=16", "iodepth=4", "bs=1024")
    disk = FreezingDisk(sectors=64, at=at)
    before = run_blkverify(disk, *argv)
    assert not any(x.startswith("RESULT ") for x in before.out)
    done_before = len(disk.log)
    disk.at = None
    after = run_blkverify(disk, *argv, resume_from=before)
    result = json.loads(next(x for x in after.out if x.startswith("RESULT "))[7:])
    assert (result["verified"], result["bad"]) == (16, [])
    redone = disk.log[done_before:]
    writes = [s // 2 for op, s, _ in redone if op == "write"]
    # what was acknowledged is not done again: at most the interrupted batch of 4
    if at <= 16:
        assert writes == list(range(((at - 1) // 4) * 4, 16))
    else:
        assert writes == []
    assert after.out[0].startswith("blkverify: 16 blocks of 1024 bytes written, 16 verified")


def test_blkverify_a_finished_run_resumed_only_idles():
    disk = FreezingDisk(sectors=64)
    done = run_blkverify(disk, "blocks=8")
    n = len(disk.log)
    again = run_blkverify(disk, "blocks=8", resume_from=done)
    assert len(disk.log) == n and again.out == []


def test_blkverify_rate_paces_its_writes_and_reads():
    """``rate=40`` with batches of 4: batch k is written (then read back) no earlier than
    k/10 s after the start of its phase (the clock advances by each sleep); flat out, it
    never sleeps."""
    class Paced(Kernel):
        def __init__(self, disk):
            super().__init__(disk)
            self.sleeps, self.written_at, self.read_at = [], [], []

        def sleep(self, seconds):
            if any(x.startswith("RESULT ") for x in self.out):
                raise Idle  # the run's end: the idle loop
            self.sleeps.append(seconds)
            self.now += seconds

    class Timed(FreezingDisk):
        def submit_write(self, sector, data):
            kernel.written_at.append(kernel.now)
            return super().submit_write(sector, data)

        def submit_read(self, sector, nbytes):
            kernel.read_at.append(kernel.now)
            return super().submit_read(sector, nbytes)

    disk = Timed(sectors=64)
    kernel = Paced(disk)
    with pytest.raises(Idle):
        find("blkverify")(GuestOS(kernel, argv=("blocks=16", "iodepth=4", "bs=1024",
                                                "rate=40"), domid=3, name="b"))
    firsts = kernel.written_at[::4]
    assert [round(t, 2) for t in firsts] == [0.0, 0.1, 0.2, 0.3]
    read_at = [round(t - kernel.read_at[0], 2) for t in kernel.read_at[::4]]
    assert read_at == [0.0, 0.1, 0.2, 0.3], "read back at the same pace"
    assert len(kernel.sleeps) == 6
    result = json.loads(next(x for x in kernel.out if x.startswith("RESULT "))[7:])
    assert result["verified"] == 16
    flat = run_blkverify(FreezingDisk(sectors=64), "blocks=16", "iodepth=4", "bs=1024")
    assert any(x.startswith("RESULT ") for x in flat.out), "flat out: no sleep before the end"


def test_blkverify_reports_blocks_that_do_not_read_back():
    class Rotten(FreezingDisk):
        def submit_read(self, sector, nbytes):
            done = super().submit_read(sector, nbytes)
            return Done(bytes(nbytes)) if sector // 8 in (2, 5) else done

    kernel = run_blkverify(Rotten(sectors=128), "blocks=8")
    result = json.loads(next(x for x in kernel.out if x.startswith("RESULT "))[7:])
    assert (result["verified"], result["bad"]) == (6, [2, 5])


# --- xenray bench blk: the parts that need no Ray ----------------------------------------------

def test_bench_blk_raw_ring_baseline_passes_requests_between_two_processes():
    from cluster.bench.blk import bench_raw_ring

    out = bench_raw_ring(0.2)
    assert out["ios"] > 0 and out["iops"] > 0  # how many is the benchmark's business
    assert 0 < out["lat_us_p50"] <= out["lat_us_p99"]
    prefix = f"xenray-bench-ring-{os.getpid()}-"
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(prefix)], "ring page left"


@pytest.mark.parametrize("guest_iops, verdict", [(60_000, "met"), (40_000, "not met"),
                                                 (20_000, "not met")])
def test_bench_blk_reports_the_aim_of_50k_iops_within_4x_of_the_raw_ring(guest_iops, verdict):
    from rich.console import Console

    from cluster.bench.blk import _result

    row = io_summary([1e-4], 1.0, 4096)
    rows = {"raw shm ring": {**row, "iops": 100_000.0},
            "xenray guest randread": {**row, "iops": float(guest_iops)},
            "xenray guest randwrite": {**row, "iops": 1e6}}
    out = Console(record=True, width=200)
    result = _result(rows)
    result.print(out)
    text = out.export_text()
    assert f"of the raw ring: {verdict} " in text
    assert f"{guest_iops:,} IOPS; raw ring / xenray = {100_000 / guest_iops:.1f}x" in text
    assert result.rows[1]["ring_ratio"] == 100_000 / guest_iops
