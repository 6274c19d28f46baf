"""This host's bridges as the inter-host network sees them, and the frames in flight on it.

Every bridge reaches each other host through an uplink port (``uplink:<host>``, a full mesh
with split horizon, see bridge.py). :class:`HostBridges` keeps the bridges by name, gives
each one an uplink per peer (also to bridges made later), takes the frames peers send in,
and taps bridges for capture. What a frame meets on the way out (bandwidth, latency, jitter,
loss, duplication, reordering) is decided by one :class:`~actors.hostnet.link.Link` per
peer; :class:`UplinkSchedule` holds the frames until their arrival time and
:class:`UplinkSender` (a thread and a timer from the injected runtime) hands them over in
batches, one message per (peer, bridge) carrying every frame due, so the inter-host
transport is not called once per frame (DESIGN.md "The transport seam").

Each peer is a :class:`Peer`: the link as shaped (``base``), a fault on top of it (the two
compose, see ``link.compose``; clearing the fault gives the base back), and whether a
partition cuts this host off from it. A partition drops every frame to that peer, those
still on the wire included (a pulled cable), and every frame from it, counted as
``partitioned``.

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
from actors.hostnet.link import Link, LinkSpec, compose
from actors.runtime import THREADS, Runtime, Timer
from protocols.errno import Errno, XenError
from protocols.xenstore.paths import tool_path

PEERS = f"{tool_path('xenray-netback')}/peers"  # <host> = Peer as JSON
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


@dataclasses.dataclass(frozen=True)
class Peer:
    """Another host, as this host's uplinks see it: its link as shaped (``xenray link``), a
    fault on top (None: none), and whether a partition cuts it off."""

    base: LinkSpec = LinkSpec()
    fault: LinkSpec | None = None
    blocked: bool = False

    def __post_init__(self) -> None:
        compose(self.base, self.fault)  # ValueError if they do not make a link

    @property
    def spec(self) -> LinkSpec:
        """What the link does now: the fault composed on the base."""
        return compose(self.base, self.fault)

    def to_json(self) -> str:
        return json.dumps({"base": dataclasses.asdict(self.base), "blocked": self.blocked,
                           "fault": None if self.fault is None
                           else dataclasses.asdict(self.fault)})

    @classmethod
    def from_json(cls, text: str) -> Peer:
        d = json.loads(text)
        return cls(LinkSpec.from_dict(d["base"]),
                   None if d["fault"] is None else LinkSpec.from_dict(d["fault"]),
                   bool(d["blocked"]))


class UplinkSchedule:
    """Pure: the frames in flight to each peer, ordered by arrival time (a heap)."""

    def __init__(self, *, rng: random.Random | None = None,
                 backlog_max: int = BACKLOG_MAX) -> None:
        self._rng = rng if rng is not None else random.Random()
        self.backlog_max = backlog_max
        self.links: dict[str, Link] = {}
        self.blocked: frozenset[str] = frozenset()
        self._heap: list[tuple[float, int, str, str, bytes]] = []
        self._seq = itertools.count()  # keeps the order of frames due at the same time
        self._backlog: Counter[str] = Counter()
        self._partitioned: Counter[str] = Counter()  # per peer, both ways
        self.stats: Counter[str] = Counter()

    def set_links(self, specs: dict[str, LinkSpec]) -> None:
        """The peers and their links. A known peer keeps its Link (the frames it is
        serialising, its counts), changed to its new spec if that differs; frames queued
        for a peer no longer listed are dropped when due."""
        links = {}
        for host, spec in specs.items():
            link = links[host] = self.links.get(host) or Link(spec, rng=self._rng)
            if link.spec != spec:
                link.change(spec)
        self.links = links

    def set_partition(self, hosts: Iterable[str]) -> None:
        """Cut this host off from ``hosts`` (and only them): their frames, queued ones
        included, are dropped."""
        self.blocked = frozenset(hosts)

    def admit(self, host: str, count: int) -> bool:
        """Whether ``count`` frames arriving from ``host`` may come in (not partitioned)."""
        if host in self.blocked:
            self._drop_partitioned(host, count)
            return False
        return True

    def _drop_partitioned(self, host: str, count: int) -> None:
        self._partitioned[host] += count
        self.stats["partitioned"] += count

    def submit(self, now: float, host: str, bridge: str, frame: bytes) -> list[float]:
        """Offer ``frame`` from ``bridge`` to ``host`` at ``now``: the arrival time of each
        copy (two when it is duplicated), none when it is dropped (no link to that host, a
        partition, a full backlog, or lost on the link)."""
        link = self.links.get(host)
        if link is None:
            self.stats["no_link"] += 1
            return []
        if host in self.blocked:
            self._drop_partitioned(host, 1)
            return []
        if self._backlog[host] >= self.backlog_max:
            self.stats["backlog_dropped"] += 1
            return []
        dues = link.schedule(now, len(frame))
        if not dues:
            self.stats["lost"] += 1
        for due in dues:
            self._backlog[host] += 1
            heapq.heappush(self._heap, (due, next(self._seq), host, bridge, frame))
        return dues

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
            elif host in self.blocked:
                self._drop_partitioned(host, 1)
            else:
                batches.setdefault((host, bridge), []).append(frame)
        self.stats["frames"] += sum(len(f) for f in batches.values())
        self.stats["batches"] += len(batches)
        return [(host, bridge, frames) for (host, bridge), frames in batches.items()]

    def statistics(self) -> dict[str, Any]:
        return {**{k: self.stats[k] for k in ("frames", "batches", "lost", "no_link",
                                              "backlog_dropped", "partitioned")},
                "queued": len(self._heap), "blocked": sorted(self.blocked),
                "links": {h: {**link.statistics(), "partitioned": self._partitioned[h]}
                          for h, link in self.links.items()}}


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

    def set_links(self, specs: dict[str, LinkSpec], blocked: Iterable[str] = ()) -> None:
        """The peers, their links and the ones a partition cuts off (UplinkSchedule's)."""
        with self._cv:
            self.schedule.set_links(specs)
            self.schedule.set_partition(blocked)
            self._cv.notify()

    def submit(self, host: str, bridge: str, frame: bytes) -> None:
        """A frame leaves ``bridge`` through the uplink to ``host`` (never blocks)."""
        with self._cv:
            dues = self.schedule.submit(self._runtime.monotonic(), host, bridge, frame)
            if dues and min(dues) == self.schedule.next_due():
                self._wake_at(min(dues))  # the earliest now: the thread may sleep longer

    def admit(self, host: str, count: int) -> bool:
        """Whether frames arriving from ``host`` may come in (UplinkSchedule's)."""
        with self._cv:
            return self.schedule.admit(host, count)

    def _wake_at(self, due: float) -> bool:
        """Under the lock: have the thread look again at ``due``. False if ``due`` has come
        already: then there is no timer, only a notify, which the thread itself must not
        wait for (it would be the one it wakes)."""
        delay = due - self._runtime.monotonic()
        if delay <= 0:
            self._cv.notify()
            return False
        if due < self._timer_due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_due = due
            self._timer = self._runtime.call_later(delay, self._due)
        return True

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
                        # the earliest frame may have come due since pop_due looked (a
                        # loaded machine): look again, rather than wait for a notify nobody
                        # sends (a submit notifies only for a frame due before all others)
                        due = self.schedule.next_due()
                        if due is None or self._wake_at(due):
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


def save_peers(xs: Any, peers: dict[str, Peer]) -> None:
    """Keep the peers in xenstore, one node per host (a node holds at most 4096 bytes), so a
    restarted netback rejoins the mesh with its links, faults and partition as they were."""
    def body(t: int) -> None:
        try:
            xs.rm(PEERS, tx_id=t)
        except XenError as e:
            if e.errno != Errno.ENOENT:
                raise
        xs.write(PEERS, "", tx_id=t)
        for host, peer in peers.items():
            xs.write(f"{PEERS}/{host}", peer.to_json(), tx_id=t)

    xs.transact(body)


def load_peers(xs: Any) -> dict[str, Peer]:
    """The peers :func:`save_peers` kept ({} if none)."""
    try:
        hosts = xs.directory(PEERS)
    except XenError as e:
        if e.errno == Errno.ENOENT:
            return {}
        raise
    return {h: Peer.from_json(xs.read_str(f"{PEERS}/{h}")) for h in hosts}
