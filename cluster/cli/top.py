"""``xenray top``: xentop for the cluster, live in the terminal or in batch.

Each refresh asks the daemon for one sample (``xenstat``: one call per host, all at once) and
draws :mod:`cluster.top`'s lines. Live, as xentop under curses: the whole screen is redrawn
(ANSI, in the terminal's alternate screen, so the shell's screen comes back after), the
header reversed with the sort column bold, the keys on the bottom line, and keys are read
from the terminal in cbreak mode, waiting at most half a second at a time (curses'
``halfdelay(5)``); any key takes a new sample at once, as in xentop. Without a terminal on
stdout, or with ``-b`` or ``--json``, it runs in batch: each sample's table (or one JSON
line) on stdout, ``-d`` seconds apart, ``-i`` times or until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from cluster import top
from cluster.cli.client import ask

CSI = "\x1b["
REVERSE, BOLD, OFF = f"{CSI}7m", f"{CSI}1m", f"{CSI}0m"
ON = f"{CSI}30;43m"  # xentop's COLOR_PAIR(1): an option that is on, on yellow
ENTER_SCREEN, LEAVE_SCREEN = f"{CSI}?1049h{CSI}?25l", f"{CSI}?25h{CSI}?1049l"
KEY_WAIT_S = 0.5  # halfdelay(5)
ARROWS = {f"{CSI}A": top.KEY_UP, f"{CSI}B": top.KEY_DOWN, "\x1bOA": top.KEY_UP,
          "\x1bOB": top.KEY_DOWN}


def cmd_top(a: argparse.Namespace) -> int:
    if a.delay <= 0:
        raise ValueError(f"--delay must be a positive number of seconds, not {a.delay:g}")
    if a.iterations is not None and a.iterations < 1:
        raise ValueError(f"--iterations must be at least 1, not {a.iterations}")
    view = top.View(delay=a.delay, vcpus=a.vcpus, networks=a.networks, vbds=a.vbds,
                    repeat_header=a.repeat_header, full_name=a.full_name,
                    dom0_first=a.dom0_first)
    if a.batch or a.json or not sys.stdout.isatty():
        return _batch(view, a.iterations, a.json, sys.stdout)
    return _live(view, a.iterations, sys.stdout)


class Sampler:
    """Takes samples; keeps the one before, for CPU(%)."""

    def __init__(self) -> None:
        self.previous: list[dict[str, Any]] | None = None

    def take(self) -> tuple[list[dict[str, Any]], list[top.Row], dict[str, str]]:
        answer = ask("xenstat")
        nodes = answer["rows"]
        rows = top.domain_rows(nodes, self.previous)
        self.previous = nodes
        return nodes, rows, {**answer["errors"], **top.node_errors(nodes)}


def _batch(view: top.View, iterations: int | None, as_json: bool, out: TextIO,
           sleep: Callable[[float], None] = time.sleep) -> int:
    """xentop -b: no summary, no keys; each sample's header and rows (or a JSON line)."""
    sampler, done, status = Sampler(), 0, 0
    try:
        while True:
            nodes, rows, errors = sampler.take()
            if as_json:
                out.write(json.dumps(top.sample_json(view, nodes, rows, errors)) + "\n")
            else:
                out.write("".join(line.text + "\n" for line in top.table(view, rows)))
            out.flush()
            for message in errors.values():
                print(f"xenray top: {message}", file=sys.stderr)
            status |= bool(errors)
            done += 1
            if iterations is not None and done >= iterations:
                return status
            sleep(view.delay)
    except KeyboardInterrupt:  # xentop -b ends quietly on SIGINT
        return status


def _live(view: top.View, iterations: int | None, out: TextIO) -> int:
    sampler, done, last = Sampler(), 0, -float("inf")
    keyed = False
    with _keys(sys.stdin) as read_keys:
        out.write(ENTER_SCREEN)
        try:
            while True:
                now = time.monotonic()
                if keyed or now - last >= view.delay:
                    nodes, rows, errors = sampler.take()
                    out.write(screen(view, nodes, rows, errors, shutil.get_terminal_size()))
                    out.flush()
                    last, done = now, done + 1
                    if iterations is not None and done >= iterations:
                        return 0
                keys = read_keys(min(KEY_WAIT_S, max(0.0, last + view.delay - now)))
                keyed = bool(keys)
                for key in keys:
                    view = top.handle_key(view, key)
                    if view is None:
                        return 0
        except KeyboardInterrupt:
            return 0
        finally:
            out.write(LEAVE_SCREEN)
            out.flush()


def screen(view: top.View, nodes: list[dict[str, Any]], rows: list[top.Row],
           errors: dict[str, str], size: os.terminal_size) -> str:
    """The whole screen: the summary, what did not answer, the table cut to the terminal
    (the last line is the keys' or the prompt's), as one string of text and ANSI codes."""
    width, height = size.columns, size.lines
    body = [text[:width] for text in top.summary(nodes, rows)]
    body += [f"xenray top: {message}"[:width] for message in errors.values()]
    body += [_styled(line, view.sort_field, width) for line in top.table(view, rows)]
    body = body[:max(0, height - 1)]
    bottom = "".join(_style(text, style) for text, style in top.bottom_line(view))
    return (f"{CSI}H{CSI}2J" + "\r\n".join(body) + f"{CSI}{height};3H" + bottom)


def _style(text: str, style: str) -> str:
    return {"key": f"{REVERSE}{text}{OFF}", "on": f"{ON}{text}{OFF}"}.get(style, text)


def _styled(line: top.Line, sort_field: int, width: int) -> str:
    """A table line cut to ``width``: the header reversed, the sort column bold."""
    if line.kind == "detail":
        return line.text[:width]
    base = REVERSE if line.kind == "header" else ""
    parts, left = [], width
    for i, cell in enumerate(line.cells):
        text = (" " if i else "") + cell
        shown = text[:left]
        if not shown:
            break
        if i == sort_field:
            lead = shown[:1] if i else ""
            parts.append(f"{lead}{BOLD}{shown[len(lead):]}{OFF}{base}")
        else:
            parts.append(shown)
        left -= len(shown)
    return f"{base}{''.join(parts)}{OFF}"


@contextlib.contextmanager
def _keys(stdin: TextIO) -> Iterator[Any]:
    """``read(timeout) -> [key, ...]`` from the terminal in cbreak mode (restored after); with
    no terminal on stdin, one that only waits."""
    if not stdin.isatty():
        def wait(timeout: float) -> list[str]:
            time.sleep(timeout)
            return []
        yield wait
        return
    import termios
    import tty

    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        def read(timeout: float) -> list[str]:
            if not select.select([fd], [], [], timeout)[0]:
                return []
            return decode_keys(os.read(fd, 64).decode(errors="replace"))
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def decode_keys(chunk: str) -> list[str]:
    """What one read from the terminal holds: characters, and the up and down arrows'
    escape sequences as :data:`cluster.top.KEY_UP` / ``KEY_DOWN`` (a lone Escape stays)."""
    keys, i = [], 0
    while i < len(chunk):
        seq = chunk[i:i + 3]
        if seq in ARROWS:
            keys.append(ARROWS[seq])
            i += 3
        elif chunk[i] == "\x1b" and chunk[i + 1:i + 2] in ("[", "O") and i + 2 < len(chunk):
            i += 3  # another key's sequence (right, left, ...): not one of xentop's
        else:
            keys.append(chunk[i])
            i += 1
    return keys
