"""Xen's v1 grant table (``xen/include/public/grant_table.h``; reference sections 6.1, 6.2
and 19.3): the shared entries, the guest's side of them, and the ``GNTTABOP_*`` ABI.

Why: a domain shows another domain a page only through a grant. The table lives in the
granter's own memory (8-byte v1 entries, 512 per frame); the guest writes ``domid``, ``frame``,
then ``flags``, and Xen (the hypervisor actor, another process) sets ``GTF_reading`` and
``GTF_writing`` in those flags while any mapping exists, so a grant in use cannot be revoked.
The mapper then mmaps exactly the granted frame of the granter's memory file.
:class:`GrantTable` is that shared view, for both sides; the hypervisor's own state and rules
(active entries, maptrack, map/unmap/copy) are in :mod:`protocols.gnttab_ops`.

Atomicity. Every field is read or written with one aligned 16- or 32-bit access through a
cached ``memoryview`` cast (``struct.pack_into`` zero-fills first: the peer could see 0).
Python has no cross-process cmpxchg, so both sides emulate it (Xen's on the ``{flags, domid}``
word, the guest's on ``flags``) as read, compare, then one 16-bit store of ``flags``: a write by
the other side landing between the compare and the store is lost, where a real cmpxchg would
fail and retry. The window is a few bytecodes wide.
"""

from __future__ import annotations

import enum
import heapq
import struct
import threading
from dataclasses import dataclass
from typing import ClassVar, Self

from protocols.errno import Errno, XenError
from protocols.page import PAGE_SIZE

ENTRY_SIZE = 8  # sizeof(grant_entry_v1_t)
ENTRIES_PER_FRAME = PAGE_SIZE // ENTRY_SIZE  # 512
GNTTAB_NR_RESERVED_ENTRIES = 8
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1
MAX_GRANT_FRAMES_DEFAULT = 64  # gnttab_max_frames
MAX_MAPTRACK_FRAMES_DEFAULT = 1024  # gnttab_max_maptrack_frames
GNTCOPY_source_gref = 1
GNTCOPY_dest_gref = 2
SET_STATUS_ATTEMPTS = 5  # _set_status_v1 gives up after 5 failed cmpxchg


class GTF(enum.IntFlag):
    """``GTF_*`` bits of ``grant_entry_v1.flags`` (reference 6.1)."""

    invalid = 0
    permit_access = 1
    accept_transfer = 2
    transitive = 3  # v2 only
    type_mask = 3
    readonly = 1 << 2
    reading = 1 << 3
    writing = 1 << 4
    PWT = 1 << 5
    PCD = 1 << 6
    PAT = 1 << 7
    sub_page = 1 << 8  # v2 only
    transfer_committed = 1 << 2  # accept_transfer entries reuse bits 2 and 3
    transfer_completed = 1 << 3


class GNTMAP(enum.IntFlag):
    """``GNTMAP_*`` flags of ``gnttab_map_grant_ref`` (reference 6.2)."""

    device_map = 1
    host_map = 2
    readonly = 4
    application_map = 8
    contains_pte = 16


# Plain ints for the per-request paths (IntFlag arithmetic builds enum objects).
_PERMIT, _TYPE, _SUB_PAGE = int(GTF.permit_access), int(GTF.type_mask), int(GTF.sub_page)
_RO, _READING, _WRITING = int(GTF.readonly), int(GTF.reading), int(GTF.writing)


class GNTST(enum.IntEnum):
    """``GNTST_*`` per-element status codes (reference 6.2)."""

    okay = 0
    general_error = -1
    bad_domain = -2
    bad_gntref = -3
    bad_handle = -4
    bad_virt_addr = -5
    bad_dev_addr = -6
    no_device_space = -7
    permission_denied = -8
    bad_page = -9
    bad_copy_arg = -10
    address_too_big = -11
    eagain = -12
    no_space = -13


# -- wire structures -------------------------------------------------------------------------

class _Packed:
    """``pack``/``unpack`` of a wire struct whose fields are those of ``_S``, in order."""

    __slots__ = ()
    _S: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        return self._S.pack(*[getattr(self, name) for name in self.__slots__])

    @classmethod
    def _fields(cls, data: bytes) -> tuple:
        if len(data) != cls._S.size:
            raise XenError(Errno.EINVAL, f"{cls.__name__} is {cls._S.size} bytes, not {len(data)}")
        return cls._S.unpack(data)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        return cls(*cls._fields(data))


