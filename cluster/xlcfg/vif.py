"""Vif specs (``docs/man/xl-network-configuration.5.pod.in``), parsed as xl parses them.

xl splits each ``vif = [ ... ]`` entry on commas (``strtok``, so empty items vanish and ``''``
is a vif with every default) and hands each ``key=value`` item to ``parse_nic_config``
(``tools/xl/xl_parse.c``); rates go to ``xlu_vif_parse_rate`` (``libxlu_vif.c``), whose
arithmetic and overflow checks :func:`parse_rate` keeps, quirks included (numbers are read
with ``strtoull(..., 0)``, so a leading 0 means octal).

When creating a domain xl ignores ``parse_nic_config``'s verdict on an item it does not
recognise: it prints "unrecognized argument" and carries on. xenray does the same, as a
warning, rather than refuse a file xl would boot. A value xl would misread (a bad ``mac``,
``type``, ``rate``, ``devid`` or ``mtu``) is an error here, and xenray also checks ``ip``
(IPv4 addresses, space-separated) and ``vlan`` (the grammar of the man page), which xl leaves
to the hotplug script.

Defaults are libxl's (``libxl_nic.c``): bridge ``xenbr0``, script ``vif-bridge``, MTU 1500,
devid = index in the list, and a random MAC under Xen's OUI 00:16:3e
(:func:`protocols.netif.xen_mac`), chosen by the toolstack at create time so a restarted
domain keeps the MAC recorded in its config.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable

from cluster.xlcfg.syntax import XlCfgError
from protocols.libxl_types import RateLimit, VifSpec

DEFAULT_RATE_INTERVAL_USECS = 50_000  # libxlu_vif.c: "Default to 50ms"
NIC_TYPES = ("vif", "ioemu")

_UINT32_MAX = (1 << 32) - 1
_UINT64_MAX = (1 << 64) - 1
_INT_MAX = (1 << 31) - 1
_DECIMAL = re.compile(r"[0-9]+")
_MAC = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2}){5}")
_RATE = re.compile(r"[0-9]+[GMK]?[Bb]/s")
_INTERVAL = re.compile(r"[0-9]+[mu]?s?")
_VLAN_TERM = re.compile(r"(\d+)(?:(p|u)?|-(\d+)(u)?|\+(\d+)x(\d+)(u)?)")
_IGNORED = ("accel", "forwarddev")  # and every colo_* key: accepted by xl, unused here


def parse_vif_spec(spec: str, index: int, *, warnings: list[str] | None = None) -> VifSpec:
    """Parse one vif spec (the ``index``-th in the list); raises :class:`XlCfgError`.

    Items xl would print and skip (unknown keys, ``accel``, the COLO keys) go to ``warnings``.
    """
    f: dict[str, Any] = {"devid": index}

    def bad(key: str, value: str, why: str = "") -> XlCfgError:
        return XlCfgError(f"invalid {key} `{value}'{why} in vif spec `{spec}'")

    def warn(message: str) -> None:
        if warnings is not None:
            warnings.append(f"{message} in vif spec `{spec}'")

    for item in (t.strip() for t in spec.split(",")):
        key, eq, value = item.partition("=")
        if not item:
            continue
        if item in ("trusted", "untrusted"):
            f["trusted"] = item == "trusted"
        elif not eq:
            warn(f"unrecognized argument `{item}' ignored")
        elif key == "mac":
            if not _MAC.fullmatch(value):
                raise bad(key, value, " (want six hex octets separated by colons)")
            f["mac"] = ":".join(f"{int(o, 16):02x}" for o in value.split(":"))
        elif key in ("bridge", "gatewaydev", "model", "vifname", "script", "backend"):
            f[key] = value
        elif key == "netdev":
            warn("the netdev parameter is deprecated, please use gatewaydev instead")
            f["gatewaydev"] = value
        elif key == "type":
            if value not in NIC_TYPES:
                raise bad(key, value, " (want vif or ioemu)")
            f["type"] = value
        elif key == "ip":
            try:
                if not value.split():
                    raise ValueError(value)
                for address in value.split():
                    ipaddress.IPv4Address(address)
            except ValueError:
                raise bad(key, value, " (want IPv4 addresses separated by spaces)") from None
            f["ip"] = value
        elif key == "rate":
            try:
                f["rate"] = parse_rate(value)
            except XlCfgError as e:
                raise bad(key, value, f" ({e.message})") from None
        elif key in ("devid", "mtu"):
            lo, hi = (0, _INT_MAX) if key == "devid" else (68, 65535)
            if not _DECIMAL.fullmatch(value) or not lo <= int(value) <= hi:
                raise bad(key, value, f" (want a decimal number in {lo}..{hi})")
            f[key] = int(value)
        elif key == "vlan":
            _check_vlan(value, bad)
            f["vlan"] = value
        elif key in _IGNORED or key.startswith("colo_"):
            warn(f"`{key}' is not supported by xenray and is ignored")
        else:
            warn(f"unrecognized argument `{item}' ignored")
    return VifSpec(**f)


def parse_rate(rate: str) -> RateLimit:
    """``xlu_vif_parse_rate``: "RATE/s[@INTERVAL]" (e.g. "10Mb/s", "1MB/s@20ms")."""
    bytes_part, at, interval_part = rate.partition("@")
    if not bytes_part:
        raise XlCfgError("no rate specified")
    if not _RATE.fullmatch(bytes_part):
        raise XlCfgError("invalid rate")
    value, rest = _strtoull_prefix(bytes_part)
    if value == 0 or value > _UINT32_MAX:
        raise XlCfgError("rate overflow")
    value *= {"G": 10**9, "M": 10**6, "K": 10**3}.get(rest[:1], 1)
    if "b" in rest[:2]:
        value //= 8
    usecs = DEFAULT_RATE_INTERVAL_USECS
    if at:
        if not _INTERVAL.fullmatch(interval_part):
            raise XlCfgError("invalid replenishment interval")
        usecs, unit = _strtoull_prefix(interval_part)
        if usecs == 0 or usecs > _UINT32_MAX:
            raise XlCfgError("replenishment interval overflow")
        usecs *= 1_000_000 if unit[:1] in ("s", "") else 1000 if unit[:1] == "m" else 1
        if usecs > _UINT32_MAX:
            raise XlCfgError("replenishment interval overflow")
    if value > _UINT64_MAX // usecs:
        raise XlCfgError("rate overflow")
    return RateLimit(value * usecs // 1_000_000, usecs)


def _strtoull_prefix(text: str) -> tuple[int, str]:
    """``strtoull(text, &rest, 0)`` on text that starts with a digit."""
    digits = re.match(r"0[0-7]*|[0-9]+", text).group()
    return int(digits, 8 if digits[0] == "0" else 10), text[len(digits):]


def _check_vlan(value: str, bad: Callable[[str, str, str], XlCfgError]) -> None:
    """The ``vlan`` grammar: terms ``N[p|u]``, ``N-M[u]`` or ``N+OFFxCOUNT[u]`` joined by /."""
    terms = value.split("/")
    pvids = 0
    for term in terms:
        m = _VLAN_TERM.fullmatch(term)
        if m is None:
            raise bad("vlan", value, f" (bad term `{term}')")
        first, mark, last, _u, offset, count, _u2 = m.groups()
        ids = [int(first)]
        if last is not None:
            ids.append(int(last))
        elif offset is not None:
            ids.append(int(first) + int(offset) * int(count))
        if not all(1 <= i <= 4094 for i in ids) or ids != sorted(ids):
            raise bad("vlan", value, f" (VLAN IDs are 1..4094, ranges ascending: `{term}')")
        pvids += mark == "p"
    single = len(terms) == 1 and _VLAN_TERM.fullmatch(terms[0]).group(3, 5) == (None, None)
    if pvids > 1 or (pvids == 0 and not single):
        raise bad("vlan", value, " (exactly one VLAN must be marked as the PVID with `p')")
