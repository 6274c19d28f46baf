"""The xenstore wire protocol (reference 11.1; ``xen/include/public/io/xs_wire.h``,
``docs/misc/xenstore.txt``).

Every xenstore conversation, over xenstored's Unix socket (``xenstore-utils``, ``pyxs``) or a
domain's ring page (:mod:`protocols.xenstore.domain_ring`), is a stream of 16-byte
``xsd_sockmsg`` headers, each followed by ``len`` payload bytes. Real clients depend byte for
byte on per-type payload conventions (which strings are NUL-terminated, where binary data
goes, whether a reply ends in NUL), so this module is the one place that knows them: the
streaming decoder, the request table (parse and build), the reply builders that follow
``tools/xenstored/core.c`` (``send_reply``, ``send_ack``, ``send_error``, ``send_event``) and the
reply parser that follows ``tools/libs/store/xs.c``.

Decisions where C xenstored is looser (none changes what a real client sends):

* Multi-string requests must be exactly their strings, each NUL-terminated; xenstored's
  ``get_strings`` ignores an unterminated tail. WRITE and CONTROL are a string then raw bytes.
* Numbers are plain ASCII decimal and range-checked (domid < 2^16, others < 2^32) instead of
  ``atoi``'s silent garbage; INTRODUCE's gfn is *signed* decimal (19.11), read as its u64
  two's complement.
* Paths are ASCII (every valid path is); tokens are any bytes but NUL, kept exactly
  (latin-1). Path syntax and permissions are checked by the store, not here.
* TRANSACTION_START and RESET_WATCHES ignore their payload (clients send ``"\\0"``), as C does.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from protocols.errno import Errno, XenError
from protocols.xenstore.paths import XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX  # noqa: F401

XENSTORE_PAYLOAD_MAX = 4096  # a larger payload kills the connection
XS_TYPE_COUNT = 27  # number of type values (0..26); not itself a type

HEADER = struct.Struct("<IIII")  # xsd_sockmsg: type, req_id, tx_id, len
HEADER_SIZE = HEADER.size
_U64 = (1 << 64) - 1


class XsType(enum.IntEnum):
    """``enum xsd_sockmsg_type``."""

    CONTROL = 0
    DEBUG = 0  # the old name of CONTROL
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15  # server to client only
    ERROR = 16  # server to client only
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20  # removed: the number is invalid
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26
    INVALID = 0xFFFF  # guaranteed to remain invalid


# ``xsd_errors``: the errnos xenstored can name on the wire, in Xen's table order.
XSD_ERRORS = (Errno.EINVAL, Errno.EACCES, Errno.EEXIST, Errno.EISDIR, Errno.ENOENT,
              Errno.ENOMEM, Errno.ENOSPC, Errno.EIO, Errno.ENOTEMPTY, Errno.ENOSYS,
              Errno.EROFS, Errno.EBUSY, Errno.EAGAIN, Errno.EISCONN, Errno.E2BIG, Errno.EPERM)
_ERRNO_BY_NAME = {e.name.encode(): e for e in XSD_ERRORS}


@dataclass(frozen=True, slots=True)
class XsMessage:
    """One ``struct xsd_sockmsg`` and its payload (``xs_wire.h``). ``type`` is the raw number,
    so that an unknown type survives decoding and can be answered ENOSYS."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def pack(self) -> bytes:
        """The wire bytes; E2BIG if the payload exceeds XENSTORE_PAYLOAD_MAX."""
        if len(self.payload) > XENSTORE_PAYLOAD_MAX:
            raise XenError(Errno.E2BIG, f"payload of {len(self.payload)} bytes")
        return HEADER.pack(self.type, self.req_id, self.tx_id, len(self.payload)) + self.payload


encode = XsMessage.pack


def _payload_len(length: int) -> int:
    if length > XENSTORE_PAYLOAD_MAX:
        raise XenError(Errno.E2BIG, f"header announces a {length}-byte payload")
    return length


def decode_one(buf) -> tuple[XsMessage, int] | None:
    """The first message in ``buf`` and the bytes it used, or None if it is not all there yet.
    E2BIG if its header announces more than XENSTORE_PAYLOAD_MAX bytes."""
    if len(buf) < HEADER_SIZE:
        return None
    type_, req_id, tx_id, length = HEADER.unpack_from(buf)
    end = HEADER_SIZE + _payload_len(length)
    if len(buf) < end:
        return None
    return XsMessage(type_, req_id, tx_id, bytes(buf[HEADER_SIZE:end])), end


