"""``memdirty``: a workload that dirties guest memory at a chosen rate, and can prove its pages
arrived intact (Clark et al., "Live Migration of Virtual Machines", NSDI 2005: the writable
working set is what decides how pre-copy converges).

``memdirty [wss=16] [rate=0] [verify=0] [check=0] [count=0] [report=0] [seed=1]``

* ``wss``: the working set, in MiB (a fraction is fine: ``wss=0.25`` is 64 pages), in the
  init's own memory (``GuestOS.memory``); more than the domain has beside its drivers' pages
  crashes the init with ENOMEM.
* ``rate``: pages dirtied per second of guest time; 0 (the default) is flat out, still
  entering the kernel every :data:`CHUNK` pages, so a suspend freezes it within a
  millisecond or so. Pages are dirtied in order, round and round the working set.
* Every page carries its own check: word 0 is a magic and the page's index, word 1 its
  version (how many times it was written), and the other 510 words a pattern seeded by
  (``seed``, index, version). A table of every page's version is kept in guest memory too, and
  written with the page, so a page that is self-consistent but older than the table (a dirtied
  page a migration failed to send again) is caught as well as a torn or corrupt one. A page
  never written is all zero.
* ``verify=1``: when the program starts again on a resume in a new domain, it first checks
  every page of the working set, prints ``memdirty: verify: N pages, M bad`` and publishes a
  ``RESULT`` line (``GuestOS.result``) with ``bad`` and the first bad pages, then goes on
  dirtying. ``check=S`` checks every ``S`` seconds of guest time as well. ``count=N`` stops
  after N pages dirtied in all, checks, publishes, and idles. ``report=S`` prints the pages
  dirtied and the rate every ``S`` seconds.

State (its cursor, pages dirtied, the version table) lives in guest memory and each step
writes a chunk of pages, their versions and the cursor with plain stores, between scheduling
points: whenever the vCPU is frozen the memory is consistent, and a resumed run goes on from
the page after the last one dirtied.
"""

from __future__ import annotations

import numpy as np

from actors.guest.api import GuestOS, option
from protocols.page import PAGE_SIZE

CHUNK = 64  # pages per step between kernel entries, flat out
CHECK_CHUNK = 256  # pages checked per step
WORDS = PAGE_SIZE // 8
MAGIC = np.uint64(0x6D656D64 << 32)  # "memd", then the page index in the low 32 bits
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STEP = np.arange(2, WORDS, dtype=np.uint64) * _GOLDEN  # word k adds k * golden
META = np.dtype([("started", "<u8"), ("cursor", "<u8"), ("dirtied", "<u8"),
                 ("checks", "<u8"), ("done", "<u8")])


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def page_words(seed: int, index: np.ndarray, version: np.ndarray) -> np.ndarray:
    """The 512 words pages ``index`` hold at ``version`` (one row each; version 0: zero)."""
    index = np.asarray(index, dtype=np.uint64)
    version = np.asarray(version, dtype=np.uint64)
    out = np.empty((len(index), WORDS), dtype=np.uint64)
    out[:, 0] = MAGIC | index
    out[:, 1] = version
    base = _mix(np.uint64(seed) ^ (index << np.uint64(32)) ^ version)
    out[:, 2:] = base[:, None] + _STEP
    out[version == 0] = 0
    return out


