"""The small guest OS API init programs run against, and the init command line.

DESIGN.md "Guests": a domain runs an ``init`` program chosen on its kernel command line
(``init=NAME args...``: as with Linux's ``init=``, the words after it are the program's argv).
A program sees nothing but :class:`GuestOS`: the console, sleeping, a clock, its disks and
NICs, its argv and who it is. The PV kernel provides it now and the HVM kernel will provide
the same object, so a workload runs unchanged on both. Every GuestOS call enters the kernel
and is a scheduling point of the vCPU: a paused domain stops at its next call, and so does a
suspending one (the kernel freezes the init there; a disk's ``submit_*`` and ``read``/
``write``/``flush``/``discard`` are scheduling points too). A program that computes for long
should call one now and then (``os.clock()``), as a Linux task reaches ``try_to_freeze``.

A migrated or restored guest is a new process (issue 11): its Python stack is gone, and the
resumed kernel runs the init program again, with ``os.resumed`` True. So whatever a program
must go on with lives in guest memory: ``os.memory(name, count, dtype)`` is an array over
pages of the domain's own memory, found again by name after the resume with its contents.
The program orders its work so that what its memory says has been done is what has been done
at every scheduling point: a print is never split by a suspend (the vCPU is frozen before it
or after it), and plain stores to its memory are not scheduling points, so "print, then
record it was printed" leaves no line printed twice or lost.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np

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

    def init_memory(self, name: str, nbytes: int) -> memoryview:
        """``nbytes`` of guest memory for the init, the same pages for the same name (also
        after a resume in a new domain); zero when first made."""

    def vcpus(self) -> list[int]:
        """The online vCPUs."""

    def on_each_vcpu(self, fn: Callable[[int], Any]) -> list[Any]:
        """``fn(n)`` on every online vCPU ``n`` at once; their results once all are done."""


class GuestOS:
    """The API an init program gets. Only the vCPU thread running the program calls it.

    ``argv`` is the command line after ``init=NAME``; ``domid`` and ``name`` are the domain's,
    as the kernel read them from xenstore at boot or resume (``~/domid``, ``~/name``: reference
    11.5; None and "" if it could not); ``resumed`` says this run continues an earlier one, in
    a new domain (module docstring).
    """

    __slots__ = ("_kernel", "argv", "domid", "name", "resumed")

    def __init__(self, kernel: GuestKernel, *, argv: Sequence[str], domid: int | None,
                 name: str, resumed: bool = False) -> None:
        self._kernel = kernel
        self.argv = tuple(argv)
        self.domid = domid
        self.name = name
        self.resumed = resumed

    def memory(self, name: str, count: int, dtype: Any = "u1") -> np.ndarray:
        """``count`` items of ``dtype`` in guest memory, as a numpy array over the pages
        themselves: region ``name`` of the init's memory, made zeroed on first use and the
        same pages, contents kept, when asked for again, after a resume in a new domain too.
        A structured ``dtype`` with ``count=1`` gives a record: ``os.memory("st", 1, DT)[0]``
        reads and writes fields in place. XenError: EINVAL (a bad name, or another size than
        the region has), ENOMEM (more than the domain has beside its drivers' pages)."""
        import numpy as np  # here: a guest that keeps no state in memory never loads it

        dt = np.dtype(dtype)
        count = operator.index(count)
        if count <= 0 or dt.itemsize == 0:
            raise ValueError(f"memory {name!r}: {count} items of {dt}")
        return np.frombuffer(self._kernel.init_memory(name, count * dt.itemsize), dtype=dt)

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

    def vcpus(self) -> list[int]:
        """The domain's online vCPUs (``vcpus=`` in xl.cfg, then ``xenray vcpu-set``)."""
        return self._kernel.vcpus()

    def on_each_vcpu(self, fn: Callable[[int], Any]) -> list[Any]:
        """Run ``fn(n)`` on every online vCPU ``n`` at once, as a multithreaded program runs
        a thread per CPU: vCPU 0 runs its share on this thread, each other vCPU on its own.
        Returns their results in vCPU order once all are done (the first exception raised
        is raised here). ``fn`` may call this GuestOS from its vCPU."""
        return self._kernel.on_each_vcpu(fn)

    def disk(self, name: str = "xvda") -> Any:
        """A virtual disk (blkfront): ``read``/``write``/``flush``/``discard`` and the
        ``submit_*`` forms for queue depth."""
        return self._kernel.disk(name)

    def net(self, nic: int = 0) -> Any:
        """The network stack on a NIC (vif ``nic``): ``ping``, ``udp_bind``, ``udp_send``,
        its ``ip`` and ``mac``."""
        return self._kernel.net(nic)

    def result(self, data: dict, *, text: str = "") -> None:
        """Publish a machine-readable result: a ``RESULT {json}`` console line, which
        ``xenray result NAME`` collects; ``text`` (lines for people) goes before it in the
        same console write, so a suspend never separates the two."""
        line = "RESULT " + json.dumps(data, sort_keys=True)
        self.print(f"{text}\n{line}" if text else line)

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