class XsDecoder:
    """Reassembles messages from a byte stream cut anywhere (one connection, one direction).

    :meth:`feed` raises ``XenError(E2BIG)`` on a header announcing more than
    XENSTORE_PAYLOAD_MAX bytes. The connection is then dead: xenstored drops it
    (``handle_input``: ``XENSTORE_ERROR_PROTO``), so the caller must close it (on a ring: set
    ``error`` and stop serving it). Messages completed earlier in the same :meth:`feed` call
    are dropped with the connection; the decoder keeps raising.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held of a message not yet complete."""
        return len(self._buf)

    def feed(self, data) -> list[XsMessage]:
        buf = self._buf
        buf += data
        out = []
        off = 0
        size = len(buf)
        while size - off >= HEADER_SIZE:
            type_, req_id, tx_id, length = HEADER.unpack_from(buf, off)
            end = off + HEADER_SIZE + _payload_len(length)
            if end > size:
                break
            out.append(XsMessage(type_, req_id, tx_id, bytes(buf[off + HEADER_SIZE:end])))
            off = end
        if off:
            del buf[:off]
        return out


# --- Requests -----------------------------------------------------------------------------

class _Field(NamedTuple):
    """How one argument string reads (``parse``, peer input) and writes (``format``)."""

    parse: Callable[[bytes], Any]
    format: Callable[[Any], bytes]


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise XenError(Errno.EINVAL, f"not ASCII: {raw[:40]!r}") from None


def _no_nul(text: str, codec: str) -> bytes:
    raw = text.encode(codec)
    if b"\0" in raw:
        raise ValueError(f"a xenstore string cannot contain NUL: {text!r}")
    return raw


def _decimal(bits: int) -> Callable[[bytes], int]:
    limit = 1 << bits

    def parse(raw: bytes) -> int:
        if not raw.isdigit() or len(raw) > 20:  # bytes.isdigit: ASCII digits, non-empty
            raise XenError(Errno.EINVAL, f"not a decimal number: {raw[:40]!r}")
        value = int(raw)
        if value >= limit:
            raise XenError(Errno.EINVAL, f"{value} does not fit in {bits} bits")
        return value

    return parse


_u63 = _decimal(63)
_u64 = _decimal(64)


def _parse_gfn(raw: bytes) -> int:
    """INTRODUCE's gfn is signed decimal (xenstore.txt); return it as the u64 it stands for."""
    negative = raw.startswith(b"-")
    value = _u63(raw[1:] if negative else raw)
    return (-value if negative else value) & _U64


def _format_gfn(gfn: int) -> bytes:
    return str(gfn - (1 << 64) if gfn >= 1 << 63 else gfn).encode()


def _parse_bool(raw: bytes) -> bool:
    if raw not in (b"T", b"F"):
        raise XenError(Errno.EINVAL, f"expected T or F, not {raw[:40]!r}")
    return raw == b"T"


def _format_int(value: int) -> bytes:
    return str(int(value)).encode()


_STRING = _Field(_ascii, lambda s: _no_nul(s, "ascii"))  # paths, quota names, perm strings
_TOKEN = _Field(lambda raw: raw.decode("latin-1"), lambda s: _no_nul(s, "latin-1"))
_DOMID = _Field(_decimal(16), _format_int)
_U32 = _Field(_decimal(32), _format_int)
_GFN = _Field(_parse_gfn, _format_gfn)
_COMMIT = _Field(_parse_bool, lambda commit: b"T" if commit else b"F")


