"""``xenray up``: the process that holds the persistent local cluster and serves the CLI.

It owns an embedded cluster (so it stops exactly what it started), serves every command on the
control socket (:mod:`cluster.control`), and records what a user or script needs in
``$XENRAY_HOME/run``: ``cluster.json`` (its pid, Ray's address, the run id, the hosts, where
its socket, log and token are) and ``auth_token`` (0600: the cluster's Ray token, for a script
that joins it with ``Cluster.running()``). SIGTERM or the ``stop`` op (``xenray down``) stops
every host and the Ray nodes, then removes the record, the token and the socket.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import threading

from cluster import home

def _write_private(path: pathlib.Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> None:
    from actors import log as xlog
    from actors.transport.naming import ray_environment

    p = argparse.ArgumentParser(prog="xenray-daemon")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--host-memory", type=int, default=2048)
    p.add_argument("--pcpus", type=int, default=None)
    p.add_argument("--sched", default="credit2")
    p.add_argument("--pool", type=int, default=None)
    p.add_argument("--launcher", default="fork")
    args = p.parse_args(argv)
    ray_environment(local=True)  # this process's token is the cluster's
    from cluster.api import Cluster
    from cluster.control import ControlServer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pool = {} if args.pool is None else {"pool": args.pool}
    xen = Cluster(hosts=args.hosts, host_memory_mib=args.host_memory, host_cpus=args.pcpus,
                  sched=args.sched, launcher=args.launcher, run_dir=home.run_dir(), **pool)
    log = xlog.setup(host="cluster", component="daemon", log_dir=xen.log_dir)
    token = home.token_path()
    server = None
    try:
        xen.start()
        _write_private(token, _token())
        server = ControlServer(xen, home.socket_path(), log, stop.set)
        _write_private(home.record_path(), json.dumps({
            "address": xen.address, "pid": os.getpid(), "run_id": xen.run_id,
            "hosts": xen.hosts, "log_dir": xen.log_dir, "socket": str(home.socket_path()),
            "token": str(token)}))
        log.info("cluster up", hosts=xen.hosts, address=xen.address)
        stop.wait()
    finally:
        home.record_path().unlink(missing_ok=True)
        if server is not None:
            server.close()
        if os.environ.get("RAY_AUTH_TOKEN_PATH") != str(token):
            token.unlink(missing_ok=True)  # ours: a token file we were given stays
        xen.stop()


def _token() -> str:
    """This cluster's Ray token: made by ray_environment, or the one we were given."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    return pathlib.Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()

if __name__ == "__main__":
    main()
