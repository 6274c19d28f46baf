"""Guest pseudo-physical memory: one ``/dev/shm`` file per domain, one 4 KiB page per frame.

DESIGN.md "Memory": the host's hypervisor creates and owns the file (so the host budget and
``-ENOMEM`` are its business); the domain maps the whole file; any other process sees a page
only through a grant (or, for privileged Dom0 tools, a foreign map), which tells it the file
and the frame so it can ``mmap`` exactly that page at offset ``frame * 4096``.
Files are sparse: a 128 MiB guest costs only the pages it touches.
"""

from __future__ import annotations

import mmap
import os
import pathlib

from protocols.page import PAGE_SIZE

SHM_DIR = pathlib.Path("/dev/shm")


def create(path: str | os.PathLike, nr_pages: int) -> None:
    """Create (or grow) a domain's memory file to ``nr_pages`` frames."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, nr_pages * PAGE_SIZE)
    finally:
        os.close(fd)


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
