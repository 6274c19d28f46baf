"""Memory sizes on xl's command line (``xl mem-set``, ``xl mem-max``), as xl reads them.

``tools/xl/xl_parse.c`` ``parse_mem_size_kb``: a decimal number and at most one suffix, ``b``
(bytes), ``k`` (KiB), ``m`` (MiB), ``g`` (GiB) or ``t`` (TiB), either case; no suffix is MiB.
The result is KiB (bytes are rounded down to whole KiB).

Decisions: xl takes a size with no digits as 0 (``strtoll``) and passes a negative one on
to libxl, which refuses it; here both are an invalid size, said before anything is asked.
"""

from __future__ import annotations

import re

_SHIFT = {"b": -10, "k": 0, "": 10, "m": 10, "g": 20, "t": 30}
_SIZE = re.compile(r"\s*\+?(\d+)([bkmgt]?)", re.IGNORECASE)


def parse_mem_size_kb(text: str | int) -> int:
    """KiB for ``text`` (``"128m"``, ``"1g"``, ``"512"`` = 512 MiB); an int is MiB, as a
    suffix-less number. ValueError ("invalid memory size: ...") for anything else."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"invalid memory size: {text!r}")
    if isinstance(text, int):
        text = str(text)
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid memory size: {text}")
    value, shift = int(match[1]), _SHIFT[match[2].lower()]
    return value << shift if shift >= 0 else value >> -shift