@dataclass(frozen=True, slots=True)
class GrantEntryV1(_Packed):
    """``grant_entry_v1_t`` (``grant_table.h``): flags u16 @0, domid u16 @2, frame u32 @4."""

    _S: ClassVar[struct.Struct] = struct.Struct("<HHI")
    flags: int
    domid: int
    frame: int


@dataclass(frozen=True, slots=True)
class GnttabMapGrantRef(_Packed):
    """``struct gnttab_map_grant_ref`` (``grant_table.h``), 32 bytes on x86_64: IN host_addr
    u64 @0, flags u32 @8, ref u32 @12, dom u16 @16; OUT status s16 @18, handle u32 @20,
    dev_bus_addr u64 @24."""

    _S: ClassVar[struct.Struct] = struct.Struct("<QIIHhIQ")
    host_addr: int
    flags: int
    ref: int
    dom: int
    status: int = 0
    handle: int = 0
    dev_bus_addr: int = 0


@dataclass(frozen=True, slots=True)
class GnttabUnmapGrantRef(_Packed):
    """``struct gnttab_unmap_grant_ref`` (``grant_table.h``), 24 bytes: IN host_addr u64 @0,
    dev_bus_addr u64 @8, handle u32 @16; OUT status s16 @20."""

    _S: ClassVar[struct.Struct] = struct.Struct("<QQIh2x")
    host_addr: int
    dev_bus_addr: int
    handle: int
    status: int = 0


@dataclass(frozen=True, slots=True)
class GnttabCopyPtr:
    """``struct gnttab_copy_ptr`` (``grant_table.h``), 16 bytes: ``u`` (union of ``ref`` and
    ``gmfn``, a u64 ``xen_pfn_t``) @0, domid u16 @8, offset u16 @10."""

    u: int
    domid: int
    offset: int


@dataclass(frozen=True, slots=True)
class GnttabCopy(_Packed):
    """``struct gnttab_copy`` (``grant_table.h``), 40 bytes on x86_64: source @0, dest @16,
    len u16 @32, flags u16 @34 (``GNTCOPY_*``); OUT status s16 @36."""

    _S: ClassVar[struct.Struct] = struct.Struct("<QHH4xQHH4xHHh2x")
    source: GnttabCopyPtr
    dest: GnttabCopyPtr
    len: int
    flags: int
    status: int = 0

    def pack(self) -> bytes:
        s, d = self.source, self.dest
        return self._S.pack(s.u, s.domid, s.offset, d.u, d.domid, d.offset, self.len,
                            self.flags, self.status)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        f = cls._fields(data)
        return cls(GnttabCopyPtr(*f[0:3]), GnttabCopyPtr(*f[3:6]), *f[6:])


# -- the shared table ------------------------------------------------------------------------

