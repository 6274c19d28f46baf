"""A hub for network stacks in unit tests: NICs that hand each frame to every other NIC on
the wire (at once, or from a thread), so two :class:`actors.domain.netstack.NetStack`
instances talk without netfront or netback."""

import queue
import threading

import dpkt

from actors.domain.netstack import NetStack

MACS = ["00:16:3e:00:00:0a", "00:16:3e:00:00:0b", "00:16:3e:00:00:0c", "00:16:3e:00:00:0d"]
IPS = ["10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13"]


class Nic:
    """A NIC on the wire (what NetStack needs of netfront)."""

    def __init__(self, wire: "Wire", mac: str, ip: str | None) -> None:
        self.wire, self.mac, self.ip = wire, mac, ip
        self.mtu = 1500
        self.on_receive = self.on_reconnect = None

    def send(self, frame: bytes) -> bool:
        self.wire.carry(self, frame)
        return True


class Wire:
    """A hub. ``drop(frame)`` True loses the frame; ``threaded`` delivers from a thread."""

    def __init__(self, drop=None, threaded: bool = False) -> None:
        self.nics: list[Nic] = []
        self.frames: list[bytes] = []
        self.drop = drop or (lambda frame: False)
        self._queue: queue.SimpleQueue | None = None
        if threaded:
            self._queue = queue.SimpleQueue()
            threading.Thread(target=self._run, daemon=True).start()

    def stack(self, i: int, ip: str | None = "", **kw) -> NetStack:
        nic = Nic(self, MACS[i], IPS[i] if ip == "" else ip)
        self.nics.append(nic)
        return NetStack(nic, **kw)

    def carry(self, src: Nic, frame: bytes) -> None:
        self.frames.append(frame)
        if self.drop(frame):
            return
        for nic in self.nics:
            if nic is not src:
                if self._queue is not None:
                    self._queue.put((nic, frame))
                else:
                    nic.on_receive(frame)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            item[0].on_receive(item[1])

    def stop(self) -> None:
        if self._queue is not None:
            self._queue.put(None)

    def parsed(self) -> list[dpkt.ethernet.Ethernet]:
        return [dpkt.ethernet.Ethernet(f) for f in self.frames]