class WorkingSet:
    """The working set in guest memory: ``pages`` (one row of words per page), ``versions``
    and the ``meta`` record. Nothing here enters the kernel: the program does, between
    steps."""

    def __init__(self, os: GuestOS, npages: int, seed: int) -> None:
        self.npages, self.seed = npages, seed
        self.meta = os.memory("memdirty", 1, META)[0]
        self.versions = os.memory("memdirty.versions", npages, np.uint64)
        self.pages = os.memory("memdirty.pages", npages * WORDS, np.uint64).reshape(
            npages, WORDS)

    def dirty(self, n: int) -> None:
        """Write the next ``n`` pages (wrapping), then their versions, then the cursor."""
        while n > 0:
            cursor = int(self.meta["cursor"])
            take = min(n, self.npages - cursor)
            end = cursor + take
            version = self.versions[cursor:end] + np.uint64(1)
            self.pages[cursor:end] = page_words(
                self.seed, np.arange(cursor, end, dtype=np.uint64), version)
            self.versions[cursor:end] = version
            self.meta["cursor"] = end % self.npages
            self.meta["dirtied"] += take
            n -= take

    def bad_pages(self, first: int, n: int) -> list[int]:
        """The pages of ``first..first+n`` whose words are not what index and version say."""
        index = np.arange(first, min(first + n, self.npages), dtype=np.uint64)
        expected = page_words(self.seed, index, self.versions[first:first + len(index)])
        wrong = np.any(self.pages[first:first + len(index)] != expected, axis=1)
        return [first + int(i) for i in np.flatnonzero(wrong)]


def memdirty(os: GuestOS) -> None:
    """Dirty the working set at ``rate`` (module docstring), verifying when asked."""
    wss = option(os, "wss", 16.0, float)
    rate = option(os, "rate", 0.0, float)
    check = option(os, "check", 0.0, float)
    report = option(os, "report", 0.0, float)
    count = option(os, "count", 0, int)
    seed = option(os, "seed", 1, int)
    npages = int(wss * (1 << 20)) // PAGE_SIZE
    if npages <= 0 or rate < 0:
        raise ValueError(f"memdirty: wss={wss} MiB, rate={rate}: want a page or more, "
                         f"rate >= 0")
    ws = WorkingSet(os, npages, seed)
    meta = ws.meta
    if meta["started"]:
        os.print(f"memdirty: resumed after {int(meta['dirtied'])} pages dirtied")
        if option(os, "verify", 0, int):
            _verify(os, ws)
    else:
        os.print(f"memdirty: {wss:g} MiB working set ({npages} pages), "
                 + (f"{rate:g} pages/s" if rate else "flat out"))
        meta["started"] = 1
    if meta["done"]:
        os.idle()
    chunk = CHUNK if rate == 0 else max(1, min(CHUNK, int(rate / 100)))
    t0 = now = os.clock()
    done = 0  # pages dirtied by this run (the pace counts from here)
    next_check = now + check if check > 0 else None
    next_report = now + report if report > 0 else None
    while True:
        n = chunk if not count else min(chunk, count - int(meta["dirtied"]))
        if n <= 0:
            break
        ws.dirty(n)
        done += n
        now = os.clock()  # the scheduling point of each step
        if rate > 0 and done > rate * (now - t0):
            os.sleep(done / rate - (now - t0))
            now = os.clock()
        if next_report is not None and now >= next_report:
            os.print(f"memdirty: {int(meta['dirtied'])} pages dirtied, "
                     f"{done / max(now - t0, 1e-9):.0f} pages/s")
            next_report = now + report
        if next_check is not None and now >= next_check:
            _verify(os, ws)
            next_check = os.clock() + check
    _verify(os, ws)
    meta["done"] = 1
    os.idle()


def _verify(os: GuestOS, ws: WorkingSet) -> None:
    """Check every page, a chunk per kernel entry; print and publish the outcome."""
    bad: list[int] = []
    for first in range(0, ws.npages, CHECK_CHUNK):
        bad += ws.bad_pages(first, CHECK_CHUNK)
        os.clock()
    ws.meta["checks"] += 1
    os.result({"init": "memdirty", "pages": ws.npages, "bad": len(bad), "bad_pages": bad[:16],
               "dirtied": int(ws.meta["dirtied"]), "resumed": os.resumed},
              text=f"memdirty: verify: {ws.npages} pages, {len(bad)} bad"
                   + (f": pages {', '.join(map(str, bad[:8]))}" if bad else ""))
