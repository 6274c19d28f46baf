"""xenstored's journal on the host: an append-only log of records and a checkpoint that
compacts it, so that a killed xenstored restarts from what it had acknowledged.

C xenstored keeps its state across a live update by handing it to its successor
(``docs/designs/xenstore-migration.md``; oxenstored kept a database file for ``--restart``); a
process that is SIGKILLed hands nothing over, so here every change goes to this journal before
it is acknowledged, and the next incarnation reads the journal back. Two files:

* ``<prefix>.log``: frames ``u32 length, u32 crc32(seq + payload), u64 seq, payload``
  (msgpack of one record), appended with one ``write`` each, sequence numbers 1, 2, 3, ...
  after the checkpoint's;
* ``<prefix>.ckpt``: one such frame holding the whole state, its ``seq`` the last record it
  covers. It is written beside, then renamed over the old one (atomic), and only then is the
  log emptied, so a crash between the two leaves records the checkpoint covers, which
  :meth:`Journal.load` skips by their sequence number.

Durability: ``write`` hands the frame to the host's kernel, whose page cache outlives the
process: a SIGKILLed xenstored loses nothing it acknowledged. No ``fsync``: the files live in
``/dev/shm`` (tmpfs, where it would be a no-op), and a host that loses power loses its domains
with its xenstored, as a real Xen host does.

What :meth:`Journal.load` trusts: the frames from the start of the log up to the first that is
cut short (the tail of a write the kill interrupted), fails its checksum, or does not carry the
next sequence number (a record lost). Nothing after such a frame is replayed, since its effect
would be built on one that is missing; :attr:`Journal.damage` says what was cut.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from typing import Any

import msgpack

FRAME = struct.Struct("<IIQ")  # payload length, crc32 of seq and payload, seq
_SEQ = struct.Struct("<Q")


class JournalError(Exception):
    """The checkpoint cannot be read: the state it held is lost."""


def frame(seq: int, record: Any) -> bytes:
    """One frame: header and the msgpack of ``record``."""
    payload = msgpack.packb(record, use_bin_type=True)
    return FRAME.pack(len(payload), zlib.crc32(_SEQ.pack(seq) + payload), seq) + payload


def read_frames(data: bytes) -> tuple[list[tuple[int, Any, int]], str | None]:
    """The whole frames at the start of ``data`` as ``(seq, record, end offset)``, and why
    reading stopped before the end of ``data`` (None if it did not)."""
    frames, offset = [], 0
    while offset < len(data):
        if len(data) - offset < FRAME.size:
            return frames, f"torn tail: {len(data) - offset} bytes of a header"
        length, crc, seq = FRAME.unpack_from(data, offset)
        body = data[offset + FRAME.size:offset + FRAME.size + length]
        if len(body) < length:
            return frames, f"torn tail: {len(body)} of {length} bytes of record {seq}"
        if zlib.crc32(_SEQ.pack(seq) + body) != crc:
            return frames, f"bad checksum at byte {offset}"
        offset += FRAME.size + length
        frames.append((seq, msgpack.unpackb(body, raw=False), offset))
    return frames, None


class Journal:
    """The log and checkpoint under ``prefix``. Thread-safe; :meth:`append` and
    :meth:`checkpoint` callers keep the state and the order of records in step."""

    def __init__(self, prefix: str) -> None:
        self.log_path, self.checkpoint_path = f"{prefix}.log", f"{prefix}.ckpt"
        self.damage: str | None = None  # what load() cut off, if anything
        self.size = 0  # bytes in the log since the checkpoint
        self._seq = 0
        self._lock = threading.Lock()
        self._fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)

    def load(self) -> tuple[Any | None, list[Any]]:
        """The checkpoint's state (None if there is none) and the records logged after it, in
        order. The log is cut after the last record trusted, so appends go on from there."""
        state, base = None, 0
        try:
            with open(self.checkpoint_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            pass
        else:
            frames, why = read_frames(data)
            if why is not None or len(frames) != 1:
                raise JournalError(f"{self.checkpoint_path}: {why or 'not one state'}")
            (base, state, _), = frames
        with self._lock:
            data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
            frames, self.damage = read_frames(data)
            records, seq, keep = [], base, 0
            for found, record, end in frames:
                if found <= base:  # the checkpoint covers it (written, then the kill came
                    keep = end     # before the log was emptied)
                    continue
                if found != seq + 1:
                    self.damage = f"record {seq + 1} is missing (found {found})"
                    break
                records.append(record)
                seq, keep = found, end
            if self.damage is not None:
                os.ftruncate(self._fd, keep)
            self._seq, self.size = seq, keep
        return state, records

    def append(self, record: Any) -> None:
        """Log ``record``: it survives this process once this returns."""
        with self._lock:
            data = frame(self._seq + 1, record)
            _write_all(self._fd, data)
            self._seq += 1
            self.size += len(data)

    def checkpoint(self, state: Any) -> None:
        """Make ``state`` (everything the log's records built) the new base, and empty the
        log. The caller holds off appends meanwhile."""
        with self._lock:
            tmp = f"{self.checkpoint_path}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, frame(self._seq, state))
            finally:
                os.close(fd)
            os.replace(tmp, self.checkpoint_path)
            os.ftruncate(self._fd, 0)
            self.size = 0

    def reset(self) -> None:
        """Forget everything (a fresh boot): no checkpoint, an empty log."""
        with self._lock:
            for path in (self.checkpoint_path, f"{self.checkpoint_path}.tmp"):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            os.ftruncate(self._fd, 0)
            self._seq = self.size = 0
            self.damage = None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
