"""The experiment API: a Mininet-like ``Cluster`` of emulated Xen hosts.

    with Cluster(hosts=2) as xen:
        xen.create("examples/counter.cfg", host="h1")
        print(xen.list())
        xen.pause("counter1")

Embedded mode (the default) starts a local multi-node Ray cluster, one node per host, and
tears it all down on exit. Attach mode (``address=``) joins an existing Ray cluster whose
nodes carry the ``xen-host`` label, boots any host whose actors are missing, and on exit
stops only the hosts it booted. The CLI is a thin layer over these same methods.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from actors.transport import PeerGone
from actors.transport.naming import actor_name, ray_environment
from cluster import home
from cluster.hosts import HostSpec, boot_host, stop_host, xenstored_socket
from cluster.runtime import EmbeddedRay, connect, disconnect, discover_hosts
from cluster.xlcfg import DomainConfig, load_config, parse_config


class DomainNotFound(KeyError):
    def __str__(self) -> str:
        return f"no domain named {self.args[0]!r}"


class Cluster:
    def __init__(self, hosts: int | Sequence[str] = 2, *, address: str | None = None,
                 host_memory_mib: int = 2048, host_cpus: int = 2, dom0_memory_mib: int = 256,
                 run_id: str | None = None, progress: Callable[[str], None] | None = None):
        names = [f"h{i + 1}" for i in range(hosts)] if isinstance(hosts, int) else list(hosts)
        self.specs = {n: HostSpec(n, host_memory_mib, host_cpus, dom0_memory_mib)
                      for n in names}
        self.address = address
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.run_dir = str(home.run_dir())
        self.log_dir = str(home.logs_dir() / self.run_id)
        self._progress = progress or (lambda msg: None)
        self._embedded: EmbeddedRay | None = None
        self._booted: list[str] = []
        ray_environment()  # before anything imports ray
        from actors.transport.raycall import RayTransport

        self._transport = RayTransport()
        self._rr = itertools.count()

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> Cluster:
        if self.address is None:
            self._progress(f"starting an embedded Ray cluster with {len(self.specs)} hosts")
            self._embedded = EmbeddedRay({n: {"cpus": s.pcpus} for n, s in self.specs.items()})
            self.address = self._embedded.address
        connect(self.address)
        if self._embedded is None:
            live = discover_hosts()
            self.specs = {n: self.specs.get(n, HostSpec(n)) for n in live}
        for name, spec in self.specs.items():
            if not self._host_is_up(name):
                self._progress(f"booting host {name}: hypervisor, Dom0, xenstored, "
                               "xenconsoled, blkback, netback, xl")
                boot_host(spec, run_id=self.run_id, run_dir=self.run_dir,
                          log_dir=self.log_dir)
                self._booted.append(name)
        self._wire_network()
        return self

    def _wire_network(self) -> None:
        """Give every host's bridges an uplink to every other host: a full mesh, over Ray
        (DESIGN.md: cross-host traffic crosses Ray as it would cross a real network)."""
        for host in self.hosts:
            self._transport.call(actor_name(host, "netback"), "set_peers",
                                 [h for h in self.hosts if h != host])

    def stop(self) -> None:
        for name in self._booted:  # first the uplinks, so no frames are in flight to a host
            try:                   # being stopped
                self._transport.call(actor_name(name, "netback"), "set_peers", [], timeout=10)
            except (PeerGone, TimeoutError):
                pass
        for name in self._booted:
            self._progress(f"stopping host {name}")
            stop_host(name, run_id=self.run_id)
        self._booted.clear()
        if self._embedded is not None:
            self._embedded.shutdown()
            self._embedded = None
        else:
            disconnect()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def hosts(self) -> list[str]:
        return list(self.specs)

    def _host_is_up(self, host: str) -> bool:
        try:
            self._transport.call(actor_name(host, "xl"), "process", timeout=30)
            return True
        except (PeerGone, TimeoutError):
            return False

    def _xl(self, host: str, kind: str, *args: Any) -> Any:
        return self._transport.call(actor_name(host, "xl"), kind, *args)

    # -- domains -----------------------------------------------------------------------

    def create(self, config: str | os.PathLike | DomainConfig, *, host: str | None = None,
               name: str | None = None) -> dict[str, Any]:
        """Create a domain from an xl.cfg file (path), its text, or a parsed config."""
        cfg = _as_config(config)
        if self.find(name or cfg.name) is not None:
            raise ValueError(f"a domain named {name or cfg.name!r} already exists")
        host = host or self.hosts[next(self._rr) % len(self.hosts)]
        if host not in self.specs:
            raise ValueError(f"no host {host!r}; hosts are {', '.join(self.hosts)}")
        return self._xl(host, "create", cfg.to_dict(), name)

    def find(self, name: str) -> tuple[str, int] | None:
        """``(host, domid)`` of a domain, or None."""
        for host in self.hosts:
            domid = self._xl(host, "names").get(name)
            if domid is not None:
                return host, domid
        return None

    def _where(self, name: str) -> tuple[str, int]:
        found = self.find(name)
        if found is None:
            raise DomainNotFound(name)
        return found

    def list(self) -> list[dict[str, Any]]:
        """xl list's rows for every host (Name, ID, Mem, VCPUs, State, Time, host)."""
        rows = []
        for host in self.hosts:
            rows.extend(self._xl(host, "list"))
        return rows

    def info(self) -> list[dict[str, Any]]:
        """Per host: memory, free memory, pCPUs, domains, its xenstored socket, and how many
        hypercalls it served and over how many same-host pipes."""
        out = []
        for host in self.hosts:
            stats = self._transport.call(actor_name(host, "hypervisor"), "statistics")
            out.append({"host": host, "total_memory_mib": stats["host_pages"] // 256,
                        "free_memory_mib": stats["free_pages"] // 256,
                        "nr_cpus": self.specs[host].pcpus, "domains": stats["domains"],
                        "xenstored_socket": xenstored_socket(self.run_dir, host),
                        "hypercalls": stats["hypercalls"], "pipes": stats["pipes"]})
        return out

    def destroy(self, name: str) -> None:
        host, _ = self._where(name)
        self._xl(host, "destroy", name)

    def pause(self, name: str) -> None:
        host, _ = self._where(name)
        self._xl(host, "pause", name)

    def unpause(self, name: str) -> None:
        host, _ = self._where(name)
        self._xl(host, "unpause", name)

    def shutdown(self, name: str, *, wait: bool = False, timeout: float = 60.0) -> None:
        self._control(name, "poweroff", wait, timeout)

    def reboot(self, name: str, *, wait: bool = False, timeout: float = 60.0) -> None:
        self._control(name, "reboot", wait, timeout)

    def _control(self, name: str, word: str, wait: bool, timeout: float) -> None:
        host, domid = self._where(name)
        self._xl(host, "shutdown", name, word)
        if wait:  # xl -w: until that domain (this domid) is gone or replaced
            self.wait_for(lambda: self.find(name) != (host, domid), timeout,
                          f"{name} to {word}")

    def console(self, name: str, lines: int = 20) -> list[str]:
        """The last ``lines`` lines the domain wrote on its console."""
        host, _ = self._where(name)
        return self._transport.call(actor_name(host, "xenconsoled"), "tail", name, lines)

    def result(self, name: str) -> dict[str, Any] | None:
        """The last result an init program published (a ``RESULT {json}`` console line)."""
        for line in reversed(self.console(name, 200)):
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        return None

    def follow_console(self, name: str, poll: float = 0.25) -> Iterator[str]:
        """Console lines as they arrive (``xl console``), until the domain goes away."""
        host, _ = self._where(name)
        path = pathlib.Path(self._transport.call(actor_name(host, "xenconsoled"),
                                                 "log_path", name))
        self.wait_for(path.exists, 30, f"{name}'s console log")
        with path.open() as f:
            while True:
                line = f.readline()
                if line:
                    yield line.rstrip("\n")
                elif self.find(name) is None:
                    return
                else:
                    time.sleep(poll)

    # -- the network -------------------------------------------------------------------

    def set_link(self, a: str, b: str, *, bandwidth: str | float | None = None,
                 latency: str | float | None = None, loss: str | float | None = None,
                 both_ways: bool = True) -> dict[str, Any]:
        """Shape the link between hosts ``a`` and ``b`` (bits/s, s, fraction; or "100M",
        "5ms", "1%"); None leaves that property unlimited. Returns the spec applied."""
        from actors.hostnet.link import parse_link_spec

        spec = dataclasses.asdict(parse_link_spec(bandwidth, latency, loss))
        for src, dst in ((a, b), (b, a)) if both_ways else ((a, b),):
            for host in (src, dst):
                if host not in self.specs:
                    raise ValueError(f"no host {host!r}; hosts are {', '.join(self.hosts)}")
            self._transport.call(actor_name(src, "netback"), "set_link", dst, spec)
        return spec

    def links(self) -> list[dict[str, Any]]:
        """Every host's uplinks: the spec and what crossed (frames sent, lost)."""
        rows = []
        for host in self.hosts:
            for dst, row in self._transport.call(actor_name(host, "netback"), "links").items():
                rows.append({"from": host, "to": dst, **row})
        return rows

    def capture(self, host: str, bridge: str, out: str | os.PathLike, *,
                seconds: float | None = None, poll: float = 0.2,
                progress: Callable[[int], None] | None = None) -> int:
        """Write every frame ``bridge`` on ``host`` sees to a pcap file (Ethernet link type)
        for ``seconds``, or until interrupted; returns the number of frames written."""
        import dpkt

        netback = actor_name(host, "netback")
        cid = self._transport.call(netback, "capture_start", bridge)
        written = 0
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            with open(out, "wb") as f:
                pcap = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
                try:
                    while deadline is None or time.monotonic() < deadline:
                        written += self._drain_capture(netback, cid, pcap, f)
                        if progress:
                            progress(written)
                        time.sleep(poll)
                except KeyboardInterrupt:
                    pass
                written += self._drain_capture(netback, cid, pcap, f)
        finally:
            self._transport.call(netback, "capture_stop", cid)
        return written

    def _drain_capture(self, netback: str, cid: int, pcap: Any, f: Any) -> int:
        frames = self._transport.call(netback, "capture_read", cid)
        for ts, frame in frames:
            pcap.writepkt(frame, ts=ts)
        f.flush()
        return len(frames)

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _as_config(config: str | os.PathLike | DomainConfig) -> DomainConfig:
    if isinstance(config, DomainConfig):
        return config
    if isinstance(config, os.PathLike) or (isinstance(config, str) and "\n" not in config
                                           and "=" not in config):
        return load_config(config)[0]
    return parse_config(str(config))[0]
