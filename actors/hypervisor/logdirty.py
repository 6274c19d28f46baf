"""The hypervisor's dirty-logging hardware: each guest process's write-protect and pagemap.

Xen's log-dirty mode (``xen/arch/x86/mm/paging.c``, reference 15.3) learns of guest writes
from the guest's page tables. Here the guest's process hands its ``userfaultfd`` and its
``/proc/self/pagemap`` to this host's hypervisor at boot (``actors.domain.dirtylog``, over the
socket :class:`HandoverServer` listens on), and :class:`UffdDirtyLog` is what the state
machine's ``shadow_op`` drives through the :class:`DirtyLog` interface: it registers the
guest's memory mapping for write-protect on receipt, protects it all for ENABLE, scans it with
``PAGEMAP_SCAN`` for CLEAN (re-protecting what it returns) and PEEK, and lifts the protection
for OFF. The guest's writes are tracked by its kernel, not by its good will; what the
hypervisor and other domains write through *their* mappings is the state machine's business
(``gnttab_mark_dirty``).

Authentication: the socket is 0600, the sender's pid (``SO_PEERCRED``) must be the domain's
vCPU process and the message must carry the domain's secret (as ``authorize_hvpipe``). The
toolstack starts the process and only then, once the process is up, names its pid with
``setvcpucontext``; so a handover with the right secret that arrives before is kept *pending*
for its pid and the domain gets it when ``setvcpucontext`` names that pid (:meth:`claim`);
the others pending for the domain are then closed. At most ``MAX_PENDING`` wait per domain.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import numpy as np

from actors import uffd
from actors.runtime import THREADS, Runtime
from protocols.errno import Errno, XenError
from protocols.page import PAGE_SHIFT

MAX_PENDING = 4  # handovers kept per domain until setvcpucontext names the vCPU process
RECV_TIMEOUT_S = 2.0  # a connection that sends nothing in time is dropped
_PEERCRED = struct.Struct("3i")  # struct ucred {pid, uid, gid}


class DirtyLog(Protocol):
    """What the state machine needs of the hardware logging a domain's own writes."""

    def claim(self, domid: int, pid: int) -> None:
        """The toolstack named ``pid`` as the domain's vCPU process: its handover is the
        domain's (any other is dropped)."""

    def forget(self, domid: int) -> None:
        """The domain is gone: close its descriptors."""

    def enable(self, domid: int) -> None:
        """Write-protect all the domain's memory; ``XenError(EOPNOTSUPP)`` if its process
        handed nothing over."""

    def scan(self, domid: int, clear: bool) -> np.ndarray:
        """A bool per page (pfn order, from pfn 0): written by the domain's process since
        last protected; ``clear`` protects those again (CLEAN), else nothing changes (PEEK)."""

    def disable(self, domid: int) -> None:
        """Lift the protection (log-dirty OFF)."""


class NoDirtyLog:
    """A host whose guests hand nothing over: ENABLE is always -EOPNOTSUPP."""

    def claim(self, domid: int, pid: int) -> None:
        pass

    def forget(self, domid: int) -> None:
        pass

    def enable(self, domid: int) -> None:
        raise XenError(Errno.EOPNOTSUPP, f"domain {domid} has no dirty logging")

    def scan(self, domid: int, clear: bool) -> np.ndarray:
        raise XenError(Errno.EOPNOTSUPP, f"domain {domid} has no dirty logging")

    def disable(self, domid: int) -> None:
        pass


def _xen_error(e: OSError, what: str) -> XenError:
    """A kernel error on a guest's descriptor (its process gone: ESRCH) as Xen's rc."""
    try:
        code = Errno(e.errno)
    except ValueError:
        code = Errno.EIO
    return XenError(code, f"{what}: {e.strerror}")


class GuestTracker:
    """One guest process's descriptors and the range of its memory mapping (pfn 0 at
    ``addr``). Registering happens here, from the hypervisor's process: the ioctl acts on the
    memory of the process that created the descriptor."""

    def __init__(self, pid: int, uffd_fd: int, pagemap_fd: int, addr: int, length: int) -> None:
        self.pid, self.uffd, self.pagemap = pid, uffd_fd, pagemap_fd
        self.addr, self.length = addr, length
        self.nr_pages = length >> PAGE_SHIFT
        self.scanner = uffd.Scanner(pagemap_fd, addr, length)
        self.all_dirty = False  # replaced a tracker while protected: report everything once
        uffd.register(uffd_fd, addr, length)

    def protect(self, on: bool) -> None:
        uffd.write_protect(self.uffd, self.addr, self.length, on)

    def scan(self, clear: bool) -> np.ndarray:
        written = self.scanner.written(clear)
        if self.all_dirty:
            written[:] = True
            self.all_dirty = not clear
        return written

    def close(self) -> None:
        for fd in (self.uffd, self.pagemap):
            try:
                os.close(fd)
            except OSError:
                pass


