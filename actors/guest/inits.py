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
