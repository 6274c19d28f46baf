"""Guest memory for a test's stand-in kernel: the real init-memory directory
(:class:`actors.domain.initmem.InitMemory`) over a bytearray of pages, so an init program run
on a virtual-time kernel keeps its state as it would in a domain, and a "resumed" copy of the
bytes finds it again."""

from __future__ import annotations

from actors.domain.initmem import InitMemory
from protocols.page import PAGE_SIZE


class GuestMemory:
    """``nr_pages`` of zeroed memory with an empty init directory, or a copy of ``data``
    (another's :attr:`buf`) whose directory is loaded, as a resumed kernel loads it."""

    def __init__(self, nr_pages: int = 512, data: bytes | None = None) -> None:
        self.buf = bytearray(data if data is not None else nr_pages * PAGE_SIZE)
        view = memoryview(self.buf)
        self.initmem = InitMemory(lambda pfn, n: view[pfn * PAGE_SIZE:(pfn + n) * PAGE_SIZE],
                                  len(self.buf) // PAGE_SIZE)
        if data is None:
            self.initmem.format()
        else:
            self.initmem.load()

    def init_memory(self, name: str, nbytes: int) -> memoryview:
        """``GuestKernel.init_memory``."""
        return self.initmem.region(name, nbytes)

    def copy(self) -> GuestMemory:
        """What a migration delivers: the same bytes, in a new guest."""
        return GuestMemory(data=bytes(self.buf))
