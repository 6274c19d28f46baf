"""The ``xenray`` command: xl's shape over the Cluster API.

:mod:`.cmdtable` is the table of commands (data); :mod:`.commands` the ones that ask the
running cluster through its daemon (:mod:`cluster.control`), :mod:`.local` the ones that run
here (``up``, ``down``, ``image``, ``demo``, ``bench``). This module parses the command line,
runs the command and turns any failure into one line on stderr and exit status 1 (a usage
error: 2), as ``xl`` does; ``-v``/``--verbose`` also prints what the command cost.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from cluster.cli import client
from cluster.cli.cmdtable import lookup
from cluster.control import DaemonGone
from cluster.errors import describe


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    if verbose:
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help"):
        argv = ["help"]
    try:
        spec = lookup(argv[0])
    except LookupError as e:
        print(f"xenray: {e}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"xenray {spec.name}", description=spec.desc)
    parser.add_argument("-v", "--verbose", action="store_true", help="print what it cost")
    for flags, kw in spec.args:
        parser.add_argument(*flags, **kw)
    args = parser.parse_args(argv[1:])
    args.verbose = args.verbose or verbose
    t0 = time.perf_counter()
    module, _, name = spec.impl.partition(":")
    try:
        status = getattr(importlib.import_module(module), name)(args)
    except KeyboardInterrupt:
        status = 130
    except DaemonGone:
        print("xenray: no cluster is running; start one with `xenray up`", file=sys.stderr)
        status = 1
    except Exception as e:
        _, message, expected = describe(e)
        print(f"xenray {spec.name}: {message}", file=sys.stderr)
        if not expected:
            print("xenray: this is a bug; the daemon's log has the details", file=sys.stderr)
        status = 1
    if args.verbose:
        daemon = f" (the daemon: {client.last_seconds:.3f} s)" if client.last_seconds else ""
        print(f"xenray {spec.name}: {time.perf_counter() - t0:.3f} s{daemon}", file=sys.stderr)
    return status
