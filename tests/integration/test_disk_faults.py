"""Disk faults on the session's cluster (issue 12), through the Python API of
cluster/fault/disk.py: a guest whose disk fails its writes says so and carries on once the
fault is cleared, and a power cut under a flush-disciplined writer loses no flushed write,
judged afterwards by the durability checker on the guest's console log and the image."""

import re

from actors.blkback.vbd import create_image
from cluster.fault.disk import (clear_disk_fault, disk_fault, logged_acks, lost_writes,
                                power_cut, set_disk_fault)

# a writer that goes on for far longer than a test lets it, on a sparse disk
WRITER = "blkverify blocks=100000 iodepth=8 acklog=1 retry=0.05"
DISK = 100000 * 4096


def writer_cfg(name, image, args=""):
    return (f'name = "{name}"\nmemory = 32\ndisk = [ "{image},raw,xvda,rw" ]\n'
            f'extra = "init={WRITER} {args}"\n')


def console_match(xen, name, pattern, accept=lambda m: True):
    """Wait for a console line of ``name`` matching ``pattern`` (and ``accept``); its match."""
    def found():
        return next((m for line in xen.console(name, 50)
                     if (m := re.fullmatch(pattern, line)) and accept(m)), None)

    return xen.wait_for(found, 60, f"{name} to print {pattern!r}")


def test_a_write_eio_is_reported_by_the_guest_not_a_crash_and_clearing_it_heals(
        xen, domains, tmp_path):
    image = tmp_path / "eio.img"
    create_image(image, DISK)
    domains(writer_cfg("eio-writer", image), "h1")
    assert set_disk_fault(xen, "eio-writer", "xvda", eio="write") == {"eio": "write"}
    failed = int(console_match(xen, "eio-writer", r"blkverify: writing blocks (\d+)-\d+: EIO: "
                                                  r"8 of 8 requests failed; retrying in 0.05 s"
                               ).group(1))
    assert xen.find("eio-writer") is not None  # still running: a failed write is no crash
    assert disk_fault(xen, "eio-writer")["fault_eio"] >= 8
    assert clear_disk_fault(xen, "eio-writer", "xvda")["fault_eio"] >= 8
    console_match(xen, "eio-writer", r"ACK (\d+) .*",
                  lambda m: int(m.group(1)) > failed)  # past the batch that failed
    assert disk_fault(xen, "eio-writer") is None
    host = xen.find("eio-writer")[0]
    xen.destroy("eio-writer")
    acks = logged_acks(xen, host, "eio-writer")
    assert [a.seq for a in acks] == list(range(0, acks[-1].seq + 1, 8))  # none skipped
    assert lost_writes(image, acks) == []


def test_a_power_cut_loses_no_flushed_write_of_a_flushing_writer(xen, domains, tmp_path):
    image = tmp_path / "cut.img"
    create_image(image, DISK)
    domains(writer_cfg("cut-writer", image, "flush=64"), "h2")
    set_disk_fault(xen, "cut-writer", volatile=True)
    xen.wait_for(lambda: (f := disk_fault(xen, "cut-writer"))["fault_flushes"] >= 2
                 and f["unflushed"] >= 16, 60, "two flushes through the cache, and writes since")
    cut = power_cut(xen, "cut-writer")
    console_match(xen, "cut-writer", r"blkverify: .*: EIO: .*")  # all it saw acked is logged
    host = xen.find("cut-writer")[0]
    xen.destroy("cut-writer")  # a power cut kills the machine too
    acks = logged_acks(xen, host, "cut-writer")
    assert any(a.flushed for a in acks)
    assert lost_writes(image, acks, flushed_only=True) == []
    lost = lost_writes(image, acks)
    assert [w.sector for w in lost] == [s for a in acks if not a.flushed for s in a.blocks()]
    assert len(lost) <= cut["rolled_back"]
