"""The header ``xl save`` and ``xl migrate`` put before the libxl stream
(``tools/xl/xl.h`` ``struct save_file_header``, ``tools/xl/xl_saverestore.c``
``save_domain_core_writeconfig``, read back in ``xl_vmcontrol.c`` ``create_domain``)::

    char magic[32] = "Xen saved domain, xl format\\n \\0 \\r"
    u32 byteorder = 0x01020304     (all u32s in the saving host's order: little-endian)
    u32 mandatory_flags            XL_MANDATORY_FLAG_JSON 1, XL_MANDATORY_FLAG_STREAMv2 2;
                                   unknown ones => refuse
    u32 optional_flags             (none defined)
    u32 optional_data_len
    optional data: u32 config_len, then config_len bytes of domain configuration

xl itself stores the configuration as libxl JSON (NUL included) and sets the JSON flag;
we store the xl.cfg text the domain was created from, as ``xl save`` does with no JSON
(xl parses it with ``parse_config_data``). Bytes of optional data after the config are
skipped, as xl does. The libxl stream (:mod:`.libxl`) follows the header.
"""

from __future__ import annotations

import dataclasses
import struct

from protocols.migration.record import err

MAGIC = b"Xen saved domain, xl format\n \0 \r"
assert len(MAGIC) == 32
BYTEORDER = 0x01020304
XL_MANDATORY_FLAG_JSON = 1 << 0
XL_MANDATORY_FLAG_STREAMV2 = 1 << 1
XL_MANDATORY_FLAG_ALL = XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMV2

_FIXED = struct.Struct("<32sIIII")
FIXED_SIZE = _FIXED.size  # 48
_U32 = struct.Struct("<I")
OPTIONAL_DATA_MAX = 16 << 20  # our cap: a domain config is a few KiB


@dataclasses.dataclass(frozen=True, slots=True)
class SaveFileHeader:
    """A decoded header: the configuration (bytes, trailing NULs removed), whether it is
    JSON, the flags as found, and ``size``: where the libxl stream starts."""

    config: bytes
    json: bool
    mandatory_flags: int
    optional_flags: int
    size: int

    @property
    def config_text(self) -> str:
        try:
            return self.config.decode()
        except UnicodeDecodeError as e:
            raise err("save file config is not UTF-8") from e


def encode(config: str | bytes = b"", *, json: bool = False) -> bytes:
    """The header with ``config`` (xl.cfg text, or libxl JSON with ``json=True``, which
    gets its trailing NUL as xl writes it). An empty config is stored as length 0."""
    data = config.encode() if isinstance(config, str) else bytes(config)
    if json and data and not data.endswith(b"\0"):
        data += b"\0"
    flags = XL_MANDATORY_FLAG_STREAMV2 | (XL_MANDATORY_FLAG_JSON if json and data else 0)
    optional = _U32.pack(len(data)) + data
    if len(optional) > OPTIONAL_DATA_MAX:
        raise err(f"save file config over {OPTIONAL_DATA_MAX} bytes")
    return _FIXED.pack(MAGIC, BYTEORDER, flags, 0, len(optional)) + optional


def header_size(prefix: bytes) -> int | None:
    """From the first 48 bytes, the whole header's size (None while fewer are known), so a
    reader knows how much to read before :func:`decode`."""
    if len(prefix) < FIXED_SIZE:
        return None
    return FIXED_SIZE + _check_fixed(prefix)[2]


def _check_fixed(raw) -> tuple[int, int, int]:
    magic, byteorder, mandatory, optional, optlen = _FIXED.unpack_from(raw, 0)
    if magic != MAGIC:
        raise err("save file: wrong magic (not an xl save file)")
    if byteorder != BYTEORDER:
        raise err(f"save file: wrong byte order 0x{byteorder:08x}")
    if mandatory & ~XL_MANDATORY_FLAG_ALL:
        raise err(f"save file: unsupported mandatory flags "
                  f"0x{mandatory & ~XL_MANDATORY_FLAG_ALL:x}")
    if not mandatory & XL_MANDATORY_FLAG_STREAMV2:
        raise err("save file: not a v2 (libxl) stream")
    if optlen > OPTIONAL_DATA_MAX:
        raise err(f"save file: optional data of {optlen} bytes over {OPTIONAL_DATA_MAX}")
    return mandatory, optional, optlen


def decode(data) -> SaveFileHeader:
    """Decode the header at the start of ``data`` (the libxl stream may follow it)."""
    if len(data) < FIXED_SIZE:
        raise err("save file: truncated header")
    mandatory, optional, optlen = _check_fixed(data)
    size = FIXED_SIZE + optlen
    if len(data) < size:
        raise err("save file: truncated optional data")
    opt = bytes(data[FIXED_SIZE:size])
    config = b""
    if opt:
        if len(opt) < _U32.size:
            raise err("save file: optional data too short for the config length")
        (config_len,) = _U32.unpack_from(opt, 0)
        if config_len > len(opt) - _U32.size:
            raise err(f"save file: config length {config_len} beyond the optional data")
        config = opt[_U32.size:_U32.size + config_len].rstrip(b"\0")
    return SaveFileHeader(config=config, json=bool(mandatory & XL_MANDATORY_FLAG_JSON),
                          mandatory_flags=mandatory, optional_flags=optional, size=size)
