"""Xen's generic shared ring (``xen/include/public/io/ring.h``).

(Being written: ring_size and must_notify are final; the ring classes follow.)
"""

from __future__ import annotations

PAGE_SIZE = 4096
HEADER_SIZE = 64  # req_prod, req_event, rsp_prod, rsp_event, pvt, __pad[44]
_U32 = 0xFFFFFFFF


def ring_size(entry_size: int, page_size: int = PAGE_SIZE) -> int:
    """``__RING_SIZE``: slots that fit after the 64-byte header, rounded down to a power of two."""
    if entry_size <= 0 or page_size <= HEADER_SIZE:
        raise ValueError("entry_size must be positive and the page larger than the header")
    n = (page_size - HEADER_SIZE) // entry_size
    if n == 0:
        raise ValueError(f"a {entry_size}-byte entry does not fit in a {page_size}-byte ring")
    return 1 << (n.bit_length() - 1)


def must_notify(old: int, new: int, event: int) -> bool:
    """``RING_PUSH_*_AND_CHECK_NOTIFY``: notify iff ``event`` lies in ``(old, new]`` mod 2^32."""
    return ((new - event) & _U32) < ((new - old) & _U32)
