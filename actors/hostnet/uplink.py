"""This host's bridges as the inter-host network sees them, and the frames in flight on it.

Every bridge reaches each other host through an uplink port (``uplink:<host>``, a full mesh
with split horizon, see bridge.py). :class:`HostBridges` keeps the bridges by name, gives
each one an uplink per peer (also to bridges made later), takes the frames peers send in,
and taps bridges for capture. What a frame meets on the way out (bandwidth, latency, loss)
is decided by one :class:`~actors.hostnet.link.Link` per peer; :class:`UplinkSchedule`
holds the frames until their arrival time and :class:`UplinkSender` (a thread and a timer
from the injected runtime) hands them over in batches, one message per (peer, bridge)
carrying every frame due, so the inter-host transport is not called once per frame
(DESIGN.md "The transport seam").

Like a NIC's transmit queue (Linux ``txqueuelen``, 1000 frames), at most ``BACKLOG_MAX``
frames wait per peer; more are dropped and counted, as a full qdisc drops. A capture keeps
at most ``CAPTURE_MAX`` frames between reads, dropping the oldest (counted).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import heapq
import itertools
import json
import math
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from actors.hostnet.bridge import UPLINK_PREFIX, Bridge
from actors.hostnet.link import Link, LinkSpec
from actors.runtime import THREADS, Runtime, Timer
from protocols.errno import Errno, XenError
from protocols.xenstore.paths import tool_path

PEERS = f"{tool_path('xenray-netback')}/peers"  # <host> = LinkSpec as JSON
BACKLOG_MAX = 1000  # frames waiting per peer (Linux's default txqueuelen)
CAPTURE_MAX = 10_000  # frames a capture buffers between reads

Send = Callable[[str, str, list[bytes]], None]  # (host, bridge, frames)
PeerSend = Callable[[str, str, bytes], None]  # (host, bridge, frame)


@dataclasses.dataclass(eq=False)
class Capture:
    """A tap's buffer: (wall-clock time, frame) until read; the oldest go when it is full."""

    bridge: str
    frames: collections.deque
    tap_id: int = 0
    dropped: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def __call__(self, ts: float, frame: bytes) -> None:
        with self.lock:
            if len(self.frames) == self.frames.maxlen:
                self.dropped += 1
            self.frames.append((ts, frame))

    def drain(self) -> list[list]:
        with self.lock:
            out = [[ts, frame] for ts, frame in self.frames]
            self.frames.clear()
            return out