class GrantTable:
    """The granter's grant frames (``grant_entry_v1_t[]``) over a writable buffer of whole
    4 KiB frames. Entry ``ref`` is u16 ``4*ref`` (flags), ``4*ref+1`` (domid) and u32
    ``2*ref+1`` (frame); ``{flags, domid}`` is u32 ``2*ref``, Xen's ``grant_combo``."""

    __slots__ = ("_mv", "_u16", "_u32", "nr_entries")

    def __init__(self, buf) -> None:
        mv = memoryview(buf).cast("B")
        if mv.readonly or len(mv) % PAGE_SIZE:
            raise ValueError("a grant table needs a writable buffer of whole 4 KiB frames")
        self._mv = mv
        self._u16 = mv.cast("H")
        self._u32 = mv.cast("I")
        self.nr_entries = len(mv) // ENTRY_SIZE

    @property
    def nr_frames(self) -> int:
        return self.nr_entries // ENTRIES_PER_FRAME

    def _check(self, ref: int) -> None:
        if not 0 <= ref < self.nr_entries:
            raise XenError(Errno.EINVAL, f"gref {ref} outside the table (0..{self.nr_entries - 1})")

    def entry(self, ref: int) -> GrantEntryV1:
        """A copy of entry ``ref`` (``{flags, domid}`` in one 32-bit load, then ``frame``)."""
        self._check(ref)
        combo = self._u32[2 * ref]
        return GrantEntryV1(combo & 0xFFFF, combo >> 16, self._u32[2 * ref + 1])

    # Guest side (the header comment's protocol, reference 6.1).

    def grant_access(self, ref: int, domid: int, frame: int, readonly: bool = False) -> None:
        """``gnttab_grant_foreign_access_ref``: domid, then frame, then the flags (type last).
        x86 keeps stores in order, so the write barrier is free."""
        self._check(ref)
        if not (0 <= domid <= 0xFFFF and 0 <= frame <= 0xFFFFFFFF):
            raise XenError(Errno.EINVAL, f"domid {domid} or frame {frame} does not fit")
        self._u16[4 * ref + 1] = domid
        self._u32[2 * ref + 1] = frame
        self._u16[4 * ref] = _PERMIT | (_RO if readonly else 0)

    def end_access(self, ref: int) -> bool:
        """``gnttab_end_foreign_access_ref``: revoke unless Xen has the entry in use
        (``GTF_reading`` or ``GTF_writing``); cmpxchg(flags, old, 0) emulated."""
        self._check(ref)
        u16, i = self._u16, 4 * ref
        old = u16[i]
        if old & (_READING | _WRITING) or u16[i] != old:
            return False
        u16[i] = 0
        return True

    def make_readonly(self, ref: int) -> bool:
        """Writable -> read-only: set ``GTF_readonly`` while ``GTF_writing`` is clear."""
        self._check(ref)
        u16, i = self._u16, 4 * ref
        old = u16[i]
        if old & _WRITING or u16[i] != old:
            return False
        u16[i] = old | _RO
        return True

    # Hypervisor side.

    def frame(self, ref: int) -> int:
        return self._u32[2 * ref + 1]

    def set_status(self, ref: int, ldomid: int, readonly: bool, *, check_entry: bool,
                   mapflag: bool) -> GNTST:
        """``_set_status_v1``: set ``GTF_reading`` (and ``GTF_writing``) with a bounded
        cmpxchg loop. ``check_entry`` (not yet pinned): type must be permit_access (and no
        sub_page when mapping) and domid ``ldomid``. A write of a read-only grant fails."""
        mask = _TYPE | (_SUB_PAGE if mapflag else 0)
        u16, u32, i = self._u16, self._u32, 2 * ref
        combo = u32[i]
        for _ in range(SET_STATUS_ATTEMPTS):
            flags = combo & 0xFFFF
            if check_entry and ((flags & mask) != _PERMIT or combo >> 16 != ldomid):
                return GNTST.general_error
            new = flags | _READING
            if not readonly:
                if flags & _RO:
                    return GNTST.general_error
                new |= _WRITING
            prev = u32[i]  # cmpxchg(&combo, combo, new): compare, then one 16-bit store
            if prev == combo:
                u16[2 * i] = new
                return GNTST.okay
            combo = prev
        return GNTST.general_error  # "Shared grant entry is unstable"

    def clear_flags(self, ref: int, bits: int) -> None:
        """``gnttab_clear_flags``: clear Xen's status bits in one 16-bit store."""
        self._u16[4 * ref] &= ~bits & 0xFFFF

    def release(self) -> None:
        """Release the buffer views (lets an ``mmap`` close)."""
        for mv in (self._u32, self._u16, self._mv):
            mv.release()


class GrantRefAllocator:
    """The guest's free list of grefs: lowest free first, never the reserved 0..7. Shared by
    every frontend of the guest, hence the lock (Linux's ``gnttab_list_lock``)."""

    __slots__ = ("nr_entries", "_next", "_freed", "_used", "_lock")

    def __init__(self, nr_entries: int) -> None:
        self.nr_entries = nr_entries
        self._next = GNTTAB_NR_RESERVED_ENTRIES
        self._freed: list[int] = []
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def alloc(self) -> int:
        with self._lock:
            if self._freed:
                ref = heapq.heappop(self._freed)
            elif self._next < self.nr_entries:
                ref, self._next = self._next, self._next + 1
            else:
                raise XenError(Errno.ENOSPC, f"all {self.nr_entries} grant refs are in use")
            self._used.add(ref)
            return ref

    def free(self, ref: int) -> None:
        with self._lock:
            if ref not in self._used:
                raise XenError(Errno.EINVAL, f"gref {ref} was not allocated")
            self._used.remove(ref)
            heapq.heappush(self._freed, ref)
