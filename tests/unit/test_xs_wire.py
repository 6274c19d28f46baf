"""protocols.xenstore.wire against reference 11.1 (xs_wire.h, xenstore.txt) and the byte forms
of tools/xenstored/core.c and tools/libs/store/xs.c."""

import string
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errno import Errno, XenError
from protocols.xenstore import wire
from protocols.xenstore.wire import (XsDecoder, XsMessage, XsRequest, XsType, decode_one, encode,
                                     make_request, parse_reply, parse_request)

T = XsType


def _errno(call, *args) -> Errno:
    with pytest.raises(XenError) as err:
        call(*args)
    return err.value.errno


def _req(type_, payload, req_id=1, tx_id=0):
    return XsMessage(int(type_), req_id, tx_id, payload)


# --- header and type numbers ----------------------------------------------------------------

def test_xs_11_1_header_is_16_bytes_little_endian():
    raw = encode(XsMessage(T.READ, 0x01020304, 0x0A0B0C0D, b"/x\0"))
    assert raw == (b"\x02\0\0\0" b"\x04\x03\x02\x01" b"\x0d\x0c\x0b\x0a" b"\x03\0\0\0" b"/x\0")
    assert wire.HEADER_SIZE == 16
    assert struct.unpack_from("<IIII", raw) == (2, 0x01020304, 0x0A0B0C0D, 3)


def test_xs_11_1_type_numbers():
    expected = {
        "CONTROL": 0, "DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5,
        "TRANSACTION_START": 6, "TRANSACTION_END": 7, "INTRODUCE": 8, "RELEASE": 9,
        "GET_DOMAIN_PATH": 10, "WRITE": 11, "MKDIR": 12, "RM": 13, "SET_PERMS": 14,
        "WATCH_EVENT": 15, "ERROR": 16, "IS_DOMAIN_INTRODUCED": 17, "RESUME": 18,
        "SET_TARGET": 19, "RESTRICT": 20, "RESET_WATCHES": 21, "DIRECTORY_PART": 22,
        "GET_FEATURE": 23, "SET_FEATURE": 24, "GET_QUOTA": 25, "SET_QUOTA": 26,
        "INVALID": 0xFFFF,
    }
    assert {t.name: int(t) for t in XsType} == expected
    assert XsType.DEBUG is XsType.CONTROL
    assert wire.XS_TYPE_COUNT == 27
    assert (wire.XENSTORE_PAYLOAD_MAX, wire.XENSTORE_ABS_PATH_MAX,
            wire.XENSTORE_REL_PATH_MAX) == (4096, 3072, 2048)


def test_xs_11_1_error_table_order_is_xsd_errors():
    assert [e.name for e in wire.XSD_ERRORS] == [
        "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
        "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM"]


# --- requests: every kind round-trips through a fragmented stream ---------------------------

_paths = st.text(string.ascii_letters + string.digits + "-/_@", max_size=30)
_tokens = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=20)
_domids = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 2**32 - 1)
_values = st.binary(max_size=100)
_perms = st.builds(lambda p, d: f"{p}{d}", st.sampled_from("nrwb"), _domids)

ARGS = {
    T.CONTROL: st.tuples(st.sampled_from(["help", "log", "quota"]), _values),
    T.DIRECTORY: st.tuples(_paths),
    T.READ: st.tuples(_paths),
    T.GET_PERMS: st.tuples(_paths),
    T.WATCH: st.tuples(_paths, _tokens, st.none() | _u32),
    T.UNWATCH: st.tuples(_paths, _tokens),
    T.TRANSACTION_START: st.just(()),
    T.TRANSACTION_END: st.tuples(st.booleans()),
    T.INTRODUCE: st.tuples(_domids, st.integers(0, 2**64 - 1), _u32),
    T.RELEASE: st.tuples(_domids),
    T.GET_DOMAIN_PATH: st.tuples(_domids),
    T.WRITE: st.tuples(_paths, _values),
    T.MKDIR: st.tuples(_paths),
    T.RM: st.tuples(_paths),
    T.SET_PERMS: st.tuples(_paths, st.lists(_perms, min_size=1, max_size=5).map(tuple)),
    T.IS_DOMAIN_INTRODUCED: st.tuples(_domids),
    T.RESUME: st.tuples(_domids),
    T.SET_TARGET: st.tuples(_domids, _domids),
    T.RESET_WATCHES: st.just(()),
    T.DIRECTORY_PART: st.tuples(_paths, _u32),
    T.GET_FEATURE: st.tuples(st.none() | _domids),
    T.SET_FEATURE: st.tuples(_domids, _u32),
    T.GET_QUOTA: st.just((None, None)) | st.tuples(st.none() | _domids, st.just("nodes")),
    T.SET_QUOTA: st.tuples(st.none() | _domids, st.sampled_from(["nodes", "watches"]), _u32),
}

