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

import numpy as np

from actors.guest.api import GuestOS, Init, option
from actors.guest.blk import blkbench, blkhostile, blkverify
from actors.guest.hostile import hostile
from actors.guest.memdirty import memdirty
from actors.guest.net import nethostile, ping, udpstream

COUNTER = np.dtype([("started", "<u8"), ("count", "<i8")])  # the last count printed

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


INITS: dict[str, Init] = {
    "blkhostile": blkhostile,
    "blkbench": blkbench,
    "blkverify": blkverify,
    "counter": counter,
    "idle": idle,
    "crash": crash,
    "hostile": hostile,
    "memdirty": memdirty,
    "poweroff": poweroff,
    "nethostile": nethostile,
    "ping": ping,
    "udpstream": udpstream,
}
