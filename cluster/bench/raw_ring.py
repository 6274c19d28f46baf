"""The raw-ring baselines of ``xenray bench``: the split driver's ceiling on this machine.

A ``/dev/shm`` file holds a ring page (and any data pages after it); this process is the
frontend and a forked process the backend; two eventfds are the doorbells, rung only when the
ring's notify hold-off says so. No grants, no hypervisor, no emulation: what blkif or netif
requests cost when nothing but the ring and a wake-up stands between two processes. Run it
before Ray starts (it forks). ``tests/unit/test_ring_two_processes.py`` drives the same
harness to prove no wake-up is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import multiprocessing
import os
import select
import uuid
from collections.abc import Callable, Iterator

from protocols.page import PAGE_SIZE

DOORBELL_TIMEOUT_S = 30.0


def doorbell(fd: int, peer_sentinel: int | None = None, what: str = "the raw ring",
             timeout: float = DOORBELL_TIMEOUT_S) -> None:
    """Wait for an eventfd ring; TimeoutError (a lost wake-up) or ChildProcessError (the
    peer process exited) instead of hanging."""
    watched = [fd] if peer_sentinel is None else [fd, peer_sentinel]
    ready = select.select(watched, [], [], timeout)[0]
    if fd in ready:
        os.eventfd_read(fd)
    elif ready:
        raise ChildProcessError(f"the backend exited while the frontend waited for {what}")
    else:
        raise TimeoutError(f"no doorbell in {timeout} s while waiting for {what}")


@contextlib.contextmanager
def mapped(path: str, nr_pages: int) -> Iterator[memoryview]:
    """The first ``nr_pages`` pages of ``path``, shared, for the ``with`` block."""
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, nr_pages * PAGE_SIZE)
    finally:
        os.close(fd)
    view = memoryview(mm)
    try:
        yield view
    finally:
        view.release()
        try:
            mm.close()
        except BufferError:
            pass  # a ring over it was left unreleased (an error path): collected later


@dataclasses.dataclass
class RawRing:
    """The frontend's side: the pages, the two doorbells and the backend process."""

    view: memoryview  # page 0 is the ring; the rest are data pages
    kick: int  # eventfd the frontend rings (the backend waits on it)
    notify: int  # eventfd the backend rings (the frontend waits on it)
    backend: multiprocessing.Process

    def wait(self, what: str = "responses", timeout: float = DOORBELL_TIMEOUT_S) -> None:
        doorbell(self.notify, self.backend.sentinel, what, timeout)


Backend = Callable[[str, int, int], None]  # (path, kick_fd, notify_fd), in the forked child


@contextlib.contextmanager
def forked_ring(nr_pages: int, backend: Backend, tag: str) -> Iterator[RawRing]:
    """Create the file, fork ``backend(path, kick, notify)`` and yield the frontend's side.
    The block must make the backend exit (a stop request) and release what it built over
    ``view``; whatever is left running is killed, and everything is removed."""
    path = f"/dev/shm/xenray-bench-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(path, "xb") as f:
        f.truncate(nr_pages * PAGE_SIZE)
    kick, notify = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    proc = multiprocessing.get_context("fork").Process(target=backend,
                                                       args=(path, kick, notify))
    try:
        with mapped(path, nr_pages) as view:
            proc.start()
            yield RawRing(view, kick, notify, proc)
            proc.join(DOORBELL_TIMEOUT_S)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        os.unlink(path)
        os.close(kick)
        os.close(notify)
