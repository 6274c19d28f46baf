"""The wire between two hosts' bridges, as Linux ``tc netem`` shapes a link (net/sched/sch_netem.c).

A :class:`Link` is one direction (host A -> host B) and only decides *when* each frame
arrives, or that it does not; whoever carries the frame waits until then. It follows
``netem_enqueue``, step by step:

* **duplicate** is drawn first, then **loss**: a duplicated frame that is lost still goes
  once. The copy is offered again with duplication off (netem re-enqueues it at the root),
  so it meets loss, delay and reordering on its own.
* **reorder**: that fraction of the frames is sent at once, ahead of the others, which wait
  the latency (netem's ``reorder P`` with its default ``gap 1``; it needs a latency, as tc
  says: "reordering not possible without specifying some delay").
* **latency ± jitter**: each frame's delay is drawn uniformly from
  ``[latency - jitter, latency + jitter]`` (netem's default distribution), never below 0.
  Without a bandwidth, frames leave when their own delay is over, so jitter reorders them,
  as netem's time-sorted queue does. With a bandwidth (netem's ``rate``) a frame never
  overtakes the one before: it starts when that one has left (or its own delay is over)
  and takes ``size / bandwidth`` on the wire.

Loss is decided when the frame is offered, so a lost frame takes no time on the wire. The
random draws come from ``spec.seed`` when set (netem's ``seed``; any change of a seeded spec
reseeds, as ``netem_change`` does), so the same seed gives the same frames the same fates.
The defaults are an unlimited, lossless, instant link.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import threading
from typing import Any

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_RATE_RE = re.compile(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(?:bit/s|bit)?")
_TIME_RE = re.compile(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(s|ms|us|µs|ns)?")
_FRACTIONS = ("loss", "duplicate", "reorder")


@dataclasses.dataclass(frozen=True, slots=True)
class LinkSpec:
    """``bandwidth_bps``: bits per second, None for unlimited; ``latency_s``: one-way delay in
    seconds, ``jitter_s`` its spread either way; ``loss``, ``duplicate``, ``reorder``:
    probabilities in [0, 1] per frame; ``seed``: the random draws' seed (None: unseeded)."""

    bandwidth_bps: float | None = None
    latency_s: float = 0.0
    loss: float = 0.0
    jitter_s: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        bw = self.bandwidth_bps
        if bw is not None and not (bw > 0 and math.isfinite(bw)):
            raise ValueError(f"bandwidth must be a positive number of bits/s or None "
                             f"(unlimited), got {bw!r}")
        for name in ("latency_s", "jitter_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name[:-2]} must be >= 0 seconds, got {value!r}")
        for name in _FRACTIONS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], "
                                 f"got {getattr(self, name)!r}")
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> LinkSpec:
        """A spec from its fields (as ``dataclasses.asdict`` gives them); ValueError names
        a field that is not one."""
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"not a link property: {', '.join(sorted(map(str, unknown)))}")
        return cls(**fields)


def compose(base: LinkSpec, fault: LinkSpec | None) -> LinkSpec:
    """The link that ``fault`` on top of ``base`` makes, as a second netem in series would:
    latencies and jitters add, losses, duplications and reorderings happen independently
    (``1 - (1-a)(1-b)``), the narrower bandwidth holds, the fault's seed wins. ValueError if
    the result reorders without a latency (tc refuses it)."""
    spec = base
    if fault is not None:
        either = lambda a, b: a + b - a * b  # noqa: E731
        widths = [bw for bw in (base.bandwidth_bps, fault.bandwidth_bps) if bw is not None]
        spec = LinkSpec(min(widths, default=None), base.latency_s + fault.latency_s,
                        either(base.loss, fault.loss), base.jitter_s + fault.jitter_s,
                        either(base.duplicate, fault.duplicate),
                        either(base.reorder, fault.reorder),
                        fault.seed if fault.seed is not None else base.seed)
    if spec.reorder and not spec.latency_s:
        raise ValueError("reordering needs a latency: the reordered frames are the ones "
                         "that do not wait it")
    return spec


