"""The init programs a domain can run (``init=NAME`` on its command line).

The registry :data:`INITS` maps names to programs (``fn(os) -> None``, against
:class:`actors.guest.api.GuestOS`). A program that returns powers the domain off; one that
raises crashes it (the kernel's business, not the program's). The general programs live here;
the block and network ones in ``blkinits`` and ``netinits``.
"""

from __future__ import annotations

from actors.guest.api import GuestOS, Init, option
from actors.guest.blk import blkbench, blkhostile, blkverify
from actors.guest.net import nethostile, ping, udpstream

# --- the built-in programs -------------------------------------------------------------------

def counter(os: GuestOS) -> None:
    """Print ``counter 1``, ``counter 2``, ... every ``interval`` seconds (default 0.5), from
    ``start`` (default 1), forever. The last count printed is ``state["count"]``."""
    interval = option(os, "interval", 0.5, float)
    count = os.state.get("count", option(os, "start", 1, int) - 1)
    while True:
        count += 1
        os.print(f"counter {count}")
        os.state["count"] = count  # after the print: a restore never skips a line
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
    "poweroff": poweroff,
    "nethostile": nethostile,
    "ping": ping,
    "udpstream": udpstream,
}
