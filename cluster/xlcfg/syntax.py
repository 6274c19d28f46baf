"""The xl.cfg file format: libxlu's lexer and grammar, reimplemented.

xl reads a domain config with ``tools/libs/util/libxlu_cfg_l.l`` (flex) and
``libxlu_cfg_y.y`` (bison); this module follows both so a file xl accepts parses the same here
and a file xl rejects fails with the line number xl would report (reference section 18).

* Settings are ``KEY = VALUE`` or ``KEY += VALUE``, each ended by a newline or ``;`` (the
  last one may end the file). ``#`` starts a comment running to the end of the line.
* A value is an atom, a quoted STRING or a NUMBER token (``[0-9][0-9a-fx]*``), or a list
  ``[ v, v, ... ]``: lists nest, may span lines, and may end with a comma.
* libxlu keeps every atom as text: numbers are converted only when a key is read as a number,
  with C ``strtol(..., 0)`` (decimal, ``0``-prefixed octal, ``0x`` hex; see :func:`c_strtol`),
  so ``memory = "128"`` is as good as ``memory = 128``.
* A key set twice keeps the last value (``find()`` walks a most-recent-first list).
  ``+=`` appends to the previous value of the same type (string concatenation or list
  extension) and is refused when the key is read as a number (``libxlu_cfg.c``).

Deliberate leniencies, none of which changes a file xl accepts: a ``\\r`` before a newline is
whitespace (CRLF files), a comment may end the file without a newline, and string escapes
``\\xHH`` and ``\\ooo`` give the character they name (libxlu's own ``xlu__cfgl_dequote``
rejects every ``\\x`` escape and silently drops octal ones, a bug no working file relies on).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Union

_LONG_MAX = (1 << 63) - 1
_MAX_DEPTH = 64  # bison's stack is bounded too ("memory exhausted"); real configs nest twice
_SIGNED = re.compile(r"[+-][0-9]")
_SETTING_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\+?=\s*$")
_PYTHON_HINT = " (the file looks like Python, which xl no longer supports)"


class XlCfgError(Exception):
    """A bad xl.cfg file, value or device spec; ``str()`` is ``FILE:LINE: KEY: message``."""

    def __init__(self, message: str, *, line: int | None = None, key: str | None = None,
                 filename: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.key = key
        self.filename = filename

    def located(self, *, filename: str | None = None, line: int | None = None,
                key: str | None = None) -> XlCfgError:
        """A copy with the missing location parts filled in (those already known win)."""
        return XlCfgError(self.message, line=self.line if self.line is not None else line,
                          key=self.key or key, filename=self.filename or filename)

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.filename, self.line) if p is not None)
        parts = [p for p in (where, self.key, self.message) if p]
        return ": ".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class Atom:
    """A STRING or NUMBER token: libxlu's ``XLU_STRING`` value, always kept as text."""

    text: str
    line: int
    quoted: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ListValue:
    """A ``[ ... ]`` value (``XLU_LIST``); ``line`` is where its ``[`` is."""

    items: tuple[Value, ...]
    line: int


Value = Union[Atom, ListValue]


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One ``KEY = VALUE`` (``op`` "=") or ``KEY += VALUE`` (``op`` "+=") that is in force."""

    key: str
    value: Value
    line: int
    op: str = "="


@dataclasses.dataclass(frozen=True)
class ConfigFile:
    """The settings of one file, last assignment of each key winning, in first-seen order."""

    settings: dict[str, Setting]
    filename: str
    text: str

    def get(self, key: str) -> Setting | None:
        return self.settings.get(key)


def c_strtol(text: str) -> int:
    """C ``strtol(text, &ep, 0)`` that must consume the whole text, as libxlu requires.

    Raises ValueError with libxlu's wording if the text is not a number or is out of range.
    """
    m = _STRTOL.fullmatch(text)
    if m is None:
        raise ValueError("is not a valid number")
    sign, digits = m.groups()
    if digits[:2].lower() == "0x":
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    value = -value if sign == "-" else value
    if not -_LONG_MAX - 1 <= value <= _LONG_MAX:
        raise ValueError("could not be parsed as a number: Numerical result out of range")
    return value


_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def parse(text: str, *, filename: str = "<string>") -> ConfigFile:
    """Parse xl.cfg text; raises :class:`XlCfgError` with the file name and line."""
    try:
        return _Parser(_tokens(text), filename, text).file()
    except XlCfgError as e:
        raise e.located(filename=filename) from None


# -- lexer (libxlu_cfg_l.l) ---------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>[ \t]+|\r(?=\n|$))
  | (?P<newline>(?:\#[^\n]*)?(?:\n|$))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9][0-9a-fx]*)
  | (?P<string>'(?:[^'\\\n]|\\[^\n])*'|"(?:[^"\\\n]|\\[^\n])*")
  | (?P<op>\+=|[=;,\[\]])
""", re.VERBOSE)

_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)")


@dataclasses.dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # ident number string newline eof, or the operator itself
    text: str
    line: int


