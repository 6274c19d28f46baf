"""Disk specs (``docs/man/xl-disk-configuration.5.pod.in``), parsed as libxlu parses them.

xl hands each ``disk = [ ... ]`` entry to ``xlu_disk_parse`` (``tools/libs/util/
libxlu_disk_l.l``, a flex scanner, and ``libxlu_disk.c``). The scanner's rules are keyword
parameters (``format=``, ``vdev=``, ``access=``, ``devtype=``, ``backend=``, ``backendtype=``,
``script=``, ``specification=``, flags ``cdrom``, ``direct-io-safe``, ``discard``,
``no-discard``, ``trusted``, ``untrusted``), ``target=`` which swallows the rest of the spec,
the deprecated ``phy:``/``raw:``/``iscsi:``... prefixes, and positional parameters filling
target, format, vdev, access in that order. Flex picks the longest match (a rule with
trailing context counts the context), the earlier rule on a tie; :func:`_next_rule` does the
same, so ``cdrom`` is the flag but ``cdromx`` is positional and ``hdc:cdrom`` is a vdev with
its old-style device type.

After scanning, as ``libxlu_disk.c``: format defaults to raw; a cdrom is removable and always
read-only, with format ``empty`` when it has no target; a vdev is mandatory, and so is a
target unless the device is removable. xenray also checks the vdev name here and computes
its devid (the encoding of reference 8.3) so a typo fails at parse time, as libxl's
``libxl__device_disk_dev_number`` would fail at create.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from cluster.xlcfg.syntax import XlCfgError
from protocols.blkif import vdev_to_devid
from protocols.errno import XenError
from protocols.libxl_types import DiskSpec

FORMATS = ("raw", "qcow", "qcow2", "vhd", "empty", "qed")
BACKENDTYPES = ("phy", "tap", "qdisk", "standalone")
SPECIFICATIONS = ("xen", "virtio")



def parse_disk_spec(spec: str, *, warnings: list[str] | None = None) -> DiskSpec:
    """Parse one disk spec string; raises :class:`XlCfgError` naming the spec.

    Parameters xl accepts but xenray ignores (the COLO ones, ``grant_usage``) add a note to
    ``warnings`` when a list is given.
    """
    st = _State(spec, warnings)
    pos = 0
    while pos < len(spec):
        action, text, end = _next_rule(spec, pos)
        action(st, text)
        pos = end
    return st.finish()


class _State:
    """``DiskParseContext`` plus the disk being filled."""

    def __init__(self, spec: str, warnings: list[str] | None) -> None:
        self.spec = spec
        self.warnings = warnings
        self.f: dict[str, Any] = {"target": None, "vdev": None, "format": None,
                                  "readwrite": True, "is_cdrom": False, "backend": None,
                                  "backendtype": None, "script": None, "specification": None,
                                  "direct_io_safe": False, "discard": None, "trusted": None}
        self.access_set = False
        self.had_depr_prefix = False

    def error(self, near: str | None, message: str) -> XlCfgError:
        where = f": near `{near}'" if near is not None else ""
        return XlCfgError(f"{message}{where} in disk spec `{self.spec}'")

    def save(self, field: str, value: str) -> None:
        """``savestring``: refuse to overwrite a non-empty string."""
        if self.f[field]:
            raise self.error(value, f"{field} respecified")
        self.f[field] = value

    def set_enum(self, field: str, value: str, allowed: tuple[str, ...]) -> None:
        """``DSET``: an enum may be set again only to the same value."""
        if value not in allowed:
            raise self.error(value, f"unknown value for {field}")
        if self.f[field] not in (None, value):
            raise self.error(value, f"{field} respecified")
        self.f[field] = value

    def set_format(self, value: str) -> None:
        self.set_enum("format", value or "raw", FORMATS)

    def set_access(self, value: str) -> None:
        if value not in ("r", "ro", "rw", "w", ""):
            raise self.error(value, "unknown value for access")
        self.f["readwrite"] = value not in ("r", "ro")

    def vdev_and_devtype(self, text: str) -> bool:
        """A deprecated ``vdev:cdrom`` / ``vdev:disk`` positional parameter."""
        vdev, colon, devtype = text.rpartition(":")
        if not colon:
            return False
        self.save("vdev", vdev)
        if devtype not in ("cdrom", "disk"):
            raise self.error(devtype, "unknown deprecated type")
        self.f["is_cdrom"] = devtype == "cdrom"
        return True

    def positional(self, text: str) -> None:
        f = self.f
        if f["target"] is None:
            self.save("target", text)
        elif not self.had_depr_prefix and f["format"] is None:
            if not f["target"] and self.vdev_and_devtype(text):
                f["format"] = "empty"
            else:
                self.set_format(text)
        elif f["vdev"] is None:
            if not self.vdev_and_devtype(text):
                self.save("vdev", text)
        elif not self.access_set:
            self.access_set = True
            self.set_access(text)
        else:
            raise self.error(text, "too many positional parameters")

    def ignored(self, text: str) -> None:
        if self.warnings is not None:
            self.warnings.append(f"disk parameter `{text}' is not supported by xenray and "
                                 f"is ignored in `{self.spec}'")

    def finish(self) -> DiskSpec:
        f = dict(self.f)
        f["format"] = f["format"] or "raw"
        removable = f["is_cdrom"]
        if removable:
            f["readwrite"] = False
            if not f["target"]:
                f["format"] = "empty"
        if not f["vdev"]:
            raise self.error(None, "no vdev specified")
        if f["target"] is None and not removable:
            raise self.error(None, "no target specified (and device not removable)")
        try:
            devid = vdev_to_devid(f["vdev"])
        except XenError:
            raise self.error(f["vdev"], "invalid virtual disk name") from None
        return DiskSpec(devid=devid, removable=removable, **f)


# -- the scanner rules, in libxlu_disk_l.l's order -----------------------------------------

_Action = Callable[[_State, str], None]


def _value(text: str) -> str:
    """``FROMEQUALS`` after ``STRIP(',')``."""
    return text.removesuffix(",").partition("=")[2]


def _flag(field: str, value: Any) -> _Action:
    return lambda st, _text: st.f.__setitem__(field, value)


def _string(field: str) -> _Action:
    return lambda st, text: st.save(field, _value(text))


def _enum(field: str, allowed: tuple[str, ...]) -> _Action:
    return lambda st, text: st.set_enum(field, _value(text), allowed)


def _fail(message: str) -> _Action:
    def action(st: _State, text: str) -> None:
        raise st.error(text, message)
    return action


def _old_format(st: _State, text: str) -> None:
    st.had_depr_prefix = True
    st.set_format(text.removesuffix(":"))


def _old_script(st: _State, text: str) -> None:
    st.had_depr_prefix = True
    st.save("script", "block-" + text.removesuffix(":"))


def _old_prefix(st: _State, _text: str) -> None:
    st.had_depr_prefix = True


def _ignored(st: _State, text: str) -> None:
    st.ignored(text.removesuffix(","))


def _skip(_st: _State, _text: str) -> None:
    pass


_RULES: tuple[tuple[re.Pattern[str], re.Pattern[str] | None, _Action], ...] = tuple(
    (re.compile(head), re.compile(ctx) if ctx is not None else None, action)
    for head, ctx, action in (
        (r"[ \t\n]+", r"(?:[^ \t\n].*)?", _skip),
        (r"format=[^,]*,?", None, lambda st, t: st.set_format(_value(t))),
        (r"cdrom,?", None, _flag("is_cdrom", True)),
        (r"devtype=cdrom,?", None, _flag("is_cdrom", True)),
        (r"devtype=disk,?", None, _flag("is_cdrom", False)),
        (r"devtype=[^,]*,?", None, _fail("unknown value for type")),
        (r"access=[^,]*,?", None, lambda st, t: st.set_access(_value(t))),
        (r"backend=[^,]*,?", None, _string("backend")),
        (r"backendtype=[^,]*,?", None, _enum("backendtype", BACKENDTYPES)),
        (r"specification=[^,]*,?", None, _enum("specification", SPECIFICATIONS)),
        (r"vdev=[^,]*,?", None, _string("vdev")),
        (r"script=[^,]*,?", None, _string("script")),
        (r"direct-io-safe,?", None, _flag("direct_io_safe", True)),
        (r"discard,?", None, _flag("discard", True)),
        (r"no-discard,?", None, _flag("discard", False)),
        (r"(?:no-)?colo,?", None, _ignored),
        (r"(?:colo-(?:host|port|export)|active-disk|hidden-disk)=[^,]*,?", None, _ignored),
        (r"trusted,?", None, _flag("trusted", True)),
        (r"untrusted,?", None, _flag("trusted", False)),
        (r"grant_usage=[01],?", None, _ignored),
        (r"target=.*", None, lambda st, t: st.save("target", _value(t))),
        (r"[a-z][-a-z0-9]*=[^,],?", None, _fail("unknown parameter")),
        (r"(?:raw|qcow2?|vhd):", r".*", _old_format),
        (r"(?:iscsi|e?nbd|drbd):", r".*", _old_script),
        (r"(?:tapdisk|tap2?|aio|ioemu|file|phy):", r".*", _old_prefix),
        (r"[a-z][a-z0-9]*:", r"(?:[^a-z0-9].*)?", _fail("unknown deprecated disk prefix")),
        (r"[^=,]+,?|,", None, lambda st, t: st.positional(t.removesuffix(","))),
        (r".", None, _fail("bad disk syntax")),
    ))


def _next_rule(spec: str, pos: int) -> tuple[_Action, str, int]:
    """Flex's choice at ``pos``: the longest match (head plus trailing context), first wins."""
    best: tuple[int, _Action, str, int] | None = None
    for head, ctx, action in _RULES:
        m = head.match(spec, pos)
        if m is None:
            continue
        length = m.end() - pos
        if ctx is not None:
            c = ctx.match(spec, m.end())
            length += c.end() - m.end() if c else 0
        if best is None or length > best[0]:
            best = (length, action, m.group(), m.end())
    assert best is not None  # the last rule matches any character
    return best[1], best[2], best[3]
