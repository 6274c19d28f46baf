"""Ballooning end to end (issue 14): a 512 MiB guest (``maxmem`` 512) running ``memdirty``
(64 MiB it keeps rewriting and verifying) is taken to 128 MiB and back with ``xenray
mem-set``. At each step: the guest's allocation (``list``'s Mem and its balloon driver's
count), the host's free memory (``info``), the host memory its memory file really holds
(``st_blocks``), and the workload's data, still verifying.

A memory file is sparse: a page the guest never wrote costs the host nothing. So that giving
pages back shows in the file, the test first writes the guest's free pages from Dom0 (pfns
well above its drivers' and below its init's memory, found from the init's directory), as a
guest that had used its free memory for a while (a page cache since dropped) has them."""

from __future__ import annotations

import mmap
import os
import struct
import time

from tests.integration.conftest import cli
from tests.waits import wait_until

from cluster.xlcfg import parse_config
from protocols.page import PAGE_SIZE, PAGES_PER_MIB
from protocols.pv_layout import PFN_INIT_MEMORY

NAME = "balloon"
MIB = 1 << 20
WSS_MIB = 64
DIRTY_FROM = 1024  # pfn: 4 MiB, far above the drivers' pages (pfn 16 up, a few hundred)


def mem_mib(xen, name: str) -> int:
    return next(r for r in xen.list() if r["name"] == name)["mem"]


def free_mib(xen, host: str) -> int:
    return next(r for r in xen.info() if r["host"] == host)["free_memory_mib"]


def verified_after(xen, name: str, dirtied: int) -> dict:
    """A verify of the whole working set that ran after ``dirtied`` pages had been written."""
    return wait_until(lambda: (r := xen.result(name)) and r["dirtied"] > dirtied and r,
                      f"{name} to verify its memory again", timeout=15)


def balloon_to(xen, home, name: str, target_mib: int) -> tuple[float, float]:
    """``xenray mem-set``, then wait for the guest to get there; the seconds it took in all,
    and after the command returned."""
    t0 = time.monotonic()
    done = cli(home, "mem-set", name, f"{target_mib}m")
    assert done.returncode == 0 and done.stdout == "", done.stderr
    t1 = time.monotonic()
    wait_until(lambda: xen.domain_statistics(name)["balloon"].get("current_kb")
               == target_mib * 1024, f"{name}'s balloon to reach {target_mib} MiB", timeout=20)
    t2 = time.monotonic()
    return t2 - t0, t2 - t1


def test_mem_set_balloons_512_to_128_and_back_and_the_host_gets_the_memory(xen, domains,
                                                                           cluster_home):
    cfg = parse_config(f'name = "{NAME}"\nmemory = 512\nmaxmem = 512\n'
                       f'extra = "init=memdirty wss={WSS_MIB} rate=4000 check=0.5"\n')[0]
    info = domains(cfg, "h1")
    path = f"/dev/shm/xenray-{xen.run_id}-h1-d{info['domid']}"
    first = verified_after(xen, NAME, -1)
    assert first["bad"] == 0 and first["pages"] == WSS_MIB * PAGES_PER_MIB
    assert mem_mib(xen, NAME) == 512
    free0 = free_mib(xen, "h1")

    # the guest's free pages, written (module docstring)
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    (floor,) = struct.unpack_from("<Q", mm, PFN_INIT_MEMORY * PAGE_SIZE + 16)
    assert DIRTY_FROM < floor <= 512 * PAGES_PER_MIB - WSS_MIB * PAGES_PER_MIB
    for pfn in range(DIRTY_FROM, floor, 256):
        end = min(pfn + 256, floor)
        mm[pfn * PAGE_SIZE:end * PAGE_SIZE] = b"\xa5" * ((end - pfn) * PAGE_SIZE)
    mm.close()
    used0 = os.stat(path).st_blocks * 512
    assert used0 >= (floor - DIRTY_FROM) * PAGE_SIZE + WSS_MIB * MIB

    # 512 -> 128
    down_s = balloon_to(xen, cluster_home, NAME, 128)
    assert mem_mib(xen, NAME) == 128
    assert free_mib(xen, "h1") == free0 + 384
    used1 = os.stat(path).st_blocks * 512
    given = used0 - used1
    assert 370 * MIB <= given <= 384 * MIB, f"{given / MIB:.0f} MiB given back"
    stats = xen.domain_statistics(NAME)["balloon"]
    assert stats["ballooned_pages"] == 384 * PAGES_PER_MIB and stats["target_kb"] == 128 * 1024
    mid = verified_after(xen, NAME, first["dirtied"])
    assert mid["bad"] == 0

    # a bad size and an unknown domain are one line each; above maxmem is refused
    bad = cli(cluster_home, "mem-set", NAME, "12q")
    assert bad.returncode == 1 and bad.stderr.strip() == "xenray mem-set: invalid memory size: 12q"
    missing = cli(cluster_home, "mem-set", "no-such-domain", "64m")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    above = cli(cluster_home, "mem-set", NAME, "1g")
    assert above.returncode == 1 and "memory_static_max" in above.stderr
    below = cli(cluster_home, "mem-max", NAME, "64m")
    assert below.returncode == 1 and "memory_dynamic_max" in below.stderr

    # 128 -> 512: the same pfns come back (as holes: zeros, nothing on the host yet)
    up_s = balloon_to(xen, cluster_home, NAME, 512)
    assert mem_mib(xen, NAME) == 512 and free_mib(xen, "h1") == free0
    assert os.stat(path).st_blocks * 512 <= used1 + 4 * MIB
    stats = xen.domain_statistics(NAME)["balloon"]
    assert stats["ballooned_pages"] == 0 and stats["current_kb"] == 512 * 1024
    last = verified_after(xen, NAME, mid["dirtied"])
    assert last["bad"] == 0
    print(f"\nballoon 512 -> 128 MiB: {down_s[0]:.2f} s ({down_s[1]:.2f} s after the "
          f"command), 128 -> 512 MiB: {up_s[0]:.2f} s ({up_s[1]:.2f} s); "
          f"memory file {used0 / MIB:.0f} -> {used1 / MIB:.0f} MiB "
          f"({given / MIB:.0f} MiB back to the host); host free {free0} -> {free0 + 384} MiB")