class Link:
    """One direction of a link. ``rng`` (a ``random.Random``) draws the fates while the spec
    has no seed; seed it for reproducible runs. Thread-safe: senders on several threads
    share the wire."""

    def __init__(self, spec: LinkSpec = LinkSpec(), *, rng: random.Random | None = None) -> None:
        self._shared_rng = rng if rng is not None else random.Random()
        self._last = -math.inf  # when the last in-order frame arrives (netem's rate reference)
        self._lock = threading.Lock()
        self.sent = self.lost = self.bytes = self.duplicated = self.reordered = 0
        self.change(spec)

    def change(self, spec: LinkSpec) -> None:
        """``tc qdisc change``: the new spec for frames offered from now on (those already
        scheduled keep their times, the counts go on); a seeded spec reseeds."""
        with self._lock:
            self.spec = spec
            self._rng = self._shared_rng if spec.seed is None else random.Random(spec.seed)

    def schedule(self, now: float, nbytes: int) -> list[float]:
        """The arrival times of an ``nbytes`` frame offered at ``now``: none if it is lost,
        two if it was duplicated (the copy's first)."""
        with self._lock:
            spec, draw = self.spec, self._rng.random
            copies = 1 + (spec.duplicate > 0 and draw() < spec.duplicate)
            copies -= spec.loss > 0 and draw() < spec.loss
            if copies == 0:
                self.lost += 1
                return []
            arrivals = []
            if copies == 2:
                self.duplicated += 1
                if spec.loss > 0 and draw() < spec.loss:
                    self.lost += 1
                else:
                    arrivals.append(self._arrival(now, nbytes))
            arrivals.append(self._arrival(now, nbytes))
            return arrivals

    def _arrival(self, now: float, nbytes: int) -> float:
        """Under the lock: when one copy that was not lost arrives."""
        spec = self.spec
        self.sent += 1
        self.bytes += nbytes
        if spec.reorder > 0 and spec.latency_s > 0 and self._rng.random() < spec.reorder:
            self.reordered += 1
            return now
        delay = spec.latency_s
        if spec.jitter_s > 0:
            delay = max(0.0, delay + self._rng.uniform(-spec.jitter_s, spec.jitter_s))
        if spec.bandwidth_bps is None:
            return now + delay
        self._last = max(now + delay, self._last) + nbytes * 8 / spec.bandwidth_bps
        return self._last

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"sent": self.sent, "lost": self.lost, "bytes": self.bytes,
                    "duplicated": self.duplicated, "reordered": self.reordered}


def _parse(text: str, pattern: re.Pattern, what: str, example: str) -> tuple[float, str]:
    m = pattern.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"cannot read {what} {text!r}; write it like {example}")
    return float(m.group(1)), m.group(2) or ""


def parse_bandwidth(text: str | float | None) -> float | None:
    """"100M", "1G", "10k", "2.5Gbit" (decimal SI, bits/s) -> bits/s; None/"" -> unlimited.
    A bare number is bits/s. No "bps": tc reads it as bytes/s, people as bits/s."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    value, prefix = _parse(text, _RATE_RE, "bandwidth", '"100M", "1G" or "10k" (bits/s)')
    return value * _SI[prefix]


def parse_duration(text: str | float | None, what: str = "latency") -> float:
    """"5ms", "200us", "1s", "0" -> seconds (a number, not a string, is already seconds)."""
    if text is None or text == "":
        return 0.0
    if isinstance(text, (int, float)):
        return float(text)
    value, unit = _parse(text, _TIME_RE, what, '"5ms", "200us" or "1s"')
    if not unit and value != 0:
        raise ValueError(f"{what} {text!r} needs a unit: s, ms, us or ns")
    return value * _TIME[unit or "s"]


def parse_fraction(text: str | float | None, what: str = "loss") -> float:
    """"1%" or "0.01" or 0.01 -> 0.01; None/"" -> 0."""
    if text is None or text == "":
        return 0.0
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip()
    try:
        return float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise ValueError(f"cannot read {what} {text!r}; write it like \"1%\" or 0.01") from None


def parse_link_spec(bandwidth: str | float | None = None, latency: str | float | None = None,
                    loss: str | float | None = None, *, jitter: str | float | None = None,
                    duplicate: str | float | None = None, reorder: str | float | None = None,
                    seed: int | None = None) -> LinkSpec:
    """A :class:`LinkSpec` from the CLI's human units; ValueError with the reason otherwise."""
    return LinkSpec(parse_bandwidth(bandwidth), parse_duration(latency),
                    parse_fraction(loss), parse_duration(jitter, "jitter"),
                    parse_fraction(duplicate, "duplicate"), parse_fraction(reorder, "reorder"),
                    seed)
