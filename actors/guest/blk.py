"""Block-device init programs: ``blkverify`` (checksummed write, read back, verify; its
progress survives a migration; a flush discipline and a log of what was acknowledged, for
durability checkers), ``blkbench`` (fio-like load, IOPS and latency percentiles)
and ``blkhostile`` (a misbehaving block driver for fault injection). Each publishes its
result (``GuestOS.result``)."""

from __future__ import annotations

import dataclasses
import math
import random
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from actors.guest.api import GuestOS, option
from protocols.blkif import SECTOR_SIZE, parse_size
from protocols.errno import Errno, XenError
from protocols.page import PAGE_SIZE

_T = TypeVar("_T", int, float)


def verify_block(seed: int, index: int, bs: int) -> bytes:
    """Block ``index`` of a verify run: its index and seed, pseudo-random fill, and a CRC."""
    body = struct.pack("<QQ", index, seed) + random.Random(seed * 1_000_003 + index).randbytes(
        bs - 20)
    return body + struct.pack("<I", zlib.crc32(body))


# blkverify's progress in guest memory: the phase, the first block of the step not yet
# acknowledged, the bad blocks so far (the first 16 of them), its start on the guest clock,
# the writes a completed flush covers, the I/O steps that failed and were done again
BLKVERIFY = np.dtype([("phase", "<u8"), ("next", "<u8"), ("nbad", "<u8"), ("t0", "<f8"),
                      ("bad", "<u8", (16,)), ("flushed", "<u8"), ("errors", "<u8"),
                      ("t1", "<f8")])  # t1: when verifying started
WRITING, VERIFYING, DONE = 1, 2, 3


def _results(reqs: Sequence[Any]) -> list[Any]:
    """Every request's result, once all of them are done; XenError(EIO) if any failed."""
    results, failed = [], 0
    for req in reqs:
        try:
            results.append(req.result(timeout=60))
        except XenError as e:
            if e.errno != Errno.EIO:
                raise
            failed += 1
    if failed:
        raise XenError(Errno.EIO, f"{failed} of {len(reqs)} requests failed")
    return results


