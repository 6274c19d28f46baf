"""The wire between two hosts' bridges: bandwidth, latency and loss, as ``tc netem`` shapes a link.

A :class:`Link` is one direction (host A -> host B) and only decides *when* each frame
arrives; whoever carries the frame waits until then. Frames serialise at the bandwidth (a
frame starts when the previous one finished), then travel for the latency. Loss is decided
when the frame is offered, as netem's ``loss`` does at enqueue, so a lost frame takes no
time on the wire. The defaults are an unlimited, lossless, instant link.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import threading

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_RATE_RE = re.compile(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(?:bit/s|bit)?")
_TIME_RE = re.compile(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(s|ms|us|µs|ns)?")


@dataclasses.dataclass(frozen=True, slots=True)
class LinkSpec:
    """``bandwidth_bps``: bits per second, None for unlimited; ``latency_s``: one-way delay in
    seconds; ``loss``: probability in [0, 1] that a frame is lost."""

    bandwidth_bps: float | None = None
    latency_s: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        bw = self.bandwidth_bps
        if bw is not None and not (bw > 0 and math.isfinite(bw)):
            raise ValueError(f"bandwidth must be a positive number of bits/s or None "
                             f"(unlimited), got {bw!r}")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"latency must be >= 0 seconds, got {self.latency_s!r}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be a probability in [0, 1], got {self.loss!r}")


class Link:
    """One direction of a link. ``rng`` (a ``random.Random``) draws the losses; seed it for
    reproducible runs. Thread-safe: senders on several threads share the wire."""

    def __init__(self, spec: LinkSpec = LinkSpec(), *, rng: random.Random | None = None) -> None:
        self.spec = spec
        self._rng = rng if rng is not None else random.Random()
        self._free_at = -math.inf  # when the last frame finishes serialising
        self._lock = threading.Lock()
        self.sent = self.lost = self.bytes = 0

    def schedule(self, now: float, nbytes: int) -> float | None:
        """The arrival time of an ``nbytes`` frame offered at ``now``, or None if it is lost."""
        spec = self.spec
        with self._lock:
            if spec.loss and self._rng.random() < spec.loss:
                self.lost += 1
                return None
            done = now
            if spec.bandwidth_bps is not None:
                done = max(now, self._free_at) + nbytes * 8 / spec.bandwidth_bps
                self._free_at = done
            self.sent += 1
            self.bytes += nbytes
            return done + spec.latency_s

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"sent": self.sent, "lost": self.lost, "bytes": self.bytes}


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


def parse_latency(text: str | float | None) -> float:
    """"5ms", "200us", "1s", "0" -> seconds (a number, not a string, is already seconds)."""
    if text is None or text == "":
        return 0.0
    if isinstance(text, (int, float)):
        return float(text)
    value, unit = _parse(text, _TIME_RE, "latency", '"5ms", "200us" or "1s"')
    if not unit and value != 0:
        raise ValueError(f"latency {text!r} needs a unit: s, ms, us or ns")
    return value * _TIME[unit or "s"]


def parse_loss(text: str | float | None) -> float:
    """"1%" or "0.01" or 0.01 -> 0.01; None/"" -> 0."""
    if text is None or text == "":
        return 0.0
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip()
    try:
        return float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise ValueError(f"cannot read loss {text!r}; write it like \"1%\" or 0.01") from None


def parse_link_spec(bandwidth: str | None = None, latency: str | None = None,
                    loss: str | float | None = None) -> LinkSpec:
    """A :class:`LinkSpec` from the CLI's human units; ValueError with the reason otherwise."""
    return LinkSpec(parse_bandwidth(bandwidth), parse_latency(latency), parse_loss(loss))
