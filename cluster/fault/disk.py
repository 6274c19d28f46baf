"""Disk faults on a domain's vbd, and the durability checker that judges a run afterwards.

The faults are blkback's (``actors/blkback/faults.py``: EIO on reads, writes or both, for
all requests, a sector range or a seeded share of them; added latency; ENOSPC past a sector;
a volatile write cache and a power cut that drops what it holds). These functions name a vbd
as a user does, by domain name and vdev ("xvda"), find the host, the domid and the devid
(Xen's encoded vdev, 51712 for xvda) and ask that host's blkback.

The checker reads what a workload logged as acknowledged (``blkverify acklog=1``'s ``ACK``
and ``FLUSH`` console lines, :func:`parse_acks`) and the image itself after the run
(:func:`lost_writes`): every acknowledged write must be there, and after a power cut every
acknowledged write that a completed flush covered (unflushed ones may be gone: that is what a
volatile cache means).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from actors.guest.blk import verify_block
from cluster.api import DomainNotFound
from protocols.blkif import SECTOR_SIZE, vdev_to_devid

if TYPE_CHECKING:
    from cluster.api import Cluster


def _vbd(cluster: Cluster, name: str, vdev: str) -> tuple[str, int, int]:
    """(host, domid, devid) of vbd ``vdev`` of domain ``name``."""
    found = cluster.find(name)
    if found is None:
        raise DomainNotFound(name)
    return found[0], found[1], vdev_to_devid(vdev)


def set_disk_fault(cluster: Cluster, name: str, vdev: str = "xvda", **spec: Any
                   ) -> dict[str, Any]:
    """Arm a fault on ``name``'s ``vdev`` in place of any it had, e.g. ``eio="write",
    sectors=[0, 1023], probability=0.1, seed=1``, ``latency_ms=5``, ``enospc_after=2048``,
    ``volatile=True``; returns the spec as blkback understood it. A bad spec is
    XenError(EINVAL) in one line."""
    host, domid, devid = _vbd(cluster, name, vdev)
    return cluster._call(host, "blkback", "disk_fault", domid, devid, spec)


def clear_disk_fault(cluster: Cluster, name: str, vdev: str = "xvda") -> dict[str, int]:
    """Take the fault off (a disk cut from its power gets it back); what it injected."""
    host, domid, devid = _vbd(cluster, name, vdev)
    return cluster._call(host, "blkback", "disk_fault_clear", domid, devid)


def power_cut(cluster: Cluster, name: str, vdev: str = "xvda") -> dict[str, int]:
    """Cut the disk's power: every write since the last completed flush is rolled back in
    the image (``{"rolled_back": writes, "sectors": n}``) and every request fails from now
    on. It needs ``volatile=True`` armed first. A real power cut kills the machine too:
    destroy the domain next (``cluster.destroy(name)``)."""
    host, domid, devid = _vbd(cluster, name, vdev)
    return cluster._call(host, "blkback", "power_cut", domid, devid)


def disk_fault(cluster: Cluster, name: str, vdev: str = "xvda") -> dict[str, Any] | None:
    """The fault armed on the vbd (its spec, ``powered``, ``unflushed`` writes and the
    ``fault_*`` counts of what it injected), or None."""
    host, domid, devid = _vbd(cluster, name, vdev)
    return next((f for f in cluster._call(host, "blkback", "disk_faults")
                 if (f["domid"], f["devid"]) == (domid, devid)), None)


def logged_acks(cluster: Cluster, host: str, name: str) -> list[Ack]:
    """What domain ``name`` logged as acknowledged on ``host``'s console (:func:`parse_acks`
    of its whole log file, which xenconsoled keeps after the domain is gone; it is read here,
    as ``Cluster.follow_console`` reads it, so on the machine of that host). The log holds
    every domain that had the name on that host: give each run a name of its own."""
    with open(cluster._call(host, "xenconsoled", "log_path", name), errors="replace") as log:
        return parse_acks(log)


# -- the durability checker ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """Writes a workload saw acknowledged: sectors ``first``..``last`` (inclusive), in blocks
    of ``bs`` bytes holding ``verify_block(gen, sector // (bs / 512), bs)``; ``seq``: the
    writes acknowledged before them; ``flushed``: a completed flush covers them."""

    seq: int
    first: int
    last: int
    gen: int
    bs: int
    flushed: bool = False

    def blocks(self) -> range:
        """The start sector of each block."""
        return range(self.first, self.last + 1, self.bs // SECTOR_SIZE)

    def data(self, sector: int) -> bytes:
        return verify_block(self.gen, sector * SECTOR_SIZE // self.bs, self.bs)


@dataclasses.dataclass(frozen=True, slots=True)
class LostWrite:
    """One acknowledged block that is not in the image: what ``ack`` wrote at ``sector``,
    and what is there instead (``found``)."""

    ack: Ack
    sector: int
    found: str

    def __str__(self) -> str:
        return (f"block at sector {self.sector} (ACK {self.ack.seq}, gen {self.ack.gen}, "
                f"{'flushed' if self.ack.flushed else 'not flushed'}): {self.found}")


_ACK = re.compile(r"ACK (\d+) (\d+)-(\d+) gen=(-?\d+) bs=(\d+)")
_FLUSH = re.compile(r"FLUSH (\d+)")


def parse_acks(lines: Iterable[str]) -> list[Ack]:
    """The ``ACK`` records of a console log, in ``seq`` order, each marked flushed if a
    ``FLUSH n`` line says a flush completed after its writes (``n >= seq + its writes``).
    Other lines are skipped, and so is a record printed twice (a resumed run redoing a
    step)."""
    acks: dict[tuple[int, int, int, int], Ack] = {}
    flushed_upto = 0
    for line in lines:
        line = line.strip()
        if m := _ACK.fullmatch(line):
            seq, first, last, gen, bs = map(int, m.groups())
            if not bs or bs % SECTOR_SIZE or last < first:
                raise ValueError(f"console line {line!r}: not whole blocks of whole sectors")
            acks.setdefault((seq, first, last, gen), Ack(seq, first, last, gen, bs))
        elif m := _FLUSH.fullmatch(line):
            flushed_upto = max(flushed_upto, int(m.group(1)))
    return [dataclasses.replace(a, flushed=a.seq + len(a.blocks()) <= flushed_upto)
            for a in sorted(acks.values(), key=lambda a: a.seq)]


def lost_writes(image_path: str | os.PathLike, acks: Sequence[Ack], *,
                flushed_only: bool = False) -> list[LostWrite]:
    """Every acknowledged block whose data is not in the image, for ``acks`` in the order
    they were acknowledged (:func:`parse_acks`'s). A block written again later must hold the
    later data. ``flushed_only`` (after a power cut): only blocks a completed flush covered
    must be there, and they may hold what a later write, flushed or not, put there instead."""
    writers: dict[int, list[Ack]] = {}  # block -> the acks that wrote it, in order
    for ack in acks:
        for sector in ack.blocks():
            writers.setdefault(sector, []).append(ack)
    lost = []
    with open(image_path, "rb") as image:
        for sector, wrote in sorted(writers.items()):
            judged = [a for a in wrote if a.flushed] if flushed_only else wrote[-1:]
            if not judged:
                continue
            ack = judged[-1]
            got = os.pread(image.fileno(), ack.bs, sector * SECTOR_SIZE)
            if not any(got == a.data(sector) for a in wrote[wrote.index(ack):]):
                lost.append(LostWrite(ack, sector, _describe(got, wrote, sector)))
    return sorted(lost, key=lambda w: (w.ack.seq, w.sector))


def _describe(got: bytes, wrote: Sequence[Ack], sector: int) -> str:
    """What a lost block holds instead: zeros, an earlier write's data, or other data."""
    if not got.strip(b"\0"):
        return "zeros" if got else "nothing: past the end of the image"
    for a in wrote:
        if got == a.data(sector):
            return f"the data of ACK {a.seq} (gen {a.gen}), an earlier write"
    return "other data"
