"""Log-dirty mode (``XEN_DOMCTL_shadow_op``, reference 15.3) over real guest processes.

Each guest here is a real process (:class:`GuestProcess`): it maps its domain's memory file,
hands its dirty logging to the hypervisor with the very code a ``DomainShell`` runs
(``actors.domain.dirtylog``), then writes the pages it is told to. The hypervisor is the real
shell on the in-process host (socket, authentication, ``userfaultfd`` and ``PAGEMAP_SCAN``);
the test drives it with Dom0's hypercalls, as the saver does. What counts as dirty is checked
two ways: exactly the expected pages, and by content (:func:`precopy_misses`: a destination
built from CLEAN's bitmaps, as pre-copy builds it, must equal the source), and that content
checker is shown to catch a write that log-dirty could not see.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from actors import uffd
from actors.domain.actor import DomainShell
from actors.hypervisor.logdirty import GuestTracker, UffdDirtyLog
from actors.hypervisor.state import GTSC_KHZ, Hypervisor
from actors.memory import Mapping
from protocols.errno import Errno
from protocols.gnttab import GNTCOPY_dest_gref, GNTCOPY_source_gref, GNTMAP
from protocols.hypercall import (DOMID_ANY, PFINFO_NOTAB, PFINFO_XTAB, SHADOW_LOGDIRTY_FINAL,
                                 Domctl, GnttabOp, Hypercall, MemoryOp, SchedOp, ShadowMode,
                                 ShadowOp, ShutdownReason, XenMapSpace, decode_result,
                                 encode_call)
from protocols.libxl_types import DomainConfig
from protocols.migration.vcpu import VGCF_IN_KERNEL, VGCF_ONLINE, VcpuContext
from protocols.page import PAGE_SIZE
from protocols.pv_layout import GNTTAB_FIRST_PFN
from tests.inprocess import domain_endpoint

REPO = pathlib.Path(__file__).resolve().parents[2]
NR_PAGES = 256  # 1 MiB guests: pfns 16.. are the guest's own

# The guest's process: map, hand over, then obey "write PFN..." / "grant REF FRAME RO" lines.
GUEST = r"""
import os, sys
from actors.domain import dirtylog
from actors.memory import Mapping
from protocols.gnttab import GrantTable
from protocols.pv_layout import GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES

class Log:  # stdout is the test's channel: log to stderr
    def info(self, event, **kw): print(event, kw, file=sys.stderr)
    warning = info

path, domid, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
memory = Mapping(path)
print("handover", int(dirtylog.hand_over(domid, secret, memory, Log())), os.getpid(), flush=True)
table = GrantTable(memory.pages(GNTTAB_FIRST_PFN, NR_GNTTAB_FRAMES))
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "write":  # change one byte of each page: its content differs afterwards
        for pfn in map(int, args):
            page = memory.page(pfn)
            page[pfn % PAGE] = (page[pfn % PAGE] + 1) & 0xFF
    elif cmd == "grant":
        ref, frame, ro = map(int, args)
        table.grant_access(ref, 0, frame, readonly=bool(ro))
    print("ok", flush=True)
