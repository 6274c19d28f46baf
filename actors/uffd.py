"""Linux's dirty-page tracking for a process's memory: ``userfaultfd`` write-protect and
``PAGEMAP_SCAN`` (``/work/shared/guest-memory-tracking.md``), and the handover of those
descriptors from a guest's process to its host's hypervisor.

Why: Xen's log-dirty mode (``XEN_DOMCTL_shadow_op``, reference 15.3) sees every guest write
through the guest's page tables. A guest here is a process mapping its ``/dev/shm`` memory
file, and the kernel gives the same power over that mapping: with *asynchronous*
write-protect (``UFFD_FEATURE_WP_ASYNC``) a write to a protected page does not stop the
writer, the kernel just lifts the protection and the page reads as written in the process's
``pagemap``; ``PAGEMAP_SCAN`` returns the written pages and protects them again in one call.

Both descriptors are bound to the memory (``mm``) of the process that *created* them, not of
whoever uses them, so the guest's process opens them at boot, as a CPU comes with its
dirty-logging hardware, and hands them to the hypervisor over a Unix socket with
``SCM_RIGHTS``; the hypervisor registers, protects and scans from its own process (no ptrace
rights needed). The socket lives next to the host's memory files: :func:`handover_path`.

Pure ``ctypes``/``fcntl``; shared by the guest side (``actors.domain.dirtylog``) and the
hypervisor side (``actors.hypervisor.logdirty``), which may not import each other.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

from typing import TYPE_CHECKING

import msgpack

from protocols.page import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:  # numpy is the scanner's (the hypervisor's): a guest's process needs none
    import numpy as np

# -- include/uapi/linux/userfaultfd.h --------------------------------------------------------
NR_USERFAULTFD = 323  # x86_64
UFFD_USER_MODE_ONLY = 1  # only user-mode faults: what an unprivileged process may ask for
UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api {api, features, ioctls})
UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register {range, mode, ioctls})
UFFDIO_UNREGISTER = 0x8010AA01  # _IOR(0xAA, 0x01, struct uffdio_range {start, len})
UFFDIO_WRITEPROTECT = 0xC018AA06  # _IOWR(0xAA, 0x06, struct uffdio_writeprotect {range, mode})
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
WP_FEATURES = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM

# -- include/uapi/linux/fs.h: PAGEMAP_SCAN ----------------------------------------------------
PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)
PM_SCAN_WP_MATCHING = 1 << 0  # write-protect the pages it returns (CLEAN)
PM_SCAN_CHECK_WPASYNC = 1 << 1  # refuse (EPERM) a range not in async write-protect mode
PAGE_IS_WRITTEN = 1 << 1
_SCAN_ARG = struct.Struct("=12Q")  # size flags start end walk_end vec vec_len max_pages
#                                    category_inverted category_mask category_anyof_mask return_mask
_REGION = [("start", "<u8"), ("end", "<u8"), ("categories", "<u8")]  # a numpy dtype
SCAN_VEC_LEN = 8192  # regions per PAGEMAP_SCAN call (192 KiB); more are fetched by looping

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Unsupported(OSError):
    """This kernel (or this process's rights) gives no asynchronous write-protect."""


def create() -> int:
    """A userfaultfd for this process's memory, in async write-protect mode (``UFFDIO_API``
    done); close-on-exec, non-blocking, user-mode faults only (so it works for non-root with
    ``vm.unprivileged_userfaultfd = 0``). :class:`Unsupported` if the kernel can't."""
    fd = _libc.syscall(NR_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY)
    if fd < 0:
        e = ctypes.get_errno()
        raise Unsupported(e, f"userfaultfd: {os.strerror(e)}")
    try:
        api = bytearray(struct.pack("=3Q", UFFD_API, WP_FEATURES, 0))
        fcntl.ioctl(fd, UFFDIO_API, api, True)
    except OSError as e:
        os.close(fd)
        raise Unsupported(e.errno, f"UFFDIO_API with async write-protect: {e.strerror}") from e
    return fd


def register(uffd: int, addr: int, length: int) -> None:
    """``UFFDIO_REGISTER`` of ``[addr, addr+length)`` in write-protect mode. Works on the
    creator's memory whichever process calls it (the ioctl acts on the descriptor's mm)."""
    fcntl.ioctl(uffd, UFFDIO_REGISTER,
                bytearray(struct.pack("=4Q", addr, length, UFFDIO_REGISTER_MODE_WP, 0)), True)


def write_protect(uffd: int, addr: int, length: int, protect: bool) -> None:
    """``UFFDIO_WRITEPROTECT`` of a registered range: on (log-dirty ENABLE) or off (OFF)."""
    mode = UFFDIO_WRITEPROTECT_MODE_WP if protect else 0
    fcntl.ioctl(uffd, UFFDIO_WRITEPROTECT, bytearray(struct.pack("=3Q", addr, length, mode)),
                True)


class Scanner:
    """``PAGEMAP_SCAN`` of one range of a pagemap descriptor, for the pages written since they
    were last protected. Its buffers are allocated once: a scan allocates only its result."""

    def __init__(self, pagemap: int, addr: int, length: int) -> None:
        self.pagemap, self.addr, self.length = pagemap, addr, length
        self.nr_pages = length >> PAGE_SHIFT
        import numpy as np

        self._vec = np.zeros(SCAN_VEC_LEN, _REGION)
        self._arg = bytearray(_SCAN_ARG.size)

    def written(self, clear: bool) -> np.ndarray:
        """A bool per page of the range: written since last protected. ``clear`` protects
        them again in the same walk (CLEAN); without it nothing changes (PEEK).

        The kernel fills at most ``SCAN_VEC_LEN`` regions per call and says where it stopped
        (``walk_end``): loop from there until the end of the range."""
        import numpy as np

        flags = PM_SCAN_CHECK_WPASYNC | (PM_SCAN_WP_MATCHING if clear else 0)
        end = self.addr + self.length
        # +1/-1 at each region's edges; the running sum is > 0 inside a region.
        edges = np.zeros(self.nr_pages + 1, np.int32)
        start = self.addr
        vec = self._vec.ctypes.data
        while start < end:
            _SCAN_ARG.pack_into(self._arg, 0, _SCAN_ARG.size, flags, start, end, 0, vec,
                                SCAN_VEC_LEN, 0, 0, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN)
            n = fcntl.ioctl(self.pagemap, PAGEMAP_SCAN, self._arg, True)
            walk_end = _SCAN_ARG.unpack_from(self._arg)[4]
            if n:
                regions = self._vec[:n]
                # One call's regions are sorted and disjoint: no index repeats within one.
                edges[(regions["start"] - self.addr) >> PAGE_SHIFT] += 1
                edges[(regions["end"] - self.addr) >> PAGE_SHIFT] -= 1
            if walk_end <= start:  # no progress: should not happen, never spin
                raise OSError(errno.EIO, f"PAGEMAP_SCAN made no progress at {start:#x}")
            start = walk_end
        return np.cumsum(edges[:-1]) > 0


def open_pagemap() -> int:
    """This process's ``/proc/self/pagemap``: whoever holds it scans *this* process."""
    return os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)


