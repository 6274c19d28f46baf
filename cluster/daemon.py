"""``xenray up``: a persistent local cluster in a background process.

The daemon owns an embedded cluster (so it stops exactly what it started) and records its
address, pid and run id in ``$XENRAY_HOME/run/cluster.json``; other commands attach to it.
SIGTERM (``xenray down``) stops every host and the Ray nodes, then removes the record.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import threading

from cluster import home

RECORD = "cluster.json"


def record_path() -> pathlib.Path:
    return home.run_dir() / RECORD


def read_record() -> dict | None:
    try:
        return json.loads(record_path().read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    from cluster.api import Cluster

    p = argparse.ArgumentParser(prog="xenray-daemon")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--host-memory", type=int, default=2048)
    p.add_argument("--host-cpus", type=int, default=2)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    xen = Cluster(hosts=args.hosts, host_memory_mib=args.host_memory, host_cpus=args.host_cpus)
    xen.start()
    try:
        record_path().write_text(json.dumps({
            "address": xen.address, "pid": os.getpid(), "run_id": xen.run_id,
            "hosts": xen.hosts, "log_dir": xen.log_dir}))
        stop.wait()
    finally:
        record_path().unlink(missing_ok=True)
        xen.stop()


if __name__ == "__main__":
    main()
