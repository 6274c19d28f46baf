"""The libxl migration stream, version 2, which carries the libxc stream inline
(``docs/specs/libxl-migration-stream.pandoc``, ``tools/libs/light/libxl_sr_stream_format.h``,
``libxl_stream_write.c``, ``libxl_stream_read.c``).

    header (16 bytes, big-endian): u64 ident "LibxlFmt", u32 version 2, u32 options
                                   (bit 0 big-endian, bit 1 legacy-converted)
    records (:mod:`.record` framing, little-endian):
        LIBXC_CONTEXT (empty): the libxc stream follows inline, up to and including its END
        [EMULATOR_XENSTORE_DATA] [EMULATOR_CONTEXT]   (HVM only)
        END                                           (CHECKPOINT_END in checkpointed streams)

For a PV domain libxl writes exactly: header, LIBXC_CONTEXT, <libxc stream>, END.
:class:`SaveStreamReader` reads the whole nested stream with one object and returns both
layers' records in stream order, tagged by ``Record.layer``.
"""

from __future__ import annotations

import enum
import struct

from protocols.migration import libxc_reader
from protocols.migration.libxc import Record
from protocols.migration.record import (REC_LENGTH_MAX, Input, RecordFramer, StreamDecoder, err,
                                        record)

HDR = struct.Struct(">QII")
IDENT = 0x4C6962786C466D74  # "LibxlFmt"
VERSION = 2
OPT_BIG_ENDIAN = 1 << 0
OPT_LEGACY = 1 << 1

EMULATOR_XENSTORE_DATA_MAX = 1 << 20


class LibxlRecType(enum.IntEnum):
    """``REC_TYPE_*`` (libxl_sr_stream_format.h)."""

    END = 0
    LIBXC_CONTEXT = 1
    EMULATOR_XENSTORE_DATA = 2
    EMULATOR_CONTEXT = 3
    CHECKPOINT_END = 4
    CHECKPOINT_STATE = 5


class EmulatorId(enum.IntEnum):
    UNKNOWN = 0
    QEMU_TRADITIONAL = 1
    QEMU_UPSTREAM = 2


class CheckpointState(enum.IntEnum):
    """``CHECKPOINT_*`` control ids of a CHECKPOINT_STATE record (COLO)."""

    NEW = 0
    SVM_SUSPENDED = 1
    SVM_READY = 2
    SVM_RESUMED = 3


_EMU_HDR = struct.Struct("<II")
_CKPT_STATE = struct.Struct("<I")

_CAP = {
    LibxlRecType.END: 0, LibxlRecType.LIBXC_CONTEXT: 0, LibxlRecType.CHECKPOINT_END: 0,
    LibxlRecType.CHECKPOINT_STATE: _CKPT_STATE.size,
    LibxlRecType.EMULATOR_XENSTORE_DATA: _EMU_HDR.size + EMULATOR_XENSTORE_DATA_MAX,
    LibxlRecType.EMULATOR_CONTEXT: REC_LENGTH_MAX,
}


# ----------------------------------------------------------------------------------------
# Encoders

def header(options: int = 0) -> bytes:
    return HDR.pack(IDENT, VERSION, options)


def end() -> bytes:
    return record(LibxlRecType.END)


def libxc_context() -> bytes:
    return record(LibxlRecType.LIBXC_CONTEXT)


def checkpoint_end() -> bytes:
    return record(LibxlRecType.CHECKPOINT_END)


def checkpoint_state(control_id: int) -> bytes:
    return record(LibxlRecType.CHECKPOINT_STATE, _CKPT_STATE.pack(control_id))


def emulator_xenstore_data(emulator_id: int, index: int,
                           pairs: list[tuple[str, str]]) -> bytes:
    """Key/value pairs, each as two NUL-terminated strings."""
    if any("\0" in k or "\0" in v for k, v in pairs):
        raise err("EMULATOR_XENSTORE_DATA key or value contains NUL")
    data = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs)
    return record(LibxlRecType.EMULATOR_XENSTORE_DATA, _EMU_HDR.pack(emulator_id, index), data)


def emulator_context(emulator_id: int, index: int, blob: bytes) -> bytes:
    return record(LibxlRecType.EMULATOR_CONTEXT, _EMU_HDR.pack(emulator_id, index), blob)


def stream_start() -> bytes:
    """The libxl header and the LIBXC_CONTEXT record: the libxc stream comes next."""
    return header() + libxc_context()


def wrap(libxc_stream: bytes) -> bytes:
    """A whole PV libxl stream around a complete libxc stream."""
    return stream_start() + libxc_stream + end()


# ----------------------------------------------------------------------------------------
# Decoding

def parse_header(raw: bytes) -> int:
    """Check a libxl header; return its options."""
    ident, version, options = HDR.unpack(raw)
    if ident != IDENT:
        raise err(f"libxl header: bad ident 0x{ident:016x}, expected 0x{IDENT:016x}")
    if version != VERSION:
        raise err(f"libxl header: version {version} unsupported, expected {VERSION}")
    if options & OPT_BIG_ENDIAN:
        raise err("libxl header: big-endian streams are not supported")
    if options & OPT_LEGACY:
        raise err("libxl header: legacy-converted streams are not supported")
    if options:
        raise err(f"libxl header: reserved option bits 0x{options:x} set")
    return options


