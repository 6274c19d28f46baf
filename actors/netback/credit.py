"""A vif's transmit credit: xl.cfg's ``rate=`` (Linux ``drivers/net/xen-netback/netback.c``
``tx_credit_exceeded``, ``tx_add_credit``; the timer that refills it is the data path's).

Pure given its clock: it only says how long a packet must wait; the vif
(:class:`actors.netback.vif.NetbackVif`) holds the packet on the ring meanwhile and asks for
the timer.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class TxCredit:
    """The vif's transmit credit (Linux ``tx_credit_exceeded`` / ``tx_add_credit``), from
    the backend's ``rate`` node ("bytes,usec", libxl from xl.cfg's ``rate=``): the guest may
    send ``credit_bytes`` every ``credit_usec``. A packet over the credit waits, on the ring,
    for the next refill; one larger than a whole credit goes when the credit is full.
    ``clock`` is the runtime's ``monotonic`` (seconds)."""

    def __init__(self, credit_bytes: int, credit_usec: int, clock: Clock) -> None:
        if credit_bytes <= 0 or credit_usec <= 0:
            raise ValueError(f"rate {credit_bytes},{credit_usec}: both must be positive")
        self.credit_bytes, self.period = credit_bytes, credit_usec / 1e6
        self._clock = clock
        self.remaining = credit_bytes
        self.next_credit = clock() + self.period

    @classmethod
    def parse(cls, node: str | None, clock: Clock) -> TxCredit | None:
        """From the ``rate`` node; None when absent, empty or unreadable (no limit)."""
        try:
            nbytes, usec = (int(x) for x in (node or "").split(","))
            return cls(nbytes, usec, clock)
        except ValueError:
            return None

    def take(self, size: int) -> float:
        """Charge ``size`` bytes and return 0.0, or return the seconds until the refill that
        will let them go (nothing charged)."""
        now = self._clock()
        if now >= self.next_credit:
            self.remaining = self.credit_bytes
            self.next_credit = now + self.period
        if size <= self.remaining or self.remaining == self.credit_bytes:
            self.remaining = max(0, self.remaining - size)
            return 0.0
        return self.next_credit - now