def _tokens(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, line, end = 0, 1, len(text)
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _lexical_error(text, pos, line)
        kind = m.lastgroup
        value = m.group()
        if kind == "newline":
            toks.append(_Tok("newline", value, line))
            line += value.endswith("\n")
        elif kind == "string":
            toks.append(_Tok("string", _dequote(value, line), line))
        elif kind == "op":
            toks.append(_Tok(value, value, line))
        elif kind != "ws":
            toks.append(_Tok(kind, value, line))
        pos = m.end()
    toks.append(_Tok("eof", "", line))
    return toks


def _lexical_error(text: str, pos: int, line: int) -> XlCfgError:
    word = re.match(r"[^ \t\n]*", text[pos:]).group() or text[pos]
    if word[0] in "'\"":
        return XlCfgError(f"unterminated string near `{word}'", line=line)
    key = _SETTING_KEY.match(text[text.rfind("\n", 0, pos) + 1:pos])
    if _SIGNED.match(word):  # libxlu's numbers have no sign: say so, not "Python"
        return XlCfgError(f"`{word}' is not a valid value: numbers in xl.cfg have no sign "
                          f"(and {key[1] if key else 'this key'} cannot be negative)",
                          line=line, key=key[1] if key else None)
    rest_of_line = text[pos:].partition("\n")[0]
    hint = _PYTHON_HINT if any(c in rest_of_line for c in "+-.():") else ""
    return XlCfgError(f"config parsing error near `{word}': lexical error{hint}", line=line)


def _dequote(token: str, line: int) -> str:
    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc in _ESCAPES:
            return _ESCAPES[esc]
        if esc[0] == "x" and len(esc) == 3:
            return chr(int(esc[1:], 16))
        if esc[0] in "01234567":
            return chr(int(esc, 8))
        raise XlCfgError(f"invalid character after backslash in quoted string {token}",
                         line=line)
    return _ESCAPE.sub(one, token[1:-1])


# -- parser (libxlu_cfg_y.y) --------------------------------------------------------------

_DESCRIBE = {"ident": "identifier", "number": "number", "string": "string",
             "newline": "end of line", "eof": "end of file"}


class _Parser:
    """Recursive descent over bison's grammar: file: stmts | stmts assignment."""

    def __init__(self, toks: list[_Tok], filename: str, text: str) -> None:
        self.toks = toks
        self.i = 0
        self.filename = filename
        self.text = text
        self.settings: dict[str, Setting] = {}

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self, *kinds: str) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind not in kinds:
            raise self.unexpected(tok, " or ".join(_DESCRIBE.get(k, f"`{k}'") for k in kinds))
        self.i += 1
        return tok

    def unexpected(self, tok: _Tok, expecting: str) -> XlCfgError:
        got = _DESCRIBE.get(tok.kind, f"`{tok.kind}'")
        near = f" near `{tok.text}'" if tok.text.strip() else ""
        hint = " (strings must be quoted)" if tok.kind == "ident" and "string" in expecting else ""
        return XlCfgError(f"config parsing error{near}: syntax error, unexpected {got}, "
                          f"expecting {expecting}{hint}", line=tok.line)

    def file(self) -> ConfigFile:
        while self.peek().kind != "eof":
            if self.peek().kind in ("newline", ";"):
                self.i += 1
                continue
            self.assignment()
            if self.peek().kind != "eof":
                self.take("newline", ";")
        return ConfigFile(self.settings, self.filename, self.text)

    def assignment(self) -> None:
        key = self.take("ident")
        op = self.take("=", "+=").kind
        value = self.value(0)
        prev = self.settings.get(key.text)
        if op == "+=" and prev is not None:
            value = _concat(prev.value, value, key.text)
        self.settings[key.text] = Setting(key.text, value, value.line, op)

    def value(self, depth: int) -> Value:
        tok = self.take("string", "number", "[")
        if tok.kind != "[":
            return Atom(tok.text, tok.line, tok.kind == "string")
        if depth >= _MAX_DEPTH:
            raise XlCfgError(f"lists nested more than {_MAX_DEPTH} deep", line=tok.line)
        items: list[Value] = []
        self.newlines()
        while self.peek().kind != "]":
            if self.peek().kind == "eof":
                raise XlCfgError(f"unclosed list: `[' on line {tok.line} has no `]'",
                                 line=self.peek().line)
            items.append(self.value(depth + 1))
            self.newlines()
            if self.peek().kind not in ("]", "eof"):
                self.take(",", "]")
                self.newlines()
        self.take("]")
        return ListValue(tuple(items), tok.line)

    def newlines(self) -> None:
        while self.peek().kind == "newline":
            self.i += 1


def _concat(prev: Value, new: Value, key: str) -> Value:
    """``xlu__cfg_concat_vals``: ``+=`` joins strings or lists, never one with the other."""
    if isinstance(prev, Atom) and isinstance(new, Atom):
        return Atom(prev.text + new.text, new.line, prev.quoted or new.quoted)
    if isinstance(prev, ListValue) and isinstance(new, ListValue):
        return ListValue(prev.items + new.items, new.line)
    raise XlCfgError("can't add [list] to \"string\" or vice versa", line=new.line, key=key)
