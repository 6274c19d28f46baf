"""A vbd's injected faults: what blkback does to each request of a faulty disk, and the
volatile write cache that a power cut empties. Pure: the data path (ring.py) asks it about
every request and hands it the old contents of what it overwrites; this module does no I/O.

A fault is a :class:`DiskFaultSpec` (parsed from the dict a user gives ``disk_fault``):

* ``eio`` ("read", "write" or "both"): matching requests fail, all of them, or only those that
  touch the inclusive sector range ``sectors`` = [first, last], and of those only a share
  ``probability`` drawn from a ``random.Random(seed)``, so the same requests in the same order
  fail again in a second run. A flush or a discard counts as a write.
* ``enospc_after``: the backing store holds sectors [0, N) and no more, so a write reaching
  sector N or beyond fails (0: every write), as a full file system fails it.
* ``latency_ms``: every response is held back that long (the I/O itself is done at once).
* ``volatile``: the disk has a volatile write cache. From the moment it is armed, the data
  path logs the old contents of every sector a write overwrites (the undo log); a completed
  flush clears the log (the cache reached stable storage), and :meth:`DiskFault.power_cut`
  hands the log back, newest first, so writing it back leaves each sector as it was at the
  last flush: every unflushed write is dropped, no flushed one ever is.
* ``ignore_flush`` (with ``volatile``): a disk whose cache lies, answering a flush OKAY
  without making anything stable (the flush neither reaches ``fdatasync`` nor clears the
  log), so a power cut loses flushed writes too. It is the broken disk a durability checker
  must catch.

Every failure is answered as Linux blkback answers a bio that ended in error
(``drivers/block/xen-blkback/blkback.c`` ``__end_block_io_op``): BLKIF_RSP_ERROR, whatever
the errno. ENOSPC has no status of its own in blkif: a loop or file backend's
``BLK_STS_NOSPC`` becomes BLKIF_RSP_ERROR, and Linux blkfront turns that into
``BLK_STS_IOERR``, so the guest sees EIO. Only an unsupported flush or barrier gets
BLKIF_RSP_EOPNOTSUPP, and that is a feature, not a fault.

Decisions:

* Data carried by a FLUSH_DISKCACHE request is written after the flush, as Linux blkback
  issues it (``REQ_PREFLUSH`` without ``REQ_FUA``), so it is logged like any write. blkif
  has no FUA of its own, and WRITE_BARRIER is not advertised (``feature-barrier`` = 0).
* A discard is not logged: a discarded range holds nothing a guest may count on, and
  logging it would copy the whole range.
* After a power cut the disk is off: every request, and every response still held back, is
  BLKIF_RSP_ERROR, until the fault is cleared or replaced (power back on). What happens to
  the guest is the caller's part: a real power cut kills the machine too.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Any

from protocols.blkif import (BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE,
                             BLKIF_OP_WRITE_BARRIER)
from protocols.errno import Errno, XenError

EIO_OPS = ("read", "write", "both")
MAX_LATENCY_MS = 60_000  # blkfront's callers wait 60 s for a request
_WRITES = frozenset({BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE,
                     BLKIF_OP_DISCARD})
_KEYS = ("eio", "sectors", "probability", "latency_ms", "enospc_after", "volatile",
         "ignore_flush", "seed")
COUNTERS = ("eio", "enospc", "delayed", "flushes", "ignored_flushes", "rolled_back",
            "powered_off")


def _bad(what: str) -> XenError:
    return XenError(Errno.EINVAL, f"disk fault: {what}")


def _number(spec: Mapping[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise _bad(f"{key}={value!r:.40} is not {'a number' if kind is float else 'an integer'}")
    if not low <= value <= high:
        raise _bad(f"{key}={value!r} is out of range {low:g}..{high:g}")
    return kind(value)


def _flag(spec: Mapping[str, Any], key: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise _bad(f"{key}={value!r:.40} is not true or false")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class DiskFaultSpec:
    """One vbd's fault (the module docstring says what each field does)."""

    eio: str | None = None
    sectors: tuple[int, int] | None = None  # inclusive, as blkif's first_sect/last_sect
    probability: float = 1.0
    latency_ms: float = 0.0
    enospc_after: int | None = None
    volatile: bool = False
    ignore_flush: bool = False
    seed: int = 0

    @classmethod
    def parse(cls, spec: Any) -> DiskFaultSpec:
        """From a user's dict; anything wrong is XenError(EINVAL) in one line naming it."""
        if not isinstance(spec, Mapping):
            raise _bad(f"want a dict of {', '.join(_KEYS)}, not {type(spec).__name__}")
        unknown = sorted(str(k) for k in spec if k not in _KEYS)
        if unknown:
            raise _bad(f"unknown key {unknown[0]!r:.40}; keys are {', '.join(_KEYS)}")
        eio = spec.get("eio")
        if eio is not None and eio not in EIO_OPS:
            raise _bad(f"eio={eio!r:.40}; want one of {', '.join(EIO_OPS)}")
        if eio is None and ("sectors" in spec or "probability" in spec):
            raise _bad("sectors and probability say which requests eio fails: give eio")
        sectors = None
        if "sectors" in spec:
            raw = spec["sectors"]
            if (not isinstance(raw, (list, tuple)) or len(raw) != 2 or
                    any(isinstance(s, bool) or not isinstance(s, int) for s in raw) or
                    not 0 <= raw[0] <= raw[1]):
                raise _bad(f"sectors={raw!r:.40}; want [first, last] with 0 <= first <= last")
            sectors = (raw[0], raw[1])
        volatile, ignore_flush = _flag(spec, "volatile"), _flag(spec, "ignore_flush")
        if ignore_flush and not volatile:
            raise _bad("ignore_flush needs volatile (a cache that lies about flushes)")
        parsed = cls(
            eio=eio, sectors=sectors,
            probability=_number(spec, "probability", float, 0.0, 1.0)
            if "probability" in spec else 1.0,
            latency_ms=_number(spec, "latency_ms", float, 0, MAX_LATENCY_MS)
            if "latency_ms" in spec else 0.0,
            enospc_after=_number(spec, "enospc_after", int, 0, 2**64 - 1)
            if "enospc_after" in spec else None,
            volatile=volatile, ignore_flush=ignore_flush,
            seed=_number(spec, "seed", int, -2**63, 2**63 - 1) if "seed" in spec else 0)
        if parsed == cls():
            raise _bad("it does nothing; give eio, latency_ms, enospc_after or volatile "
                       "(disk_fault_clear takes a fault off)")
        return parsed

    def as_dict(self) -> dict[str, Any]:
        """The fields that differ from a healthy disk's (what :meth:`parse` reads back)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if getattr(self, f.name) != f.default}
        if self.sectors is not None:
            out["sectors"] = list(self.sectors)
        return out


class DiskFault:
    """A :class:`DiskFaultSpec` armed on one vbd: its decisions, its undo log, its counters.
    The caller serialises the calls (blkback holds the vbd's lock)."""

    def __init__(self, spec: DiskFaultSpec) -> None:
        self.spec = spec
        self.powered = True
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._rng = random.Random(spec.seed)
        self._undo: list[tuple[int, bytes]] = []  # (sector, old contents), oldest first

    @property
    def delay(self) -> float:
        """Seconds to hold each response back (none once the power is off)."""
        return self.spec.latency_ms / 1000 if self.powered else 0.0

    @property
    def unflushed(self) -> int:
        """Writes logged since the last flush."""
        return len(self._undo)

    def check(self, op: int, sector: int, nr_sectors: int) -> Errno | None:
        """The errno request ``op`` on sectors [sector, sector + nr_sectors) fails with, or
        None: do it. A rejected request never reaches the image."""
        if not self.powered:
            self.counts["powered_off"] += 1
            return Errno.EIO
        spec, write = self.spec, op in _WRITES
        if spec.latency_ms:
            self.counts["delayed"] += 1  # its response waits, whatever it is
        if spec.eio is not None and (spec.eio == "both" or (spec.eio == "write") == write) \
                and self._in_range(sector, nr_sectors) \
                and (spec.probability >= 1.0 or self._rng.random() < spec.probability):
            self.counts["eio"] += 1
            return Errno.EIO
        if spec.enospc_after is not None and op != BLKIF_OP_DISCARD and write \
                and nr_sectors and sector + nr_sectors > spec.enospc_after:
            self.counts["enospc"] += 1
            return Errno.ENOSPC
        return None

    def _in_range(self, sector: int, nr_sectors: int) -> bool:
        if self.spec.sectors is None:
            return True
        first, last = self.spec.sectors
        return nr_sectors > 0 and sector <= last and sector + nr_sectors - 1 >= first

    def record(self, sector: int, old: bytes) -> None:
        """A write (with ``volatile``) is about to replace ``old`` at ``sector``: keep it
        until a flush."""
        self._undo.append((sector, bytes(old)))

    def honours_flush(self) -> bool:
        """Whether a flush must really reach stable storage (``fdatasync``)."""
        return not self.spec.ignore_flush

    def flushed(self) -> None:
        """A flush completed: everything written before it is stable, unless the cache
        lies (``ignore_flush``), when nothing is."""
        if self.spec.ignore_flush:
            self.counts["ignored_flushes"] += 1
            return
        self.counts["flushes"] += 1
        self._undo.clear()

    def power_cut(self) -> list[tuple[int, bytes]]:
        """The power goes: what to write back, newest first (each sector ends as it was at
        the last flush). The disk is off from now on."""
        undo, self._undo = self._undo[::-1], []
        self.powered = False
        self.counts["rolled_back"] += len(undo)
        return undo

    def adopt(self, old: DiskFault) -> None:
        """Take over the unflushed writes of the fault this one replaces, if this disk has a
        volatile cache too (a new spec does not flush the cache)."""
        if self.spec.volatile:
            self._undo = old._undo + self._undo

    def counters(self) -> dict[str, int]:
        """What it injected, ``fault_``-prefixed as blkback's statistics show it."""
        return {f"fault_{k}": v for k, v in self.counts.items()}
