"""The cluster's registry of domain names: which host holds each name, and its domid.

xl.cfg's ``name`` is unique on a Xen host (libxl checks it inside the creation transaction);
across the hosts of a xenray cluster it is unique too, so a user or a script can name a
domain without saying where it runs (a XenServer pool keeps the same promise in its master's
database). A toolstack agent reserves a name here *before* it builds anything, which makes two
creates of one name at once, on one host or two, end with exactly one domain.

Pure: the Ray shell (:mod:`.actor`) serialises every call, so each method is atomic, and it
persists the entries each call changed. A holder is ``{"host": h, "domid": d}`` (domid None
while the domain is being built).

Decisions:

* A name whose holder is stale (its host's agent no longer has that domain, e.g. it was
  restarted) is not reclaimed here: the agent that wants it checks with the holder's host and
  then calls :meth:`NameRegistry.take_over`, which only succeeds if the holder is still the one
  that was checked (compare-and-swap), so two agents cannot both take it over.
* Only the holding host may release, confirm or rename a name.
"""

from __future__ import annotations

from typing import Any

from protocols.errno import Errno, XenError

Holder = dict[str, Any]  # {"host": str, "domid": int | None}


class NameRegistry:
    """Domain names of one cluster. Mutated only through the methods below."""

    def __init__(self, entries: dict[str, Holder] | None = None) -> None:
        self._names: dict[str, Holder] = dict(entries or {})

    def reserve(self, name: str, host: str) -> Holder | None:
        """Reserve ``name`` for ``host``: None if it is now reserved, else its holder.

        Idempotent for the same host (a retried call): an agent asks only after finding no
        record of that name among its own domains, so an entry it already holds is its own."""
        _check_name(name)
        held = self._names.get(name)
        if held is not None and held["host"] != host:
            return dict(held)
        self._names[name] = {"host": host, "domid": None}
        return None

    def take_over(self, name: str, stale: Holder, host: str) -> bool:
        """Reserve ``name`` for ``host`` if it is still held by ``stale`` (checked stale)."""
        if self._names.get(name) != stale:
            return False
        self._names[name] = {"host": host, "domid": None}
        return True

    def confirm(self, name: str, host: str, domid: int) -> None:
        """The domain holding ``name`` on ``host`` is (now) ``domid``."""
        self._held_by(name, host)["domid"] = domid

    def release(self, name: str, host: str) -> bool:
        """Give ``name`` up; False if ``host`` did not hold it (nothing changes)."""
        held = self._names.get(name)
        if held is None or held["host"] != host:
            return False
        del self._names[name]
        return True

    def rename(self, old: str, new: str, host: str) -> Holder | None:
        """Move ``host``'s domain from ``old`` to ``new`` (xl's rename-restart): None if done,
        else the holder of ``new`` (and ``old`` stays)."""
        _check_name(new)
        held = self._held_by(old, host)
        taken = self._names.get(new)
        if taken is not None:
            return dict(taken)
        self._names[new] = held
        del self._names[old]
        return None

    def lookup(self, name: str) -> Holder | None:
        held = self._names.get(name)
        return dict(held) if held is not None else None

    def names(self, host: str | None = None) -> dict[str, Holder]:
        """Every name (of ``host``, if given) and its holder."""
        return {n: dict(h) for n, h in self._names.items() if host is None or h["host"] == host}

    def _held_by(self, name: str, host: str) -> Holder:
        held = self._names.get(name)
        if held is None or held["host"] != host:
            raise XenError(Errno.ENOENT, f"{host} does not hold the name {name!r}")
        return held


DOM0_NAME = "Domain-0"  # every host's Dom0 (xen-init-dom0), so no DomU may take it


def _check_name(name: str) -> None:
    """A domain name as xl accepts one: not empty, no ``/`` or NUL (it becomes a xenstore
    value and a console log file name), and not Dom0's."""
    if not isinstance(name, str) or not name or "/" in name or "\0" in name:
        raise XenError(Errno.EINVAL, f"invalid domain name {name!r}")
    if name == DOM0_NAME:
        raise XenError(Errno.EEXIST, f"{DOM0_NAME} is the name of every host's Dom0")