_requests = st.sampled_from(sorted(ARGS)).flatmap(
    lambda t: st.tuples(st.just(t), ARGS[t], _u32, _u32))


def test_xs_11_1_strategy_covers_every_request_kind():
    assert set(ARGS) == wire.REQUEST_TYPES
    assert wire.REQUEST_TYPES.isdisjoint({T.WATCH_EVENT, T.ERROR, T.RESTRICT, T.INVALID})


@given(reqs=st.lists(_requests, min_size=1, max_size=12), data=st.data())
def test_xs_11_1_every_request_round_trips_through_random_fragments(reqs, data):
    stream = b"".join(encode(make_request(t, *args, req_id=r, tx_id=x)) for t, args, r, x in reqs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = XsDecoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        got += decoder.feed(stream[a:b])
    assert decoder.pending == 0
    assert [parse_request(m) for m in got] == [XsRequest(t, r, x, args) for t, args, r, x in reqs]


def test_xs_11_1_decoder_one_byte_at_a_time():
    msgs = [make_request(T.WRITE, "/a", b"v\0w", req_id=5), make_request(T.READ, "/a", req_id=6)]
    decoder = XsDecoder()
    got = [m for byte in b"".join(map(encode, msgs)) for m in decoder.feed(bytes([byte]))]
    assert got == msgs


def test_xs_11_1_decode_one_returns_message_and_length():
    raw = encode(make_request(T.MKDIR, "/m", req_id=3)) + b"\x01"
    msg, used = decode_one(raw)
    assert (msg, used) == (make_request(T.MKDIR, "/m", req_id=3), 16 + 3)
    assert decode_one(raw[:used - 1]) is None and decode_one(b"") is None


# --- the byte forms real clients send (xs.c, pyxs, Linux xenbus) ----------------------------

@pytest.mark.parametrize("type_, args, payload", [
    (T.READ, ("/local/domain/0/name",), b"/local/domain/0/name\0"),
    (T.WRITE, ("/a", b"val"), b"/a\0val"),  # no NUL after the value
    (T.WRITE, ("/a", b""), b"/a\0"),
    (T.WATCH, ("/a", "tok", None), b"/a\0tok\0"),
    (T.WATCH, ("/a", "tok", 1), b"/a\0tok\0" b"1\0"),
    (T.TRANSACTION_START, (), b"\0"),
    (T.TRANSACTION_END, (True,), b"T\0"),
    (T.TRANSACTION_END, (False,), b"F\0"),
    (T.INTRODUCE, (3, 0x1234, 5), b"3\0" b"4660\0" b"5\0"),
    (T.INTRODUCE, (3, 2**64 - 1, 5), b"3\0-1\0" b"5\0"),  # gfn in signed decimal (19.11)
    (T.SET_PERMS, ("/a", ("n0", "r5")), b"/a\0n0\0r5\0"),
    (T.DIRECTORY_PART, ("/local/domain", 0), b"/local/domain\0" b"0\0"),
    (T.RESET_WATCHES, (), b"\0"),
    (T.GET_FEATURE, (None,), b""),
    (T.GET_FEATURE, (7,), b"7\0"),
    (T.GET_QUOTA, (None, None), b""),
    (T.GET_QUOTA, (None, "nodes"), b"nodes\0"),
    (T.GET_QUOTA, (1, "nodes"), b"1\0nodes\0"),
    (T.SET_QUOTA, (None, "nodes", 10), b"nodes\0" b"10\0"),
    (T.CONTROL, ("log", b"on\0"), b"log\0on\0"),
])
def test_xs_11_1_request_payload_bytes(type_, args, payload):
    msg = make_request(type_, *args, req_id=9)
    assert (msg.type, msg.req_id, msg.payload) == (type_, 9, payload)
    assert parse_request(msg).args == args


@pytest.mark.parametrize("payload", [b"", b"\0", b"ignored"])
def test_xs_11_1_transaction_start_payload_is_ignored(payload):
    assert parse_request(_req(T.TRANSACTION_START, payload)).args == ()


@pytest.mark.parametrize("type_, payload", [
    (T.READ, b"/a"),  # missing NUL
    (T.READ, b""),
    (T.READ, b"/a\0/b\0"),  # one argument only
    (T.READ, b"/\xff\0"),  # not ASCII
    (T.WRITE, b"/a"),
    (T.WATCH, b"/a\0"),
    (T.WATCH, b"/a\0t\0" b"1\0x\0"),
    (T.WATCH, b"/a\0t\0" b"-1\0"),
    (T.UNWATCH, b"/a\0t"),
    (T.TRANSACTION_END, b"X\0"),
    (T.TRANSACTION_END, b"T"),
    (T.INTRODUCE, b"1x\0" b"2\0" b"3\0"),
    (T.INTRODUCE, b"+1\0" b"2\0" b"3\0"),
    (T.INTRODUCE, b" 1\0" b"2\0" b"3\0"),
    (T.INTRODUCE, b"65536\0" b"2\0" b"3\0"),  # domid out of range
    (T.INTRODUCE, b"1\0" b"2\0" b"4294967296\0"),  # evtchn out of range
    (T.INTRODUCE, b"1\0" b"9223372036854775808\0" b"3\0"),  # gfn beyond signed 64 bits
    (T.INTRODUCE, b"1\0" b"2\0"),
    (T.GET_DOMAIN_PATH, b"\xd9\xa1\0"),  # a non-ASCII digit
    (T.SET_PERMS, b"/a\0"),
    (T.DIRECTORY_PART, b"/a\0"),
    (T.SET_TARGET, b"1\0"),
    (T.CONTROL, b""),
    (T.GET_QUOTA, b"1\0nodes\0x\0"),
])
def test_xs_11_1_malformed_payload_is_einval(type_, payload):
    assert _errno(parse_request, _req(type_, payload)) == Errno.EINVAL


@pytest.mark.parametrize("type_", [T.WATCH_EVENT, T.ERROR, T.RESTRICT, T.INVALID, 27, 99])
def test_xs_11_1_unsupported_type_is_enosys_not_a_decode_error(type_):
    msg = XsDecoder().feed(encode(XsMessage(int(type_), 4, 0, b"/a\0")))[0]
    assert msg.type == int(type_)  # the raw number is kept
    assert _errno(parse_request, msg) == Errno.ENOSYS


# --- XENSTORE_PAYLOAD_MAX ---------------------------------------------------------------------

def test_xs_11_1_payload_of_4096_is_accepted():
    msg = XsMessage(T.WRITE, 1, 0, b"/a\0" + bytes(4093))
    assert XsDecoder().feed(encode(msg)) == [msg]
    assert decode_one(encode(msg)) == (msg, 16 + 4096)


def test_xs_19_7_len_4097_kills_the_connection():
    header = struct.pack("<IIII", T.WRITE, 1, 0, 4097)
    decoder = XsDecoder()
    assert decoder.feed(header[:15]) == []
    assert _errno(decoder.feed, header[15:]) == Errno.E2BIG
    assert _errno(decoder.feed, b"") == Errno.E2BIG  # stays dead
    assert _errno(decode_one, header) == Errno.E2BIG
    assert _errno(encode, XsMessage(T.WRITE, 1, 0, bytes(4097))) == Errno.E2BIG


# --- robustness: peer bytes give messages or XenError, never another exception --------------

_segments = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.builds(lambda t, p: encode(XsMessage(t, 1, 0, p)), st.integers(0, 2**32 - 1),
                  st.binary(max_size=64)),
    ), max_size=8)