def address_of(buffer) -> int:
    """The address of a writable buffer (an ``mmap``), for the ranges above."""
    c = ctypes.c_char.from_buffer(buffer)
    try:
        return ctypes.addressof(c)
    finally:
        del c  # release the buffer export at once: the mmap must stay closable


# -- the handover --------------------------------------------------------------------------

HANDOVER_SUFFIX = "-logdirty"
MAX_MESSAGE = 4096


def handover_path(mem_prefix: str) -> str:
    """The hypervisor's handover socket: next to its memory files (``<mem_prefix>-d<domid>``)."""
    return f"{mem_prefix}{HANDOVER_SUFFIX}"


def handover_path_for(memory_path: str, domid: int) -> str | None:
    """The socket a domain whose memory file is ``memory_path`` hands over to (None if the
    path is not one its host's hypervisor named)."""
    suffix = f"-d{domid}"
    if not memory_path.endswith(suffix):
        return None
    return handover_path(memory_path[:-len(suffix)])


def encode_handover(domid: int, secret: str, addr: int, length: int) -> bytes:
    return msgpack.packb({"domid": domid, "secret": secret, "addr": addr, "length": length})


def decode_handover(data: bytes) -> tuple[int, str, int, int]:
    """(domid, secret, addr, length) of a handover message; ``ValueError`` if malformed."""
    try:
        m = msgpack.unpackb(data, raw=False)
        domid, secret, addr, length = m["domid"], m["secret"], m["addr"], m["length"]
    except Exception as e:  # noqa: BLE001 - any malformed message is just malformed
        raise ValueError(f"handover message: {type(e).__name__}") from None
    if not (type(domid) is int and type(secret) is str and type(addr) is int
            and type(length) is int and addr % PAGE_SIZE == 0 and length % PAGE_SIZE == 0
            and 0 < addr and 0 < length < 1 << 47):
        raise ValueError("handover message: bad field")
    return domid, secret, addr, length


def send_handover(path: str, message: bytes, fds: list[int], timeout: float) -> int:
    """Connect, send ``message`` with ``fds`` attached, and return the hypervisor's rc."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(timeout)
        s.connect(path)
        socket.send_fds(s, [message], fds)
        reply = s.recv(64)
    try:
        rc = msgpack.unpackb(reply) if reply else -errno.EPIPE
    except Exception:  # noqa: BLE001 - a garbled answer is a protocol error, not a crash
        return -errno.EPROTO
    return rc if type(rc) is int else -errno.EPROTO
