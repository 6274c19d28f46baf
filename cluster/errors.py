"""Errors a user causes, said in one line; anything else is a bug, said as one.

A bad xl.cfg, an unknown domain, a host that does not answer, a hypercall's refusal
(``XenError``, which crosses actors as itself): the command prints one line naming what is
wrong and exits 1, never a traceback. What is not on this list is unexpected: the daemon logs
its traceback and the command still prints one line, pointing at the log.
"""

from __future__ import annotations

EXPECTED = ("XenError", "XlCfgError", "DomainNotFound", "HostUnreachable", "ValueError",
            "TimeoutError", "FileNotFoundError", "FileExistsError", "PermissionError",
            "IsADirectoryError", "NoToken")


def one_line(text: str) -> str:
    """Several lines joined by "; " (a console excerpt in a timeout, say)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe(e: BaseException) -> tuple[str, str, bool]:
    """(type name, one-line message, whether a user can cause it)."""
    kind = type(e).__name__
    if kind == "ControlError":  # the daemon already judged it
        return kind, one_line(str(e)), e.expected
    expected = any(cls.__name__ in EXPECTED for cls in type(e).__mro__) and \
        not isinstance(e, UnicodeError)  # a ValueError, but of ours
    text = str(e) if expected else f"internal error: {kind}: {e}"
    return kind, one_line(text), expected