def blkverify(os: GuestOS) -> None:
    """Write ``blocks`` checksummed blocks of ``bs`` bytes to ``disk`` (default xvda) with
    ``iodepth`` requests in flight, flush, read them all back and verify each one.
    Prints the counts and publishes them as a result.

    ``flush=N`` flushes after every N acknowledged writes instead of once at the end
    (``flush=0``: never), as an fsync-disciplined writer does. ``rate=R`` writes, then reads
    back, at most R blocks a second (a steady writer, not a flat-out one; 0, the default:
    flat out). ``acklog=1`` prints what the
    disk acknowledged, for a durability checker that reads the image afterwards
    (``cluster.fault.disk.parse_acks``): ``ACK <seq> <first>-<last> gen=<seed> bs=<bs>``
    once a batch of writes is acknowledged (``seq``: the writes acknowledged before it;
    sectors ``first``..``last`` hold blocks ``verify_block(seed, sector // (bs / 512), bs)``)
    and ``FLUSH <n>`` once a flush issued after the first ``n`` writes has completed. A step
    whose requests fail with EIO (the backend answered BLKIF_RSP_ERROR) is reported on the
    console and done again ``retry`` seconds later (default 0.5), until it succeeds; the
    result counts the failed steps (``errors``).

    Its progress is in guest memory (region ``blkverify``): a step is one batch of
    ``iodepth`` requests, recorded done only once every request of it is acknowledged. A
    resumed run redoes the step that was not, which is idempotent (the same blocks written
    with the same bytes, or read again), so requests left unanswered by the old domain need
    no re-issuing (an ``ACK`` or ``FLUSH`` line may then be printed twice)."""
    disk = os.disk(os.options().get("disk", "xvda"))
    bs = option(os, "bs", 4096, int)
    blocks = option(os, "blocks", 256, int)
    depth = option(os, "iodepth", 8, int)
    seed = option(os, "seed", 1, int)
    every = option(os, "flush", 0, int) if "flush" in os.options() else None
    if every is not None and every < 0:
        raise ValueError(f"flush={every}: want 0 (never) or the writes between flushes")
    acklog = option(os, "acklog", 0, int) == 1
    retry = option(os, "retry", 0.5, float)
    if retry <= 0:
        raise ValueError(f"retry={retry:g}: want the seconds to wait before a failed step")
    rate = option(os, "rate", 0.0, float)
    if rate < 0:
        raise ValueError(f"rate={rate:g}: want blocks a second, or 0 for flat out")
    sectors = bs // SECTOR_SIZE
    st = os.memory("blkverify", 1, BLKVERIFY)[0]

    def retried(what: str, step: Callable[..., Any], *args: Any) -> Any:
        while True:
            try:
                return step(*args)
            except XenError as e:
                if e.errno != Errno.EIO:
                    raise
                os.print(f"blkverify: {what}: {e}; retrying in {retry:g} s")
                st["errors"] += 1
                os.sleep(retry)

    def write(first: int, end: int) -> None:
        _results([disk.submit_write(i * sectors, verify_block(seed, i, bs))
                  for i in range(first, end)])

    def read(indices: range) -> list[bytes]:
        return _results([disk.submit_read(i * sectors, bs) for i in indices])

    def pace(start: float, done: int) -> None:
        """With ``rate``, wait until ``done`` blocks are due since ``start`` (a schedule
        kept in guest memory: a resumed run keeps it)."""
        if rate and (ahead := start + done / rate - os.clock()) > 0:
            os.sleep(ahead)

    def flush(n: int) -> None:
        retried("flush", disk.flush, 60)
        if acklog:
            os.print(f"FLUSH {n}")
        st["flushed"] = n

    if st["phase"] == 0:
        t0 = os.clock()
        st["t0"], st["next"], st["phase"] = t0, 0, WRITING
    while st["phase"] == WRITING:
        first = int(st["next"])
        if every and first - int(st["flushed"]) >= every:
            flush(first)
            continue
        if first >= blocks:
            break
        end = min(first + depth, blocks, int(st["flushed"]) + every if every else blocks)
        pace(float(st["t0"]), first)
        retried(f"writing blocks {first}-{end - 1}", write, first, end)
        if acklog:
            os.print(f"ACK {first} {first * sectors}-{end * sectors - 1} gen={seed} bs={bs}")
        st["next"] = end
    if st["phase"] == WRITING:
        if every is None:
            flush(blocks)
        st["next"], st["nbad"], st["t1"], st["phase"] = 0, 0, os.clock(), VERIFYING
    while st["phase"] == VERIFYING and st["next"] < blocks:
        first = int(st["next"])
        pace(float(st["t1"]), first)
        indices = range(first, min(first + depth, blocks))
        data = retried(f"reading blocks {first}-{indices[-1]}", read, indices)
        bad = [i for i, got in zip(indices, data) if got != verify_block(seed, i, bs)]
        for i in bad:  # stores only, with the step's end: no scheduling point among them
            if st["nbad"] < len(st["bad"]):
                st["bad"][st["nbad"]] = i
            st["nbad"] += 1
        st["next"] = first + len(indices)
    if st["phase"] == VERIFYING:
        nbad, errors = int(st["nbad"]), int(st["errors"])
        elapsed = os.clock() - float(st["t0"])
        os.result({"init": "blkverify", "blocks": blocks, "bs": bs, "verified": blocks - nbad,
                   "bad": [int(b) for b in st["bad"][:min(nbad, 16)]], "errors": errors,
                   "seconds": round(elapsed, 3)},
                  text=f"blkverify: {blocks} blocks of {bs} bytes written, {blocks - nbad} "
                       f"verified, {nbad} bad, in {elapsed:.2f} s"
                       + (f"; {errors} failed I/O steps done again" if errors else ""))
        st["phase"] = DONE
    os.idle()


# --- blkbench: a small fio -----------------------------------------------------------------

BLKBENCH_RW = ("read", "write", "randread", "randwrite")


