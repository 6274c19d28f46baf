"""protocols.flexring against reference 7.4 (byte-stream rings) and 11.2."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errno import Errno, XenError
from protocols.flexring import ByteRing, flex_ring_size

SIZE = 64
CONS, PROD = SIZE, SIZE + 4  # indices right after the data, as in the console page


def _ring(start: int = 0) -> tuple[bytearray, ByteRing]:
    page = bytearray(SIZE + 8)
    ring = ByteRing(page, 0, SIZE, CONS, PROD)
    ring.reset(start)
    return page, ring


def _indices(page) -> tuple[int, int]:
    return struct.unpack_from("<II", page, CONS)


_ops = st.lists(st.tuples(st.sampled_from("wr"), st.integers(0, 2 * SIZE)), max_size=60)


@given(start=st.integers(0xFFFFFFFF - 3 * SIZE, 0xFFFFFFFF) | st.integers(0, 2**32 - 1),
       ops=_ops, seed=st.integers(0, 255))
def test_flex_7_4_stream_matches_a_reference_buffer(start, ops, seed):
    page, ring = _ring(start)
    queued = bytearray()  # what the consumer has yet to read, in order
    cons = prod = start
    counter = seed
    for op, n in ops:
        assert ring.available() == len(queued)
        assert ring.space() == SIZE - len(queued)
        if op == "w":
            data = bytes((counter + i) & 0xFF for i in range(n))
            counter += n
            accepted = ring.write(data)
            assert accepted == min(n, SIZE - len(queued))  # never overwrites unconsumed bytes
            queued += data[:accepted]
            prod = (prod + accepted) & 0xFFFFFFFF
        else:
            got = ring.read(n)
            assert got == bytes(queued[:n])  # no loss, no reordering
            del queued[:len(got)]
            cons = (cons + len(got)) & 0xFFFFFFFF
        assert _indices(page) == (cons, prod)  # free-running u32, little-endian, in place
    assert ring.read() == bytes(queued)


def test_flex_7_4_byte_x_is_stored_at_x_mod_size():
    page, ring = _ring(0xFFFFFFFE)
    assert ring.write(b"abcd") == 4
    assert page[SIZE - 2:SIZE] == b"ab" and page[0:2] == b"cd"
    assert _indices(page) == (0xFFFFFFFE, 2)
    assert ring.read() == b"abcd"


def test_flex_7_4_full_ring_accepts_nothing_and_keeps_unconsumed_bytes():
    page, ring = _ring(5)
    assert ring.write(bytes(range(SIZE + 10))) == SIZE
    before = bytes(page)
    assert ring.write(b"more") == 0
    assert bytes(page) == before
    assert ring.space() == 0 and ring.available() == SIZE


@pytest.mark.parametrize("cons, prod", [(0, SIZE + 1), (10, 9), (0xFFFFFFF0, 0x100)])
def test_flex_11_2_hostile_indices_raise_eio_and_move_nothing(cons, prod):
    page, ring = _ring()
    struct.pack_into("<II", page, CONS, cons, prod)
    before = bytes(page)
    for call in (ring.available, ring.space, ring.read, lambda: ring.write(b"x")):
        with pytest.raises(XenError) as err:
            call()
        assert err.value.errno == Errno.EIO
    assert bytes(page) == before


def test_flex_7_4_exactly_size_queued_is_legal():
    page, ring = _ring()
    struct.pack_into("<II", page, CONS, 0xFFFFFFF0, 0xFFFFFFF0 + SIZE - 2**32)
    assert ring.available() == SIZE and ring.space() == 0


def test_flex_7_4_read_of_empty_ring_and_zero_max():
    _, ring = _ring(7)
    assert ring.read() == b""
    ring.write(b"xyz")
    assert ring.read(0) == b""
    assert ring.read(2) == b"xy"
    assert ring.read(100) == b"z"


def test_flex_7_4_accepts_any_buffer_object():
    _, ring = _ring()
    assert ring.write(bytearray(b"ab")) + ring.write(memoryview(b"cd")) == 4
    assert ring.write(memoryview(bytearray(8)).cast("I")) == 8  # counted in bytes
    assert ring.read(4) == b"abcd"


def test_flex_7_4_xen_flex_ring_size():
    assert flex_ring_size(1) == 4096  # 1 << (order + PAGE_SHIFT - 1)
    assert flex_ring_size(9) == 1 << 20


@pytest.mark.parametrize("args", [(0, 48, 64, 68), (0, 64, 66, 68), (0, 64, 64, 100)])
def test_flex_layout_errors_are_refused(args):
    with pytest.raises(ValueError):
        ByteRing(bytearray(SIZE + 8), *args)


def test_flex_read_only_buffer_is_refused():
    with pytest.raises(ValueError):
        ByteRing(bytes(SIZE + 8), 0, SIZE, CONS, PROD)


def test_flex_release_lets_the_mapping_resize():
    page, ring = _ring()
    with pytest.raises(BufferError):
        page.extend(b"x")  # the ring's views pin the buffer
    ring.release()
    page.extend(b"x")
    assert len(page) == SIZE + 9
