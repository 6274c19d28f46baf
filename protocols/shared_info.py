"""The shared-info page and Xen's 2-level event bitmaps (``xen/include/public/xen.h``,
``xen/common/event_2l.c``; reference section 4).

Why a view over a buffer: the pending and mask bits of every event-channel port live in the
guest's own shared-info page, not in the hypervisor. Xen sets a pending bit, the guest clears
it; the guest sets and clears mask bits itself. Keeping them at Xen's offsets in a real page lets
the hypervisor actor and the domain share one page, and save it with the domain's memory.

x86_64 layout (3136 bytes)::

    vcpu_info[32] @0, 64 bytes each: evtchn_upcall_pending u8 @0, evtchn_upcall_mask u8 @1,
        evtchn_pending_sel u64 @8, arch @16, vcpu_time_info @32
    evtchn_pending[64] u64 @2048, evtchn_mask[64] u64 @2560
    wc_version u32 @3072, wc_sec u32 @3076, wc_nsec u32 @3080, wc_sec_hi u32 @3084, arch @3088

Atomicity: Xen uses locked bit operations because guest vCPUs touch the same words at the same
time. Python has no atomic read-modify-write on memory shared between processes, so this view is
only correct single-threaded: the hypervisor actor owns the page and serialises every mutation
(or upcalls carry the port list); no other process may modify the page while it does.
Words are read through ``memoryview.cast("Q")``, i.e. in host order: little-endian, as on x86.
"""

from __future__ import annotations

import enum

from protocols.errno import Errno, XenError

SHARED_INFO_SIZE = 3136
VCPU_INFO_SIZE = 64
XEN_LEGACY_MAX_VCPUS = 32
BITS_PER_EVTCHN_WORD = 64  # sizeof(xen_ulong_t) * 8 for a 64-bit guest
EVTCHN_2L_NR_CHANNELS = BITS_PER_EVTCHN_WORD * BITS_PER_EVTCHN_WORD  # 4096
EVTCHN_PENDING_OFFSET = 2048
EVTCHN_MASK_OFFSET = 2560
WC_OFFSET = 3072

_PENDING = EVTCHN_PENDING_OFFSET // 8  # word indexes in the u64 view
_MASK = EVTCHN_MASK_OFFSET // 8
_SEL = 8 // 8  # evtchn_pending_sel is u64 #1 of a vcpu_info
_U32 = 0xFFFFFFFF


class SetPending(enum.IntEnum):
    """What ``evtchn_2l_set_pending`` did (Xen returns void; the emulator needs to know)."""

    COALESCED = 0  # the pending bit was already 1: nothing else happens, there is no counter
    PENDING = 1  # newly pending, but masked, or the selector bit or upcall was already set
    KICK = 2  # evtchn_upcall_pending went 0 -> 1: kick the vCPU (deliver an upcall)


def _vcpu_info(vcpu: int) -> int:
    """Byte offset of ``vcpu_info[vcpu]``."""
    if not 0 <= vcpu < XEN_LEGACY_MAX_VCPUS:
        raise XenError(Errno.EINVAL, f"vCPU {vcpu} has no vcpu_info slot (0..31)")
    return vcpu * VCPU_INFO_SIZE


def _word(port: int) -> tuple[int, int]:
    if not 0 <= port < EVTCHN_2L_NR_CHANNELS:
        raise XenError(Errno.EINVAL, f"port {port} outside the 2-level ABI (0..4095)")
    return port >> 6, 1 << (port & 63)


