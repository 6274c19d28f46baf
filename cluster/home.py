"""Where xenray keeps run state and logs: ``$XENRAY_HOME`` (default ``~/.xenray``).

One directory per concern so a person can find things: ``run/`` (the persistent
cluster's address and pid), ``logs/`` (JSON lines per component, console logs per domain),
``ray/`` (a private ``RAY_TMPDIR``: Ray's default temp dir is shared, and
``address="auto"`` could otherwise land in someone else's cluster).
"""

from __future__ import annotations

import os
import pathlib


def xenray_home() -> pathlib.Path:
    home = pathlib.Path(os.environ.get("XENRAY_HOME") or pathlib.Path.home() / ".xenray")
    home.mkdir(parents=True, exist_ok=True)
    return home


def run_dir() -> pathlib.Path:
    return _sub("run")


def logs_dir() -> pathlib.Path:
    return _sub("logs")


def _sub(name: str) -> pathlib.Path:
    d = xenray_home() / name
    d.mkdir(parents=True, exist_ok=True)
    return d