@dataclasses.dataclass(frozen=True, slots=True)
class BlkbenchSpec:
    """A blkbench job, as fio's options name it. The run stops after ``runtime`` seconds or
    ``count`` requests, whichever comes first (None: no such limit)."""

    rw: str = "randread"
    bs: int = 4096
    iodepth: int = 8
    size: int = 16 << 20
    runtime: float | None = 5.0
    count: int | None = None
    disk: str = "xvda"

    @classmethod
    def parse(cls, opts: dict[str, str]) -> BlkbenchSpec:
        """From the ``key=value`` words; sizes take K/M/G suffixes. ValueError names the bad
        option. ``count`` alone runs without a time limit; neither runs for 5 s."""
        def number(key: str, kind: type[_T], default: _T | None) -> _T | None:
            raw = opts.get(key)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
            if value <= 0:
                raise ValueError(f"{key}={raw!r} must be positive")
            return value

        def size(key: str, default: int) -> int:
            try:
                return parse_size(opts[key]) if key in opts else default
            except ValueError as e:
                raise ValueError(f"{key}={opts[key]!r}: {e}") from None

        d = cls()
        rw = opts.get("rw", d.rw)
        if rw not in BLKBENCH_RW:
            raise ValueError(f"rw={rw!r}: want one of {', '.join(BLKBENCH_RW)}")
        count = number("count", int, None)
        spec = cls(rw=rw, bs=size("bs", d.bs), iodepth=number("iodepth", int, d.iodepth),
                   size=size("size", d.size), count=count,
                   runtime=number("runtime", float, d.runtime if count is None else None),
                   disk=opts.get("disk", d.disk))
        if spec.size < spec.bs:
            raise ValueError(f"size={spec.size} is smaller than bs={spec.bs}")
        return spec

    @property
    def reads(self) -> bool:
        return self.rw.endswith("read")

    def sectors(self, disk_sectors: int, seed: int = 1) -> Iterator[int]:
        """Start sectors of successive requests: whole ``bs`` blocks of the region (``size``,
        or the disk if smaller), in order and wrapping (read/write) or uniformly at random."""
        blocks = min(self.size, disk_sectors * SECTOR_SIZE) // self.bs
        if blocks == 0:
            raise ValueError(f"the disk ({disk_sectors} sectors) is smaller than bs={self.bs}")
        step = self.bs // SECTOR_SIZE
        if self.rw.startswith("rand"):
            rng = random.Random(seed)
            while True:
                yield rng.randrange(blocks) * step
        while True:
            for block in range(blocks):
                yield block * step


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``0 < q <= 1``) of an ascending, non-empty sequence."""
    return sorted_xs[max(0, math.ceil(q * len(sorted_xs)) - 1)]


def io_summary(latencies: Sequence[float], seconds: float, bs: int) -> dict[str, float]:
    """fio's headline numbers from per-request latencies (s) over ``seconds`` of run:
    ios, iops, mib_s and lat_us_p50/p90/p99 (0 when nothing completed)."""
    lat = sorted(latencies)
    n = len(lat)
    iops = n / seconds if seconds > 0 else 0.0
    out = {"ios": n, "seconds": round(seconds, 6), "iops": round(iops, 1),
           "mib_s": round(iops * bs / (1 << 20), 2)}
    for q in (50, 90, 99):
        out[f"lat_us_p{q}"] = round(percentile(lat, q / 100) * 1e6, 1) if n else 0.0
    return out


def blkbench(os: GuestOS) -> None:
    """fio-like load on a disk (options: :class:`BlkbenchSpec`): keeps ``iodepth`` requests
    in flight, timing each with the guest clock; prints and publishes IOPS, MiB/s and
    latency percentiles, then idles."""
    spec = BlkbenchSpec.parse(os.options())
    phase = os.memory("blkbench", 1, np.uint64)  # a resumed run that finished only idles
    if phase[0] == DONE:
        os.idle()
    disk = os.disk(spec.disk)
    disk.read(0, SECTOR_SIZE, timeout=60)  # waits for the backend to connect
    sectors = spec.sectors(disk.info.get("sectors", 0), seed=option(os, "seed", 1, int))
    data = random.Random(0).randbytes(spec.bs)
    submit = ((lambda: disk.submit_read(next(sectors), spec.bs)) if spec.reads
              else (lambda: disk.submit_write(next(sectors), data)))
    count = spec.count or math.inf
    in_flight: deque = deque()
    latencies: list[float] = []
    t0 = now = os.clock()
    end = t0 + spec.runtime if spec.runtime is not None else math.inf
    issued = 0
    while True:
        while len(in_flight) < spec.iodepth and issued < count and now < end:
            in_flight.append((os.clock(), submit()))
            issued += 1
        if not in_flight:
            break
        in_flight[0][1].result(timeout=60)  # the oldest; then reap whatever else is done
        now = os.clock()
        for _ in range(len(in_flight)):
            started, req = in_flight.popleft()
            if req.done():
                req.result(timeout=0)  # raises if the request failed
                latencies.append(now - started)
            else:
                in_flight.append((started, req))
    stats = io_summary(latencies, now - t0, spec.bs)
    os.result({"init": "blkbench", "rw": spec.rw, "bs": spec.bs, "iodepth": spec.iodepth,
               **stats},
              text=f"blkbench: {spec.rw} bs={spec.bs} iodepth={spec.iodepth}: {stats['ios']} "
                   f"ios in {stats['seconds']:.2f} s, {stats['iops']:.0f} IOPS, "
                   f"{stats['mib_s']:.2f} MiB/s, lat p50 {stats['lat_us_p50']:.0f} us, "
                   f"p90 {stats['lat_us_p90']:.0f} us, p99 {stats['lat_us_p99']:.0f} us")
    phase[0] = DONE  # with the result's print: no scheduling point between them
    os.idle()


def blkhostile(os: GuestOS) -> None:
    """A misbehaving block driver, for fault injection: once connected, its blkfront breaks
    its own ring (``Blkfront.misbehave``) with ``mode=overflow`` (four rings' worth more
    requests than the ring holds, 19.2) or ``mode=garbage`` (random bytes in every slot),
    then kicks the backend."""
    front = os.disk(os.options().get("disk", "xvda"))
    front.read(0, SECTOR_SIZE, timeout=60)  # connected, and one honest request done
    if os.options().get("mode", "overflow") == "garbage":
        rng = random.Random(option(os, "seed", 1, int))
        req_prod = front.misbehave(garbage=rng.randbytes(PAGE_SIZE))
    else:
        req_prod = front.misbehave(overflow=4)
    os.print(f"blkhostile: published req_prod={req_prod}")
    os.idle()
