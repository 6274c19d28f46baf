"""Xen's errno values and the one exception type every protocol raises.

Xen numbers its errors like Linux (``xen/include/public/errno.h``); hypercalls return
them negated, and xenstored sends their *names* as strings (``xs_wire.h``
``xsd_errors``). Every decoder and state machine in ``protocols`` reports a failure a
peer can cause by raising :class:`XenError`, never another exception, so actors can
turn it into Xen's answer (``-errno`` for a hypercall, ``ERROR "EACCES"`` on the
xenstore wire) without guessing.
"""

from __future__ import annotations

import enum


class Errno(enum.IntEnum):
    """``xen/include/public/errno.h`` (x86 values, the same as Linux)."""

    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4
    EIO = 5
    ENXIO = 6
    E2BIG = 7
    ENOEXEC = 8
    EBADF = 9
    ECHILD = 10
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EXDEV = 18
    ENODEV = 19
    EISDIR = 21
    EINVAL = 22
    ENFILE = 23
    EMFILE = 24
    ENOSPC = 28
    ESPIPE = 29
    EROFS = 30
    EMLINK = 31
    EDOM = 33
    ERANGE = 34
    EDEADLK = 35
    ENAMETOOLONG = 36
    ENOLCK = 37
    ENOSYS = 38
    ENOTEMPTY = 39
    ENODATA = 61
    EOPNOTSUPP = 95
    EADDRINUSE = 98
    EADDRNOTAVAIL = 99
    ENOBUFS = 105
    EISCONN = 106
    ENOTCONN = 107
    ETIMEDOUT = 110
    EOVERFLOW = 75


class XenError(Exception):
    """A failure with a Xen errno, caused by a peer's input or request.

    ``rc`` is what a hypercall returns for it (``-errno``); ``str(err.errno.name)``
    is what xenstored puts in an ERROR reply.
    """

    def __init__(self, errno: Errno, detail: str = "") -> None:
        self.errno = Errno(errno)
        self.detail = detail
        super().__init__(f"{self.errno.name}: {detail}" if detail else self.errno.name)

    @property
    def rc(self) -> int:
        return -int(self.errno)

    def __reduce__(self):
        """Pickle as (errno, detail), so the error crosses processes (Ray) as what it was."""
        return (type(self), (self.errno, self.detail))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, XenError) and other.errno == self.errno

    def __hash__(self) -> int:
        return hash(self.errno)
