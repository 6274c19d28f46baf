"""What the shells of blkback and netback share: a xenbus backend driver run for Dom0.

A backend driver's actor holds Dom0's credential on an endpoint of its own (``<host>/blkback``),
so the ports it binds raise their upcalls there, and its own xenstore connection, whose watch
events are pushed there as ``xs_event``. Its control path is the xenbus core
(:mod:`actors.xenbus.backend`) with the driver's decisions (a
:class:`~actors.xenbus.backend_driver.XenbusDriver`), run by the executor
(:mod:`actors.xenbus.backend_io`); its data path is the driver's own
(:class:`~actors.xenbus.backend_io.DataPath`: blkback's rings, netback's vifs). Restartable
(DESIGN.md "Failure semantics"): Ray re-runs the actor's ``__init__`` after a crash, and
:meth:`BackendShell.start` recovers every device from xenstore; the frontends reconnect
(reference 19.4).

:class:`BackendShell` is that common part; each driver's ``actor.py`` subclasses it with its
data path (and, for netback, the host's network), and its Ray actor gets its clients from
:func:`backend_clients`. Like every shell it calls no Ray itself.
"""

from __future__ import annotations

from typing import Any

from actors import log as xlog
from actors.transport import Endpoint
from actors.transport.clients import HostClients, host_clients
from actors.xenbus.backend import XenbusBackend
from actors.xenbus.backend_driver import XenbusDriver
from actors.xenbus.backend_io import BackendIO, DataPath


class BackendShell(Endpoint):
    """A backend driver (``component``: "blkback", "netback") over Dom0's ``clients``: the
    core with ``driver`` run by the executor (``backend``) over ``data``. A subclass makes its
    data path, calls this ``__init__``, does what else it needs, then :meth:`start`."""

    component = ""

    def __init__(self, clients: HostClients, log: Any, driver: XenbusDriver,
                 data: DataPath) -> None:
        self.log, self.xs, self.data = log, clients.xs, data
        self.backend = BackendIO(XenbusBackend(driver), clients.hv, self.xs, data, log)

    def start(self) -> None:
        """Watch the backend directory and adopt every device found there (returns when
        done)."""
        self.backend.start()
        core = self.backend.core
        self.log.info(f"{self.component} up", **{core.driver.devices_key: len(core.devices)})

    def on_upcall(self, domid: int, ports: list[int], vcpu: int = 0) -> None:
        self.data.upcall(ports)

    def on_xs_event(self, data: bytes) -> None:
        self.xs.on_event(data)

    def on_statistics(self) -> dict[str, Any]:
        return self.backend.statistics()

    def close(self) -> None:
        self.backend.close()


def backend_clients(host: str, dom0_secret: str, component: str, deliver: Any,
                    log_dir: str | None) -> tuple[HostClients, Any]:
    """A backend actor's Dom0 clients on endpoint ``<host>/<component>`` (upcalls posted on
    its same-host pipe go to ``deliver``), and its log."""
    log = xlog.setup(host=host, component=component, log_dir=log_dir)
    return host_clients(host, 0, dom0_secret, component, deliver, log), log
