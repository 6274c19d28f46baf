"""Dom0's learning bridge (``xenbr0``): the switch every vif and every inter-host uplink plugs into.

Linux ``net/bridge`` semantics, as a guest sees them through the wire:

* ``br_handle_frame``: a frame whose source MAC is multicast (or all zero) is dropped; a
  frame shorter than an Ethernet header is dropped.
* ``br_fdb_update``: the source MAC is learned on the ingress port; a MAC seen on another
  port moves there. Entries age out ``ageing_s`` after they were last refreshed
  (``has_expired``: ``updated + ageing_time <= now``); an expired entry is never used.
* ``br_forward``/``br_flood``: known unicast goes to its one port, never back out of the
  ingress port (no hairpin); unknown unicast, broadcast and multicast are flooded to every
  other port.

Ports named ``uplink:<host>`` join the bridges of other hosts as a full mesh, so a frame that
came in on an uplink is never sent out of another uplink (split horizon, in place of STP).
Taps see every frame that enters from a port (for pcap capture). Port callbacks and taps run
outside the lock: a vif's ``transmit`` takes its own lock, and netback never calls into the
bridge while holding that one, so there is no lock cycle.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import structlog

ETH_HLEN = 14
ETH_ALEN = 6
UPLINK_PREFIX = "uplink:"
_ZERO_MAC = bytes(ETH_ALEN)

Deliver = Callable[[bytes], None]
Tap = Callable[[float, bytes], None]

_log = structlog.get_logger("bridge")

_COUNTERS = ("received", "forwarded", "flooded", "deliveries", "dropped_invalid",
             "dropped_local", "dropped_no_port", "learned", "moved", "aged", "callback_errors")


def is_uplink(port: str) -> bool:
    """An inter-host link of the mesh (split horizon applies)."""
    return port.startswith(UPLINK_PREFIX)


def mac_str(mac: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff``."""
    return mac.hex(":")


class Bridge:
    """A Linux learning bridge with ports identified by name.

    ``clock`` (seconds, monotonic) drives ageing and is injectable for tests; tap timestamps
    are wall-clock (``time.time``), as pcap wants.
    """

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic,
                 ageing_s: float = 300.0) -> None:
        if not ageing_s >= 0:
            raise ValueError(f"ageing_s must be >= 0 seconds, got {ageing_s!r}")
        self.name = name
        self.ageing_s = float(ageing_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._ports: dict[str, tuple[Deliver, bool]] = {}  # name -> (deliver, is uplink)
        self._fdb: dict[bytes, list] = {}  # mac -> [port, last seen]
        self._taps: dict[int, Tap] = {}
        self._tap_list: tuple[Tap, ...] = ()
        self._tap_ids = itertools.count(1)
        self._next_sweep = clock() + self.ageing_s / 10
        self._c = dict.fromkeys(_COUNTERS, 0)

    # -- ports and taps ------------------------------------------------------------------

    def add_port(self, port: str, deliver: Deliver) -> None:
        """Attach ``port``; ``deliver(frame)`` sends a frame out of it. A name in use is refused
        (Linux ``br_add_if``: EBUSY)."""
        with self._lock:
            if port in self._ports:
                raise ValueError(f"port {port!r} is already on bridge {self.name}")
            self._ports[port] = (deliver, is_uplink(port))

    def remove_port(self, port: str) -> None:
        """Detach ``port`` and forget every MAC learned on it (``br_fdb_delete_by_port``).
        Removing an absent port does nothing."""
        with self._lock:
            if self._ports.pop(port, None) is None:
                return
            for mac in [m for m, (p, _) in self._fdb.items() if p == port]:
                del self._fdb[mac]

    def ports(self) -> list[str]:
        with self._lock:
            return list(self._ports)

    def add_tap(self, tap: Tap) -> int:
        """``tap(timestamp, frame)`` for every frame entering from a port; returns its id."""
        with self._lock:
            tap_id = next(self._tap_ids)
            self._taps[tap_id] = tap
            self._tap_list = tuple(self._taps.values())
            return tap_id

    def remove_tap(self, tap_id: int) -> None:
        with self._lock:
            self._taps.pop(tap_id, None)
            self._tap_list = tuple(self._taps.values())

    # -- the data path -------------------------------------------------------------------

    def receive(self, port: str, frame: bytes) -> None:
        """A frame came in on ``port``: learn its source, then forward or flood it."""
        with self._lock:
            taps = self._tap_list if port in self._ports else ()
            targets = self._route(port, frame)
        if taps:
            now = time.time()
            for tap in taps:
                self._call(tap, now, frame)
        for deliver in targets:
            self._call(deliver, frame)

    def _route(self, port: str, frame: bytes) -> list[Deliver]:
        """Under the lock: the ports' callbacks the frame goes to."""
        c = self._c
        c["received"] += 1
        ingress = self._ports.get(port)
        if ingress is None:
            c["dropped_no_port"] += 1
            return []
        src = frame[ETH_ALEN:2 * ETH_ALEN]
        if len(frame) < ETH_HLEN or src[0] & 1 or src == _ZERO_MAC:
            c["dropped_invalid"] += 1
            return []
        now = self._clock()
        self._learn(src, port, now)
        if now >= self._next_sweep:
            self._sweep(now)
        from_uplink = ingress[1]
        dst = frame[:ETH_ALEN]
        if not dst[0] & 1:
            entry = self._fdb.get(dst)
            if entry is not None and now - entry[1] < self.ageing_s:
                deliver, to_uplink = self._ports[entry[0]]
                if entry[0] == port or (from_uplink and to_uplink):
                    c["dropped_local"] += 1
                    return []
                c["forwarded"] += 1
                c["deliveries"] += 1
                return [deliver]
        c["flooded"] += 1
        out = [d for p, (d, up) in self._ports.items()
               if p != port and not (from_uplink and up)]
        c["deliveries"] += len(out)
        return out

    def _learn(self, src: bytes, port: str, now: float) -> None:
        entry = self._fdb.get(src)
        if entry is None:
            self._fdb[src] = [port, now]
            self._c["learned"] += 1
            return
        if entry[0] != port:
            entry[0] = port
            self._c["moved"] += 1
        entry[1] = now

    def _sweep(self, now: float) -> None:
        """``br_fdb_cleanup``: drop expired entries, at most every tenth of the ageing time."""
        expired = [m for m, (_, seen) in self._fdb.items() if now - seen >= self.ageing_s]
        for mac in expired:
            del self._fdb[mac]
        self._c["aged"] += len(expired)
        self._next_sweep = now + self.ageing_s / 10

    def _call(self, fn: Callable, *args) -> None:
        """One port or tap failing must not keep the frame from the others."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a callback is another component's code
            with self._lock:
                self._c["callback_errors"] += 1
            _log.warning("bridge callback failed", bridge=self.name, error=repr(e))

    # -- inspection ----------------------------------------------------------------------

    def fdb(self) -> dict[str, str]:
        """The live forwarding database: ``"aa:bb:cc:dd:ee:ff"`` -> port."""
        with self._lock:
            self._sweep(self._clock())
            return {mac_str(m): p for m, (p, _) in self._fdb.items()}

    @property
    def stats(self) -> dict[str, int]:
        """Counters: frames received, forwarded (known unicast), flooded, deliveries (frames
        handed to ports), drops by cause (invalid: runt or bad source MAC; local: destination
        on the ingress port or across uplinks; no_port), fdb learned/moved/aged, callback
        errors; and the current number of ports and fdb entries."""
        with self._lock:
            return {**self._c, "ports": len(self._ports), "fdb_entries": len(self._fdb)}
