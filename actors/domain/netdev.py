"""The guest kernel's network driver: one :class:`Netfront` and its :class:`NetStack` per
``device/vif/<devid>``.

Like Linux's xen-netfront probe it walks the domain's ``device/vif`` directory at boot and
watches each backend's ``state``. It does not own the grant table, the free-page pool or
the gref allocator: the kernel builds those once (today in
:class:`actors.domain.blkdev.BlockDevices`) and hands the same ones to every driver, as
Linux's drivers share the one grant table and page allocator. Each vif gets its stack at
probe, so the guest answers ARP and ping whatever its init program does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from actors.domain.blkfront import PageAllocator
from actors.domain.netfront import Netfront
from actors.domain.netstack import NetStack
from protocols.errno import Errno, XenError
from protocols.gnttab import GrantRefAllocator, GrantTable
from protocols.hypercall import DOMID_SELF, EvtchnOp, Hypercall

WatchFn = Callable[[str, str, Callable[[], None]], None]  # (path, token, handler)


class EventChannels:
    """The three ``EVTCHNOP_*`` a frontend makes, through the kernel's hypercall client
    (a :class:`actors.hypercall_client.HypercallClient`: callable, with ``post``)."""

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


class NetDevices:
    """Every vif of the domain. ``clock``/``sleep`` are the guest's (the stacks' ping)."""

    def __init__(self, *, pages: PageAllocator, gnttab: GrantTable, grefs: GrantRefAllocator,
                 hypercall: Any, xs: Any, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.pages, self.table, self.grefs, self.xs = pages, gnttab, grefs, xs
        self.evtchn = EventChannels(hypercall)
        self._clock, self._sleep = clock, sleep
        self.fronts: dict[int, Netfront] = {}
        self.stacks: dict[int, NetStack] = {}

    def probe(self, domid: int, watch: WatchFn) -> list[int]:
        """Create a frontend and a stack for every vif the toolstack gave this domain, and
        watch each backend's state (the watch fires at once and starts the handshake);
        returns the devids."""
        try:
            devids = sorted(int(d) for d in self.xs.directory("device/vif"))
        except XenError as e:
            if e.errno == Errno.ENOENT:
                return []
            raise
        ev = self.evtchn
        for devid in devids:
            front = Netfront(domid=domid, devid=devid, pages=self.pages, gnttab=self.table,
                             grefs=self.grefs, evtchn_alloc_unbound=ev.alloc_unbound,
                             notify=ev.notify, xs=self.xs, evtchn_close=ev.close)
            front.probe()
            self.fronts[devid] = front
            self.stacks[devid] = NetStack(front, clock=self._clock, sleep=self._sleep)
            watch(f"{front.backend}/state", f"vif-{devid}", front.on_backend_changed)
        return devids

    def upcall(self, ports: list[int]) -> None:
        for front in self.fronts.values():
            if front.evtchn is not None and front.evtchn in ports:
                front.on_event()

    def _devid(self, name: str | int) -> int:
        """``ethN`` is the N-th vif by devid (Linux names them in probe order)."""
        if isinstance(name, str) and name.startswith("eth") and name[3:].isdigit():
            order = sorted(self.fronts)
            n = int(name[3:])
            if n < len(order):
                return order[n]
        elif isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
            if int(name) in self.fronts:
                return int(name)
        raise XenError(Errno.ENODEV, f"no network interface {name}")

    def vif(self, name: str | int = "eth0") -> Netfront:
        """The frontend of ``name`` ("eth0") or a devid number; ENODEV if none."""
        return self.fronts[self._devid(name)]

    def nic(self, name: str | int = "eth0") -> NetStack:
        """The network stack of ``name`` ("eth0") or a devid number; ENODEV if none."""
        return self.stacks[self._devid(name)]

    def statistics(self) -> dict[int, dict]:
        return {devid: {**front.statistics(), "stack": self.stacks[devid].statistics()}
                for devid, front in self.fronts.items()}