class SharedInfo:
    """``struct shared_info`` (``xen/include/public/xen.h``) over a writable buffer."""

    __slots__ = ("_b", "_q", "_d")

    def __init__(self, buf: bytearray | memoryview) -> None:
        view = memoryview(buf).cast("B")
        if view.readonly or len(view) < SHARED_INFO_SIZE:
            raise ValueError(f"shared_info needs a writable buffer of {SHARED_INFO_SIZE} bytes")
        self._b = view[:SHARED_INFO_SIZE]
        self._q = self._b.cast("Q")
        self._d = self._b.cast("I")

    @property
    def buffer(self) -> memoryview:
        """The 3136 bytes of the page, for save/restore."""
        return self._b

    # -- per-port bits ----------------------------------------------------------------------

    def is_pending(self, port: int) -> bool:
        w, bit = _word(port)
        return bool(self._q[_PENDING + w] & bit)

    def is_masked(self, port: int) -> bool:
        w, bit = _word(port)
        return bool(self._q[_MASK + w] & bit)

    def clear_pending(self, port: int) -> None:
        """The guest clears a pending bit (Xen does so only in ``evtchn_free``)."""
        w, bit = _word(port)
        self._q[_PENDING + w] &= ~bit

    def mask(self, port: int) -> None:
        """The guest masks a port by setting its bit in memory."""
        w, bit = _word(port)
        self._q[_MASK + w] |= bit

    def clear_mask(self, port: int) -> None:
        """The guest clears a mask bit in memory: no upcall, even if pending (the edge is lost)."""
        w, bit = _word(port)
        self._q[_MASK + w] &= ~bit

    def pending_ports(self) -> list[int]:
        """Every port whose pending bit is set, masked or not."""
        q = self._q
        return [w * 64 + b for w in range(BITS_PER_EVTCHN_WORD) if q[_PENDING + w]
                for b in range(64) if q[_PENDING + w] >> b & 1]

    # -- per-vCPU fields ----------------------------------------------------------------------

    def upcall_pending(self, vcpu: int) -> int:
        return self._b[_vcpu_info(vcpu)]

    def clear_upcall_pending(self, vcpu: int) -> None:
        self._b[_vcpu_info(vcpu)] = 0

    def upcall_mask(self, vcpu: int) -> int:
        return self._b[_vcpu_info(vcpu) + 1]

    def set_upcall_mask(self, vcpu: int, masked: bool) -> None:
        """The guest's per-vCPU "interrupts off" flag; Xen reads it before delivering."""
        self._b[_vcpu_info(vcpu) + 1] = 1 if masked else 0

    def pending_sel(self, vcpu: int) -> int:
        return self._q[_vcpu_info(vcpu) // 8 + _SEL]

    # -- Xen's side (event_2l.c) --------------------------------------------------------------

    def vcpu_mark_events_pending(self, vcpu: int) -> bool:
        """Test-and-set ``evtchn_upcall_pending``; True if it was 0 (the vCPU must be kicked)."""
        i = _vcpu_info(vcpu)
        if self._b[i]:
            return False
        self._b[i] = 1
        return True

    def evtchn_2l_set_pending(self, vcpu: int, port: int) -> SetPending:
        """``evtchn_2l_set_pending``, in Xen's order: pending, then mask, selector, upcall."""
        s = _vcpu_info(vcpu) // 8 + _SEL
        w, bit = _word(port)
        q = self._q
        old = q[_PENDING + w]
        if old & bit:
            return SetPending.COALESCED
        q[_PENDING + w] = old | bit
        if q[_MASK + w] & bit:
            return SetPending.PENDING
        sel = q[s]
        sbit = 1 << w
        if sel & sbit:
            return SetPending.PENDING
        q[s] = sel | sbit
        return SetPending.KICK if self.vcpu_mark_events_pending(vcpu) else SetPending.PENDING

    def evtchn_2l_unmask(self, vcpu: int, port: int) -> bool:
        """``evtchn_2l_unmask``: test-and-clear mask; if it was set and the port is pending,
        set the selector bit and mark the upcall. True if the vCPU must be kicked."""
        s = _vcpu_info(vcpu) // 8 + _SEL
        w, bit = _word(port)
        q = self._q
        m = q[_MASK + w]
        if not m & bit:
            return False
        q[_MASK + w] = m & ~bit
        if not q[_PENDING + w] & bit:
            return False
        if q[s] & (1 << w):
            return False
        q[s] |= 1 << w
        return self.vcpu_mark_events_pending(vcpu)

    # -- the guest's upcall handler -----------------------------------------------------------

    def guest_take_pending(self, vcpu: int) -> list[int]:
        """What a guest does on an upcall (reference 19.1): clear ``evtchn_upcall_pending``,
        fetch-and-clear the selector, then clear each ready (pending and unmasked) port's pending
        bit, and return those ports, ascending, for the caller to service only now.

        Masked pending ports keep their pending bit; ``EVTCHNOP_unmask`` re-raises them.
        """
        b, q = self._b, self._q
        i = _vcpu_info(vcpu)
        b[i] = 0
        s = i // 8 + _SEL
        sel = q[s]
        q[s] = 0
        ports = []
        while sel:
            low = sel & -sel
            sel ^= low
            w = low.bit_length() - 1
            ready = q[_PENDING + w] & ~q[_MASK + w]
            if ready:
                q[_PENDING + w] &= ~ready
                ports.extend(w * 64 + i for i in range(64) if ready >> i & 1)
        return ports

    # -- wall clock ----------------------------------------------------------------------------

    def set_wallclock(self, sec: int, nsec: int) -> None:
        """``update_domain_wallclock_time``: ``wc_version`` is odd while the fields change."""
        d, i = self._d, WC_OFFSET // 4
        d[i] = ((d[i] + 1) | 1) & _U32
        d[i + 1], d[i + 2], d[i + 3] = sec & _U32, nsec, sec >> 32 & _U32
        d[i] = (d[i] + 1) & _U32

    def wallclock(self) -> tuple[int, int]:
        """``(sec, nsec)``; -EAGAIN while an update is in progress (odd ``wc_version``)."""
        d, i = self._d, WC_OFFSET // 4
        if d[i] & 1:
            raise XenError(Errno.EAGAIN, "wall clock update in progress")
        return d[i + 3] << 32 | d[i + 1], d[i + 2]