def parse_emulator_xenstore_data(body) -> tuple[int, int, tuple[tuple[str, str], ...]]:
    """``(emulator_id, index, pairs)``; the data is pairs of NUL-terminated strings."""
    if len(body) < _EMU_HDR.size:
        raise err("EMULATOR_XENSTORE_DATA too short for its header")
    emu_id, index = _EMU_HDR.unpack_from(body, 0)
    if emu_id not in EmulatorId.__members__.values():
        raise err(f"EMULATOR_XENSTORE_DATA unknown emulator id {emu_id}")
    data = bytes(body[_EMU_HDR.size:])
    if not data:
        return emu_id, index, ()
    if data[-1] != 0:
        raise err("EMULATOR_XENSTORE_DATA not NUL terminated")
    parts = data[:-1].split(b"\0")
    if len(parts) % 2:
        raise err("EMULATOR_XENSTORE_DATA has an odd number of strings")
    try:
        strs = [p.decode("ascii") for p in parts]
    except UnicodeDecodeError as e:
        raise err("EMULATOR_XENSTORE_DATA is not ASCII") from e
    return emu_id, index, tuple(zip(strs[0::2], strs[1::2]))


class SaveStreamReader(StreamDecoder):
    """Incremental decoder of a whole libxl stream with its inline libxc stream.

    ``feed(chunk)`` returns the records completed by the chunk, in stream order: libxl ones
    (``layer == "libxl"``, type :class:`LibxlRecType`) and libxc ones (``layer ==
    "libxc"``, type ``libxc.RecType``), all checked; ``close()`` raises if the stream
    ended early. Keyword arguments go to the libxc :class:`~.libxc_reader.StreamReader`.
    ``hvm`` allows the emulator records (libxl refuses them for a PV domain).

    Order (``libxl_stream_read.c``): LIBXC_CONTEXT first; after the libxc END, for HVM the
    emulator records, then END. A checkpointed stream repeats LIBXC_CONTEXT ...
    CHECKPOINT_END; CHECKPOINT_STATE flows only with COLO and is accepted there.
    libxl refuses every record type it does not know, optional bit or not.
    """

    _what = "libxl stream"

    def __init__(self, *, hvm: bool = False, checkpointed: bool = False, **libxc_kwargs) -> None:
        super().__init__()
        self._input = Input()
        self._framer = RecordFramer(self._input, self._limit, "libxl")
        self.hvm = hvm
        self.checkpointed = checkpointed
        self._libxc_kwargs = dict(libxc_kwargs, checkpointed=checkpointed)
        self.options: int | None = None
        self.libxc: libxc_reader.StreamReader | None = None   # the inline stream being read
        self._phase = "context"   # context -> libxc -> tail -> done
        self._emulator_context = False

    def _truncated(self) -> str:
        where = ("header" if self.options is None else
                 "libxc stream" if self._phase == "libxc" else "libxl records")
        return f"save stream truncated in the {where} (no libxl END)"

    def _limit(self, rtype: int, length: int) -> int:
        try:
            t = LibxlRecType(rtype)
        except ValueError:
            raise err(f"libxl: unknown record type 0x{rtype:08x}") from None
        return _CAP[t]

    def _poll(self) -> list[Record]:
        out: list[Record] = []
        while not self.done:
            if self.options is None:
                raw = self._input.take(HDR.size)
                if raw is None:
                    break
                self.options = parse_header(raw)
                continue
            if self._phase == "libxc":
                out += self.libxc.poll()
                if self.libxc.done:
                    self._phase = "tail"
                elif self.libxc.at_checkpoint:
                    self._phase = "checkpoint"
                else:
                    break
                continue
            got = self._framer.next()
            if got is None:
                break
            rtype, body = got
            out.append(self._handle(LibxlRecType(rtype), body))
        if self.done and len(self._input):
            raise err("libxl stream: data after END")
        return out

    def _handle(self, t: LibxlRecType, body) -> Record:
        """Check one libxl record against the phase: "context" (before LIBXC_CONTEXT),
        "checkpoint" (libxc paused at a CHECKPOINT), "tail" (after the libxc END)."""
        value = None
        phase = self._phase
        if t == LibxlRecType.LIBXC_CONTEXT:
            if phase != "context":
                raise err("libxl: LIBXC_CONTEXT out of order")
            self.libxc = libxc_reader.StreamReader(_input=self._input, _nested=True,
                                            **self._libxc_kwargs)
            self._phase = "libxc"
        elif t in (LibxlRecType.EMULATOR_XENSTORE_DATA, LibxlRecType.EMULATOR_CONTEXT):
            if not self.hvm:
                raise err(f"libxl: {t.name} for a PV domain")
            if phase not in ("tail", "checkpoint") or self._emulator_context:
                raise err(f"libxl: {t.name} out of order")
            if t == LibxlRecType.EMULATOR_XENSTORE_DATA:
                value = parse_emulator_xenstore_data(body)
            else:
                if len(body) < _EMU_HDR.size:
                    raise err("EMULATOR_CONTEXT too short for its header")
                emu_id, index = _EMU_HDR.unpack_from(body, 0)
                if emu_id not in EmulatorId.__members__.values():
                    raise err(f"EMULATOR_CONTEXT unknown emulator id {emu_id}")
                value = (emu_id, index, bytes(body[_EMU_HDR.size:]))
                self._emulator_context = True
        elif t == LibxlRecType.END:
            if phase != "tail":
                raise err("libxl: END before the libxc stream's END")
            self.done = True
        elif t == LibxlRecType.CHECKPOINT_END:
            if phase != "checkpoint":
                raise err("libxl: CHECKPOINT_END without a libxc CHECKPOINT")
            self._emulator_context = False
            self.libxc.resume()
            self._phase = "libxc"
        elif t == LibxlRecType.CHECKPOINT_STATE:
            if not self.checkpointed:
                raise err("libxl: CHECKPOINT_STATE in a stream that is not checkpointed")
            (value,) = _CKPT_STATE.unpack(body)
            if value not in CheckpointState.__members__.values():
                raise err(f"libxl: unknown CHECKPOINT_STATE id {value}")
        return Record(t, body, value, layer="libxl")