class UffdDirtyLog:
    """:class:`DirtyLog` over the descriptors guest processes handed over. Called only under
    the hypervisor shell's lock."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self._pending: dict[int, dict[int, GuestTracker]] = {}
        self._attached: dict[int, GuestTracker] = {}
        self._protected: set[int] = set()

    def offer(self, domid: int, tracker: GuestTracker) -> None:
        """A handover whose secret was right, waiting for :meth:`claim` of its pid."""
        waiting = self._pending.setdefault(domid, {})
        old = waiting.pop(tracker.pid, None)
        if old is not None:
            old.close()
        waiting[tracker.pid] = tracker
        while len(waiting) > MAX_PENDING:
            waiting.pop(next(iter(waiting))).close()

    def claim(self, domid: int, pid: int) -> None:
        waiting = self._pending.pop(domid, {})
        tracker = waiting.pop(pid, None)
        for other in waiting.values():
            other.close()
        current = self._attached.get(domid)
        if tracker is None:
            if current is not None and current.pid != pid:  # another process runs it now
                self._attached.pop(domid).close()
            return
        if current is not None:
            current.close()
        self._attached[domid] = tracker
        if domid in self._protected:  # a new process mid-log-dirty: its history is unknown
            try:
                tracker.protect(True)
            except OSError as e:
                self.log.warning("protecting a new vCPU process failed", domid=domid,
                                 error=str(e))
            tracker.all_dirty = True
        self.log.info("dirty logging attached", domid=domid, pid=pid,
                      pages=tracker.nr_pages)

    def attached(self, domid: int) -> bool:
        return domid in self._attached

    def forget(self, domid: int) -> None:
        for t in self._pending.pop(domid, {}).values():
            t.close()
        t = self._attached.pop(domid, None)
        if t is not None:
            t.close()
        self._protected.discard(domid)

    def _tracker(self, domid: int) -> GuestTracker:
        t = self._attached.get(domid)
        if t is None:
            self.log.warning("log-dirty refused: the domain's process handed over no "
                             "dirty logging (an old kernel, or no userfaultfd)", domid=domid)
            raise XenError(Errno.EOPNOTSUPP, f"domain {domid} has no dirty logging")
        return t

    def enable(self, domid: int) -> None:
        t = self._tracker(domid)
        try:
            t.protect(True)
        except OSError as e:
            raise _xen_error(e, "UFFDIO_WRITEPROTECT") from e
        self._protected.add(domid)

    def scan(self, domid: int, clear: bool) -> np.ndarray:
        try:
            return self._tracker(domid).scan(clear)
        except OSError as e:
            raise _xen_error(e, "PAGEMAP_SCAN") from e

    def disable(self, domid: int) -> None:
        self._protected.discard(domid)
        t = self._attached.get(domid)
        if t is not None:
            try:
                t.protect(False)
            except OSError as e:  # the process is gone: nothing is protected any more
                self.log.info("unprotecting failed", domid=domid, error=str(e))

    def close(self) -> None:
        for domid in {*self._pending, *self._attached}:
            self.forget(domid)


Handover = Callable[[int, str, int, GuestTracker], int]  # (domid, secret, pid, tracker) -> rc


class HandoverServer:
    """The 0600 ``SOCK_SEQPACKET`` socket at ``path`` where guest processes hand over their
    descriptors: one message (:func:`actors.uffd.encode_handover`) with exactly two
    descriptors, answered with an rc. ``accept(domid, secret, pid, tracker)`` decides (and
    owns the tracker when it returns 0). Connections are served one at a time, each for at
    most ``RECV_TIMEOUT_S``."""

    def __init__(self, path: str, accept: Handover, log: Any,
                 runtime: Runtime = THREADS) -> None:
        self.path, self.log = path, log
        self._accept = accept
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind(path)
            os.chmod(path, 0o600)
            self._sock.listen(64)
        except OSError:
            self._sock.close()
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._done = threading.Event()
        self.stats = {"accepted": 0, "refused": 0}
        runtime.spawn(self._run, name="logdirty-handover")

    def close(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._done.wait(timeout=RECV_TIMEOUT_S + 1)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._stopping:
                for fd, _ in poller.poll():
                    if fd == self._sock.fileno() and not self._stopping:
                        try:
                            conn, _ = self._sock.accept()
                        except OSError:
                            continue
                        with conn:
                            self._serve(conn)
        finally:
            self._sock.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._done.set()

    def _serve(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(RECV_TIMEOUT_S)
            pid, _, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         _PEERCRED.size))
            msg, fds, flags, _ = socket.recv_fds(conn, uffd.MAX_MESSAGE, 2)
            rc = self._handle(pid, msg, fds, flags)
            if rc == 0:
                fds = []  # the tracker owns them now
            self.stats["accepted" if rc == 0 else "refused"] += 1  # counted before answering
            conn.sendall(msgpack.packb(rc))
        except OSError as e:
            self.log.info("dirty-logging handover connection failed", error=str(e))
        except Exception:  # noqa: BLE001 - one bad handover never stops the server
            self.log.exception("dirty-logging handover failed")
        finally:
            for fd in fds:
                os.close(fd)

    def _handle(self, pid: int, msg: bytes, fds: list[int], flags: int) -> int:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != 2:
            return -Errno.EINVAL
        try:
            domid, secret, addr, length = uffd.decode_handover(msg)
        except ValueError:
            return -Errno.EINVAL
        uffd_fd, pagemap_fd = fds
        # The pagemap must be the sender's own (what /proc/self/pagemap resolves to).
        try:
            if os.readlink(f"/proc/self/fd/{pagemap_fd}") != f"/proc/{pid}/pagemap" or \
                    os.readlink(f"/proc/self/fd/{uffd_fd}") != "anon_inode:[userfaultfd]":
                return -Errno.EINVAL
            tracker = GuestTracker(pid, uffd_fd, pagemap_fd, addr, length)
        except OSError as e:
            self.log.warning("dirty-logging handover unusable", domid=domid, pid=pid,
                             error=str(e))
            return -(e.errno or Errno.EINVAL)
        rc = self._accept(domid, secret, pid, tracker)
        if rc:
            self.log.warning("dirty-logging handover refused", domid=domid, pid=pid, rc=rc)
        return rc
