"""The init programs and their guest OS API (actors.guest.inits, actors.guest.api), on a virtual-time kernel.

The programs only see GuestOS, so they are driven here by a kernel whose clock is virtual:
``sleep`` advances it at once and ends the run when it passes ``until``; its memory is the
real init-memory directory over a bytearray (tests/guestmem.py), and a copy of those bytes is
what a migration delivers to a resumed run. The same programs run on the real PV kernel in
test_domain_kernel.py.
"""

import json

import numpy as np
import pytest

from actors.guest.api import DEFAULT_INIT, GuestOS, options, parse_init
from actors.guest.inits import INITS, find
from actors.guest.memdirty import MAGIC, META, page_words
from protocols.errno import Errno, XenError
from protocols.page import PAGE_SIZE
from tests.guestmem import GuestMemory


class EndOfRun(Exception):
    pass


class VirtualKernel(GuestMemory):
    """A GuestKernel with virtual time; ``out`` holds (time, text) per console write. Its
    memory is fresh, or a copy of ``resume_from``'s (a resumed run)."""

    def __init__(self, until: float, resume_from: GuestMemory | None = None) -> None:
        super().__init__(data=None if resume_from is None else bytes(resume_from.buf))
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


def run(name: str, *argv: str, resume_from: GuestMemory | None = None, until: float = 10.0):
    """Run a built-in init (on a copy of ``resume_from``'s memory, as resumed); returns
    (kernel, its GuestOS, whether the program returned)."""
    kernel = VirtualKernel(until, resume_from)
    guest = GuestOS(kernel, argv=argv, domid=7, name="vm7", resumed=resume_from is not None)
    try:
        find(name)(guest)
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
    assert kernel.initmem.regions().keys() == {"counter"}


def test_counter_takes_start_and_interval_from_argv():
    kernel, _, _ = run("counter", "start=5", "interval=0.25", until=0.5)
    assert kernel.out == [(0.0, "counter 5\n"), (0.25, "counter 6\n"), (0.5, "counter 7\n")]


def test_counter_resumed_on_a_copy_of_its_memory_goes_on_with_the_next_number():
    first, _, _ = run("counter", "start=40", until=1.0)
    assert [text for _, text in first.out] == ["counter 40\n", "counter 41\n", "counter 42\n"]
    again, guest, _ = run("counter", "start=40", resume_from=first, until=1.0)
    assert guest.resumed
    assert [text for _, text in again.out] == ["counter 43\n", "counter 44\n", "counter 45\n"]


def test_counter_frozen_at_its_print_prints_that_number_after_the_resume():
    """The vCPU is frozen at a kernel entry: the print's (before the line) or the sleep's
    (after it). Frozen at the print, the count in memory is still the previous one."""
    class Frozen(Exception):
        pass

    kernel = VirtualKernel(until=10)
    printed = []

    def console_write(data):  # the third print's kernel entry is where it is frozen
        if len(printed) == 2:
            raise Frozen
        printed.append(data.decode())

    kernel.console_write = console_write
    with pytest.raises(Frozen):
        find("counter")(GuestOS(kernel, argv=(), domid=7, name="vm7"))
    assert printed == ["counter 1\n", "counter 2\n"]
    again, _, _ = run("counter", resume_from=kernel, until=0.5)
    assert [text for _, text in again.out][:2] == ["counter 3\n", "counter 4\n"]


def test_counter_rejects_an_argument_that_is_not_a_number():
    with pytest.raises(ValueError, match="start='five' is not a valid int"):
        run("counter", "start=five")


def test_idle_stays_up_and_prints_nothing():
    kernel, _, returned = run("idle", until=10 * 3600)
    assert not returned and kernel.out == [] and kernel.now > 10 * 3600


def test_crash_raises_after_its_delay():
    kernel = VirtualKernel(until=60)
    guest = GuestOS(kernel, argv=("delay=2.5",), domid=7, name="vm7")
    with pytest.raises(RuntimeError, match="init=crash"):
        find("crash")(guest)
    assert kernel.now == 2.5


def test_crash_without_delay_raises_at_once():
    with pytest.raises(RuntimeError):
        run("crash")


def test_poweroff_returns_at_once():
    kernel, _, returned = run("poweroff")
    assert returned and kernel.out == [] and kernel.now == 0.0


def test_guest_os_print_formats_like_the_built_in_print():
    kernel = VirtualKernel(until=1)
    guest = GuestOS(kernel, argv=(), domid=7, name="vm7")
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
    guest = GuestOS(VirtualKernel(until=1), argv=("n=3", "-v"), domid=7, name="vm7")
    assert guest.options() == {"n": "3"} and guest.argv == ("n=3", "-v")


# --- memdirty ----------------------------------------------------------------------------------

def results(kernel: VirtualKernel) -> list[dict]:
    lines = "".join(text for _, text in kernel.out).splitlines()
    return [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]