def test_a_ballooned_guest_migrates_with_its_pages_above_memory_its_target_and_vcpus(
        xen, domains, cluster_home):
    """A guest of memory=128 maxmem=256 ballooned up to 192 MiB (pfns above memory= in use)
    and down to one of its two vCPUs moves to the other host as it is (libxl's retrieved
    configuration, libxc's stream of its populated pages): the destination holds the pages
    above memory= (a pattern Dom0 wrote there), 192 MiB (``xl list``), static-max as
    max_mem, one vCPU online, and the workload verifies. There its balloon driver goes on
    from the pfns it had given back (kept in guest memory): mem-set down to 128 MiB and up to
    192 again are followed, and the workload still verifies."""
    name = "balloon-mig"
    cfg = parse_config(f'name = "{name}"\nmemory = 128\nmaxmem = 256\nvcpus = 2\n'
                       f'extra = "init=memdirty wss=16 rate=2000 check=0.5"\n')[0]
    domains(cfg, "h1")
    balloon_to(xen, cluster_home, name, 192)
    xen.vcpu_set(name, 1)
    wait_until(lambda: [r["online"] for r in xen.vcpu_list(name)] == [True, False],
               f"{name} to take its second vCPU offline", timeout=15)
    above = range(150 * PAGES_PER_MIB, 151 * PAGES_PER_MIB)  # the balloon's, no allocator's
    pattern = [struct.pack("<Q", pfn) * (PAGE_SIZE // 8) for pfn in above]

    def pages(host: str, domid: int, write: bool = False) -> list[bytes]:
        fd = os.open(f"/dev/shm/xenray-{xen.run_id}-{host}-d{domid}", os.O_RDWR)
        try:
            mm = mmap.mmap(fd, above.stop * PAGE_SIZE)
        finally:
            os.close(fd)
        with mm:
            if write:
                mm[above.start * PAGE_SIZE:] = b"".join(pattern)
            return [mm[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] for p in above]

    pages("h1", xen.find(name)[1], write=True)
    dirtied = verified_after(xen, name, -1)["dirtied"]
    report = xen.migrate(name, "h2")
    assert xen.find(name) == ("h2", report["domid"])
    assert pages("h2", report["domid"]) == pattern
    assert mem_mib(xen, name) == 192
    dom = next(d for h in xen.xenstat() if h["host"] == "h2" for d in h["domains"]
               if d["name"] == name)
    assert dom["cur_mem"] == 192 * MIB and dom["max_mem"] == 257 * MIB  # static-max + 1 MiB
    assert dom["online_vcpus"] == 1
    dirtied = verified_after(xen, name, dirtied)
    assert dirtied["bad"] == 0
    for target in (128, 192):
        balloon_to(xen, cluster_home, name, target)
        wait_until(lambda t=target: mem_mib(xen, name) == t, f"{name} to hold {target} MiB",
                   timeout=10)
        dirtied = verified_after(xen, name, dirtied["dirtied"])
        assert dirtied["bad"] == 0