def _split(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings that make up ``payload`` (none if it is empty)."""
    if not payload:
        return []
    if payload[-1] != 0:
        raise XenError(Errno.EINVAL, "last argument is not NUL-terminated")
    return payload[:-1].split(b"\0")


@dataclass(frozen=True, slots=True)
class _Strings:
    """A payload of NUL-terminated strings. ``args`` has one slot per field; ``variants`` lists,
    for each accepted string count, the slots those strings fill (the others are None)."""

    fields: tuple[_Field, ...]
    variants: tuple[tuple[int, ...], ...]

    def parse(self, payload: bytes) -> tuple:
        parts = _split(payload)
        for slots in self.variants:
            if len(slots) == len(parts):
                args: list[Any] = [None] * len(self.fields)
                for slot, raw in zip(slots, parts):
                    args[slot] = self.fields[slot].parse(raw)
                return tuple(args)
        raise XenError(Errno.EINVAL, f"{len(parts)} arguments")

    def build(self, args: tuple) -> bytes:
        slots = tuple(i for i, arg in enumerate(args) if arg is not None)
        if len(args) != len(self.fields) or slots not in self.variants:
            raise ValueError(f"arguments {args!r} match no form of this request")
        return b"".join(self.fields[i].format(args[i]) + b"\0" for i in slots)


def _fixed(*fields: _Field) -> _Strings:
    return _Strings(fields, (tuple(range(len(fields))),))


class _StringAndBytes:
    """``string\\0`` then raw bytes that may hold NULs (WRITE's value, CONTROL's parameters)."""

    @staticmethod
    def parse(payload: bytes) -> tuple:
        nul = payload.find(b"\0")
        if nul < 0:
            raise XenError(Errno.EINVAL, "first argument is not NUL-terminated")
        return _ascii(payload[:nul]), payload[nul + 1:]

    @staticmethod
    def build(args: tuple) -> bytes:
        text, raw = args
        return _STRING.format(text) + b"\0" + bytes(raw)


class _PathAndPerms:
    """SET_PERMS: ``path\\0`` then one or more ``perm\\0`` (strings like ``r5``)."""

    @staticmethod
    def parse(payload: bytes) -> tuple:
        parts = _split(payload)
        if len(parts) < 2:
            raise XenError(Errno.EINVAL, "SET_PERMS needs a path and at least one permission")
        return _ascii(parts[0]), tuple(_ascii(p) for p in parts[1:])

    @staticmethod
    def build(args: tuple) -> bytes:
        path, perms = args
        if not perms:
            raise ValueError("SET_PERMS needs at least one permission")
        return b"".join(_STRING.format(s) + b"\0" for s in (path, *perms))


class _Ignored:
    """A payload xenstored does not look at; clients send ``\\0``."""

    @staticmethod
    def parse(payload: bytes) -> tuple:
        return ()

    @staticmethod
    def build(args: tuple) -> bytes:
        if args:
            raise ValueError("this request takes no arguments")
        return b"\0"


# The request forms: XsRequest.args for each type, in this order.
_REQUESTS = {
    XsType.CONTROL: _StringAndBytes(),  # (cmd, params: bytes)
    XsType.DIRECTORY: _fixed(_STRING),  # (path,)
    XsType.READ: _fixed(_STRING),  # (path,)
    XsType.GET_PERMS: _fixed(_STRING),  # (path,)
    # (path, token, depth|None)
    XsType.WATCH: _Strings((_STRING, _TOKEN, _U32), ((0, 1), (0, 1, 2))),
    XsType.UNWATCH: _fixed(_STRING, _TOKEN),  # (path, token)
    XsType.TRANSACTION_START: _Ignored(),  # ()
    XsType.TRANSACTION_END: _fixed(_COMMIT),  # (commit: bool,)
    XsType.INTRODUCE: _fixed(_DOMID, _GFN, _U32),  # (domid, gfn, evtchn)
    XsType.RELEASE: _fixed(_DOMID),  # (domid,)
    XsType.GET_DOMAIN_PATH: _fixed(_DOMID),  # (domid,)
    XsType.WRITE: _StringAndBytes(),  # (path, value: bytes)
    XsType.MKDIR: _fixed(_STRING),  # (path,)
    XsType.RM: _fixed(_STRING),  # (path,)
    XsType.SET_PERMS: _PathAndPerms(),  # (path, perms: tuple[str, ...])
    XsType.IS_DOMAIN_INTRODUCED: _fixed(_DOMID),  # (domid,)
    XsType.RESUME: _fixed(_DOMID),  # (domid,)
    XsType.SET_TARGET: _fixed(_DOMID, _DOMID),  # (domid, tdomid)
    XsType.RESET_WATCHES: _Ignored(),  # ()
    XsType.DIRECTORY_PART: _fixed(_STRING, _U32),  # (path, offset)
    XsType.GET_FEATURE: _Strings((_DOMID,), ((), (0,))),  # (domid|None,)
    XsType.SET_FEATURE: _fixed(_DOMID, _U32),  # (domid, features)
    # (domid|None, name|None): all quota names, a global quota, a domain's quota
    XsType.GET_QUOTA: _Strings((_DOMID, _STRING), ((), (1,), (0, 1))),
    # (domid|None, name, value)
    XsType.SET_QUOTA: _Strings((_DOMID, _STRING, _U32), ((1, 2), (0, 1, 2))),
}
REQUEST_TYPES = frozenset(_REQUESTS)


@dataclass(frozen=True, slots=True)
class XsRequest:
    """A decoded client request: its type, the header's ids, and its arguments in the order
    of the table above (e.g. WRITE ``(path, value)``, WATCH ``(path, token, depth | None)``)."""

    type: XsType
    req_id: int
    tx_id: int
    args: tuple


def parse_request(msg: XsMessage) -> XsRequest:
    """Decode a client's request. ENOSYS for a type xenstored does not serve (unknown,
    RESTRICT, WATCH_EVENT, ERROR), EINVAL for a malformed payload."""
    form = _REQUESTS.get(msg.type)
    if form is None:
        raise XenError(Errno.ENOSYS, f"unsupported message type {msg.type}")
    return XsRequest(XsType(msg.type), msg.req_id, msg.tx_id, form.parse(msg.payload))


def make_request(type_: XsType, *args: Any, req_id: int = 0, tx_id: int = 0) -> XsMessage:
    """Client side: the message :func:`parse_request` reads back as ``args``."""
    return XsMessage(int(type_), req_id, tx_id, _REQUESTS[type_].build(args))


# --- Replies (server side) ----------------------------------------------------------------

class _Ids(Protocol):
    """What a reply needs of its request: an XsMessage or an XsRequest."""

    type: int
    req_id: int
    tx_id: int


def _message(type_: int, req_id: int, tx_id: int, payload: bytes) -> XsMessage:
    if len(payload) > XENSTORE_PAYLOAD_MAX:  # send_reply answers E2BIG instead
        raise XenError(Errno.E2BIG, f"reply of {len(payload)} bytes")
    return XsMessage(int(type_), req_id, tx_id, payload)


def _reply(req: _Ids, payload: bytes) -> XsMessage:
    return _message(req.type, req.req_id, req.tx_id, payload)


def reply_ok(req: _Ids) -> XsMessage:
    """``send_ack``: ``OK\\0`` (WRITE, MKDIR, RM, WATCH, TRANSACTION_END, INTRODUCE, ...)."""
    return _reply(req, b"OK\0")


def reply_value(req: _Ids, value: bytes) -> XsMessage:
    """Raw bytes, no trailing NUL (READ; CONTROL output)."""
    return _reply(req, bytes(value))


def reply_string(req: _Ids, text: str) -> XsMessage:
    """One NUL-terminated string: TRANSACTION_START's id, GET_DOMAIN_PATH's path,
    IS_DOMAIN_INTRODUCED's ``T``/``F``, GET_FEATURE's and GET_QUOTA's value."""
    return _reply(req, _STRING.format(text) + b"\0")


