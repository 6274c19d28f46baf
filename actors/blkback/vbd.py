"""A virtual block device's backing store: a raw image file, addressed in 512-byte sectors.

blkback (Linux ``drivers/block/xen-blkback/xenbus.c`` ``xen_vbd_create``) opens the
physical device once per vbd, read-only or read-write as the toolstack's ``mode`` says, and
turns ring requests into I/O on it (xen-reference.md 8.1-8.2). Here the device is a raw
image file: READ/WRITE are ``preadv``/``pwritev`` straight into and out of the granted pages
(one syscall per request), FLUSH_DISKCACHE is ``fdatasync`` and DISCARD punches a hole.
Sector numbers are always 512-byte units (reference 19.11).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Sequence

from protocols.blkif import SECTOR_SIZE, parse_size

FALLOC_FL_KEEP_SIZE = 0x01  # linux/falloc.h
FALLOC_FL_PUNCH_HOLE = 0x02

_ZEROS = bytes(1 << 20)


def _load_fallocate():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = libc.fallocate
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


def create_image(path: str | os.PathLike, size: int | str, *, overwrite: bool = False) -> int:
    """Create a sparse raw image of ``size`` bytes (or a size string); returns the bytes.

    An existing file is refused (FileExistsError naming it) unless ``overwrite``.
    """
    nbytes = parse_size(size)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "image exists (pass overwrite to replace it)",
                              os.fspath(path)) from None
    try:
        os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)
    return nbytes


class Vbd:
    """An open raw image: ``sectors`` 512-byte sectors, read-only or read-write.

    Errors name the path: FileNotFoundError for a missing image, PermissionError for a
    read-only image (no write permission bit, or a read-only filesystem) opened writable,
    IsADirectoryError/ValueError for something that is not an image.
    """

    __slots__ = ("path", "readonly", "fd", "sectors", "punch_supported")

    def __init__(self, path: str | os.PathLike, *, readonly: bool) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        st = os.stat(self.path)  # FileNotFoundError names the path
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory is not a disk image", self.path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise ValueError(f"{self.path}: not a regular file or block device")
        # Root passes every access check, so a write-protected image is also refused by mode.
        if not readonly and (not st.st_mode & 0o222 or not os.access(self.path, os.W_OK)):
            raise PermissionError(errno.EACCES, "image is read-only, cannot attach it writable",
                                  self.path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY if readonly else os.O_RDWR)
        except OSError as e:
            if e.errno == errno.EROFS:
                raise PermissionError(errno.EROFS, "image is on a read-only filesystem",
                                      self.path) from None
            raise
        self.sectors = os.lseek(self.fd, 0, os.SEEK_END) // SECTOR_SIZE
        self.punch_supported = True

    def read(self, sector: int, nbytes: int) -> bytes:
        """``nbytes`` from ``sector`` on (short at the end of the image)."""
        return os.pread(self.fd, nbytes, sector * SECTOR_SIZE)

    def write(self, sector: int, data) -> None:
        """Write all of ``data`` at ``sector``."""
        self.writev(sector, (data,))

    def readv(self, sector: int, buffers: Sequence) -> int:
        """Scatter-read from ``sector`` into ``buffers`` (one syscall); returns bytes read."""
        return os.preadv(self.fd, buffers, sector * SECTOR_SIZE)

    def writev(self, sector: int, buffers: Sequence) -> int:
        """Gather-write ``buffers`` at ``sector``, retrying short writes; returns bytes written."""
        offset = sector * SECTOR_SIZE
        total = sum(len(b) for b in buffers)
        done = os.pwritev(self.fd, buffers, offset)
        if done < total:  # rare: finish with a plain write of the rest
            rest = b"".join(bytes(b) for b in buffers)[done:]
            while rest:
                n = os.pwrite(self.fd, rest, offset + done)
                done += n
                rest = rest[n:]
        return done

    def flush(self) -> None:
        """FLUSH_DISKCACHE: the written data reaches stable storage (``fdatasync``)."""
        os.fdatasync(self.fd)

    def discard(self, sector: int, nr_sectors: int) -> bool:
        """DISCARD: the range reads as zeros afterwards. Returns True if a hole was punched.

        ``fallocate(PUNCH_HOLE | KEEP_SIZE)`` frees the blocks (the file stays sparse and
        keeps its size). A filesystem that refuses (EOPNOTSUPP/ENOSYS) gets zeros written
        instead, which keeps the read-as-zero guarantee but frees nothing; the refusal is
        remembered in ``punch_supported`` so later discards go straight to zeros.
        """
        offset, length = sector * SECTOR_SIZE, nr_sectors * SECTOR_SIZE
        if not length:
            return False
        if self.punch_supported:
            if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          offset, length) == 0:
                return True
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(err, f"fallocate punch hole: {os.strerror(err)}", self.path)
            self.punch_supported = False
        end = offset + length
        while offset < end:
            offset += os.pwrite(self.fd, memoryview(_ZEROS)[:min(len(_ZEROS), end - offset)],
                                offset)
        return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
