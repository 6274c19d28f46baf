"""The ``xenray`` command: an xl-style command table over the ``Cluster`` API.

As in ``tools/xl/xl_cmdtable.c``, the commands are data (:data:`COMMANDS`); help, prefix
lookup and shell completion all come from the table, and each implementation only parses its
arguments and calls :class:`cluster.api.Cluster`, which scripts use directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from cluster import daemon
from cluster.report import domain_table, host_table
from cluster.xlcfg import XlCfgError
from protocols.errno import XenError

out = Console()
err = Console(stderr=True)


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """One row of the command table (xl.h ``struct cmd_spec``)."""

    name: str
    impl: Callable[[argparse.Namespace], int]
    desc: str
    args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()


def _arg(*flags: str, **kw: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, kw


# -- the persistent cluster ---------------------------------------------------------------

def attach():
    """The cluster that ``xenray up`` started, or a clear error."""
    from cluster.api import Cluster

    rec = daemon.read_record()
    if rec is None:
        raise SystemExit("xenray: no cluster is running; start one with `xenray up`")
    return Cluster(rec["hosts"], address=rec["address"], run_id=rec["run_id"]).start()


def cmd_up(a: argparse.Namespace) -> int:
    rec = daemon.read_record()
    if rec is not None and _alive(rec["pid"]):
        out.print(f"a cluster is already up (pid {rec['pid']}, hosts {', '.join(rec['hosts'])})")
        return 0
    from cluster import home

    log = (home.logs_dir() / "daemon.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.daemon", "--hosts", str(a.hosts),
                             "--host-memory", str(a.host_memory)],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    with out.status(f"starting {a.hosts} emulated hosts..."):
        deadline = time.monotonic() + 300
        while (rec := daemon.read_record()) is None or rec["pid"] != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                err.print(f"xenray up failed; see {log.name}")
                return 1
            time.sleep(0.2)
    out.print(f"cluster up: hosts {', '.join(rec['hosts'])} (Ray at {rec['address']})")
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    rec = daemon.read_record()
    if rec is None or not _alive(rec["pid"]):
        daemon.record_path().unlink(missing_ok=True)
        out.print("no cluster is running")
        return 0
    os.kill(rec["pid"], signal.SIGTERM)
    with out.status("stopping the cluster..."):
        deadline = time.monotonic() + 120
        while _alive(rec["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
    out.print("cluster stopped")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


# -- domains ------------------------------------------------------------------------------

def cmd_create(a: argparse.Namespace) -> int:
    from cluster.xlcfg import load_config

    cfg, warnings = load_config(a.file)
    for w in warnings:
        err.print(f"warning: {w}")
    info = attach().create(cfg, host=a.host)
    out.print(f"created {info['name']} (domid {info['domid']}) on {info['host']}, "
              f"booting {info['kernel']}")
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    rows = attach().list()
    if a.json:
        out.print_json(json.dumps(rows))
        return 0
    out.print(domain_table(rows))
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    rows = attach().info()
    if a.json:
        out.print_json(json.dumps(rows))
        return 0
    out.print(host_table(rows))
    return 0


def _by_name(method: str) -> Callable[[argparse.Namespace], int]:
    def impl(a: argparse.Namespace) -> int:
        getattr(attach(), method)(a.name)
        return 0
    return impl


def _control(method: str) -> Callable[[argparse.Namespace], int]:
    def impl(a: argparse.Namespace) -> int:
        getattr(attach(), method)(a.name, wait=a.wait)
        return 0
    return impl


def cmd_console(a: argparse.Namespace) -> int:
    xen = attach()
    if a.no_follow:
        for line in xen.console(a.name, a.lines):
            out.print(line, markup=False, highlight=False)
        return 0
    try:
        for line in xen.follow_console(a.name):
            out.print(line, markup=False, highlight=False)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_result(a: argparse.Namespace) -> int:
    result = attach().result(a.name)
    if result is None:
        err.print(f"xenray result: {a.name} has published no result (yet)")
        return 1
    if a.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            out.print(f"{key:>12}: {value}")
    return 0


def cmd_image(a: argparse.Namespace) -> int:
    """``xenray image create PATH SIZE``: a sparse raw image for a ``disk=`` entry."""
    from actors.blkback.vbd import create_image
    from protocols.blkif import parse_size

    size = create_image(a.path, parse_size(a.size), overwrite=a.force)
    out.print(f"created {a.path}: {size} bytes ({size // 512} sectors), sparse")
    return 0


def cmd_link(a: argparse.Namespace) -> int:
    """``xenray link [A B [--bandwidth 100M] [--latency 5ms] [--loss 1%]]``: shape a link,
    or show every link."""
    xen = attach()
    if a.a is not None:
        if a.b is None:
            raise SystemExit("xenray link: name both hosts, e.g. `xenray link h1 h2 --latency 5ms`")
        spec = xen.set_link(a.a, a.b, bandwidth=a.bandwidth, latency=a.latency, loss=a.loss,
                            both_ways=not a.one_way)
        out.print(f"{a.a} {'->' if a.one_way else '<->'} {a.b}: {_link_text(spec)}")
        return 0
    for row in xen.links():
        out.print(f"{row['from']} -> {row['to']}: {_link_text(row)}  "
                  f"({row.get('frames', 0)} frames, {row.get('lost', 0)} lost)")
    return 0


def _link_text(spec: dict[str, Any]) -> str:
    bw = spec.get("bandwidth_bps")
    return (f"bandwidth {'unlimited' if not bw else f'{bw / 1e6:g} Mbit/s'}, latency "
            f"{spec.get('latency_s', 0) * 1000:g} ms, loss {spec.get('loss', 0) * 100:g}%")


def cmd_capture(a: argparse.Namespace) -> int:
    """``xenray capture HOST BRIDGE --out FILE.pcap [--seconds N]``: tcpdump on a bridge."""
    xen = attach()
    with out.status(f"capturing on {a.host}/{a.bridge} into {a.out} "
                    f"({'Ctrl-C to stop' if a.seconds is None else f'{a.seconds:g} s'})...") as st:
        n = xen.capture(a.host, a.bridge, a.out, seconds=a.seconds,
                        progress=lambda n: st.update(f"capturing on {a.host}/{a.bridge} into "
                                                     f"{a.out}: {n} frames"))
    out.print(f"{n} frames written to {a.out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from cluster.demo import run

    return run(out)


def cmd_bench(a: argparse.Namespace) -> int:
    from cluster import bench

    return bench.run(a.what, out, a)


def cmd_help(a: argparse.Namespace) -> int:
    out.print("usage: xenray <command> [args]\n", markup=False)
    for spec in COMMANDS:
        out.print(f"  {spec.name:<10} {spec.desc}")
    return 0


def cmd_completion(a: argparse.Namespace) -> int:
    names = " ".join(s.name for s in COMMANDS)
    print(f'complete -W "{names}" xenray')
    return 0


NAME = _arg("name", help="domain name")
WAIT = _arg("-w", "--wait", action="store_true", help="wait until the domain has gone")

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("up", cmd_up, "start a persistent local cluster in the background",
                (_arg("--hosts", type=int, default=2), _arg("--host-memory", type=int,
                                                            default=2048)),),
    CommandSpec("down", cmd_down, "stop the persistent cluster"),
    CommandSpec("create", cmd_create, "create a domain from an xl.cfg file",
                (_arg("file"), _arg("--host", default=None))),
    CommandSpec("list", cmd_list, "list domains (xl list)", (_arg("--json", action="store_true"),)),
    CommandSpec("info", cmd_info, "hosts, memory and xenstored sockets",
                (_arg("--json", action="store_true"),)),
    CommandSpec("destroy", _by_name("destroy"), "terminate a domain immediately", (NAME,)),
    CommandSpec("pause", _by_name("pause"), "pause a domain", (NAME,)),
    CommandSpec("unpause", _by_name("unpause"), "unpause a domain", (NAME,)),
    CommandSpec("shutdown", _control("shutdown"), "ask a domain to power off", (NAME, WAIT)),
    CommandSpec("reboot", _control("reboot"), "ask a domain to reboot", (NAME, WAIT)),
    CommandSpec("console", cmd_console, "show a domain's console",
                (NAME, _arg("--lines", type=int, default=20),
                 _arg("--no-follow", action="store_true"))),
    CommandSpec("result", cmd_result, "the result an init program published (blkverify, ...)",
                (NAME, _arg("--json", action="store_true"))),
    CommandSpec("image", cmd_image, "make a sparse raw disk image: image create PATH SIZE",
                (_arg("action", choices=("create",)), _arg("path"),
                 _arg("size", help="bytes, or with a suffix: 512K, 64M, 1G"),
                 _arg("--force", action="store_true", help="replace an existing file"))),
    CommandSpec("link", cmd_link, "show links between hosts, or shape one: link A B --latency 5ms",
                (_arg("a", nargs="?"), _arg("b", nargs="?"),
                 _arg("--bandwidth", help="bits/s: 10M, 1G (default unlimited)"),
                 _arg("--latency", help="one-way delay: 5ms, 200us"),
                 _arg("--loss", help="fraction or percent of frames lost: 0.01, 1%%"),
                 _arg("--one-way", action="store_true", help="shape A -> B only"))),
    CommandSpec("capture", cmd_capture, "write a bridge's frames to a pcap file",
                (_arg("host"), _arg("bridge"), _arg("--out", required=True),
                 _arg("--seconds", type=float, default=None))),
    CommandSpec("demo", cmd_demo, "run the demonstration on an embedded 2-host cluster",
),
    CommandSpec("bench", cmd_bench, "benchmarks: hypercall, create, blk, net",
                (_arg("what", choices=("hypercall", "create", "blk", "net")),
                 _arg("--domains", type=int, default=50),
                 _arg("--runtime", type=float, default=5.0,
                      help="blk, net: seconds of each guest workload"),
                 _arg("--json", action="store_true", help="the result as JSON"))),
    CommandSpec("completion", cmd_completion, "print a bash completion line"),
    CommandSpec("help", cmd_help, "this list"),
)


def lookup(word: str) -> CommandSpec:
    """An exact name or any unambiguous prefix (``cmdtable_lookup``)."""
    exact = [c for c in COMMANDS if c.name == word]
    matches = exact or [c for c in COMMANDS if c.name.startswith(word)]
    if len(matches) != 1:
        raise SystemExit(f"xenray: {'ambiguous' if matches else 'unknown'} command {word!r}; "
                         "try `xenray help`")
    return matches[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        return cmd_help(argparse.Namespace())
    spec = lookup(argv[0])
    parser = argparse.ArgumentParser(prog=f"xenray {spec.name}", description=spec.desc)
    for flags, kw in spec.args:
        parser.add_argument(*flags, **kw)
    args = parser.parse_args(argv[1:])
    try:
        return spec.impl(args)
    except KeyboardInterrupt:
        return 130
    except (KeyError, ValueError, OSError, TimeoutError, XenError, XlCfgError) as e:
        err.print(f"xenray {spec.name}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