def reply_list(req: _Ids, names: Iterable[str]) -> XsMessage:
    """Each name NUL-terminated, nothing after the last (DIRECTORY children, GET_PERMS
    permission strings); an empty list is an empty payload."""
    return _reply(req, b"".join(_STRING.format(n) + b"\0" for n in names))


def reply_directory_part(req: _Ids, generation: int, children: Sequence[str],
                         offset: int) -> XsMessage:
    """``send_directory_part``: ``gencnt\\0`` then the children from byte ``offset`` of the
    ``child\\0child\\0...`` list that fit, plus one more ``\\0`` if that reaches its end."""
    listing = b"".join(_STRING.format(c) + b"\0" for c in children)
    gen = _format_int(generation) + b"\0"
    if offset >= len(listing):
        return _reply(req, gen + b"\0")
    maxlen = XENSTORE_PAYLOAD_MAX - len(gen) - 1
    end = offset
    while True:
        nul = listing.index(b"\0", end)
        if nul - offset >= maxlen:  # this child does not fit
            break
        end = nul + 1
        if end == len(listing):
            break
    last = b"\0" if end == len(listing) else b""
    return _reply(req, gen + listing[offset:end] + last)


def reply_error(req: _Ids, errno: Errno) -> XsMessage:
    """``send_error``: type ERROR, the errno's name and NUL, the request's ids. An errno
    missing from ``xsd_errors`` goes out as EINVAL, as in xenstored."""
    name = errno.name if errno in XSD_ERRORS else Errno.EINVAL.name
    return _message(XsType.ERROR, req.req_id, req.tx_id, name.encode() + b"\0")