""".replace("PAGE", str(PAGE_SIZE))


class GuestProcess:
    """A real process running a domain's vCPUs, as far as its memory goes."""

    def __init__(self, memory_path: str, domid: int, secret: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", GUEST, memory_path, str(domid),
                                      secret], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        word, ok, pid = self.proc.stdout.readline().split()
        assert word == "handover" and int(pid) == self.proc.pid
        self.handed_over, self.pid = ok == "1", self.proc.pid

    def _do(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n"

    def write(self, *pfns: int) -> None:
        self._do("write " + " ".join(map(str, pfns)))

    def grant(self, ref: int, frame: int, readonly: bool = False) -> None:
        self._do(f"grant {ref} {frame} {int(readonly)}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


class Dom:
    """A DomU made with Dom0's hypercalls, in the toolstack's order: created, memory, its
    process started (which hands over), then ``setvcpucontext`` names that process."""

    def __init__(self, host, nr_pages: int = NR_PAGES) -> None:
        self.host, self.xl = host, host.xl
        res = self.xl(Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                      handle=bytes(16), flags=0, max_vcpus=1, max_evtchn_port=1023,
                      max_grant_frames=-1, max_maptrack_frames=-1)
        self.domid, self.secret = res["domain"], res["secret"]
        self.nr_pages = nr_pages
        self.xl(Hypercall.domctl, Domctl.max_mem, domain=self.domid, max_memkb=nr_pages * 4)
        self.xl(Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
                nr_extents=nr_pages, extent_order=0, mem_flags=0, domid=self.domid)
        self.memory_path = host.memory_path(self.domid)
        self.procs: list[GuestProcess] = []

    def start(self, secret: str | None = None) -> GuestProcess:
        proc = GuestProcess(self.memory_path, self.domid, secret or self.secret)
        self.procs.append(proc)
        return proc

    def set_vcpu(self, pid: int) -> None:
        self.xl(Hypercall.domctl, Domctl.setvcpucontext, domain=self.domid, vcpu=0,
                ctxt=msgpack.packb({"pid": pid, "endpoint": domain_endpoint(self.domid)}))

    def shadow(self, op: int, mode: int = 0, pages: int | None = None) -> tuple[int, object]:
        return self.xl.raw(Hypercall.domctl, Domctl.shadow_op, {
            "domain": self.domid, "op": int(op), "mode": mode,
            "pages": self.nr_pages if pages is None else pages})

    def dirty(self, op: int = ShadowOp.CLEAN, mode: int = 0) -> set[int]:
        rc, res = self.shadow(op, mode)
        assert rc == 0, rc
        assert res["pages"] == self.nr_pages
        self.stats = res["stats"]
        return set(np.flatnonzero(bitmap_bits(res["dirty_bitmap"], self.nr_pages)).tolist())

    def close(self) -> None:
        for p in self.procs:
            p.close()


def bitmap_bits(bitmap: bytes, nr: int) -> np.ndarray:
    """Xen's dirty bitmap: bit i of byte i//8 is pfn i, least significant bit first."""
    return np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")[:nr].astype(bool)


@pytest.fixture
def dom(host):
    d = Dom(host)
    yield d
    d.close()


@pytest.fixture
def guest(dom):
    proc = dom.start()
    assert proc.handed_over
    dom.set_vcpu(proc.pid)
    return proc


# -- what the guest writes ------------------------------------------------------------------

def test_logdirty_clean_returns_exactly_the_pages_the_guest_wrote_then_only_newer_ones(
        dom, guest):
    assert dom.shadow(ShadowOp.ENABLE_LOGDIRTY)[0] == 0
    guest.write(20, 27, 100, 101)
    assert dom.dirty() == {20, 27, 100, 101}
    assert dom.stats == {"fault_count": 4, "dirty_count": 4}
    guest.write(27, 200)
    guest.write(200)  # a second write to a page already dirty this round: one page
    assert dom.dirty() == {27, 200}
    assert dom.stats == {"fault_count": 2, "dirty_count": 2}
    assert dom.dirty() == set()
    assert dom.stats == {"fault_count": 0, "dirty_count": 0}


def test_logdirty_peek_does_not_clear(dom, guest):
    dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
    guest.write(30, 31)
    assert dom.dirty(ShadowOp.PEEK) == {30, 31}
    guest.write(40)
    assert dom.dirty(ShadowOp.PEEK) == {30, 31, 40}
    assert dom.dirty(ShadowOp.CLEAN, SHADOW_LOGDIRTY_FINAL) == {30, 31, 40}
    assert dom.dirty(ShadowOp.PEEK) == set()


def test_logdirty_off_stops_tracking_and_enable_starts_afresh(dom, guest):
    dom.shadow(ShadowOp.ENABLE, ShadowMode.LOG_DIRTY)  # the non-legacy spelling
    guest.write(50)
    assert dom.shadow(ShadowOp.OFF)[0] == 0
    assert dom.shadow(ShadowOp.CLEAN)[0] == -Errno.EINVAL  # off: nothing to clean
    assert dom.shadow(ShadowOp.OFF)[0] == 0  # OFF when off is fine (Xen)
    guest.write(51)
    dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
    assert dom.dirty() == set()  # neither 50 (before OFF) nor 51 (while off)
    guest.write(52)
    assert dom.dirty() == {52}


def test_logdirty_bitmap_is_sized_to_pages_asked_at_most_the_domains(dom, guest):
    dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
    guest.write(3 * 8 + 1, 100)
    rc, res = dom.shadow(ShadowOp.PEEK, pages=30)
    assert rc == 0 and res["pages"] == 30 and res["dirty_bitmap"] == bytes([0, 0, 0, 0b10])
    assert res["stats"]["dirty_count"] == 2  # stats are the whole domain's
    rc, res = dom.shadow(ShadowOp.PEEK, pages=1 << 40)
    assert res["pages"] == NR_PAGES and len(res["dirty_bitmap"]) == NR_PAGES // 8


def test_logdirty_clean_of_a_256_mib_domain_finds_every_second_page_written(host):
    """65536 pages, every second one written: the worst case for PAGEMAP_SCAN's region
    vector (32768 one-page regions: several calls, each resuming at ``walk_end``), and every
    page found exactly once. (Measured here: such a CLEAN takes about 2.5 ms, one with nothing
    written 0.4 ms; not asserted.)"""
    host.hypervisor.state.table.host_pages += 65536  # room for it on the 64 MiB test host
    big = Dom(host, nr_pages=65536)
    try:
        proc = big.start()
        big.set_vcpu(proc.pid)
        big.shadow(ShadowOp.ENABLE_LOGDIRTY)
        proc.write(*range(0, 65536, 2))
        assert big.dirty() == set(range(0, 65536, 2))
        assert big.stats["fault_count"] == 32768
        assert big.dirty() == set()
    finally:
        big.close()


# -- what others write: grants, the hypervisor, Dom0's foreign maps --------------------------

def _map(host, dom: Dom, ref: int, readonly: bool = False) -> dict:
    flags = int(GNTMAP.host_map) | (int(GNTMAP.readonly) if readonly else 0)
    res = host.xl(Hypercall.grant_table_op, GnttabOp.map_grant_ref,
                  ops=[{"host_addr": 0, "flags": flags, "ref": ref, "dom": dom.domid}])[0]
    assert res["status"] == 0
    return res


def _unmap(host, handle: int) -> None:
    res = host.xl(Hypercall.grant_table_op, GnttabOp.unmap_grant_ref,
                  ops=[{"host_addr": 0, "dev_bus_addr": 0, "handle": handle}])
    assert res[0]["status"] == 0


def test_logdirty_writable_grant_mapping_is_dirty_every_round_and_once_after_unmap(
        host, dom, guest):
    guest.grant(10, 60)
    guest.grant(11, 61, readonly=True)
    dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
    handle = _map(host, dom, 10)["handle"]
    ro_handle = _map(host, dom, 11, readonly=True)["handle"]
    # The hypervisor set GTF_reading/GTF_writing in the guest's grant table (pfn 4) through
    # its own mapping; the backend may write page 60 at any time without anyone seeing it.
    assert dom.dirty() == {GNTTAB_FIRST_PFN, 60}
    backend = Mapping(dom.memory_path, 60, 1)
    backend.page(60)[0] = 0xAB  # unseen by the guest's write-protect
    assert dom.dirty() == {60}
    assert dom.dirty() == {60}  # in every round while mapped
    _unmap(host, handle)
    _unmap(host, ro_handle)
    backend.close()
    assert dom.dirty() == {GNTTAB_FIRST_PFN, 60}  # flags cleared; gnttab_mark_dirty
    assert dom.dirty() == set()  # and then never again; 61 (read-only) never


def test_logdirty_hypervisor_copies_into_the_guest_are_dirty(host, dom, guest):
    """``gnttab_copy`` between two of the guest's grants: the hypervisor writes the
    destination page and (transiently) both entries' flags, through its own mapping."""
    guest.grant(600, 70, readonly=True)  # entry 600: the table's second frame
    guest.grant(12, 71)
    dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
    res = host.xl(Hypercall.grant_table_op, GnttabOp.copy, ops=[{
        "source": {"u": 600, "domid": dom.domid, "offset": 0},
        "dest": {"u": 12, "domid": dom.domid, "offset": 8}, "len": 16,
        "flags": GNTCOPY_source_gref | GNTCOPY_dest_gref}])
    assert res == [{"status": 0}]
    assert dom.dirty() == {GNTTAB_FIRST_PFN, GNTTAB_FIRST_PFN + 1, 71}
    assert dom.stats == {"fault_count": 0, "dirty_count": 3}  # none was the guest's write


def test_logdirty_pages_dom0_maps_foreign_are_dirty_in_every_round(host, dom, guest):
    """xenconsoled's map of the console page: Dom0 unmaps without a hypercall, so the page
    counts in every round, as long as log-dirty is on."""
    host.xl(Hypercall.memory_op, MemoryOp.add_to_physmap_batch, domid=0,
            space=XenMapSpace.gmfn_foreign, size=1, foreign_domid=dom.domid, idxs=[3],
            gpfns=[0])
    dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
    assert dom.dirty() == {3}
    guest.write(90)
    assert dom.dirty() == {3, 90}
    assert dom.dirty() == {3}


def test_logdirty_pfns_ballooned_out_or_in_are_dirty_and_getpageframeinfo3_types_them(
        host, dom, guest):
    """A page given back (or taken) in a live round is sent again: XTAB for the hole, which
    ``getpageframeinfo3`` answers for a pfn with no frame."""
    def reservation(op, pfns):
        return host.xl(Hypercall.memory_op, op, extent_start=pfns, nr_extents=len(pfns),
                       extent_order=0, mem_flags=0, domid=dom.domid)

    def types(pfns):
        return host.xl(Hypercall.domctl, Domctl.getpageframeinfo3, domain=dom.domid,
                       num=len(pfns), array=pfns)["array"]

    dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
    assert dom.dirty() == set()
    assert reservation(MemoryOp.decrease_reservation, [40, 41]) == 2
    assert dom.dirty() == {40, 41}
    assert types([39, 40, 41]) == [PFINFO_NOTAB, PFINFO_XTAB, PFINFO_XTAB]
    assert reservation(MemoryOp.populate_physmap, [41]) == 1
    assert dom.dirty() == {41} and types([40, 41]) == [PFINFO_XTAB, PFINFO_NOTAB]
    assert host.xl(Hypercall.memory_op, MemoryOp.maximum_gpfn, domid=dom.domid) == \
        dom.nr_pages - 1
    rc, _ = host.xl.raw(Hypercall.domctl, Domctl.getpageframeinfo3,
                        {"domain": dom.domid, "num": 1025, "array": list(range(1025))})
    assert rc == -Errno.E2BIG


# -- the content checker: pre-copy from the bitmaps must reproduce the guest -----------------

def precopy_misses(dom: Dom, rounds) -> list[int]:
    """Pre-copy as the saver does it: copy everything, then each round let ``rounds`` write,
    CLEAN and copy the dirty pages. Returns the pages whose copy differs from the source at
    the end: any page changed but never reported dirty."""
    source = Mapping(dom.memory_path, readonly=True)
    try:
        src = np.frombuffer(source.mm, np.uint8).reshape(-1, PAGE_SIZE)
        dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
        dest = src.copy()
        for writes in rounds:
            writes()
            dirty = sorted(dom.dirty())
            dest[dirty] = src[dirty]
        misses = np.flatnonzero((dest != src).any(axis=1)).tolist()
        del src
        return misses
    finally:
        source.close()


def _workload(host, dom: Dom, guest: GuestProcess, rng: random.Random, steps: list):
    """Rounds of random guest writes, and a backend writing through a writable grant."""
    guest.grant(5, 40)
    backend = {}

    def round_(i: int) -> None:
        guest.write(*rng.sample(range(16, 128), 12))
        if i == 1:
            backend["handle"] = _map(host, dom, 5)["handle"]
            backend["map"] = Mapping(dom.memory_path, 40, 1)
        if "map" in backend:
            backend["map"].page(40)[i] = i + 1
        if i == 3:
            backend["map"].close()
            del backend["map"]
            _unmap(host, backend["handle"])
        for step in steps:
            step(i)

    return [lambda i=i: round_(i) for i in range(6)]


def test_logdirty_precopy_from_the_bitmaps_reproduces_the_guest(host, dom, guest):
    assert precopy_misses(dom, _workload(host, dom, guest, random.Random(11), [])) == []


def test_logdirty_content_checker_catches_a_write_log_dirty_never_saw(host, dom, guest):
    """The checker is not vacuous: a write through a mapping nobody told the hypervisor about
    (not the guest's, not a grant's) is exactly what it reports."""
    rogue = Mapping(dom.memory_path, 200, 1)  # a page nothing else writes

    def planted(i: int) -> None:
        if i == 2:
            rogue.page(200)[7] ^= 0xFF

    try:
        assert precopy_misses(dom, _workload(host, dom, guest, random.Random(11),
                                             [planted])) == [200]
    finally:
        rogue.close()


# -- the handover and its authentication -----------------------------------------------------

def test_logdirty_handover_before_setvcpucontext_waits_for_its_pid(dom):
    impostor = dom.start()  # right secret, but not the process the toolstack starts
    real = dom.start()
    assert impostor.handed_over and real.handed_over  # both pending
    dom.set_vcpu(real.pid)
    dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
    impostor.write(20)
    real.write(21)
    assert dom.dirty() == {21}  # the vCPU process's memory, not the other's


def test_logdirty_handover_refused_with_a_wrong_secret_or_from_another_process(host, dom):
    assert not dom.start(secret="0" * 32).handed_over
    real = dom.start()
    dom.set_vcpu(real.pid)
    late = dom.start()  # after setvcpucontext named another process
    assert not late.handed_over
    other = Dom(host)
    try:  # another domain's secret does not make it this domain's
        assert not dom.start(secret=other.secret).handed_over
    finally:
        other.close()
    stats = host.hypervisor.on_statistics()["logdirty_handovers"]
    assert stats["refused"] == 3 and stats["accepted"] == 1


def test_logdirty_domain_that_handed_nothing_over_is_eopnotsupp(host, dom):
    dom.set_vcpu(os.getpid())  # a process that never handed over
    assert dom.shadow(ShadowOp.ENABLE_LOGDIRTY)[0] == -Errno.EOPNOTSUPP
    assert dom.shadow(ShadowOp.CLEAN)[0] == -Errno.EINVAL  # never enabled


def test_logdirty_guest_process_gone_is_an_error_not_a_crash(dom, guest):
    dom.shadow(ShadowOp.ENABLE_LOGDIRTY)
    guest.close()
    assert dom.shadow(ShadowOp.CLEAN)[0] == -Errno.ESRCH
    assert dom.shadow(ShadowOp.OFF)[0] == 0


def test_logdirty_works_for_a_process_that_is_not_root():
    """``UFFD_USER_MODE_ONLY``: with ``vm.unprivileged_userfaultfd = 0`` (the default) a
    process without privileges still gets its descriptor, and its writes are tracked."""
    path = f"/dev/shm/xenray-test-nonroot-{os.getpid()}"
    with open(path, "wb") as f:
        f.truncate(16 * PAGE_SIZE)
    script = r"""
import mmap, os, sys
from actors import uffd  # imported while root: the interpreter's files may be root's only
import numpy  # the scanner's (imported when it is first used), likewise
fd = os.open(sys.argv[1], os.O_RDWR)
mm = mmap.mmap(fd, 16 * 4096)
if os.getuid() == 0:
    os.setgid(65534); os.setuid(65534)  # nobody: drop root before asking for the descriptor
    # As a process started as nobody would be: changing uid made this one non-dumpable, and
    # the kernel lets a non-dumpable process open its own /proc/self/pagemap only as root.
    uffd._libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
u, pm, addr = uffd.create(), uffd.open_pagemap(), uffd.address_of(mm)
uffd.register(u, addr, len(mm)); uffd.write_protect(u, addr, len(mm), True)
mm[5 * 4096] = 1; mm[9 * 4096] = 1
print(os.getuid(), sorted(map(int, uffd.Scanner(pm, addr, len(mm)).written(True).nonzero()[0])))
"""
    try:
        out = subprocess.run([sys.executable, "-c", script, path], cwd=REPO, text=True,
                             capture_output=True, timeout=30, check=True).stdout.split(None, 1)
    finally:
        os.unlink(path)
    assert int(out[0]) != 0 and out[1].strip() == "[5, 9]"


# -- a whole host: a DomainShell hands over at start, as the toolstack starts it ------------

def test_logdirty_a_booted_guest_is_tracked_and_its_vcpu_context_and_tsc_read(threaded_host):
    host = threaded_host
    built = host.build(DomainConfig(name="g", memory=8, maxmem=8,
                                    cmdline="init=counter interval=0.02"))
    endpoint = domain_endpoint(built.domid)
    shell = host.start(endpoint, DomainShell(built.domid, host.clients(endpoint, built.domid,
                                                                       built.secret),
                                             built.memory_path, host.log))
    xl, d = host.xl, built.domid
    assert host.hypervisor.dirtylog.attached(d)  # handed over as the shell started
    try:
        xl(Hypercall.domctl, Domctl.shadow_op, domain=d, op=ShadowOp.ENABLE_LOGDIRTY, mode=0,
           pages=2048)
        xl(Hypercall.domctl, Domctl.unpausedomain, domain=d)
        rc, _ = xl.raw(Hypercall.domctl, Domctl.getvcpucontext, {"domain": d, "vcpu": 0})
        assert rc == -Errno.EBUSY  # running

        def console_written():  # the kernel writes its console ring (pfn 3) itself
            res = xl(Hypercall.domctl, Domctl.shadow_op, domain=d, op=ShadowOp.PEEK, mode=0,
                     pages=2048)
            return res["stats"]["fault_count"] and bitmap_bits(res["dirty_bitmap"], 2048)[3]

        host.until(console_written, "the guest's console writes to show as dirty")
        xl(Hypercall.domctl, Domctl.pausedomain, domain=d)
        ctxt = VcpuContext.unpack(xl(Hypercall.domctl, Domctl.getvcpucontext, domain=d,
                                     vcpu=0)["ctxt"])
        assert ctxt == VcpuContext(flags=VGCF_ONLINE | VGCF_IN_KERNEL)
        tsc = xl(Hypercall.domctl, Domctl.gettscinfo, domain=d)
        assert tsc["tsc_mode"] == 0 and tsc["gtsc_khz"] == GTSC_KHZ and tsc["incarnation"] == 0
        assert tsc["elapsed_nsec"] > 0
        xl(Hypercall.domctl, Domctl.shadow_op, domain=d, op=ShadowOp.OFF, mode=0, pages=0)
    finally:
        xl(Hypercall.domctl, Domctl.pausedomain, domain=d)  # no vCPU runs on
        assert shell.kernel is not None


# -- the state machine's refusals (pure: no process needed) --------------------------------

class Frames:
    def __call__(self, domid, pfn, count):
        buf = self.__dict__.setdefault(domid, bytearray(NR_PAGES * PAGE_SIZE))
        return memoryview(buf)[pfn * PAGE_SIZE:(pfn + count) * PAGE_SIZE]


@pytest.fixture
def hv():
    h = Hypervisor("h1", memory_mib=64, pcpus=2, mem_prefix="/dev/shm/test", frames=Frames(),
                   dirtylog=UffdDirtyLog(_NoLog()), clock_ns=iter(range(0, 10**12, 1000)).__next__)
    h.boot_dom0(memory_mib=16)
    return h


class _NoLog:
    def __getattr__(self, name):
        return lambda *a, **k: None


def _call(hv, caller, hypercall, subop, /, **args):
    secret = hv.table.domains[caller].secret
    res = decode_result(hv.hypercall(caller, secret, "ep",
                                     encode_call(hypercall, subop, args))[0])
    return res.rc, res.result


def _domu(hv) -> int:
    _, res = _call(hv, 0, Hypercall.domctl, Domctl.createdomain, domain=DOMID_ANY, ssidref=0,
                   handle=bytes(16), flags=0, max_vcpus=2, max_evtchn_port=1023,
                   max_grant_frames=-1, max_maptrack_frames=-1)
    d = res["domain"]
    _call(hv, 0, Hypercall.domctl, Domctl.max_mem, domain=d, max_memkb=NR_PAGES * 4)
    _call(hv, 0, Hypercall.memory_op, MemoryOp.populate_physmap, extent_start=[],
          nr_extents=NR_PAGES, extent_order=0, mem_flags=0, domid=d)
    return d


def _shadow(hv, caller, d, op, mode=0):
    return _call(hv, caller, Hypercall.domctl, Domctl.shadow_op, domain=d, op=int(op),
                 mode=mode, pages=NR_PAGES)[0]


@pytest.mark.parametrize(("op", "mode", "errno"), [
    (ShadowOp.ENABLE_LOGDIRTY, 0, Errno.EOPNOTSUPP),  # its process handed nothing over
    (ShadowOp.ENABLE, ShadowMode.LOG_DIRTY, Errno.EOPNOTSUPP),
    (ShadowOp.CLEAN, 0, Errno.EINVAL),  # log-dirty is off
    (ShadowOp.PEEK, SHADOW_LOGDIRTY_FINAL, Errno.EINVAL),
    (ShadowOp.ENABLE_TEST, 0, Errno.EINVAL),  # shadow paging is not emulated
    (ShadowOp.ENABLE, ShadowMode.REFCOUNT, Errno.EINVAL),
    (ShadowOp.GET_ALLOCATION, 0, Errno.EINVAL),
    (7, 0, Errno.EINVAL),  # no such op
])
def test_logdirty_state_refusals(hv, op, mode, errno):
    d = _domu(hv)
    assert _shadow(hv, 0, d, op, mode) == -errno
    assert _shadow(hv, 0, d, ShadowOp.OFF) == 0


def test_logdirty_state_refuses_domus_itself_and_bad_modes(hv):
    d = _domu(hv)
    assert _shadow(hv, d, d, ShadowOp.PEEK) == -Errno.EPERM  # a DomU: privileged op
    assert _shadow(hv, d, 0, ShadowOp.ENABLE_LOGDIRTY) == -Errno.EPERM
    assert _shadow(hv, 0, 0, ShadowOp.ENABLE_LOGDIRTY) == -Errno.EINVAL  # on itself
    assert _shadow(hv, 0, 99, ShadowOp.OFF) == -Errno.ESRCH
    with _attached_to_this_process(hv, d) as memory:
        assert _shadow(hv, 0, d, ShadowOp.ENABLE_LOGDIRTY) == 0
        assert _shadow(hv, 0, d, ShadowOp.ENABLE_LOGDIRTY) == -Errno.EINVAL  # already on
        assert _shadow(hv, 0, d, ShadowOp.CLEAN, mode=2) == -Errno.EINVAL
        assert _shadow(hv, 0, d, ShadowOp.CLEAN, mode=SHADOW_LOGDIRTY_FINAL) == 0
        memory.page(33)[0] = 1
        rc, res = _call(hv, 0, Hypercall.domctl, Domctl.shadow_op, domain=d,
                        op=ShadowOp.CLEAN, mode=0, pages=NR_PAGES)
        assert rc == 0
        assert np.flatnonzero(bitmap_bits(res["dirty_bitmap"], NR_PAGES)).tolist() == [33]
        _call(hv, 0, Hypercall.domctl, Domctl.destroydomain, domain=d)
        assert not hv.dirtylog.attached(d)  # forgotten with the domain


@contextlib.contextmanager
def _attached_to_this_process(hv, d: int):
    """The domain's memory mapped in this process, whose dirty logging is handed over (the
    pure state machine over the real hardware: this process plays the vCPU)."""
    path = f"/dev/shm/xenray-test-self-{os.getpid()}-d{d}"
    with open(path, "wb") as f:
        f.truncate(NR_PAGES * PAGE_SIZE)
    memory = Mapping(path)
    try:
        tracker = GuestTracker(os.getpid(), uffd.create(), uffd.open_pagemap(),
                               uffd.address_of(memory.mm), NR_PAGES * PAGE_SIZE)
        hv.dirtylog.offer(d, tracker)
        _call(hv, 0, Hypercall.domctl, Domctl.setvcpucontext, domain=d, vcpu=0,
              ctxt=msgpack.packb({"pid": os.getpid(), "endpoint": "h1/dom1"}))
        yield memory
    finally:
        memory.close()
        os.unlink(path)


def test_logdirty_state_handover_authorisation(hv):
    d = _domu(hv)
    secret = hv.table.domains[d].secret
    assert hv.authorize_dirtylog(d, secret, 4242) == 0  # pid not named yet: kept pending
    assert hv.authorize_dirtylog(d, "guess", 4242) == -Errno.EPERM
    assert hv.authorize_dirtylog(0, hv.table.domains[0].secret, 1) == -Errno.EPERM  # Dom0
    assert hv.authorize_dirtylog(77, secret, 4242) == -Errno.EPERM
    _call(hv, 0, Hypercall.domctl, Domctl.setvcpucontext, domain=d, vcpu=0,
          ctxt=msgpack.packb({"pid": 4242, "endpoint": "h1/dom1"}))
    assert hv.authorize_dirtylog(d, secret, 4242) == 0
    assert hv.authorize_dirtylog(d, secret, 4243) == -Errno.EPERM


def test_getvcpucontext_only_for_a_stopped_domain_and_xens_refusals(hv):
    d = _domu(hv)  # max_vcpus 2

    def get(vcpu, caller=0, dom=d):
        return _call(hv, caller, Hypercall.domctl, Domctl.getvcpucontext, domain=dom, vcpu=vcpu)

    assert get(0)[0] == -Errno.ENODATA  # paused, but no vCPU process handed over yet
    _call(hv, 0, Hypercall.domctl, Domctl.setvcpucontext, domain=d, vcpu=0,
          ctxt=msgpack.packb({"pid": 4242, "endpoint": "h1/dom1"}))
    rc, res = get(0)
    assert rc == 0 and VcpuContext.unpack(res["ctxt"]).flags == VGCF_ONLINE | VGCF_IN_KERNEL
    rc, res = get(1)  # down until the guest brings it up (VCPUOP_up)
    assert rc == 0 and VcpuContext.unpack(res["ctxt"]).flags == VGCF_IN_KERNEL
    assert get(2)[0] == -Errno.EINVAL  # beyond max_vcpus
    assert get(0, dom=0)[0] == -Errno.EINVAL  # the caller's own vCPU
    assert get(0, caller=d)[0] == -Errno.EPERM
    _call(hv, 0, Hypercall.domctl, Domctl.unpausedomain, domain=d)
    assert get(0)[0] == -Errno.EBUSY
    _call(hv, d, Hypercall.sched_op, SchedOp.shutdown, reason=ShutdownReason.suspend)
    assert get(0)[0] == 0  # shut down: readable again


def test_gettscinfo_counts_from_the_domains_creation(hv):
    d = _domu(hv)
    rc, a = _call(hv, 0, Hypercall.domctl, Domctl.gettscinfo, domain=d)
    rc2, b = _call(hv, 0, Hypercall.domctl, Domctl.gettscinfo, domain=d)
    assert rc == rc2 == 0 and 0 < a["elapsed_nsec"] < b["elapsed_nsec"]
    assert {k: a[k] for k in ("tsc_mode", "gtsc_khz", "incarnation")} == {
        "tsc_mode": 0, "gtsc_khz": 1_000_000, "incarnation": 0}
    assert _call(hv, 0, Hypercall.domctl, Domctl.gettscinfo, domain=0)[0] == -Errno.EINVAL
    assert _call(hv, d, Hypercall.domctl, Domctl.gettscinfo, domain=d)[0] == -Errno.EPERM


def test_uffd_handover_path_is_next_to_the_memory_files():
    assert uffd.handover_path_for("/dev/shm/xenray-r-h1-d7", 7) == "/dev/shm/xenray-r-h1-logdirty"
    assert uffd.handover_path_for("/dev/shm/xenray-r-h1-d7", 8) is None
    with pytest.raises(ValueError):
        uffd.decode_handover(b"\xc1")
    with pytest.raises(ValueError):
        uffd.decode_handover(uffd.encode_handover(1, "s", 4097, 4096))
