"""The CLI's side of the control socket: ask the daemon of ``xenray up`` (the socket is in
``$XENRAY_HOME/run``) and remember what the last answer cost there, for ``--verbose``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

last_seconds = 0.0  # the daemon's own time for the last request


def ask(op: str, on_message: Callable[[dict], None] | None = None, **args: Any) -> Any:
    """Run ``op`` on the running cluster; its value (errors raise ControlError)."""
    global last_seconds
    from cluster import home
    from cluster.control import request

    value, last_seconds = request(home.socket_path(), op, args, on_message=on_message)
    return value
