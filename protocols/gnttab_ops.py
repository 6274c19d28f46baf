"""The hypervisor's side of grant tables (``xen/common/grant_table.c``; reference sections 6.2
and 19.3): active entries, maptrack, and the rules of ``GNTTABOP_map_grant_ref``,
``unmap_grant_ref`` and ``copy``.

Why: Xen keeps, per granting domain, an *active entry* for each pinned ref (a pin count split
into four 8-bit counters, and the ``domid`` and frame captured on the first pin) and, per mapping
domain, a *maptrack* table whose index is the handle a map returns. The guest's entry is checked
only on the first pin, ``GTF_reading``/``GTF_writing`` follow the pins, and a copy pins only for
its duration. :class:`ActiveGrants` and :class:`Maptrack` are that state, kept by the hypervisor
actor; the functions here are Xen's operations on it and on the shared :class:`GrantTable`.

Decisions where the reference is silent (checked against ``grant_table.c``):

* A copy into a grant marked ``GTF_readonly`` fails with ``GNTST_general_error`` (Xen's
  ``_set_status_v1`` "Attempt to write-pin a r/o grant entry"), not ``permission_denied``,
  which Xen uses only for a local-frame side whose domid is not ``DOMID_SELF``.
* A granted frame beyond the granter's memory (``ActiveGrants.nr_pages``), or one of its
  holes (a pfn it gave back, ``ActiveGrants.p2m``), gives ``GNTST_bad_page``
  (``get_paged_frame``), so a mapper never mmaps past the file or a page the host took back.
* xenray has no page tables: an unmap releases the handle's host mapping whatever ``host_addr``
  says. ``dev_bus_addr`` is Xen's (``unmap_common``): non-zero releases a ``GNTMAP_device_map``
  mapping, and must then match the frame (else ``GNTST_bad_dev_addr``); a handle without a
  device mapping ignores it.
* Unmapping a handle whose granter is gone gives ``GNTST_bad_domain`` (Xen crashes the
  mapper); the hypervisor keeps granters in use as zombies, so it should not happen.
* A copy pins and releases its grants per element (Xen keeps them across consecutive
  elements of one batch); the result after the hypercall is the same.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from protocols.gnttab import (GNTMAP, GNTST, GTF, MAX_MAPTRACK_FRAMES_DEFAULT, GNTCOPY_dest_gref,
                              GNTCOPY_source_gref, GnttabCopy, GnttabMapGrantRef,
                              GnttabUnmapGrantRef, GrantTable)
from protocols.hypercall import DOMID_SELF
from protocols.page import PAGE_SHIFT, PAGE_SIZE

MAPTRACK_PER_PAGE = PAGE_SIZE // 16  # sizeof(struct grant_mapping) == 16

# struct active_grant_entry.pin: four 8-bit counters (grant_table.c GNTPIN_*).
GNTPIN_hstw_inc, GNTPIN_hstr_inc, GNTPIN_devw_inc, GNTPIN_devr_inc = 1, 1 << 8, 1 << 16, 1 << 24
GNTPIN_hstw_mask, GNTPIN_hstr_mask = 0xFF, 0xFF << 8
GNTPIN_devw_mask, GNTPIN_devr_mask = 0xFF << 16, 0xFF << 24
_WRITE_PINS = GNTPIN_hstw_mask | GNTPIN_devw_mask
_PIN_OVERFLOW = 0x80808080  # any counter at 128: refuse another pin

_READING, _WRITING = int(GTF.reading), int(GTF.writing)
_DEV, _HOST, _MAP_RO = int(GNTMAP.device_map), int(GNTMAP.host_map), int(GNTMAP.readonly)
_MAP_KINDS = _DEV | _HOST


class ActiveEntry:
    """``struct active_grant_entry``: ``pin``, and the ``domid`` and ``frame`` the first pin
    captured. Only this module changes it."""

    __slots__ = ("pin", "domid", "frame")

    def __init__(self, domid: int, frame: int) -> None:
        self.pin, self.domid, self.frame = 0, domid, frame

    @property
    def counters(self) -> tuple[int, int, int, int]:
        """(host-write, host-read, device-write, device-read) pins."""
        p = self.pin
        return p & 0xFF, p >> 8 & 0xFF, p >> 16 & 0xFF, p >> 24


class ActiveGrants:
    """The hypervisor's active entries of one granting domain (only pinned refs are kept),
    and that domain's memory size in pages and, if it has holes, its p2m (one byte per pfn
    up to the highest populated, 0 for a hole): ``get_paged_frame``'s bounds."""

    __slots__ = ("_act", "nr_pages", "p2m")

    def __init__(self, nr_pages: int, p2m: bytearray | None = None) -> None:
        self._act: dict[int, ActiveEntry] = {}
        self.nr_pages = nr_pages
        self.p2m = p2m

    def has_frame(self, frame: int) -> bool:
        """Is ``frame`` one of the granter's pages (``get_paged_frame`` finds it)?"""
        if frame >= self.nr_pages:
            return False
        return self.p2m is None or (frame < len(self.p2m) and self.p2m[frame] == 1)

    def get(self, ref: int) -> ActiveEntry | None:
        return self._act.get(ref)

    def __len__(self) -> int:
        return len(self._act)