def memdirty_pages(kernel: VirtualKernel) -> tuple[int, int]:
    """(first pfn, pages) of memdirty's working set in ``kernel``'s memory."""
    first, npages, _ = kernel.initmem.regions()["memdirty.pages"]
    return first, npages


def test_memdirty_dirties_count_pages_round_the_working_set_then_verifies_them():
    kernel, _, returned = run("memdirty", "wss=0.0625", "count=40", until=60)  # 16 pages
    assert not returned  # it idles after its report
    [result] = results(kernel)
    assert result == {"init": "memdirty", "pages": 16, "bad": 0, "bad_pages": [],
                      "dirtied": 40, "resumed": False}
    meta = np.frombuffer(kernel.init_memory("memdirty", META.itemsize), META)[0]
    assert (meta["cursor"], meta["dirtied"]) == (40 % 16, 40)
    versions = np.frombuffer(kernel.init_memory("memdirty.versions", 16 * 8), np.uint64)
    assert versions.tolist() == [3] * 8 + [2] * 8  # twice round, and half a third time


def test_memdirty_pages_carry_their_index_version_and_a_seeded_pattern():
    kernel, _, _ = run("memdirty", "wss=0.125", "count=40", "seed=9", until=60)  # 32 pages
    first, _ = memdirty_pages(kernel)
    page = np.frombuffer(kernel.buf, np.uint64, 512, (first + 3) * PAGE_SIZE)
    assert np.array_equal(page, page_words(9, np.array([3]), np.array([2]))[0])
    assert page[0] == MAGIC | 3 and page[1] == 2
    assert len(set(page[2:].tolist())) == 510  # a pattern, not a fill
    once = np.frombuffer(kernel.buf, np.uint64, 512, (first + 20) * PAGE_SIZE)
    assert once[1] == 1 and not np.array_equal(once[2:], page[2:])


@pytest.mark.parametrize("damage", ["none", "byte", "stale", "torn"])
def test_memdirty_verify_on_resume_passes_on_an_intact_copy_and_fails_on_a_damaged_page(damage):
    """The checker can fail: a flipped byte, a page an older round wrote (a dirtied page a
    migration did not send again), a page half old and half new."""
    argv = ("wss=0.0625", "rate=100", "count=60", "verify=1")
    before, _, _ = run("memdirty", *argv, until=0.395)  # frozen in a sleep after 40 pages
    first, _ = memdirty_pages(before)
    off = (first + 5) * PAGE_SIZE  # page 5: version 3
    if damage == "byte":
        before.buf[off + 1000] ^= 0x01
    elif damage == "stale":
        before.buf[off:off + PAGE_SIZE] = page_words(1, np.array([5]), np.array([2])).tobytes()
    elif damage == "torn":
        before.buf[off + 2048:off + PAGE_SIZE] = page_words(
            1, np.array([5]), np.array([2])).tobytes()[2048:]
    after, guest, _ = run("memdirty", *argv, resume_from=before, until=60)
    lines = "".join(text for _, text in after.out).splitlines()
    assert lines[0] == "memdirty: resumed after 40 pages dirtied"
    first_check = results(after)[0]
    assert first_check["resumed"] is True and first_check["dirtied"] == 40
    assert first_check["bad_pages"] == ([] if damage == "none" else [5])
    assert first_check["bad"] == (0 if damage == "none" else 1)
    assert (lines[1] == "memdirty: verify: 16 pages, 0 bad" if damage == "none" else
            lines[1] == "memdirty: verify: 16 pages, 1 bad: pages 5")
    assert results(after)[-1]["dirtied"] == 60  # and it went on where it was


def test_memdirty_rate_paces_the_pages_on_the_guest_clock():
    kernel, _, _ = run("memdirty", "wss=0.0625", "rate=200", until=2.0)
    meta = np.frombuffer(kernel.init_memory("memdirty", META.itemsize), META)[0]
    assert 400 <= meta["dirtied"] <= 402  # 2 s at 200 pages/s, two pages a step


def test_memdirty_checks_every_check_seconds_and_reports_the_rate():
    kernel, _, _ = run("memdirty", "wss=0.0625", "rate=100", "check=1", "report=0.5",
                       until=2.2)
    assert [r["bad"] for r in results(kernel)] == [0, 0]
    reports = [text for _, text in kernel.out if " dirtied, " in text]
    assert len(reports) == 4 and reports[0].startswith("memdirty: 50 pages dirtied, 100 pages/s")


@pytest.mark.parametrize("argv, words", [(("wss=0",), "want a page"),
                                         (("rate=-1",), "rate >= 0"),
                                         (("wss=many",), "wss='many'")])
def test_memdirty_refuses_bad_arguments(argv, words):
    with pytest.raises(ValueError, match=words):
        run("memdirty", *argv)


def test_memdirty_asking_for_more_than_the_domain_has_is_enomem():
    with pytest.raises(XenError) as e:
        run("memdirty", "wss=4")  # the test kernel has 2 MiB
    assert e.value.errno == Errno.ENOMEM
