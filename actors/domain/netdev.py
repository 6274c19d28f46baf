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

from actors.domain.netfront import Netfront
from actors.domain.netstack import NetStack
from actors.xenbus.frontend import FrontendDevices, PageAllocator
from protocols.errno import Errno, XenError
from protocols.gnttab import GrantRefAllocator, GrantTable


class NetDevices(FrontendDevices):
    """Every vif of the domain. ``clock``/``sleep`` are the guest's (the stacks' ping)."""

    devicetype = "vif"

    def __init__(self, *, pages: PageAllocator, gnttab: GrantTable, grefs: GrantRefAllocator,
                 hypercall: Any, xs: Any, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(pages=pages, gnttab=gnttab, grefs=grefs, hypercall=hypercall, xs=xs)
        self._clock, self._sleep = clock, sleep
        self.fronts: dict[int, Netfront] = {}
        self.stacks: dict[int, NetStack] = {}

    def _new_front(self, domid: int, devid: int, **resources: Any) -> Netfront:
        """The frontend, probed (its MAC and IP known), and its stack."""
        front = Netfront(domid=domid, devid=devid, **resources)
        front.probe()
        self.stacks[devid] = NetStack(front, clock=self._clock, sleep=self._sleep)
        return front

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
