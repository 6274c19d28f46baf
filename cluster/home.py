"""Where xenray keeps run state and logs: ``$XENRAY_HOME`` (default ``~/.xenray``).

One directory per concern so a person can find things: ``run/`` (the persistent cluster of
``xenray up``: its record ``cluster.json``, its control socket ``xenray.sock``, its Ray token
``auth_token``, each host's xenstored socket), ``logs/`` (JSON lines per component, console
logs per domain, ``daemon.log``).
"""

from __future__ import annotations

import json
import os
import pathlib

RECORD = "cluster.json"
SOCKET = "xenray.sock"
TOKEN = "auth_token"


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


def record_path() -> pathlib.Path:
    """The running cluster's record (written by its daemon, ``cluster.daemon``)."""
    return run_dir() / RECORD


def socket_path() -> pathlib.Path:
    """The running cluster's control socket (``cluster.control``)."""
    return run_dir() / SOCKET


def token_path() -> pathlib.Path:
    return run_dir() / TOKEN


def read_record() -> dict | None:
    try:
        return json.loads(record_path().read_text())
    except (OSError, ValueError):
        return None


def daemon_alive(pid: int) -> bool:
    """Is process ``pid`` the daemon of ``xenray up`` (not another process that was given the
    pid of a daemon that was killed)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"cluster.daemon" in f.read()
    except OSError:
        return False
