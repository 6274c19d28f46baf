"""The migration stream between two hosts' toolstack agents: ordered chunks over the transport.

``xl migrate`` pipes the stream through ssh to ``xl migrate-receive``. Here the sender's agent
cuts the same byte stream into chunks (a PAGE_DATA record of up to 1024 pages is one chunk of
4 MiB) and calls the receiver's agent with each; Ray carries an argument that large through
its object store, so pages cross hosts in batches, never one call per page. A few calls are
in flight at once (:data:`WINDOW`) to keep the link busy; since a threaded actor may run them
in any order, each carries its sequence number and the receiver puts them back in order
(:class:`ChunkReceiver`), holding at most :data:`BUFFERED` chunks before it makes the sender
wait. Either side can fail the stream (:meth:`ChunkReceiver.fail`): the other learns it at its
next call, as a broken pipe.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from protocols.errno import Errno, XenError

WINDOW = 3  # chunk calls in flight
BUFFERED = 8  # chunks a receiver holds before it makes the sender wait
CHUNK_BYTES = 4 << 20  # small records are gathered up to about this much per call
CHUNK_TIMEOUT_S = 300.0  # the sender may be silent this long: waiting for the receiver to be
# built (120 s at most), then for the guest to ack and to suspend (60 s each, as libxl)


class ChunkSender:
    """Writes a byte stream to ``call(seq, data)`` in ordered chunks, ``WINDOW`` in flight.
    :meth:`write` gathers small writes; :meth:`flush` sends what is gathered; :meth:`close`
    flushes and waits for every call. The first failed call is raised by the next
    write/flush/close."""

    def __init__(self, call: Callable[[int, bytes | np.ndarray], Any], window: int = WINDOW,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self._call, self._chunk_bytes = call, chunk_bytes
        self._pool = concurrent.futures.ThreadPoolExecutor(window, "migrate-send")
        self._slots = threading.Semaphore(window)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._futures: list[concurrent.futures.Future] = []
        self._seq = 0
        self.bytes_sent = 0

    def write(self, data: bytes | np.ndarray) -> None:
        """Queue ``data`` (bytes, or a uint8 array: Ray carries an array without copying it
        through pickle) for the next chunk."""
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self._chunk_bytes:
            self.flush()

    def flush(self) -> None:
        self._raise_failed()
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else np.concatenate(
            [np.frombuffer(p, dtype=np.uint8) for p in self._pending])
        self._pending, self._pending_bytes = [], 0
        self._slots.acquire()
        seq, self._seq = self._seq, self._seq + 1
        self.bytes_sent += len(data)
        future = self._pool.submit(self._call, seq, data)
        future.add_done_callback(lambda f: self._slots.release())
        self._futures.append(future)

    @property
    def chunks_sent(self) -> int:
        return self._seq

    def abandon(self) -> None:
        """The stream failed: send nothing more; calls in flight end on their own."""
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def drain(self) -> int:
        """Flush, then wait for every chunk to be taken; the chunks sent so far."""
        self.flush()
        for future in self._futures:
            future.result()
        self._futures.clear()
        return self._seq

    def close(self) -> None:
        """:meth:`drain`, and send nothing more."""
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _raise_failed(self) -> None:
        done = [f for f in self._futures if f.done()]
        for future in done:
            future.result()  # raises the call's error
        self._futures = [f for f in self._futures if not f.done()]


class ChunkReceiver:
    """The receiving end: :meth:`put` (any thread, any order) and :meth:`read` (the one
    consumer, in sequence order; ``b""`` once :meth:`end` was put after the last chunk)."""

    def __init__(self, buffered: int = BUFFERED, timeout: float = CHUNK_TIMEOUT_S) -> None:
        self._cv = threading.Condition()
        self._chunks: dict[int, bytes] = {}
        self._next = 0
        self._end: int | None = None
        self._error: str | None = None
        self._buffered, self._timeout = buffered, timeout

    def put(self, seq: int, data: bytes) -> None:
        """Chunk ``seq``; waits while ``buffered`` chunks are held ahead of the reader."""
        try:
            data = memoryview(data).cast("B")
        except TypeError:
            data = None
        if not isinstance(seq, int) or seq < 0 or data is None:
            raise XenError(Errno.EINVAL, "a migration chunk is a sequence number and bytes")
        with self._cv:
            if not self._cv.wait_for(lambda: self._error is not None or
                                     seq < self._next + self._buffered, self._timeout):
                raise XenError(Errno.ETIMEDOUT, "the restore is not reading the stream")
            self._check()
            if seq < self._next or seq in self._chunks:
                raise XenError(Errno.EINVAL, f"migration chunk {seq} was sent twice")
            self._chunks[seq] = data
            self._cv.notify_all()

    def end(self, count: int) -> None:
        """The sender sent ``count`` chunks in all."""
        with self._cv:
            self._end = count
            self._cv.notify_all()

    def read(self) -> memoryview | bytes:
        """The next chunk in order; ``b""`` at the end; ETIMEDOUT if the sender goes quiet,
        EIO if the stream was failed."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._error is not None or
                                     self._next in self._chunks or self._end == self._next,
                                     self._timeout):
                raise XenError(Errno.ETIMEDOUT, f"no migration data for {self._timeout:.0f} s")
            self._check()
            if self._end == self._next:
                return b""
            data = self._chunks.pop(self._next)
            self._next += 1
            self._cv.notify_all()
            return data

    def wait_read(self, count: int, timeout: float) -> bool:
        """Wait, at most ``timeout`` s, until the reader has taken the first ``count`` chunks
        (True), or the stream failed (EIO)."""
        with self._cv:
            done = self._cv.wait_for(lambda: self._error is not None or self._next >= count,
                                     timeout)
            self._check()
            return done

    def fail(self, why: str) -> None:
        """Break the stream: waiting and later calls on either end raise EIO."""
        with self._cv:
            self._error = self._error or why
            self._chunks.clear()
            self._cv.notify_all()

    def _check(self) -> None:
        if self._error is not None:
            raise XenError(Errno.EIO, f"migration stream broken: {self._error}")
