"""The small guest OS API init programs run against, and the init command line.

DESIGN.md "Guests": a domain runs an ``init`` program chosen on its kernel command line
(``init=NAME args...``: as with Linux's ``init=``, the words after it are the program's argv).
A program sees nothing but :class:`GuestOS`: the console, sleeping, a clock, its disks and
NICs, its argv and who it is. The PV kernel provides it now and the HVM kernel will provide
the same object, so a workload runs unchanged on both. Every GuestOS call enters the kernel
and is a scheduling point of the vCPU: a paused domain stops at its next call.

Whatever a program must keep across a save/restore (and, later, a migration) lives in
``os.state``, a dict of plain data that the kernel's ``save()`` carries and a restored kernel
hands back; a program resumes from it rather than from Python locals.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

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

    def net(self, nic: int) -> Any:
        """The network stack on vif ``nic``; ENODEV if the domain has no such NIC."""


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

    def idle(self) -> None:
        """Sleep for good: the domain stays up, its drivers keep serving their interrupts
        (a NIC keeps answering ARP and ping)."""
        while True:
            self._kernel.sleep(3600)

    def clock(self) -> float:
        return self._kernel.clock()

    def disk(self, name: str = "xvda") -> Any:
        """A virtual disk (blkfront): ``read``/``write``/``flush``/``discard`` and the
        ``submit_*`` forms for queue depth."""
        return self._kernel.disk(name)

    def net(self, nic: int = 0) -> Any:
        """The network stack on a NIC (vif ``nic``): ``ping``, ``udp_bind``, ``udp_send``,
        its ``ip`` and ``mac``."""
        return self._kernel.net(nic)

    def result(self, data: dict) -> None:
        """Publish a machine-readable result: a ``RESULT {json}`` console line, which
        ``xenray result NAME`` collects."""
        self.print("RESULT " + json.dumps(data, sort_keys=True))

    def options(self) -> dict[str, str]:
        """The ``key=value`` words of argv (other words are left out)."""
        return options(self.argv)


Init = Callable[[GuestOS], None]


def init_program(cmd_line: str | None) -> tuple[str, tuple[str, ...]] | None:
    """``(name, argv)`` from ``init=NAME args...`` on a kernel command line, else None.

    As Linux does, the words after ``init=NAME`` are the init program's arguments; the words
    before it are kernel parameters. (The xl.cfg parser uses this too, to refuse an ``init=``
    that names nothing.)"""
    words = (cmd_line or "").split()
    for i, word in enumerate(words):
        if word.startswith("init="):
            return word[len("init="):], tuple(words[i + 1:])
    return None


def parse_init(cmd_line: str) -> tuple[str, tuple[str, ...]]:
    """The init program the kernel runs: :func:`init_program`, or :data:`DEFAULT_INIT`."""
    found = init_program(cmd_line)
    return found if found is not None else (DEFAULT_INIT, ())


def options(argv: Iterable[str]) -> dict[str, str]:
    """``key=value`` words as a dict; the first ``=`` splits, a later word wins."""
    return dict(word.split("=", 1) for word in argv if "=" in word)


def option(os: GuestOS, key: str, default: _T, kind: type[_T]) -> _T:
    raw = os.options().get(key)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