@dataclass(frozen=True, slots=True)
class MaptrackEntry:
    """``struct grant_mapping``: which granter's ref a handle maps, with its ``GNTMAP_*``."""

    domid: int
    ref: int
    flags: int


class Maptrack:
    """One mapping domain's handles (``maptrack``), up to ``max_frames * 256``. Freed handles
    are reused oldest first, as Xen's free list (take at head, free at tail)."""

    __slots__ = ("limit", "_live", "_free", "_next")

    def __init__(self, max_frames: int = MAX_MAPTRACK_FRAMES_DEFAULT) -> None:
        self.limit = max_frames * MAPTRACK_PER_PAGE
        self._live: dict[int, MaptrackEntry] = {}
        self._free: deque[int] = deque()
        self._next = 0

    def entry(self, handle: int) -> MaptrackEntry | None:
        return self._live.get(handle)

    def handles(self) -> list[int]:
        return list(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def _get(self) -> int | None:
        if self._free:
            return self._free.popleft()
        if self._next < self.limit:
            self._next += 1
            return self._next - 1
        return None

    def _put(self, handle: int) -> None:
        self._live.pop(handle, None)
        self._free.append(handle)


class DomainGrants(NamedTuple):
    """What grant operations need of one domain: its table and active entries."""

    table: GrantTable
    active: ActiveGrants


Lookup = Callable[[int], "DomainGrants | None"]  # domid -> its grant state, None if unknown


def granter_in_use(active: ActiveGrants) -> bool:
    """Some page of this domain is still mapped or being copied: a dying domain stays a zombie."""
    return len(active) > 0


def write_pinned_frames(active: ActiveGrants) -> set[int]:
    """The granter's frames some mapping holds writable now: those with a host or device
    write pin (a copy's pins last only for its hypercall, so between hypercalls every write
    pin is a writable mapping's)."""
    return {act.frame for act in active._act.values() if act.pin & _WRITE_PINS}


def pinned_frames(active: ActiveGrants) -> set[int]:
    """The granter's frames some mapping (or a copy in progress) holds now, whatever way."""
    return {act.frame for act in active._act.values()}


# -- pinning (map_grant_ref, acquire_grant_for_copy, and their undo) --------------------------

def _pin(table: GrantTable, active: ActiveGrants, ref: int, ldomid: int, readonly: bool,
         inc: int, mapflag: bool) -> tuple[GNTST, int]:
    """Pin ``ref`` for ``ldomid`` by ``inc``: (status, frame)."""
    act = active._act.get(ref)
    pin = act.pin if act is not None else 0
    if pin and (act.domid != ldomid or pin & _PIN_OVERFLOW):
        return GNTST.general_error, 0
    if not pin or (not readonly and not pin & _WRITE_PINS):
        status = table.set_status(ref, ldomid, readonly, check_entry=not pin, mapflag=mapflag)
        if status:
            return status, 0
        if not pin:
            frame = table.frame(ref)
            if not active.has_frame(frame):  # get_paged_frame fails: undo (unlock_out_clear)
                table.clear_flags(ref, _READING | (0 if readonly else _WRITING))
                return GNTST.bad_page, 0
            act = active._act[ref] = ActiveEntry(ldomid, frame)
    act.pin += inc
    return GNTST.okay, act.frame


def _unpin(table: GrantTable, active: ActiveGrants, ref: int, dec: int, readonly: bool) -> None:
    """Drop pins, then clear ``GTF_writing`` when no write pin is left (after a writable
    release) and ``GTF_reading`` when none at all is (``reduce_status_for_pin``)."""
    act = active._act[ref]
    act.pin -= dec
    clear = 0 if readonly or act.pin & _WRITE_PINS else _WRITING
    if not act.pin:
        clear |= _READING
        del active._act[ref]
    if clear:
        table.clear_flags(ref, clear)


def _pin_incs(flags: int) -> int:
    ro = flags & _MAP_RO
    inc = (GNTPIN_devr_inc if ro else GNTPIN_devw_inc) if flags & _DEV else 0
    if flags & _HOST:
        inc += GNTPIN_hstr_inc if ro else GNTPIN_hstw_inc
    return inc


# -- map / unmap -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MapResult:
    """OUT of one map: ``handle`` (maptrack index), the granted ``frame`` to mmap, and
    ``dev_bus_addr`` = frame << 12. Only ``status`` is meaningful on failure."""

    status: GNTST
    handle: int = 0
    frame: int = 0
    dev_bus_addr: int = 0


@dataclass(frozen=True, slots=True)
class UnmapResult:
    """OUT of one unmap; ``dirty``: a writable mapping of ``frame`` of granter ``domid`` was
    released, so log-dirty must mark it (``gnttab_mark_dirty``)."""

    status: GNTST
    domid: int = 0
    frame: int = 0
    dirty: bool = False


def map_grant_ref(table: GrantTable, active: ActiveGrants, maptrack: Maptrack, *, granter: int,
                  ref: int, mapper: int, flags: int) -> MapResult:
    """``map_grant_ref`` of ``ref`` in ``granter``'s table for ``mapper`` (reference 6.2)."""
    if not flags & _MAP_KINDS:
        return MapResult(GNTST.bad_gntref)
    handle = maptrack._get()
    if handle is None:
        return MapResult(GNTST.no_space)
    if not 0 <= ref < table.nr_entries:
        maptrack._put(handle)
        return MapResult(GNTST.bad_gntref)
    status, frame = _pin(table, active, ref, mapper, bool(flags & _MAP_RO),
                         _pin_incs(flags), mapflag=True)
    if status:
        maptrack._put(handle)
        return MapResult(status)
    maptrack._live[handle] = MaptrackEntry(granter, ref, flags & 0xFFFF)
    return MapResult(GNTST.okay, handle, frame, frame << PAGE_SHIFT)


def unmap_grant_ref(granters: Lookup, maptrack: Maptrack, *, handle: int,
                    dev_bus_addr: int = 0) -> UnmapResult:
    """``unmap_common`` + ``unmap_common_complete`` of one handle of ``maptrack``."""
    mt = maptrack.entry(handle)
    if mt is None:
        return UnmapResult(GNTST.bad_handle)
    g = granters(mt.domid)
    if g is None:
        return UnmapResult(GNTST.bad_domain)
    frame = g.active._act[mt.ref].frame
    if dev_bus_addr and mt.flags & _DEV and dev_bus_addr != frame << PAGE_SHIFT:
        return UnmapResult(GNTST.bad_dev_addr)  # checked only for a device mapping
    done = mt.flags & _HOST
    if dev_bus_addr:
        done |= mt.flags & _DEV
    return _release(g, maptrack, handle, mt, done)


def _release(g: DomainGrants, maptrack: Maptrack, handle: int, mt: MaptrackEntry,
             done: int) -> UnmapResult:
    """Drop the ``done`` kinds of mapping of ``handle``; free it when none is left."""
    ro = mt.flags & _MAP_RO
    left = mt.flags & ~done
    if left & _MAP_KINDS:
        maptrack._live[handle] = MaptrackEntry(mt.domid, mt.ref, left)
    else:
        maptrack._put(handle)
    frame = g.active._act[mt.ref].frame
    if done:
        _unpin(g.table, g.active, mt.ref, _pin_incs(done | ro), bool(ro))
    return UnmapResult(GNTST.okay, mt.domid, frame, dirty=bool(done) and not ro)


def release_mappings(granters: Lookup, maptrack: Maptrack) -> list[UnmapResult]:
    """``gnttab_release_mappings``: a dying mapper's handles all go, pins and flags with them."""
    out = []
    for handle in maptrack.handles():
        mt = maptrack._live[handle]
        g = granters(mt.domid)
        if g is None:
            maptrack._put(handle)
            continue
        out.append(_release(g, maptrack, handle, mt, mt.flags & _MAP_KINDS))
    return out


# -- copy ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CopyPlan:
    """The bytes one ``gnttab_copy`` element moves, between two domains' memory files."""

    src_domid: int
    src_frame: int
    src_offset: int
    dst_domid: int
    dst_frame: int
    dst_offset: int
    len: int


def grant_copy(granters: Lookup, *, caller: int, op: GnttabCopy,
               memcpy: Callable[[CopyPlan], None]) -> GNTST:
    """``gnttab_copy_one``: resolve both sides, pin the gref ones (flags set) and call
    ``memcpy(plan)`` while they are pinned, then unpin. A local frame needs ``DOMID_SELF``."""
    sides = []
    for ptr, gref_flag in ((op.source, GNTCOPY_source_gref), (op.dest, GNTCOPY_dest_gref)):
        is_gref = bool(op.flags & gref_flag)
        if ptr.domid != DOMID_SELF and not is_gref:
            return GNTST.permission_denied
        domid = caller if ptr.domid == DOMID_SELF else ptr.domid
        g = granters(domid)
        if g is None:
            return GNTST.bad_domain
        sides.append((g, domid, ptr, is_gref, gref_flag == GNTCOPY_source_gref))
    pinned: list[tuple[DomainGrants, int, bool]] = []
    frames = []
    try:
        for g, _, ptr, is_gref, readonly in sides:
            if is_gref:
                ref = ptr.u & 0xFFFFFFFF  # u.ref: the low half of the union on x86
                if ref >= g.table.nr_entries:
                    return GNTST.bad_gntref
                inc = GNTPIN_hstr_inc if readonly else GNTPIN_hstw_inc
                status, frame = _pin(g.table, g.active, ref, caller, readonly, inc, False)
                if status:
                    return status
                pinned.append((g, ref, readonly))
            elif not g.active.has_frame(ptr.u):
                return GNTST.bad_page
            else:
                frame = ptr.u
            frames.append(frame)
        if op.source.offset + op.len > PAGE_SIZE or op.dest.offset + op.len > PAGE_SIZE:
            return GNTST.bad_copy_arg
        memcpy(CopyPlan(sides[0][1], frames[0], op.source.offset,
                        sides[1][1], frames[1], op.dest.offset, op.len))
        return GNTST.okay
    finally:
        for g, ref, readonly in pinned:
            _unpin(g.table, g.active, ref, GNTPIN_hstr_inc if readonly else GNTPIN_hstw_inc,
                   readonly)


# -- batches (grant_table_op returns 0; each element has its own status) ----------------------

def map_batch(granters: Lookup, maptrack: Maptrack, *, mapper: int,
              ops: Iterable[GnttabMapGrantRef]) -> list[MapResult]:
    """``gnttab_map_grant_ref``: one result per element, in order."""
    out = []
    for op in ops:
        g = granters(op.dom)
        if g is None:  # the flags are checked before the domain lookup
            out.append(MapResult(GNTST.bad_domain if op.flags & _MAP_KINDS else GNTST.bad_gntref))
        else:
            out.append(map_grant_ref(g.table, g.active, maptrack, granter=op.dom, ref=op.ref,
                                     mapper=mapper, flags=op.flags))
    return out


def unmap_batch(granters: Lookup, maptrack: Maptrack, *,
                ops: Iterable[GnttabUnmapGrantRef]) -> list[UnmapResult]:
    """``gnttab_unmap_grant_ref``: one result per element, in order."""
    return [unmap_grant_ref(granters, maptrack, handle=op.handle, dev_bus_addr=op.dev_bus_addr)
            for op in ops]


def copy_batch(granters: Lookup, *, caller: int, ops: Iterable[GnttabCopy],
               memcpy: Callable[[CopyPlan], None]) -> list[GNTST]:
    """``gnttab_copy``: one status per element, in order."""
    return [grant_copy(granters, caller=caller, op=op, memcpy=memcpy) for op in ops]
