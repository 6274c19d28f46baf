"""The init programs and their guest OS API (actors.guest.inits, actors.guest.api), on a virtual-time kernel.

The programs only see GuestOS, so they are driven here by a kernel whose clock is virtual:
``sleep`` advances it at once and ends the run when it passes ``until``. The same programs
run on the real PV kernel in test_domain_kernel.py.
"""

import pytest

from actors.guest.api import DEFAULT_INIT, GuestOS, options, parse_init
from actors.guest.inits import INITS


class EndOfRun(Exception):
    pass


class VirtualKernel:
    """A GuestKernel with virtual time; ``out`` holds (time, text) per console write."""

    def __init__(self, until: float) -> None:
        self.now, self.until = 0.0, until
        self.out: list[tuple[float, str]] = []

    def console_write(self, data: bytes) -> None:
        self.out.append((self.now, data.decode()))

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.now > self.until:
            raise EndOfRun

    def clock(self) -> float:
        return self.now


def run(name: str, *argv: str, state: dict | None = None, until: float = 10.0):
    """Run a built-in init; returns (kernel, its GuestOS, whether the program returned)."""
    kernel = VirtualKernel(until)
    guest = GuestOS(kernel, argv=argv, domid=7, name="vm7", state={} if state is None else state)
    try:
        INITS[name](guest)
    except EndOfRun:
        return kernel, guest, False
    return kernel, guest, True


def test_registry_holds_the_built_in_inits():
    assert {"counter", "idle", "crash", "poweroff"} <= INITS.keys()
    assert DEFAULT_INIT in INITS


def test_counter_prints_an_increasing_count_twice_a_second():
    kernel, guest, returned = run("counter", until=2.0)
    assert not returned
    assert kernel.out == [(0.0, "counter 1\n"), (0.5, "counter 2\n"), (1.0, "counter 3\n"),
                          (1.5, "counter 4\n"), (2.0, "counter 5\n")]
    assert guest.state == {"count": 5}


def test_counter_takes_start_and_interval_from_argv():
    kernel, _, _ = run("counter", "start=5", "interval=0.25", until=0.5)
    assert kernel.out == [(0.0, "counter 5\n"), (0.25, "counter 6\n"), (0.5, "counter 7\n")]


def test_counter_resumes_from_its_saved_state():
    kernel, guest, _ = run("counter", "start=100", state={"count": 41}, until=0.5)
    assert [text for _, text in kernel.out] == ["counter 42\n", "counter 43\n"]
    assert guest.state["count"] == 43


def test_counter_rejects_an_argument_that_is_not_a_number():
    with pytest.raises(ValueError, match="start='five' is not a valid int"):
        run("counter", "start=five")


def test_idle_stays_up_and_prints_nothing():
    kernel, _, returned = run("idle", until=10 * 3600)
    assert not returned and kernel.out == [] and kernel.now > 10 * 3600


def test_crash_raises_after_its_delay():
    kernel = VirtualKernel(until=60)
    guest = GuestOS(kernel, argv=("delay=2.5",), domid=7, name="vm7", state={})
    with pytest.raises(RuntimeError, match="init=crash"):
        INITS["crash"](guest)
    assert kernel.now == 2.5


def test_crash_without_delay_raises_at_once():
    with pytest.raises(RuntimeError):
        run("crash")


def test_poweroff_returns_at_once():
    kernel, _, returned = run("poweroff")
    assert returned and kernel.out == [] and kernel.now == 0.0


def test_guest_os_print_formats_like_the_built_in_print():
    kernel = VirtualKernel(until=1)
    guest = GuestOS(kernel, argv=(), domid=7, name="vm7", state={})
    guest.print("a", 1, None, sep="-", end="!")
    guest.print()
    assert [text for _, text in kernel.out] == ["a-1-None!", "\n"]
    guest.sleep(0.75)
    assert guest.clock() == 0.75


def test_parse_init_takes_the_words_after_init_as_argv():
    assert parse_init("root=/dev/xvda1 ro init=counter start=5 interval=1") == \
        ("counter", ("start=5", "interval=1"))
    assert parse_init("console=hvc0 init=crash") == ("crash", ())


def test_parse_init_without_init_runs_the_default():
    assert parse_init("") == (DEFAULT_INIT, ())
    assert parse_init("root=/dev/xvda1 quiet") == (DEFAULT_INIT, ())


def test_options_are_the_key_value_words_and_the_last_one_wins():
    assert options(["a=1", "bare", "b=x=y", "a=2"]) == {"a": "2", "b": "x=y"}
    guest = GuestOS(VirtualKernel(until=1), argv=("n=3", "-v"), domid=7, name="vm7", state={})
    assert guest.options() == {"n": "3"} and guest.argv == ("n=3", "-v")
