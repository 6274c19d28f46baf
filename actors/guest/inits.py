"""The init programs a domain can run (``init=NAME`` on its command line).

The registry :data:`INITS` maps names to programs (``fn(os) -> None``, against
:class:`actors.guest.api.GuestOS`). A program that returns powers the domain off; one that
raises crashes it (the kernel's business, not the program's). The general programs live here;
the block, network and memory ones in :mod:`.blk`, :mod:`.net` and :mod:`.memdirty`, the
hostile guest in :mod:`.hostile`.

Each keeps what it must go on with after a migration in guest memory (``GuestOS.memory``) and
picks up from there when the resumed kernel runs it again (``actors.guest.api``).
"""

from __future__ import annotations

import importlib

from actors.guest.api import GuestOS, Init, option

COUNTER = [("started", "<u8"), ("count", "<i8")]  # the last count printed (a numpy dtype)

# --- the built-in programs -------------------------------------------------------------------

def counter(os: GuestOS) -> None:
    """Print ``counter 1``, ``counter 2``, ... every ``interval`` seconds (default 0.5), from
    ``start`` (default 1), forever. The last count printed is kept in guest memory (region
    ``counter``), so a resumed guest goes on with the next number, none repeated or lost."""
    interval = option(os, "interval", 0.5, float)
    start = option(os, "start", 1, int)
    st = os.memory("counter", 1, COUNTER)[0]
    if not st["started"]:
        st["count"], st["started"] = start - 1, 1
    while True:
        count = int(st["count"]) + 1
        os.print(f"counter {count}")  # a suspend freezes the vCPU before it or after it
        st["count"] = count  # and never between the two: a store is no scheduling point
        os.sleep(interval)


def cpuburn(os: GuestOS) -> None:
    """Keep every online vCPU busy ``duty`` percent of the time (default 100), in periods of
    ``period`` seconds (default 0.1): compute until ``duty``% of the period has passed, then
    sleep to its end. Every chunk of work (about 50 us) reads the clock, a kernel entry, so
    the scheduler can take the pCPU away within that. The chunks each vCPU did are counted in
    guest memory (region ``cpuburn``, one counter per vCPU); a vCPU brought up later joins at
    the next period."""
    duty = min(100.0, max(0.0, option(os, "duty", 100.0, float))) / 100
    period = option(os, "period", 0.1, float)
    chunks = os.memory("cpuburn", 32, "<u8")

    def burn(vcpu: int) -> None:
        x = 1
        start = os.clock()
        while os.clock() < start + duty * period:
            for i in range(200):
                x = (x * 1103515245 + i) & 0xFFFFFFFF
            chunks[vcpu] += 1

    while True:
        start = os.clock()
        os.on_each_vcpu(burn)
        rest = start + period - os.clock()
        if rest > 0:
            os.sleep(rest)


def cyclictest(os: GuestOS) -> None:
    """rt-tests' ``cyclictest``, one thread: sleep ``interval`` seconds (default 0.002)
    ``count`` times (default 1000) and measure how late each wake-up runs (the timer's
    VIRQ_TIMER, then the scheduler giving the vCPU a pCPU). Prints and publishes the latency
    (us): min, avg, median, p99, max; a blocking guest's view of the scheduler."""
    interval = option(os, "interval", 0.002, float)
    count = option(os, "count", 1000, int)
    if count <= 0 or interval <= 0:
        raise ValueError(f"cyclictest: count={count} interval={interval}: want both > 0")
    late = []
    for _ in range(count):
        due = os.clock() + interval
        os.sleep(interval)
        late.append(max(0.0, os.clock() - due) * 1e6)
    late.sort()
    summary = {"count": count, "interval_us": round(interval * 1e6),
               "min_us": round(late[0], 1), "avg_us": round(sum(late) / count, 1),
               "p50_us": round(late[count // 2], 1),
               "p99_us": round(late[min(count - 1, count * 99 // 100)], 1),
               "max_us": round(late[-1], 1)}
    os.result(summary, text=f"T: 0 C: {count} Min: {summary['min_us']:.0f} "
                            f"Avg: {summary['avg_us']:.0f} Max: {summary['max_us']:.0f}")
    os.idle()


def idle(os: GuestOS) -> None:
    """Stay up, doing nothing but what the drivers do (answer ARP and ping)."""
    os.idle()


def crash(os: GuestOS) -> None:
    """Raise after ``delay`` seconds (default 0): the domain crashes (``on_crash`` tests)."""
    delay = option(os, "delay", 0.0, float)
    if delay > 0:
        os.sleep(delay)
    raise RuntimeError("init=crash: crashing as asked")


def poweroff(os: GuestOS) -> None:
    """Return at once: the domain powers off."""


INITS: dict[str, Init | str] = {  # name -> program, or "module:function" imported at first use
    "blkhostile": "actors.guest.blk:blkhostile",
    "blkbench": "actors.guest.blk:blkbench",
    "blkverify": "actors.guest.blk:blkverify",
    "counter": f"{__name__}:counter",
    "cpuburn": f"{__name__}:cpuburn",
    "cyclictest": f"{__name__}:cyclictest",
    "idle": f"{__name__}:idle",
    "crash": f"{__name__}:crash",
    "hostile": "actors.guest.hostile:hostile",
    "memdirty": "actors.guest.memdirty:memdirty",
    "poweroff": f"{__name__}:poweroff",
    "nethostile": "actors.guest.net:nethostile",
    "ping": "actors.guest.net:ping",
    "udpstream": "actors.guest.net:udpstream",
}


def find(name: str) -> Init | None:
    """The program ``init=name`` runs, or None. Programs are imported on first use, so a
    domain that runs ``idle`` (or waits in its host's pool) never loads numpy and the block
    and network programs: 14 MiB of each such process."""
    program = INITS.get(name)
    if not isinstance(program, str):
        return program
    module, _, function = program.partition(":")
    return getattr(importlib.import_module(module), function)
