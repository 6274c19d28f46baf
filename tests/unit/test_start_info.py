"""xen.h ``struct start_info``: the x86_64 layout the domain builder writes."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errno import Errno, XenError
from protocols.start_info import MAGIC, SIZE, StartInfo


def _sample() -> StartInfo:
    return StartInfo(nr_pages=32768, shared_info=0x1000, flags=0, store_mfn=2, store_evtchn=1,
                     console_mfn=3, console_evtchn=2, cmd_line="root=/dev/xvda1 init=counter",
                     mod_len=7, nr_p2m_frames=9)


def test_start_info_layout_offsets_match_xen_h():
    raw = _sample().pack()
    assert len(raw) == SIZE == 1168
    assert raw[:len(MAGIC)] == b"xen-3.0-x86_64"
    assert struct.unpack_from("<Q", raw, 32)[0] == 32768
    assert struct.unpack_from("<Q", raw, 40)[0] == 0x1000
    assert struct.unpack_from("<Q", raw, 56)[0] == 2  # store_mfn
    assert struct.unpack_from("<I", raw, 64)[0] == 1  # store_evtchn
    assert struct.unpack_from("<Q", raw, 72)[0] == 3  # console.domU.mfn
    assert struct.unpack_from("<I", raw, 80)[0] == 2  # console.domU.evtchn
    assert struct.unpack_from("<Q", raw, 120)[0] == 7  # mod_len
    assert raw[128:128 + 28] == b"root=/dev/xvda1 init=counter"
    assert struct.unpack_from("<Q", raw, 1160)[0] == 9  # nr_p2m_frames


def test_start_info_round_trip():
    assert StartInfo.unpack(_sample().pack()) == _sample()


def test_start_info_cmdline_limit_is_max_guest_cmdline():
    with pytest.raises(XenError) as e:
        StartInfo(1, 0, 0, 0, 0, 0, 0, cmd_line="x" * 1024).pack()
    assert e.value.errno == Errno.E2BIG


@given(st.binary(max_size=2 * SIZE))
def test_start_info_unpack_arbitrary_bytes_gives_value_or_einval(data):
    try:
        StartInfo.unpack(data)
    except XenError as e:
        assert e.errno == Errno.EINVAL