class HostBridges:
    """The host's bridges by name, their uplinks to other hosts, and captures on them."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.bridges: dict[str, Bridge] = {}
        self._uplinks: set[tuple[str, str]] = set()  # (bridge, host)
        self._peers: tuple[PeerSend | None, frozenset[str]] = (None, frozenset())
        self._captures: dict[int, Capture] = {}
        self._capture_ids = itertools.count(1)
        self.uplink_dropped = 0

    def bridge(self, name: str) -> Bridge:
        """The bridge ``name``, created on first use with an uplink to every peer."""
        with self.lock:
            bridge = self.bridges.get(name)
            if bridge is None:
                bridge = self.bridges[name] = Bridge(name)
                send, hosts = self._peers
                for host in sorted(hosts):
                    self.uplink(name, host, functools.partial(send, host, name))
            return bridge

    def uplink(self, bridge_name: str, host: str, send: Callable[[bytes], None]) -> None:
        """Port ``uplink:<host>`` on ``bridge_name`` (created if need be); frames leaving
        through it go to ``send(frame)``. A port already there is replaced."""
        with self.lock:
            bridge = self.bridge(bridge_name)
            bridge.remove_port(UPLINK_PREFIX + host)
            bridge.add_port(UPLINK_PREFIX + host, send)
            self._uplinks.add((bridge_name, host))

    def remove_uplink(self, bridge_name: str, host: str) -> None:
        with self.lock:
            self._uplinks.discard((bridge_name, host))
            if bridge_name in self.bridges:
                self.bridges[bridge_name].remove_port(UPLINK_PREFIX + host)

    def set_peers(self, send: PeerSend, hosts: Iterable[str]) -> None:
        """An uplink to each of ``hosts`` on every bridge, now and later: a frame leaving
        bridge b for host h goes to ``send(h, b, frame)``. Other hosts' uplinks go."""
        hosts = frozenset(hosts)
        with self.lock:
            old_send, old_hosts = self._peers
            keep = old_hosts & hosts if old_send == send else frozenset()
            self._peers = (send, hosts)
            for name in list(self.bridges):
                for host in old_hosts - keep:
                    self.remove_uplink(name, host)
                for host in sorted(hosts - keep):
                    self.uplink(name, host, functools.partial(send, host, name))

    def from_uplink(self, bridge_name: str, host: str, frames: list[bytes]) -> None:
        """Frames from ``host``'s bridge ``bridge_name`` enter ours through its uplink;
        dropped (counted) when there is no such bridge or uplink here."""
        bridge = self.bridges.get(bridge_name)
        if bridge is None or (bridge_name, host) not in self._uplinks:
            with self.lock:
                self.uplink_dropped += len(frames)
            return
        port = UPLINK_PREFIX + host
        for frame in frames:
            bridge.receive(port, frame)

    def capture_start(self, bridge_name: str, limit: int = CAPTURE_MAX) -> int:
        """Tap ``bridge_name`` (created if need be); returns the capture's id."""
        with self.lock:
            capture = Capture(bridge_name, collections.deque(maxlen=limit))
            capture.tap_id = self.bridge(bridge_name).add_tap(capture)
            capture_id = next(self._capture_ids)
            self._captures[capture_id] = capture
            return capture_id

    def capture_read(self, capture_id: int) -> list[list]:
        """What the tap saw since the last read: ``[timestamp, frame]`` in order."""
        capture = self._captures.get(capture_id)
        if capture is None:
            raise XenError(Errno.ENOENT, f"no capture {capture_id}")
        return capture.drain()

    def capture_stop(self, capture_id: int) -> None:
        with self.lock:
            capture = self._captures.pop(capture_id, None)
            if capture is not None:
                self.bridges[capture.bridge].remove_tap(capture.tap_id)

    def bridge_statistics(self) -> dict[str, Any]:
        """Each bridge's counters (with its fdb size), the captures, uplink drops."""
        with self.lock:
            return {"bridges": {name: b.stats for name, b in self.bridges.items()},
                    "captures": {i: {"bridge": c.bridge, "buffered": len(c.frames),
                                     "dropped": c.dropped} for i, c in self._captures.items()},
                    "uplink_dropped": self.uplink_dropped}


class UplinkSchedule:
    """Pure: the frames in flight to each peer, ordered by arrival time (a heap)."""

    def __init__(self, *, rng: random.Random | None = None,
                 backlog_max: int = BACKLOG_MAX) -> None:
        self._rng = rng if rng is not None else random.Random()
        self.backlog_max = backlog_max
        self.links: dict[str, Link] = {}
        self._heap: list[tuple[float, int, str, str, bytes]] = []
        self._seq = itertools.count()  # keeps the order of frames due at the same time
        self._backlog: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()

    def set_links(self, specs: dict[str, LinkSpec]) -> None:
        """The peers and their links. A peer whose spec is unchanged keeps its Link (and the
        frames it is serialising); frames queued for a peer no longer listed are dropped
        when due."""
        self.links = {host: (old if (old := self.links.get(host)) is not None
                             and old.spec == spec else Link(spec, rng=self._rng))
                      for host, spec in specs.items()}

    def submit(self, now: float, host: str, bridge: str, frame: bytes) -> float | None:
        """Offer ``frame`` from ``bridge`` to ``host`` at ``now``: its arrival time, or None
        when it is dropped (no link to that host, a full backlog, or lost on the link)."""
        link = self.links.get(host)
        if link is None:
            self.stats["no_link"] += 1
            return None
        if self._backlog[host] >= self.backlog_max:
            self.stats["backlog_dropped"] += 1
            return None
        due = link.schedule(now, len(frame))
        if due is None:
            self.stats["lost"] += 1
            return None
        self._backlog[host] += 1
        heapq.heappush(self._heap, (due, next(self._seq), host, bridge, frame))
        return due

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[str, str, list[bytes]]]:
        """Every frame due by ``now``, batched per (host, bridge) in arrival order."""
        heap, batches = self._heap, {}
        while heap and heap[0][0] <= now:
            _, _, host, bridge, frame = heapq.heappop(heap)
            self._backlog[host] -= 1
            if host not in self.links:
                self.stats["no_link"] += 1
                continue
            batches.setdefault((host, bridge), []).append(frame)
        self.stats["frames"] += sum(len(f) for f in batches.values())
        self.stats["batches"] += len(batches)
        return [(host, bridge, frames) for (host, bridge), frames in batches.items()]

    def statistics(self) -> dict[str, Any]:
        return {**{k: self.stats[k] for k in ("frames", "batches", "lost", "no_link",
                                              "backlog_dropped")},
                "queued": len(self._heap),
                "links": {h: link.statistics() for h, link in self.links.items()}}