def watch_event(path: str, token: str) -> XsMessage:
    """``send_event``: ``path\\0token\\0`` with req_id = tx_id = 0. E2BIG if it would exceed
    XENSTORE_PAYLOAD_MAX: xenstored drops such an event, and so must the caller."""
    payload = _STRING.format(path) + b"\0" + _TOKEN.format(token) + b"\0"
    return _message(XsType.WATCH_EVENT, 0, 0, payload)


# --- Replies (client side) ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DirectoryPart:
    """A DIRECTORY_PART reply: the node's generation count, the children in this chunk, and
    whether the chunk reaches the end of the list."""

    generation: int
    children: list[str]
    complete: bool


def _one_raw(payload: bytes) -> bytes:
    parts = _split(payload)
    if len(parts) != 1:
        raise XenError(Errno.EINVAL, f"expected one string, got {len(parts)}")
    return parts[0]


def _one_string(payload: bytes) -> str:
    return _ascii(_one_raw(payload))


def _ok(payload: bytes) -> None:
    if payload != b"OK\0":
        raise XenError(Errno.EINVAL, f"expected OK, got {payload[:40]!r}")


def _directory_part(payload: bytes) -> DirectoryPart:
    parts = _split(payload)
    if not parts:
        raise XenError(Errno.EINVAL, "DIRECTORY_PART reply without a generation")
    names = [_ascii(p) for p in parts[1:]]
    complete = bool(names) and names[-1] == ""
    return DirectoryPart(_u64(parts[0]), names[:-1] if complete else names, complete)


def _watch_event(payload: bytes) -> tuple[str, str]:
    parts = _split(payload)
    if len(parts) != 2:
        raise XenError(Errno.EINVAL, f"watch event with {len(parts)} strings")
    return _ascii(parts[0]), _TOKEN.parse(parts[1])


_REPLIES: dict[int, Callable[[bytes], Any]] = {
    XsType.CONTROL: bytes,
    XsType.READ: bytes,
    XsType.DIRECTORY: lambda p: [_ascii(s) for s in _split(p)],
    XsType.GET_PERMS: lambda p: [_ascii(s) for s in _split(p)],
    XsType.DIRECTORY_PART: _directory_part,
    XsType.TRANSACTION_START: lambda p: _U32.parse(_one_raw(p)),
    XsType.GET_FEATURE: lambda p: _U32.parse(_one_raw(p)),
    XsType.GET_DOMAIN_PATH: _one_string,
    XsType.GET_QUOTA: _one_string,
    XsType.IS_DOMAIN_INTRODUCED: lambda p: _parse_bool(_one_raw(p)),
    XsType.WATCH_EVENT: _watch_event,
    **{t: _ok for t in (XsType.WATCH, XsType.UNWATCH, XsType.TRANSACTION_END,
                        XsType.INTRODUCE, XsType.RELEASE, XsType.WRITE, XsType.MKDIR, XsType.RM,
                        XsType.SET_PERMS, XsType.RESUME, XsType.SET_TARGET,
                        XsType.RESET_WATCHES, XsType.SET_FEATURE, XsType.SET_QUOTA)},
}


def error_from_reply(msg: XsMessage) -> XenError:
    """The XenError an ERROR reply names; an unknown name means EINVAL (libxenstore)."""
    name = msg.payload[:-1] if msg.payload.endswith(b"\0") else msg.payload
    return XenError(_ERRNO_BY_NAME.get(name, Errno.EINVAL), "xenstored replied with an error")


def parse_reply(msg: XsMessage) -> Any:
    """Client side: decode a reply by its type, or raise the XenError of an ERROR reply.

    READ/CONTROL -> bytes; DIRECTORY/GET_PERMS -> list[str]; DIRECTORY_PART -> DirectoryPart;
    TRANSACTION_START/GET_FEATURE -> int; GET_DOMAIN_PATH/GET_QUOTA -> str;
    IS_DOMAIN_INTRODUCED -> bool; WATCH_EVENT -> (path, token); ``OK`` replies -> None;
    an unknown type -> its raw payload. A malformed payload raises XenError(EINVAL).
    """
    if msg.type == XsType.ERROR:
        raise error_from_reply(msg)
    decode = _REPLIES.get(msg.type)
    return msg.payload if decode is None else decode(msg.payload)
