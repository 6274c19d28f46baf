"""Init programs and the small guest OS API they run against.

DESIGN.md "Guests": a domain runs an ``init`` program chosen on its kernel command line
(``init=NAME args...``: as with Linux's ``init=``, the words after it are the program's argv).
A program sees nothing but :class:`GuestOS`: the console, sleeping, a clock, its argv and
who it is. The PV kernel provides it now and the HVM kernel will provide the same object, so a
workload runs unchanged on both. Every GuestOS call enters the kernel and is a scheduling
point of the vCPU: a paused domain stops at its next call.

Whatever a program must keep across a save/restore (and, later, a migration) lives in
``os.state``, a dict of plain data that the kernel's ``save()`` carries and a restored kernel
hands back; a program resumes from it rather than from Python locals.

The registry :data:`INITS` maps names to programs (``fn(os) -> None``). A program that returns
powers the domain off; one that raises crashes it (the kernel's business, not the program's).
"""

from __future__ import annotations

import json
import random
import struct
import zlib

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from cluster.xlcfg import DomainConfig

DEFAULT_INIT = "idle"  # what runs when the command line names no init= (Linux tries /sbin/init)

_T = TypeVar("_T", int, float)


class GuestKernel(Protocol):
    """What a kernel (PV now, HVM later) provides under :class:`GuestOS`."""

    def console_write(self, data: bytes) -> None:
        """Queue console output; returns once it is all in the console ring."""

    def sleep(self, seconds: float) -> None:
        """Block the vCPU for ``seconds`` of guest time."""

    def clock(self) -> float:
        """Seconds of guest time since boot (it runs on while the domain is paused)."""

    def disk(self, name: str) -> Any:
        """A virtual disk's frontend; ENODEV if the domain has none of that name."""


class GuestOS:
    """The API an init program gets. Only the vCPU thread running the program calls it.

    ``argv`` is the command line after ``init=NAME``; ``domid`` and ``name`` are the domain's,
    as the kernel read them from xenstore at boot (``~/domid``, ``~/name``: reference 11.5;
    None and "" if it could not); ``state`` is the program's saved state (see module docstring).
    """

    __slots__ = ("_kernel", "argv", "domid", "name", "state")

    def __init__(self, kernel: GuestKernel, *, argv: Sequence[str], domid: int | None,
                 name: str, state: dict[str, Any]) -> None:
        self._kernel = kernel
        self.argv = tuple(argv)
        self.domid = domid
        self.name = name
        self.state = state

    def print(self, *values: object, sep: str = " ", end: str = "\n") -> None:
        """Like the built-in ``print``, to the domain's console."""
        self._kernel.console_write((sep.join(map(str, values)) + end).encode())

    def sleep(self, seconds: float) -> None:
        self._kernel.sleep(seconds)

    def clock(self) -> float:
        return self._kernel.clock()

    def disk(self, name: str = "xvda") -> Any:
        """A virtual disk (blkfront): ``read``/``write``/``flush``/``discard`` and the
        ``submit_*`` forms for queue depth."""
        return self._kernel.disk(name)

    def result(self, data: dict) -> None:
        """Publish a machine-readable result: a ``RESULT {json}`` console line, which
        ``xenray result NAME`` collects."""
        self.print("RESULT " + json.dumps(data, sort_keys=True))

    def options(self) -> dict[str, str]:
        """The ``key=value`` words of argv (other words are left out)."""
        return options(self.argv)


Init = Callable[[GuestOS], None]


def parse_init(cmd_line: str) -> tuple[str, tuple[str, ...]]:
    """``(name, argv)`` of the init program on a kernel command line, by xl.cfg's rule
    (:attr:`cluster.xlcfg.DomainConfig.init_program`); :data:`DEFAULT_INIT` if none is named."""
    found = DomainConfig(name="cmdline", cmdline=cmd_line).init_program
    return found if found is not None else (DEFAULT_INIT, ())


def options(argv: Iterable[str]) -> dict[str, str]:
    """``key=value`` words as a dict; the first ``=`` splits, a later word wins."""
    return dict(word.split("=", 1) for word in argv if "=" in word)


def _option(os: GuestOS, key: str, default: _T, kind: type[_T]) -> _T:
    raw = os.options().get(key)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a valid {kind.__name__}") from None


# --- the built-in programs -------------------------------------------------------------------

def counter(os: GuestOS) -> None:
    """Print ``counter 1``, ``counter 2``, ... every ``interval`` seconds (default 0.5), from
    ``start`` (default 1), forever. The last count printed is ``state["count"]``."""
    interval = _option(os, "interval", 0.5, float)
    count = os.state.get("count", _option(os, "start", 1, int) - 1)
    while True:
        count += 1
        os.print(f"counter {count}")
        os.state["count"] = count  # after the print: a restore never skips a line
        os.sleep(interval)


def idle(os: GuestOS) -> None:
    """Stay up, doing nothing."""
    while True:
        os.sleep(3600)


def crash(os: GuestOS) -> None:
    """Raise after ``delay`` seconds (default 0): the domain crashes (``on_crash`` tests)."""
    delay = _option(os, "delay", 0.0, float)
    if delay > 0:
        os.sleep(delay)
    raise RuntimeError("init=crash: crashing as asked")


def poweroff(os: GuestOS) -> None:
    """Return at once: the domain powers off."""


def verify_block(seed: int, index: int, bs: int) -> bytes:
    """Block ``index`` of a verify run: its index and seed, pseudo-random fill, and a CRC."""
    body = struct.pack("<QQ", index, seed) + random.Random(seed * 1_000_003 + index).randbytes(
        bs - 20)
    return body + struct.pack("<I", zlib.crc32(body))


def blkverify(os: GuestOS) -> None:
    """Write ``blocks`` checksummed blocks of ``bs`` bytes to ``disk`` (default xvda) with
    ``iodepth`` requests in flight, flush, read them all back and verify each one.
    Prints the counts and publishes them as a result."""
    disk = os.disk(os.options().get("disk", "xvda"))
    bs = _option(os, "bs", 4096, int)
    blocks = _option(os, "blocks", 256, int)
    depth = _option(os, "iodepth", 8, int)
    seed = _option(os, "seed", 1, int)
    sectors = bs // 512
    t0 = os.clock()
    for first in range(0, blocks, depth):
        batch = [disk.submit_write(i * sectors, verify_block(seed, i, bs))
                 for i in range(first, min(first + depth, blocks))]
        for req in batch:
            req.result(timeout=60)
    disk.flush(timeout=60)
    bad = []
    for first in range(0, blocks, depth):
        reads = [(i, disk.submit_read(i * sectors, bs))
                 for i in range(first, min(first + depth, blocks))]
        bad += [i for i, req in reads if req.result(timeout=60) != verify_block(seed, i, bs)]
    elapsed = os.clock() - t0
    os.print(f"blkverify: {blocks} blocks of {bs} bytes written, {blocks - len(bad)} "
             f"verified, {len(bad)} bad, in {elapsed:.2f} s")
    os.result({"init": "blkverify", "blocks": blocks, "bs": bs, "verified": blocks - len(bad),
               "bad": bad[:16], "seconds": round(elapsed, 3)})
    idle(os)


INITS: dict[str, Init] = {
    "blkverify": blkverify,
    "counter": counter,
    "idle": idle,
    "crash": crash,
    "poweroff": poweroff,
}
