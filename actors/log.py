"""structlog for every component: JSON lines to a file, a readable renderer for people.

Each actor calls :func:`setup` once with its host, component and the run's log directory
(given by the toolstack, since Ray workers need not share the driver's environment), then
binds ``domid`` where it has one. Files are ``<log_dir>/<host>/<component>.jsonl`` so a run
can be read back (or grepped) per component after the processes are gone.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys

import structlog


def setup(*, host: str, component: str, log_dir: pathlib.Path | str | None = None,
          console: bool = False) -> structlog.stdlib.BoundLogger:
    """Configure structlog for this process and return a logger bound to host/component."""
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console or log_dir is None:
        renderer: object = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
    else:
        path = pathlib.Path(log_dir) / host / f"{component}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        renderer = structlog.processors.JSONRenderer()
        factory = structlog.WriteLoggerFactory(file=path.open("a", buffering=1))
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_level()),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(host=host, component=component)


def _level() -> int:
    return getattr(logging, os.environ.get("XENRAY_LOG_LEVEL", "INFO").upper(), logging.INFO)
