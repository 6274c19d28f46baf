"""What every PV frontend driver shares (xen-reference.md 8.4, 10, 19.4, 19.6).

blkfront and netfront run the same xenbus handshake and own their grants and event channel
the same way; only the rings and what travels on them differ. Like Linux, the common part
lives once: :class:`XenbusFrontend` plays ``drivers/xen/xenbus/xenbus_client.c``
(``xenbus_switch_state``, ``xenbus_grant_ring``, ``xenbus_alloc_evtchn``/``free_evtchn``,
``xenbus_read_driver_state``) and ``xenbus_probe_frontend.c`` (``otherend`` lookup, the
``otherend_changed`` watch); the drivers fill in ``talk_to_backend``, ``connect`` and
``disconnect_backend``. :class:`FrontendDevices` is the kernel's list of one driver's
devices (``xenbus_register_frontend`` and ``xenbus_probe_devices``), subclassed by
:mod:`actors.domain.blkdev` and :mod:`actors.domain.netdev`.

Grants the backend still maps when a connection ends cannot be reused: they are *retired*
and ended at the next ring setup (Linux ``gnttab_end_foreign_access`` defers them likewise).

A suspend (issue 11) freezes every frontend: nothing new goes on its rings while the kernel
waits briefly for what is in flight (``suspend``, ``wait_quiet``); a cancelled suspend runs on
on the same rings (``suspend_cancel``). A resume in a new domain is a new kernel whose
frontends probe afresh, on new rings, grants and ports (reference 15.3).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from protocols.errno import Errno, XenError
from protocols.gnttab import GrantRefAllocator, GrantTable
from protocols.hypercall import DOMID_SELF, EvtchnOp, Hypercall
from protocols.page import PAGE_SIZE
from protocols.xenbus import FrontendAction, XenbusState, frontend_on_backend_state
from protocols.xenstore.paths import backend_path, frontend_path

Page = tuple[int, int, memoryview]  # (gref, pfn, page)
WatchFn = Callable[[str, str, Callable[[], None]], None]  # (path, token, handler)


class PageAllocator(Protocol):
    """Free guest pages: ``alloc`` a pfn, ``page(pfn)`` its 4 KiB of memory, ``free`` it."""

    def alloc(self) -> int: ...
    def page(self, pfn: int) -> memoryview: ...
    def free(self, pfn: int) -> None: ...


class PagePool:
    """A :class:`PageAllocator` over ``count`` pfns from ``first`` (e.g. the free pages from
    pfn 16, ``protocols.pv_layout.PFN_FIRST_FREE``); ``page_of`` is ``Mapping.page``.

    It hands out the lowest page never used, or the page freed last, so it grows from
    ``first`` up; the kernel gives the top of memory to the init program
    (:meth:`reserve_above`, ``actors.domain.initmem``) and the two never meet. The pool keeps
    at least ``keep`` pages (what its drivers may take at most) and ``headroom`` pages more
    than it has handed out.

    The balloon (``actors.domain.balloon``) takes the pages in between, nobody's yet, to give
    back to Xen (:meth:`balloon_take`): a block from just above what the pool keeps, growing
    up, given back from its top (:meth:`balloon_give`). Neither the pool nor the init's
    memory hands out a page of it: the pool stops below it, and a region reaching into it is
    ENOMEM (the guest has that much less memory)."""

    def __init__(self, page_of: Callable[[int], memoryview], first: int, count: int,
                 *, headroom: int = 0) -> None:
        self.page = page_of
        self.headroom = headroom
        self.keep = 0
        self._lock = threading.Lock()
        self._first = first
        self._next = first  # the lowest pfn never handed out
        self._ceiling = first + count  # the first pfn not the pool's
        self._freed: list[int] = []
        self._balloon_lo = self._balloon_hi = first  # the ballooned block [lo, hi)

    def alloc(self) -> int:
        with self._lock:  # blkfront and netfront share the pool
            if self._freed:
                return self._freed.pop()
            if self._next >= self._limit():
                raise XenError(Errno.ENOSPC, "no free guest page")
            self._next += 1
            return self._next - 1

    def free(self, pfn: int) -> None:
        with self._lock:
            self._freed.append(pfn)

    def reserve_above(self, pfn: int) -> None:
        """Take every page from ``pfn`` up out of the pool for good; ENOMEM if the pool would
        keep fewer than ``keep`` pages, or than ``headroom`` pages beyond those it handed
        out."""
        with self._lock:
            if pfn >= self._ceiling:
                return
            floor = max(self._next + self.headroom, self._first + self.keep)
            if pfn < floor:
                raise XenError(Errno.ENOMEM, f"pages from {pfn} up: the drivers keep the "
                                             f"pages below {floor}")
            if pfn < self._balloon_hi:
                raise XenError(Errno.ENOMEM, f"pages from {pfn} up: the pages below "
                                             f"{self._balloon_hi} are ballooned out")
            self._ceiling = pfn

    @property
    def ceiling(self) -> int:
        return self._ceiling

    # -- the balloon's pages -----------------------------------------------------------------

    def _limit(self) -> int:
        """The first pfn the pool may not hand out (lock held)."""
        return self._balloon_lo if self._balloon_hi > self._balloon_lo else self._ceiling

    def _balloon_start(self) -> int:
        """Where the ballooned block grows from (lock held): its top, or, empty, just above
        what the pool keeps."""
        if self._balloon_hi > self._balloon_lo:
            return self._balloon_hi
        return max(self._next + self.headroom, self._first + self.keep)

    def balloon_room(self) -> int:
        """How many pages :meth:`balloon_take` could take now."""
        with self._lock:
            return max(0, self._ceiling - self._balloon_start())

    def balloon_take(self, nr: int) -> list[int]:
        """Up to ``nr`` pages nobody uses, ascending, out of the pool's reach until given
        back (fewer, or none, when the pool and the init's memory leave no more)."""
        with self._lock:
            start = self._balloon_start()
            count = max(0, min(nr, self._ceiling - start))
            if count:
                if self._balloon_hi == self._balloon_lo:
                    self._balloon_lo = start
                self._balloon_hi = start + count
            return list(range(start, start + count))

    def balloon_give(self, pfns: Iterable[int]) -> None:
        """Pages the balloon took, back to the pool: the top of its block, last taken first
        (EINVAL otherwise)."""
        given = sorted(pfns)
        with self._lock:
            lo = self._balloon_hi - len(given)
            if given != list(range(lo, self._balloon_hi)) or lo < self._balloon_lo:
                raise XenError(Errno.EINVAL, "the balloon gives back pages it did not take "
                                             "last")
            self._balloon_hi = lo

    def balloon_resume(self, lo: int, hi: int) -> None:
        """A resumed balloon's block, ``[lo, hi)``, out of the pool's reach again, before the
        drivers allocate: the pages are not populated. EINVAL if the pool has handed out a page
        of it, the init's memory holds one, or the pool already has a block."""
        with self._lock:
            if lo == hi:
                return
            if not self._next <= lo < hi <= self._ceiling or self._balloon_hi > self._balloon_lo:
                raise XenError(Errno.EINVAL, f"ballooned pages {lo}..{hi - 1} are not the "
                                             f"pool's free pages {self._next}..{self._ceiling - 1}")
            self._balloon_lo, self._balloon_hi = lo, hi

    @property
    def ballooned(self) -> int:
        """The pool's pages out in the balloon now."""
        return self._balloon_hi - self._balloon_lo


class XsLike(Protocol):
    """The part of :class:`actors.transport.xs_client.XsClient` a frontend uses."""

    def read_str(self, path: str, default: str | None = None, tx_id: int = 0) -> str | None: ...
    def write(self, path: str, value: bytes | str, tx_id: int = 0) -> None: ...
    def transact(self, body: Callable[[int], Any]) -> Any: ...


class EventChannels:
    """The three ``EVTCHNOP_*`` a frontend makes, through the kernel's hypercall client
    (a :class:`actors.transport.hypercall_client.HypercallClient`: callable, with ``post``)."""

    def __init__(self, hypercall: Any) -> None:
        self.hypercall = hypercall

    def alloc_unbound(self, remote_dom: int) -> int:
        return self.hypercall(Hypercall.event_channel_op, EvtchnOp.alloc_unbound,
                              dom=DOMID_SELF, remote_dom=remote_dom)["port"]

    def notify(self, port: int) -> None:
        """``notify_remote_via_evtchn``: one-way, nobody reads the result."""
        self.hypercall.post(Hypercall.event_channel_op, EvtchnOp.send, port=port)

    def close(self, port: int) -> None:
        self.hypercall(Hypercall.event_channel_op, EvtchnOp.close, port=port)


class XenbusFrontend:
    """The xenbus side of frontend ``devid`` of domain ``domid``, in ``/local/domain/<domid>/
    device/<devicetype>/<devid>``. A driver subclasses it, names ``devicetype`` and its
    ``counters`` (``notifies`` and ``reconnects`` are kept here) and implements the hooks."""

    devicetype = ""  # "vbd", "vif"
    counters: tuple[str, ...] = ()

    def __init__(self, *, domid: int, devid: int, pages: PageAllocator, gnttab: GrantTable,
                 grefs: GrantRefAllocator, evtchn_alloc_unbound: Callable[[int], int],
                 notify: Callable[[int], None], xs: XsLike, backend_id: int = 0,
                 evtchn_close: Callable[[int], None] | None = None) -> None:
        self.domid, self.devid = domid, devid
        self.nodename = frontend_path(self.devicetype, domid, devid)
        self.backend_id = backend_id
        self.backend = backend_path(self.devicetype, domid, devid, backend_id)
        self._pages, self._gnttab, self._grefs, self._xs = pages, gnttab, grefs, xs
        self._alloc_unbound, self._notify, self._close = evtchn_alloc_unbound, notify, evtchn_close
        self._lock = threading.Lock()
        self._quiet = threading.Condition(self._lock)  # notified as requests are answered
        self.state = XenbusState.INITIALISING
        self.evtchn: int | None = None
        self._retired: list[tuple[int, int]] = []  # (gref, pfn) the backend may still map
        self.suspended = False  # frozen for a suspend: nothing new goes on the rings
        self.stats = dict.fromkeys(("notifies", "reconnects", *self.counters), 0)

    # -- the driver's part -----------------------------------------------------------------

    def _talk_to_backend(self) -> None:
        """SETUP_RING: make the rings and port, publish them and the next state (one
        transaction, :meth:`_publish`)."""
        raise NotImplementedError

    def _connect(self) -> None:
        """CONNECT or RESIZE: the backend is Connected."""
        raise NotImplementedError

    def _disconnect_backend(self, reconnect: bool) -> None:
        """RECONNECT (``reconnect``) or CLOSE: drop the rings, the port and the grants.
        Lock held."""
        raise NotImplementedError

    def _device_statistics(self) -> dict[str, Any]:
        """The driver's gauges for :meth:`statistics`. Lock held."""
        return {}

    def _in_flight(self) -> int:
        """Requests on the ring without a response, which a suspend waits for. Lock held."""
        return 0

    @property
    def max_pages(self) -> int:
        """The most guest pages the driver holds at once (its rings and buffers)."""
        return 0

    def _thaw(self) -> bool:
        """A cancelled suspend: put on the ring what waited; True if the backend must be
        kicked. Lock held."""
        return False

    # -- suspend (Linux xenbus_dev_suspend / xenbus_dev_cancel) ----------------------------

    def suspend(self) -> None:
        """Freeze for a suspend: no new request goes on the rings; responses are still taken.
        A resume in a new domain is a new kernel, whose frontends probe afresh (15.3)."""
        with self._lock:
            self.suspended = True

    def wait_quiet(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the requests in flight to be answered (the
        upcall path answers them); True if none is left."""
        with self._quiet:
            return self._quiet.wait_for(lambda: self._in_flight() == 0, max(0.0, timeout))

    def suspend_cancel(self) -> None:
        """The suspend was cancelled (``SCHEDOP_shutdown`` returned 1): carry on, on the same
        rings, grants and port."""
        with self._lock:
            self.suspended = False
            kick = self._thaw()
        self._kick(kick)

    # -- xenbus_probe_frontend.c -----------------------------------------------------------

    def probe(self) -> None:
        """Find the backend through ``<fe>/backend`` and ``backend-id`` (the toolstack's keys)."""
        self.backend = self._xs.read_str(f"{self.nodename}/backend", self.backend)
        self.backend_id = int(self._xs.read_str(f"{self.nodename}/backend-id",
                                                str(self.backend_id)))

    def on_backend_changed(self) -> None:
        """The watch on ``<be>/state`` fired (maybe spuriously): read it
        (``xenbus_read_driver_state``, UNKNOWN if gone or garbled) and react."""
        try:  # any error is UNKNOWN: a DomU may not even learn that the node is gone (EACCES)
            state = XenbusState.parse(self._xs.read_str(f"{self.backend}/state", "0"))
        except XenError:
            state = XenbusState.UNKNOWN
        self.on_backend_state(state)

    def on_backend_state(self, backend: XenbusState) -> None:
        """The driver's ``otherend_changed``: do what :func:`frontend_on_backend_state` asks.
        A state already ours is not written again (``xenbus_switch_state``)."""
        step = frontend_on_backend_state(self.state, backend)
        match step.action:
            case FrontendAction.SETUP_RING:
                self._talk_to_backend()
                return  # publishes its state itself, in the transaction
            case FrontendAction.CONNECT | FrontendAction.RESIZE:
                self._connect()
            case FrontendAction.RECONNECT:
                with self._lock:
                    self._disconnect_backend(reconnect=True)
                    self.stats["reconnects"] += 1
            case FrontendAction.CLOSE:
                with self._lock:
                    self._disconnect_backend(reconnect=False)
            case FrontendAction.NONE:
                return
        if step.state != self.state:
            self._switch_state(step.state)

    # -- xenbus_client.c -------------------------------------------------------------------

    def _switch_state(self, state: XenbusState, tx_id: int = 0) -> None:
        self._xs.write(f"{self.nodename}/state", state.encode(), tx_id=tx_id)
        self.state = state

    def _publish(self, nodes: Iterable[tuple[str, object]], state: XenbusState) -> None:
        """Write ``<fe>/<key>`` = ``value`` for each of ``nodes`` and switch to ``state``,
        in one transaction (``talk_to_blkback``/``talk_to_netback``)."""
        nodes = tuple(nodes)

        def body(tx_id: int) -> None:
            for key, value in nodes:
                self._xs.write(f"{self.nodename}/{key}", str(value), tx_id=tx_id)
            self._switch_state(state, tx_id)

        self._xs.transact(body)

    def _grant_page(self, readonly: bool) -> Page:
        """A fresh zeroed page granted to the backend (``xenbus_grant_ring`` for a ring);
        nothing is kept if the pages or grefs run out. Lock held."""
        pfn = self._pages.alloc()
        try:
            gref = self._grefs.alloc()
        except BaseException:
            self._pages.free(pfn)
            raise
        self._gnttab.grant_access(gref, self.backend_id, pfn, readonly=readonly)
        page = self._pages.page(pfn)
        page[:] = bytes(PAGE_SIZE)
        return gref, pfn, page

    def _alloc_evtchn(self) -> int:
        """``xenbus_alloc_evtchn``: an unbound port the backend binds to. Lock held."""
        self.evtchn = self._alloc_unbound(self.backend_id)
        return self.evtchn

    def _free_evtchn(self) -> None:
        """``xenbus_free_evtchn``: close this connection's port, if any. Lock held."""
        if self.evtchn is not None and self._close is not None:
            self._close(self.evtchn)
        self.evtchn = None

    def _end_access(self, gref: int) -> bool:
        """End the backend's access to ``gref`` and free it; False if it still maps it."""
        if not self._gnttab.end_access(gref):
            return False
        self._grefs.free(gref)
        return True

    def _reap_retired(self) -> None:
        """End access to old grants; a grant the backend still maps stays out of use."""
        kept = []
        for gref, pfn in self._retired:
            if self._end_access(gref):
                self._pages.free(pfn)
            else:
                kept.append((gref, pfn))
        self._retired = kept

    def _kick(self, needed: bool) -> None:
        """``notify_remote_via_evtchn`` if ``needed`` (a push asked for it). Lock not held."""
        port = self.evtchn
        if needed and port is not None:
            self.stats["notifies"] += 1
            self._notify(port)

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            return {**self.stats, "state": self.state.name, **self._device_statistics()}


class FrontendDevices:
    """One driver's frontends by devid, sharing the kernel's grant table, free pages and
    gref allocator (Linux's drivers share them too) and making hypercalls for their event
    channels. A driver subclasses it, names ``devicetype`` and implements :meth:`_new_front`."""

    devicetype = ""  # "vbd", "vif"

    def __init__(self, *, pages: PageAllocator, gnttab: GrantTable, grefs: GrantRefAllocator,
                 hypercall: Any, xs: Any) -> None:
        self.pages, self.table, self.grefs, self.xs = pages, gnttab, grefs, xs
        self.evtchn = EventChannels(hypercall)
        self.fronts: dict[int, Any] = {}

    def _new_front(self, domid: int, devid: int, **resources: Any) -> XenbusFrontend:
        """Create and probe the frontend of ``devid``; ``resources`` are the
        :class:`XenbusFrontend` keywords but ``domid``/``devid``."""
        raise NotImplementedError

    def probe(self, domid: int, watch: WatchFn) -> list[int]:
        """``xenbus_probe_devices``: create a frontend for every ``device/<devicetype>`` entry
        the toolstack gave this domain (none is fine) and watch each backend's state (the
        watch fires at once and starts the handshake); returns the devids, sorted."""
        try:
            devids = sorted(int(d) for d in self.xs.directory(f"device/{self.devicetype}"))
        except XenError as e:
            if e.errno == Errno.ENOENT:
                return []
            raise
        ev = self.evtchn
        for devid in devids:
            front = self._new_front(domid, devid, pages=self.pages, gnttab=self.table,
                                    grefs=self.grefs, evtchn_alloc_unbound=ev.alloc_unbound,
                                    notify=ev.notify, xs=self.xs, evtchn_close=ev.close)
            self.fronts[devid] = front
            watch(f"{front.backend}/state", f"{self.devicetype}-{devid}",
                  front.on_backend_changed)
        return devids

    def upcall(self, ports: list[int]) -> None:
        """Hand the pending ``ports`` to the frontends bound to them."""
        for front in self.fronts.values():
            if front.evtchn is not None and front.evtchn in ports:
                front.on_event()

    def pages_needed(self) -> int:
        """The most guest pages these frontends hold at once."""
        return sum(front.max_pages for front in self.fronts.values())

    def suspend(self, timeout: float) -> bool:
        """Freeze every frontend, then wait up to ``timeout`` seconds in all for what they
        have in flight; True if nothing is left in flight."""
        for front in self.fronts.values():
            front.suspend()
        deadline = time.monotonic() + timeout
        return all([front.wait_quiet(deadline - time.monotonic())
                    for front in self.fronts.values()])

    def suspend_cancel(self) -> None:
        for front in self.fronts.values():
            front.suspend_cancel()
