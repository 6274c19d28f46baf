"""The cluster's registry of domain names: which host holds each name, and its domid.

xl.cfg's ``name`` is unique on a Xen host (libxl checks it inside the creation transaction);
across the hosts of a xenray cluster it is unique too, so a user or a script can name a
domain without saying where it runs (a XenServer pool keeps the same promise in its master's
database). A toolstack agent reserves a name here *before* it builds anything, which makes two
creates of one name at once, on one host or two, end with exactly one domain.

Pure: the shell (:mod:`.actor`) serialises every call, so each method is atomic, and it
persists the entries each call changed. A holder is ``{"host": h, "domid": d, "token": t}``
(domid None while the domain is being built); ``token`` is unique to the toolstack record that
reserved it (:class:`actors.toolstack.state.Record`), so a reservation is told apart from an
older one of the same name on the same host.

Decisions:

* Every call about a held name carries the holder's token, and only the same token counts:
  reserve is idempotent for the same token (Ray may retry a call), and confirm, release and
  rename act only for it. A host's late release of a destroyed domain's name therefore
  cannot free the name its next create of that name holds (with a new token).
* A name whose holder is stale (its host's agent no longer has a record with that token:
  destroyed meanwhile, or the agent restarted) is not reclaimed here: the agent that wants it
  checks with the holder's host and then calls :meth:`NameRegistry.take_over`, which only
  succeeds if the holder is still, whole, the one that was checked (compare-and-swap), so two
  agents cannot both take it over.
"""

from __future__ import annotations

from typing import Any

from protocols.errno import Errno, XenError

Holder = dict[str, Any]  # {"host": str, "domid": int | None, "token": str}


class NameRegistry:
    """Domain names of one cluster. Mutated only through the methods below."""

    def __init__(self, entries: dict[str, Holder] | None = None) -> None:
        self._names: dict[str, Holder] = dict(entries or {})

    def reserve(self, name: str, host: str, token: str) -> Holder | None:
        """Reserve ``name`` for ``host``'s record ``token``: None if it is now reserved (or
        already was, for this token: a retried call), else its holder."""
        _check_name(name)
        held = self._names.get(name)
        if held is not None:
            return None if _is(held, host, token) else dict(held)
        self._names[name] = {"host": host, "domid": None, "token": token}
        return None

    def take_over(self, name: str, stale: Holder, host: str, token: str) -> bool:
        """Reserve ``name`` for ``host``'s record ``token`` if it is still held by exactly
        ``stale`` (checked stale), or is already (a retried call)."""
        held = self._names.get(name)
        if held is not None and _is(held, host, token):
            return True
        if held != stale:
            return False
        self._names[name] = {"host": host, "domid": None, "token": token}
        return True

    def confirm(self, name: str, host: str, token: str, domid: int) -> None:
        """The domain holding ``name`` for ``host``'s record ``token`` is (now) ``domid``."""
        self._held_by(name, host, token)["domid"] = domid

    def release(self, name: str, host: str, token: str) -> bool:
        """Give ``name`` up; False if ``host``'s record ``token`` did not hold it (nothing
        changes: the name may be another record's by now)."""
        held = self._names.get(name)
        if held is None or not _is(held, host, token):
            return False
        del self._names[name]
        return True

    def rename(self, old: str, new: str, host: str, token: str) -> Holder | None:
        """Move ``host``'s record ``token`` from ``old`` to ``new`` (xl's rename-restart): None
        if done (or already, a retried call), else the holder of ``new`` (``old`` stays)."""
        _check_name(new)
        taken = self._names.get(new)
        if taken is not None and _is(taken, host, token) and old not in self._names:
            return None
        held = self._held_by(old, host, token)
        if taken is not None:
            return dict(taken)
        self._names[new] = held
        del self._names[old]
        return None

    def host_lost(self, host: str) -> list[str]:
        """``host`` crashed and was fenced: every name it held is free again (its domains are
        lost, as a crashed Xen host's are); the names, sorted."""
        lost = sorted(name for name, held in self._names.items() if held["host"] == host)
        for name in lost:
            del self._names[name]
        return lost

    def lookup(self, name: str) -> Holder | None:
        held = self._names.get(name)
        return dict(held) if held is not None else None

    def _held_by(self, name: str, host: str, token: str) -> Holder:
        held = self._names.get(name)
        if held is None or not _is(held, host, token):
            raise XenError(Errno.ENOENT, f"{host} does not hold the name {name!r}")
        return held


def _is(held: Holder, host: str, token: str) -> bool:
    return held["host"] == host and held.get("token") == token


DOM0_NAME = "Domain-0"  # every host's Dom0 (xen-init-dom0), so no DomU may take it


def _check_name(name: str) -> None:
    """A domain name as xl accepts one: not empty, no ``/`` or NUL (it becomes a xenstore
    value and a console log file name), and not Dom0's."""
    if not isinstance(name, str) or not name or "/" in name or "\0" in name:
        raise XenError(Errno.EINVAL, f"invalid domain name {name!r}")
    if name == DOM0_NAME:
        raise XenError(Errno.EEXIST, f"{DOM0_NAME} is the name of every host's Dom0")