class UplinkSender:
    """One thread sending each batch when it is due: ``send(host, bridge, frames)``.

    Time is ``runtime``'s: the thread is its ``spawn``, it reads ``monotonic``, and it
    sleeps until a frame is submitted or ``call_later`` wakes it when the earliest frame in
    flight is due (one timer at a time), so a test moves the clock instead of sleeping."""

    def __init__(self, send: Send, *, rng: random.Random | None = None, log: Any = None,
                 backlog_max: int = BACKLOG_MAX, runtime: Runtime = THREADS) -> None:
        self._send = send
        self.log = log if log is not None else structlog.get_logger().bind(component="uplink")
        self.schedule = UplinkSchedule(rng=rng, backlog_max=backlog_max)
        self._runtime = runtime
        self._cv = threading.Condition()
        self._closed = False
        self._timer: Timer | None = None
        self._timer_due = math.inf
        self.stopped = threading.Event()  # set when the thread has ended
        self.send_errors = 0
        runtime.spawn(self._run, name="uplink-sender")

    def set_links(self, specs: dict[str, LinkSpec]) -> None:
        with self._cv:
            self.schedule.set_links(specs)
            self._cv.notify()

    def submit(self, host: str, bridge: str, frame: bytes) -> None:
        """A frame leaves ``bridge`` through the uplink to ``host`` (never blocks)."""
        with self._cv:
            due = self.schedule.submit(self._runtime.monotonic(), host, bridge, frame)
            if due is not None and due == self.schedule.next_due():
                self._wake_at(due)  # the earliest now: the thread may be sleeping longer

    def _wake_at(self, due: float) -> None:
        """Under the lock: have the thread look again at ``due``."""
        delay = due - self._runtime.monotonic()
        if delay <= 0:
            self._cv.notify()
        elif due < self._timer_due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_due = due
            self._timer = self._runtime.call_later(delay, self._due)

    def _due(self) -> None:
        with self._cv:
            self._timer, self._timer_due = None, math.inf
            self._cv.notify()

    def _run(self) -> None:
        try:
            with self._cv:
                while not self._closed:
                    batches = self.schedule.pop_due(self._runtime.monotonic())
                    if not batches:
                        due = self.schedule.next_due()
                        if due is not None:
                            self._wake_at(due)
                        self._cv.wait()
                        continue
                    self._cv.release()  # send without holding up the submitters
                    try:
                        for batch in batches:
                            self._deliver(*batch)
                    finally:
                        self._cv.acquire()
        finally:
            self.stopped.set()

    def _deliver(self, host: str, bridge: str, frames: list[bytes]) -> None:
        try:
            self._send(host, bridge, frames)
        except Exception as e:  # noqa: BLE001 - a lost batch must not stop the sender
            self.send_errors += 1
            self.log.warning("uplink send failed", peer=host, bridge=bridge,
                             frames=len(frames), error=repr(e))

    def statistics(self) -> dict[str, Any]:
        with self._cv:
            return {**self.schedule.statistics(), "send_errors": self.send_errors}

    def close(self) -> None:
        """Stop the thread; frames still queued are dropped."""
        with self._cv:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            self._cv.notify()
        self.stopped.wait(timeout=5)


def save_peers(xs: Any, specs: dict[str, LinkSpec]) -> None:
    """Keep the peers in xenstore, one node per host (a node holds at most 4096 bytes), so a
    restarted netback rejoins the mesh."""
    def body(t: int) -> None:
        try:
            xs.rm(PEERS, tx_id=t)
        except XenError as e:
            if e.errno != Errno.ENOENT:
                raise
        xs.write(PEERS, "", tx_id=t)
        for host, spec in specs.items():
            xs.write(f"{PEERS}/{host}", json.dumps(dataclasses.asdict(spec)), tx_id=t)

    xs.transact(body)


def load_peers(xs: Any) -> dict[str, LinkSpec]:
    """The peers :func:`save_peers` kept ({} if none)."""
    try:
        hosts = xs.directory(PEERS)
    except XenError as e:
        if e.errno == Errno.ENOENT:
            return {}
        raise
    return {h: LinkSpec(**json.loads(xs.read_str(f"{PEERS}/{h}"))) for h in hosts}
