"""protocols.console against reference 11.2 (``io/console.h`` layout)."""

import struct

import pytest

from protocols import console
from protocols.console import ConsoleInterface
from protocols.errno import Errno, XenError


def _page() -> bytearray:
    return bytearray(4096)


def test_console_11_2_index_offsets_read_from_distinct_values():
    page = _page()
    struct.pack_into("<IIII", page, 3072, 0x11, 0x22, 0x33, 0x44)
    intf = ConsoleInterface(page)
    assert (intf.in_ring.cons, intf.in_ring.prod) == (0x11, 0x22)
    assert (intf.out_ring.cons, intf.out_ring.prod) == (0x33, 0x44)


def test_console_11_2_guest_output_lands_in_out_at_1024_and_out_prod_at_3084():
    page = _page()
    intf = ConsoleInterface(page)
    intf.out_ring.reset(0xFFFFFFFF)
    assert intf.write_out(b"hello") == 5
    assert page[1024 + 2047] == ord("h") and page[1024:1028] == b"ello"
    assert struct.unpack_from("<II", page, 3080) == (0xFFFFFFFF, 4)
    assert intf.read_out() == b"hello"
    assert struct.unpack_from("<I", page, 3080)[0] == 4
    assert page[0:1024] == bytes(1024)  # in[] untouched


def test_console_11_2_input_lands_in_in_at_0_and_in_prod_at_3076():
    page = _page()
    intf = ConsoleInterface(page)
    assert intf.write_in(b"ls\n") == 3
    assert page[0:3] == b"ls\n"
    assert struct.unpack_from("<II", page, 3072) == (0, 3)
    assert intf.read_in() == b"ls\n"
    assert struct.unpack_from("<II", page, 3072) == (3, 3)
    assert page[1024:3072] == bytes(2048)  # out[] untouched


def test_console_11_2_ring_sizes_are_1024_in_and_2048_out():
    intf = ConsoleInterface(_page())
    assert intf.write_in(bytes(5000)) == 1024
    assert intf.write_out(bytes(5000)) == 2048


def test_console_11_2_connection_is_a_byte_at_3088():
    page = _page()
    intf = ConsoleInterface(page)
    assert intf.connection == console.XENCONSOLE_CONNECTED == 0
    intf.connection = console.XENCONSOLE_DISCONNECTED
    assert page[3088] == 1 and page[3089] == 0 and page[3087] == 0
    assert console.XENCONSOLE_DISCONNECTED == 1


def test_console_7_4_hostile_out_indices_raise_eio():
    page = _page()
    struct.pack_into("<II", page, 3080, 0, 2049)
    with pytest.raises(XenError) as err:
        ConsoleInterface(page).read_out()
    assert err.value.errno == Errno.EIO
