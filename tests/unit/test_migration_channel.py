"""The migration stream's chunks between two agents (actors.toolstack.channel): whatever order
the calls run in, the reader gets the stream in order, and a broken end is seen by the other."""

import random
import threading

import pytest

from actors.toolstack.channel import ChunkReceiver, ChunkSender
from protocols.errno import Errno, XenError


def test_chunks_arrive_in_order_whatever_order_the_calls_run_in():
    rx = ChunkReceiver(buffered=64, timeout=10)
    stream = [bytes([i]) * random.randint(1, 50) for i in range(40)]
    order = list(range(len(stream)))
    random.Random(7).shuffle(order)
    threads = [threading.Thread(target=rx.put, args=(i, stream[i])) for i in order]
    for t in threads:
        t.start()
    rx.end(len(stream))
    got = []
    while chunk := rx.read():
        got.append(chunk)
    assert got == stream
    for t in threads:
        t.join()


def test_a_sender_gathers_small_writes_and_keeps_a_window_in_flight():
    rx = ChunkReceiver(timeout=10)
    calls = []
    inflight, most = [0], [0]
    lock = threading.Lock()

    def call(seq, data):
        with lock:
            inflight[0] += 1
            most[0] = max(most[0], inflight[0])
        calls.append(seq)
        rx.put(seq, data)
        with lock:
            inflight[0] -= 1

    got = []
    reader = threading.Thread(target=lambda: got.extend(iter(rx.read, b"")))
    reader.start()
    tx = ChunkSender(call, window=3, chunk_bytes=100)
    data = b"".join(bytes([i % 256]) * 30 for i in range(50))
    for i in range(50):
        tx.write(bytes([i % 256]) * 30)
    tx.close()
    rx.end(tx.chunks_sent)
    reader.join()
    assert b"".join(got) == data and tx.bytes_sent == len(data)
    assert tx.chunks_sent == len(calls) < 50  # gathered, not one call per write
    assert 1 <= most[0] <= 3  # never more calls in flight than the window


def test_a_failed_call_is_raised_by_the_sender():
    def call(seq, data):
        raise XenError(Errno.EIO, "receiver gone")

    tx = ChunkSender(call, chunk_bytes=1)
    with pytest.raises(XenError, match="receiver gone"):
        for _ in range(10):
            tx.write(b"x")
        tx.close()


def test_a_broken_stream_fails_both_ends_and_duplicates_are_refused():
    rx = ChunkReceiver(timeout=10)
    rx.put(0, b"a")
    with pytest.raises(XenError, match="sent twice"):
        rx.put(0, b"a")
    with pytest.raises(XenError) as e:
        rx.put(-1, b"a")
    assert e.value.errno is Errno.EINVAL
    rx.fail("restore refused it")
    with pytest.raises(XenError, match="restore refused it"):
        rx.read()
    with pytest.raises(XenError, match="restore refused it"):
        rx.put(1, b"b")


def test_a_quiet_sender_times_the_reader_out():
    rx = ChunkReceiver(timeout=0.05)
    with pytest.raises(XenError) as e:
        rx.read()
    assert e.value.errno is Errno.ETIMEDOUT


def test_drain_waits_for_every_chunk_and_wait_read_for_the_reader_to_take_them():
    """Before the suspend, the sender drains its chunks and the receiver waits until the
    restore has read them: the backlog is not worked off while the domain is down."""
    rx = ChunkReceiver(buffered=8, timeout=10)
    tx = ChunkSender(rx.put, window=3, chunk_bytes=4)
    for i in range(5):
        tx.write(bytes([i]) * 4)
    tx.write(b"tail")  # gathered, not yet a chunk of its own
    sent = tx.drain()
    assert sent == 6 and tx.chunks_sent == 6  # the tail was flushed and taken
    assert not rx.wait_read(sent, timeout=0.05)  # nobody has read them yet
    got = []
    reader = threading.Thread(target=lambda: got.extend(rx.read() for _ in range(6)))
    reader.start()
    assert rx.wait_read(sent, timeout=10)
    reader.join()
    assert got[-1] == b"tail"
    rx.fail("the sender cancelled")
    with pytest.raises(XenError) as e:
        rx.wait_read(sent + 1, timeout=10)
    assert e.value.errno == Errno.EIO
    tx.close()
