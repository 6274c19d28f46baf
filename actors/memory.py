"""Guest pseudo-physical memory: one ``/dev/shm`` file per domain, one 4 KiB page per frame.

DESIGN.md "Memory": the host's hypervisor creates and owns the file (so the host budget and
``-ENOMEM`` are its business); the domain maps the whole file; any other process sees a page
only through a grant (or, for privileged Dom0 tools, a foreign map), which tells it the file
and the frame so it can ``mmap`` exactly that page at offset ``frame * 4096``.
Files are sparse: a 128 MiB guest costs only the pages it touches.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pathlib
from collections.abc import Iterable

from protocols.page import PAGE_SIZE

SHM_DIR = pathlib.Path("/dev/shm")
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02  # linux/falloc.h

_fallocate = ctypes.CDLL(None, use_errno=True).fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def create(path: str | os.PathLike, nr_pages: int) -> None:
    """Create (or grow) a domain's memory file to ``nr_pages`` frames."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, nr_pages * PAGE_SIZE)
    finally:
        os.close(fd)


def punch(path: str | os.PathLike, runs: Iterable[tuple[int, int]]) -> None:
    """Give these pages of a memory file back to the host: ``fallocate(PUNCH_HOLE |
    KEEP_SIZE)`` over each ``(first frame, count)`` run (Python has only
    ``os.posix_fallocate``, so libc's, through ctypes). The file keeps its size; the pages
    read as zeros after, and every mapping of them (the guest's, a backend's) drops them."""
    fd = os.open(path, os.O_RDWR)
    try:
        for first, count in runs:
            if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          first * PAGE_SIZE, count * PAGE_SIZE) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"punching pages {first}..{first + count - 1} of {path}: "
                                   f"{os.strerror(err)}")
    finally:
        os.close(fd)


def usage(path: str | os.PathLike) -> int:
    """The bytes of host memory a memory file holds now (its pages not punched out)."""
    return os.stat(path).st_blocks * 512


def remove(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Mapping:
    """A shared mapping of ``nr_pages`` frames of a memory file starting at ``first_frame``."""

    def __init__(self, path: str | os.PathLike, first_frame: int = 0,
                 nr_pages: int | None = None, *, readonly: bool = False) -> None:
        fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        try:
            if nr_pages is None:
                nr_pages = os.fstat(fd).st_size // PAGE_SIZE - first_frame
            if nr_pages <= 0:
                raise ValueError(f"{path}: no frames at {first_frame}")
            self.mm = mmap.mmap(fd, nr_pages * PAGE_SIZE, mmap.MAP_SHARED,
                                mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE,
                                offset=first_frame * PAGE_SIZE)
        finally:
            os.close(fd)
        self.path = str(path)
        self.first_frame = first_frame
        self.nr_pages = nr_pages
        self.view = memoryview(self.mm)

    def page(self, frame: int) -> memoryview:
        """The 4 KiB page of ``frame`` (an absolute frame number in the file)."""
        i = frame - self.first_frame
        if not 0 <= i < self.nr_pages:
            raise IndexError(f"frame {frame} is outside this mapping")
        return self.view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]

    def pages(self, frame: int, count: int) -> memoryview:
        i = frame - self.first_frame
        if not (0 <= i and i + count <= self.nr_pages):
            raise IndexError(f"frames {frame}..{frame + count - 1} are outside this mapping")
        return self.view[i * PAGE_SIZE:(i + count) * PAGE_SIZE]

    def close(self) -> None:
        self.view.release()
        try:
            self.mm.close()
        except BufferError:
            # A page view is still exported somewhere; the map goes when it is collected.
            pass
