"""Xenstore permissions and who is asking (reference 11.3; ``tools/xenstored/core.c``
``perm_for_conn``, ``tools/include/xenstore_lib.h``, ``xenstore-common.h``).

A node carries a list of ``(domid, perm)`` entries. Entry 0 names the owner, who has full
access, and gives the default for every domain not listed; entries 1..n grant or deny
particular domains. A caller "matches" an entry by its own domid, by the domid it was made the
device model for (SET_TARGET), or because the entry names ``DOMID_ANY``.

On the wire an entry is a string: a letter (``n`` none, ``r`` read, ``w`` write, ``b`` both)
and a decimal domid, e.g. ``r5``. Xen parses the number with ``strtol(..., 0)``; this codec
takes plain decimal only (no sign, no leading zero, no hex or octal), 0..65535 (domid_t), and
answers EINVAL for anything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from protocols.errno import Errno, XenError
from protocols.hypercall import DOMID_ANY, DOMID_SELF  # noqa: F401  (re-exported by the package)

XS_PERM_NONE = 0x00
XS_PERM_READ = 0x01
XS_PERM_WRITE = 0x02
XS_PERM_OWNER = 0x08  # never on the wire: what perm_for_conn adds for owners
XS_PERM_ALL = XS_PERM_READ | XS_PERM_WRITE | XS_PERM_OWNER


_LETTER_TO_ACCESS = {"n": XS_PERM_NONE, "r": XS_PERM_READ, "w": XS_PERM_WRITE,
                     "b": XS_PERM_READ | XS_PERM_WRITE}
_ACCESS_TO_LETTER = {v: k for k, v in _LETTER_TO_ACCESS.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class Perm:
    """``struct xs_permissions`` (``tools/include/xenstore_lib.h``): one entry of a node's
    permission list; ``str(perm)`` is its wire form (``xenstore_perm_to_string``)."""

    domid: int
    access: int  # XS_PERM_NONE, XS_PERM_READ, XS_PERM_WRITE or both

    def __str__(self) -> str:
        return f"{_ACCESS_TO_LETTER[self.access]}{self.domid}"

    @classmethod
    def parse(cls, text: str) -> Perm:
        """``xenstore_strings_to_perms`` for one entry; EINVAL if malformed."""
        letter, number = text[:1], text[1:]
        if (letter not in _LETTER_TO_ACCESS or not number.isascii() or not number.isdigit()
                or number[0] == "0" != number or int(number) > 0xFFFF):
            raise XenError(Errno.EINVAL, f"bad permission {text!r:.40}")
        return cls(int(number), _LETTER_TO_ACCESS[letter])


def parse_perms(entries: Iterable[str | Perm]) -> tuple[Perm, ...]:
    """A permission list from wire strings (or Perms); EINVAL if empty or malformed."""
    perms = tuple(p if isinstance(p, Perm) else Perm.parse(p) for p in entries)
    if not perms:
        raise XenError(Errno.EINVAL, "a node needs at least one permission")
    return perms


def format_perms(perms: Iterable[Perm]) -> list[str]:
    """GET_PERMS's reply strings."""
    return [str(p) for p in perms]


@dataclasses.dataclass(frozen=True, slots=True)
class Conn:
    """The identity of one xenstored connection, as the caller of the store knows it.

    A domain's ring connection has ``socket=False``; a Unix-socket client (``xenstore-utils``,
    ``pyxs`` in dom0) has ``socket=True`` and ``domid`` 0. Relative paths are relative to the
    connection's domain, so to ``/local/domain/0`` on a socket. Dom0 and socket clients are
    ``privileged``: full access everywhere and no quotas.
    """

    conn_id: int
    domid: int
    privileged: bool = False
    socket: bool = False


def perm_for_conn(conn: Conn, perms: Sequence[Perm], target: int | None = None) -> int:
    """``perm_for_conn``: the XS_PERM_* bits ``conn`` has on a node with ``perms``.

    ``target`` is the domid ``conn``'s domain was given by SET_TARGET, if any.
    """
    owner = perms[0].domid
    if conn.privileged or owner in (conn.domid, target, DOMID_ANY):
        return XS_PERM_ALL
    for entry in perms[1:]:
        if entry.domid in (conn.domid, target, DOMID_ANY):
            return entry.access
    return perms[0].access
