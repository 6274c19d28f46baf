"""``xenray demo``: the tour a new user sees first, on an embedded two-host cluster.

Each step prints what it does and what it shows; every claim ("the others keep counting")
is checked, and a failed check ends the demo with a non-zero exit status.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import tempfile
import time

from rich.console import Console
from rich.markup import escape

from actors.blkback.vbd import create_image
from actors.guest.blk import verify_block
from cluster.api import Cluster
from cluster.report import domain_table, migration_text
from cluster.xlcfg import parse_config

EXAMPLES = pathlib.Path(__file__).parent / "examples"
COUNT = re.compile(r"counter (\d+)")


def last_count(xen: Cluster, name: str) -> int:
    counts = [int(m.group(1)) for line in xen.console(name, 5) if (m := COUNT.search(line))]
    return counts[-1] if counts else 0


def wait_count_above(xen: Cluster, name: str, value: int, timeout: float = 30) -> int:
    return xen.wait_for(lambda: (c := last_count(xen, name)) > value and c, timeout,
                        f"{name}'s counter to pass {value}")


def counts_on(xen: Cluster, name: str, host: str) -> list[int]:
    """Every count the domain printed on ``host`` (its log there, after it moved away)."""
    return [int(m.group(1)) for line in xen.console(name, 10_000, host=host)
            if (m := COUNT.search(line))]


def show_list(out: Console, xen: Cluster) -> list[dict]:
    rows = xen.list()
    out.print(domain_table(rows), markup=False, highlight=False)
    return rows


def run(out: Console) -> int:
    started = time.monotonic()
    names = [f"counter{i}" for i in range(1, 5)]

    def step(text: str) -> None:
        """A step's heading: a line of its own (wrapped, never cut), bold on a terminal."""
        out.print()
        out.print(f"[bold]{text}[/bold]  [dim]({time.monotonic() - started:.0f} s)[/dim]")

    with Cluster(hosts=2, progress=lambda m: out.print(f"  {m}")) as xen:
        step("1. Create four PV domains from xl.cfg files")
        for i, name in enumerate(names):
            info = xen.create(EXAMPLES / f"{name}.cfg", host=xen.hosts[i % 2])
            out.print(f"  {name}: domid {info['domid']} on {info['host']} (pid {info['pid']})")
        for name in names:
            wait_count_above(xen, name, 1)
        show_list(out, xen)

        step("2. Their consoles, drained by each host's xenconsoled")
        for name in names[:2]:
            for line in xen.console(name, 3):
                out.print(f"  [cyan]{name}[/cyan] | {escape(line)}")

        step("3. Pause counter1: its vCPU stops making progress")
        xen.pause("counter1")
        frozen = last_count(xen, "counter1")
        other = last_count(xen, "counter2")
        wait_count_above(xen, "counter2", other + 2)
        if last_count(xen, "counter1") > frozen + 1:
            raise RuntimeError("a paused domain kept counting")
        out.print(f"  counter1 stays at {last_count(xen, 'counter1')} while counter2 "
                  f"reaches {last_count(xen, 'counter2')}")
        show_list(out, xen)
        xen.unpause("counter1")
        out.print(f"  unpaused: counter1 counts again ({wait_count_above(xen, 'counter1', frozen)})")

        step("4. Reboot counter2 (PV control protocol; on_reboot = restart)")
        before = {r["name"]: r["domid"] for r in xen.list()}["counter2"]
        xen.reboot("counter2", wait=True)
        xen.wait_for(lambda: xen.find("counter2"), 60, "counter2 to come back")
        after = xen.find("counter2")[1]
        out.print(f"  counter2 was domid {before}, now domid {after}")
        wait_count_above(xen, "counter2", 0)

        step("5. A virtual disk: blkfront, blkback, a raw image")
        with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
            image = pathlib.Path(tmp) / "disk1.img"
            create_image(image, 16 << 20)
            cfg = parse_config(f'name = "disk1"\nmemory = 32\n'
                               f'disk = [ "{image},raw,xvda,rw" ]\n'
                               f'extra = "init=blkverify blocks=256 iodepth=8 seed=9"\n')[0]
            xen.create(cfg, host="h1")
            result = xen.wait_for(lambda: xen.result("disk1"), 120, "disk1's blkverify")
            out.print(f"  blkverify in the guest: {result['verified']} of {result['blocks']} "
                      f"blocks verified in {result['seconds']} s")
            xen.destroy("disk1")
            with image.open("rb") as f:
                on_disk = sum(f.read(4096) == verify_block(9, i, 4096) for i in range(256))
            if on_disk != 256:
                raise RuntimeError(f"only {on_disk} of 256 blocks are in the image")
            out.print(f"  after destroy, read from the host: all {on_disk} blocks are in {image.name}")

        step("6. A network: ping from h2 to a guest on h1, across the hosts' bridges")
        for name, ip, extra, host in (("web1", "10.0.0.1", "init=idle", "h1"),
                                      ("client1", "10.0.0.2",
                                       "init=ping 10.0.0.1 count=4 interval=0.2", "h2")):
            xen.create(parse_config(f'name = "{name}"\nmemory = 32\nvif = [ "ip={ip}" ]\n'
                                    f'extra = "{extra}"\n')[0], host=host)
        result = xen.wait_for(lambda: xen.result("client1"), 60, "client1's ping")
        for line in xen.console("client1", 8):
            if "bytes from" in line or "packet loss" in line or line.startswith("rtt"):
                out.print(f"  client1: {line}", markup=False, highlight=False)
        if result["received"] == 0:
            raise RuntimeError("no ping reply crossed the hosts")
        for name in ("web1", "client1"):
            xen.destroy(name)

        step("7. Live-migrate counter4 from h2 to h1 (pre-copy over log-dirty)")
        report = xen.migrate("counter4", "h1")
        out.print(migration_text(report), markup=False, highlight=False)
        before = counts_on(xen, "counter4", "h2")
        after = xen.wait_for(lambda: counts_on(xen, "counter4", "h1"), 30,
                             "counter4 to count on h1")
        if after[0] != before[-1] + 1:
            raise RuntimeError(f"counter4 printed {before[-1]} on h2, then {after[0]} on h1")
        out.print(f"  counter4 printed {before[-1]} on h2 and goes on with {after[0]} on h1")

        step("8. SIGKILL counter3: a crash; the others carry on")
        pid = next(r["pid"] for r in xen.list() if r["name"] == "counter3")
        survivors = {n: last_count(xen, n) for n in ("counter1", "counter4")}
        out.print(f"  kill -9 {pid}: the domain's process dies, which Xen calls a crash")
        os.kill(pid, signal.SIGKILL)
        xen.wait_for(lambda: xen.find("counter3") is None, 30, "counter3 to be destroyed")
        for name, count in survivors.items():
            out.print(f"  {name} keeps counting: {count} -> {wait_count_above(xen, name, count)}")
        show_list(out, xen)

        step("9. Destroy the rest and stop the cluster")
        for r in xen.list():
            if r["domid"] != 0:
                xen.destroy(r["name"])
                out.print(f"  destroyed {r['name']}")
    out.print(f"[bold green]demo finished in {time.monotonic() - started:.0f} s[/bold green]")
    return 0