@given(segments=_segments, chunk=st.integers(1, 64))
def test_xs_11_1_arbitrary_stream_gives_messages_or_xenerror(segments, chunk):
    stream = b"".join(segments)
    decoder = XsDecoder()
    try:
        for i in range(0, len(stream), chunk):
            for msg in decoder.feed(stream[i:i + chunk]):
                assert isinstance(msg, XsMessage) and len(msg.payload) <= 4096
    except XenError as err:
        assert err.errno == Errno.E2BIG


_pieces = st.sampled_from([b"", b"0", b"1", b"-1", b"T", b"F", b"/a", b"tok", b"\xff", b"+1",
                           b"18446744073709551616", b"99999999999999999999999999", b"OK"])
_payloads = st.binary(max_size=64) | st.builds(
    lambda parts, end: b"\0".join(parts) + end, st.lists(_pieces | st.binary(max_size=4),
                                                         max_size=5), st.sampled_from([b"", b"\0"]))


@given(type_=st.integers(0, 30), payload=_payloads)
def test_xs_11_1_arbitrary_payloads_parse_or_raise_xenerror(type_, payload):
    msg = XsMessage(type_, 1, 2, payload)
    for parse in (parse_request, parse_reply):
        try:
            parse(msg)
        except XenError as err:
            assert err.errno in wire.XSD_ERRORS


# --- replies (core.c forms) -------------------------------------------------------------------

def test_xs_11_1_ok_replies_are_ok_nul_with_the_request_ids():
    req = parse_request(make_request(T.WRITE, "/a", b"v", req_id=77, tx_id=5))
    reply = wire.reply_ok(req)
    assert reply == XsMessage(T.WRITE, 77, 5, b"OK\0")
    assert parse_reply(reply) is None
    assert _errno(parse_reply, XsMessage(T.WRITE, 77, 5, b"KO\0")) == Errno.EINVAL


