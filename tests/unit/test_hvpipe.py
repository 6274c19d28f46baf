"""The same-host pipe (actors.transport.hvpipe): frames, doorbells, pieces, and a hostile peer.

The pipe is two flex rings (reference 7.4) in one /dev/shm file with FIFO doorbells; the
peer can write anything into the shared page, so every way of corrupting it must end in
HvPipeBroken, never a crash or a wrong message.
"""

import multiprocessing
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.transport import hvpipe as chan
from actors.transport.hvpipe import MAX_FRAME, RING_BYTES, HvPipe, HvPipeBroken


@pytest.fixture
def path():
    p = f"/dev/shm/xenray-test-{uuid.uuid4().hex[:12]}-ch"
    chan.create(p)
    yield p
    chan.unlink(p)


def _pair(path):
    return HvPipe(path, hypervisor=True), HvPipe(path, hypervisor=False)


def _drain(ch, n):
    got = []
    while len(got) < n:
        assert ch.wait(5.0), f"doorbell did not ring with {len(got)}/{n} messages"
        got += ch.receive()
    return got


def test_hvpipe_messages_go_both_ways_in_order(path):
    hv, client = _pair(path)
    for i in range(100):
        assert client.write(client.frame([i + 1, "hypercall", [0, "s", "e", b"\x01" * i]]))
    assert _drain(hv, 100) == [[i + 1, "hypercall", [0, "s", "e", b"\x01" * i]]
                               for i in range(100)]
    hv.write(hv.frame([0, "upcall", [3, [5, 6]]]))
    assert _drain(client, 1) == [[0, "upcall", [3, [5, 6]]]]


def test_hvpipe_doorbell_rings_only_after_a_write(path):
    hv, client = _pair(path)
    assert not hv.wait(0)
    assert hv.receive() == []
    client.write(client.frame("x"))
    assert hv.wait(0)
    assert hv.receive() == ["x"]
    assert not hv.wait(0), "receive empties the doorbell"


def test_hvpipe_frame_bigger_than_the_ring_goes_in_pieces(path):
    hv, client = _pair(path)
    frame = memoryview(client.frame(b"\xab" * (3 * RING_BYTES)))
    got = []
    while frame:
        n = client.write(frame)
        assert 0 < n <= RING_BYTES
        frame = frame[n:]
        got += hv.receive()
    assert got == [b"\xab" * (3 * RING_BYTES)]


def test_hvpipe_full_ring_accepts_nothing(path):
    hv, client = _pair(path)
    big = client.frame(b"\0" * (RING_BYTES - 100))
    assert client.write(big) == len(big)
    small = client.frame(b"\1" * 200)
    n = client.write(small)
    assert n < len(small)  # only what fits
    assert client.write(memoryview(small)[n:]) == 0
    assert hv.receive() == [b"\0" * (RING_BYTES - 100)]
    assert client.write(memoryview(small)[n:]) == len(small) - n
    assert hv.receive() == [b"\1" * 200]


def test_hvpipe_message_over_max_frame_is_refused_at_the_writer(path):
    _, client = _pair(path)
    with pytest.raises(ValueError):
        client.frame(b"\0" * (MAX_FRAME + 1))


def test_hvpipe_length_over_max_frame_breaks_it(path):
    hv, client = _pair(path)
    client._out.write(struct.pack("<I", MAX_FRAME + 1) + b"xx")  # noqa: SLF001
    with pytest.raises(HvPipeBroken):
        hv.receive()


def test_hvpipe_frame_that_is_not_msgpack_breaks_it(path):
    hv, client = _pair(path)
    client._out.write(struct.pack("<I", 1) + b"\xc1")  # 0xc1: never used in msgpack
    with pytest.raises(HvPipeBroken):
        hv.receive()


def test_hvpipe_corrupt_indices_break_both_directions(path):
    hv, client = _pair(path)
    client._out._prod[0] = RING_BYTES + 5  # noqa: SLF001  (prod - cons > size)
    with pytest.raises(HvPipeBroken):
        hv.receive()
    hv._out._cons[0] = 2**32 - RING_BYTES - 1  # noqa: SLF001  the client moved our cons
    with pytest.raises(HvPipeBroken):
        hv.write(hv.frame("x"))


def test_hvpipe_closed_flag_is_seen_by_the_client(path):
    hv, client = _pair(path)
    assert not client.closed
    hv.mark_closed()
    assert client.closed
    assert client.wait(0), "closing rings the client's doorbell"


def test_hvpipe_refuses_a_file_that_is_not_one(tmp_path):
    p = tmp_path / "junk"
    p.write_bytes(b"\0" * chan.FILE_BYTES)
    with pytest.raises(ValueError):
        HvPipe(str(p), hypervisor=True)


def _child_posts(path: str, n: int) -> None:
    client = HvPipe(path, hypervisor=False)
    for i in range(n):
        frame = memoryview(client.frame([i + 1, "hypercall", [i]]))
        while frame:
            frame = frame[client.write(frame):]


def test_hvpipe_between_two_processes_loses_no_wakeup(path):
    hv = HvPipe(path, hypervisor=True)
    n = 20000
    child = multiprocessing.get_context("fork").Process(target=_child_posts, args=(path, n))
    child.start()
    got = _drain(hv, n)
    child.join(10)
    assert child.exitcode == 0
    assert [m[2][0] for m in got] == list(range(n))


@settings(max_examples=40)
@given(st.lists(st.tuples(st.binary(max_size=3 * RING_BYTES // 2), st.booleans()),
                min_size=1, max_size=12))
def test_hvpipe_any_sizes_and_interleavings_arrive_whole_and_in_order(messages):
    p = f"/dev/shm/xenray-test-{uuid.uuid4().hex[:12]}-ch"
    chan.create(p)
    try:
        hv, client = _pair(p)
        got, pending = [], b""
        for body, read_now in messages:  # frames split wherever the ring is full
            pending += hv.frame(body)
            pending = pending[hv.write(pending):]
            if read_now:
                got += client.receive()
        while pending:
            pending = pending[hv.write(pending):]
            got += client.receive()
        got += client.receive()
        assert got == [body for body, _ in messages]
    finally:
        chan.unlink(p)
