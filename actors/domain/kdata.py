"""The kernel data page (pfn 1, ``protocols.pv_layout.PFN_KERNEL_DATA``): what the guest
kernel keeps of itself across a suspend.

Why: issue 11 ("What moves"). A guest resumed in a new domain is a new process; what it needs
of its predecessor must be in its memory. Its init program, its console and its devices come
from start_info, xenstore and the init's own memory (:mod:`.initmem`); the clock is the one
thing left. Linux keeps its timekeeper in kernel memory and a resumed kernel finds it there
(``kernel/time/timekeeping.c``: ``timekeeping_suspend``/``timekeeping_resume``); this kernel
writes the guest clock here just before ``SCHEDOP_shutdown(suspend)`` and a resumed kernel
starts its clock from it, so guest time does not count the time the domain was suspended.

Layout, little-endian: ``magic[8]`` = ``xenray-k``, ``u32 suspends`` (suspends this guest has
been through), ``u32`` reserved, ``f64 clock`` (guest seconds since boot at the last
suspend). A fresh domain's page is zero: no magic, nothing to resume from. The rest of the
page, from ``BALLOON_OFFSET``, is the balloon driver's: the pfns it had given back to Xen
(:class:`actors.domain.balloon.SavedBalloon`), as Linux's balloon list is in kernel memory.
"""

from __future__ import annotations

import dataclasses
import math
import struct

from protocols.errno import Errno, XenError

MAGIC = b"xenray-k"
_LAYOUT = struct.Struct("<8sIId")
BALLOON_OFFSET = _LAYOUT.size  # the balloon driver's state, to the end of the page


@dataclasses.dataclass(frozen=True, slots=True)
class KernelData:
    clock: float  # guest seconds since boot, at the suspend
    suspends: int  # suspends so far, this one included

    def write(self, page: memoryview) -> None:
        page[:_LAYOUT.size] = _LAYOUT.pack(MAGIC, self.suspends & 0xFFFFFFFF, 0, self.clock)

    @classmethod
    def read(cls, page: memoryview) -> KernelData:
        """The data a suspended kernel left; EINVAL if the page holds none (a domain that
        never suspended, or memory that did not arrive whole)."""
        magic, suspends, _, clock = _LAYOUT.unpack_from(page)
        if magic != MAGIC:
            raise XenError(Errno.EINVAL, "no kernel data: this memory was never suspended")
        if not (math.isfinite(clock) and clock >= 0):
            raise XenError(Errno.EINVAL, f"kernel data: the saved clock is {clock!r}")
        return cls(clock=clock, suspends=suspends)