def test_xs_11_1_read_reply_has_no_trailing_nul():
    req = make_request(T.READ, "/a", req_id=2)
    assert wire.reply_value(req, b"xyz").payload == b"xyz"
    assert parse_reply(wire.reply_value(req, b"x\0y")) == b"x\0y"


def test_xs_11_1_string_replies_are_nul_terminated():
    start = make_request(T.TRANSACTION_START, req_id=3)
    assert wire.reply_string(start, "42").payload == b"42\0"
    assert parse_reply(wire.reply_string(start, "42")) == 42
    path = make_request(T.GET_DOMAIN_PATH, 3)
    assert parse_reply(wire.reply_string(path, "/local/domain/3")) == "/local/domain/3"
    intro = make_request(T.IS_DOMAIN_INTRODUCED, 3)
    assert wire.reply_string(intro, "T").payload == b"T\0"
    assert parse_reply(wire.reply_string(intro, "F")) is False


def test_xs_11_1_lists_terminate_every_element_with_nul():
    perms = make_request(T.GET_PERMS, "/a")
    assert wire.reply_list(perms, ["n0", "r5"]).payload == b"n0\0r5\0"
    assert parse_reply(wire.reply_list(perms, ["n0", "r5"])) == ["n0", "r5"]
    directory = make_request(T.DIRECTORY, "/a")
    assert wire.reply_list(directory, ["x", "y"]).payload == b"x\0y\0"
    assert wire.reply_list(directory, []).payload == b""
    assert parse_reply(wire.reply_list(directory, [])) == []


def test_xs_11_1_reply_over_4096_bytes_is_e2big():
    req = make_request(T.DIRECTORY, "/local/domain")
    assert _errno(wire.reply_list, req, [f"{i}" for i in range(2000)]) == Errno.E2BIG
    assert _errno(wire.reply_value, req, bytes(4097)) == Errno.E2BIG


@pytest.mark.parametrize("errno", wire.XSD_ERRORS)
def test_xs_19_7_error_reply_is_the_errno_name(errno):
    req = make_request(T.READ, "/a", req_id=11, tx_id=4)
    reply = wire.reply_error(req, errno)
    assert reply == XsMessage(T.ERROR, 11, 4, errno.name.encode() + b"\0")
    assert _errno(parse_reply, reply) == errno


def test_xs_11_1_untranslatable_errno_goes_out_as_einval():
    req = make_request(T.READ, "/a")
    assert wire.reply_error(req, Errno.ENOTCONN).payload == b"EINVAL\0"
    assert _errno(parse_reply, XsMessage(T.ERROR, 1, 0, b"EWHATEVER\0")) == Errno.EINVAL


def test_xs_19_7_watch_event_has_req_id_and_tx_id_zero():
    event = wire.watch_event("/local/domain/1/device", "tok\xe9")
    assert event == XsMessage(T.WATCH_EVENT, 0, 0, b"/local/domain/1/device\0tok\xe9\0")
    assert parse_reply(event) == ("/local/domain/1/device", "tok\xe9")
    assert _errno(wire.watch_event, "/" + "a" * 4000, "t" * 100) == Errno.E2BIG


def test_xs_11_1_directory_part_past_the_end_is_gencnt_and_empty_string():
    req = make_request(T.DIRECTORY_PART, "/a", 100)
    assert wire.reply_directory_part(req, 7, ["x", "y"], 100).payload == b"7\0\0"
    assert wire.reply_directory_part(req, 7, [], 0).payload == b"7\0\0"
    assert parse_reply(wire.reply_directory_part(req, 7, [], 0)) == wire.DirectoryPart(7, [], True)


def test_xs_11_1_directory_part_last_chunk_ends_with_an_extra_nul():
    req = make_request(T.DIRECTORY_PART, "/a", 0)
    assert wire.reply_directory_part(req, 7, ["x", "yy"], 0).payload == b"7\0x\0yy\0\0"
    assert wire.reply_directory_part(req, 7, ["x", "yy"], 2).payload == b"7\0yy\0\0"


def test_xs_11_1_directory_part_walks_a_long_list_like_libxenstore():
    children = [f"child-{i:05d}" for i in range(1500)]  # 18000 bytes of children
    got, offset, chunks = [], 0, 0
    while True:
        req = make_request(T.DIRECTORY_PART, "/big", offset)
        reply = wire.reply_directory_part(req, 123456789012, children, offset)
        part = parse_reply(reply)
        assert part.generation == 123456789012
        if not part.complete:  # xenstored fills the payload until the next name does not fit
            assert len(reply.payload) > 4096 - len("child-00000\0") - 1
        got += part.children
        offset += sum(len(c) + 1 for c in part.children)
        chunks += 1
        if part.complete:
            break
    assert got == children and chunks == 5
