"""The domains xenstored serves (reference 11.4 "Special watch events", "Domain removal";
``tools/xenstored/domain.c``).

A domain is *introduced* by dom0's INTRODUCE (its ring's gfn and event channel) and stays
until it is released or dies. Its record remembers whether @releaseDomain already fired for
its shutdown (so a shutdown is announced once, until RESUME re-arms it) and which domain it
serves as a device model (SET_TARGET), which permission checks consult.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from protocols.errno import Errno, XenError


@dataclasses.dataclass(slots=True)
class DomainInfo:
    """An introduced domain (``struct domain``), as the actor needs it to re-map rings."""

    domid: int
    gfn: int
    evtchn: int
    shutdown: bool = False  # @releaseDomain fired for its shutdown; RESUME clears it
    target: int | None = None  # SET_TARGET


class DomainTable:
    """Introduced domains by domid."""

    def __init__(self) -> None:
        self._domains: dict[int, DomainInfo] = {}

    def __len__(self) -> int:
        return len(self._domains)

    def __contains__(self, domid: int) -> bool:
        return domid in self._domains

    def introduce(self, domid: int, gfn: int, evtchn: int) -> bool:
        """Record INTRODUCE; True if the domain is new (False: re-introduced)."""
        if evtchn <= 0:
            raise XenError(Errno.EINVAL, f"event channel {evtchn}")
        new = domid not in self._domains
        if new:
            self._domains[domid] = DomainInfo(domid, gfn, evtchn)
        else:
            self._domains[domid].gfn, self._domains[domid].evtchn = gfn, evtchn
        return new

    def get(self, op: str, domid: int) -> DomainInfo:
        """``onearg_domain``: EINVAL for dom0, ENOENT for a domain not introduced."""
        if domid == 0:
            raise XenError(Errno.EINVAL, f"{op} of domain 0")
        if domid not in self._domains:
            raise XenError(Errno.ENOENT, f"domain {domid} not introduced")
        return self._domains[domid]

    def target_of(self, domid: int) -> int | None:
        dom = self._domains.get(domid)
        return dom.target if dom is not None else None

    def set_target(self, domid: int, tdomid: int) -> None:
        if domid not in self._domains or tdomid not in self._domains:
            raise XenError(Errno.ENOENT, f"domain {domid} or {tdomid} not introduced")
        self._domains[domid].target = tdomid

    def shutdown(self, domid: int) -> bool:
        """Note a shutdown; True if @releaseDomain should fire for it now."""
        dom = self._domains.get(domid)
        if dom is None or dom.shutdown:
            return False
        dom.shutdown = True
        return True

    def forget(self, domid: int) -> bool:
        """Drop the record; True if the domain had been introduced."""
        return self._domains.pop(domid, None) is not None

    def all(self) -> list[DomainInfo]:
        return [dataclasses.replace(d) for _, d in sorted(self._domains.items())]

    def save(self) -> list[list[Any]]:
        return [list(dataclasses.astuple(d)) for d in self._domains.values()]

    @classmethod
    def restore(cls, state: list[list[Any]]) -> DomainTable:
        table = cls()
        table._domains = {fields[0]: DomainInfo(*fields) for fields in state}
        return table
