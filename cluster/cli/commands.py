"""The commands that ask the running cluster (``xl create``, ``list``, ``console`` ...).

Each parses nothing itself (the table did), asks the daemon one operation
(:func:`cluster.cli.client.ask`) and prints the answer for a person (a table, a line) or a
program (``--json``). An xl.cfg is read here, so its warnings and errors name the user's file
and line before anything is sent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from cluster.cli.client import ask
from cluster.report import (creation_summary, domain_table, host_table, link_row_text, link_text, migration_text,
                            sched_text, sockets_text, vcpu_table)


def _warn(command: str, errors: dict[str, str]) -> int:
    """Hosts that did not answer, one line each on stderr; the exit status (1 if any)."""
    for message in errors.values():
        print(f"xenray {command}: {message}", file=sys.stderr)
    return 1 if errors else 0


def cmd_create(a: argparse.Namespace) -> int:
    from cluster.xlcfg import load_config

    cfg, warnings = load_config(a.file)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if a.count is not None:
        return _create_many(a, cfg)
    info = ask("create", config=cfg.to_dict(), host=a.host)
    if a.json:
        print(json.dumps(info))
    else:
        print(f"created {info['name']} (domid {info['domid']}) on {info['host']}, "
              f"booting {info['kernel']}")
    return 0


def _create_many(a: argparse.Namespace, cfg: Any) -> int:
    """``create --count N``: a progress bar, a line per failure as it happens, then how
    many were created where and how fast (or, ``--json``, every result)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    if a.count < 1:
        raise ValueError(f"--count must be at least 1, not {a.count}")
    console = Console(stderr=True)
    with Progress("creating", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("create", total=a.count)

        def progress(message: dict[str, Any]) -> None:
            bar.update(task, completed=message["done"])
            r = message["result"]
            if not r["ok"]:
                bar.console.print(f"xenray create: {r['name']}: {r['error']}", markup=False)

        t0 = time.monotonic()
        results = ask("create_many", on_message=progress, config=cfg.to_dict(),
                      count=a.count, host=a.host)
        elapsed = time.monotonic() - t0
    if a.json:
        print(json.dumps(results))
        return 0 if all(r["ok"] for r in results) else 1
    print(creation_summary(results, elapsed))
    return 0 if all(r["ok"] for r in results) else 1


def cmd_list(a: argparse.Namespace) -> int:
    answer = ask("list")
    if a.json:
        print(json.dumps(answer["rows"]))
    else:
        print(domain_table(answer["rows"]))
    return _warn("list", answer["errors"])


def cmd_info(a: argparse.Namespace) -> int:
    answer = ask("info")
    if a.json:
        print(json.dumps(answer["rows"]))
    else:
        print(host_table(answer["rows"]))
        print(sockets_text(answer["rows"]))
    return _warn("info", answer["errors"])


def _sched(kind: str):
    """xl's ``sched-credit`` / ``sched-credit2`` (``tools/xl/xl_sched.c``): ``-s`` shows the
    pool's parameters or, with ``-t``/``-r``, sets them; ``-d`` shows one domain's row or,
    with ``-w``/``-c``, sets them; neither lists every domain under its pool's line. A set
    prints nothing."""
    def impl(a: argparse.Namespace) -> int:
        tslice = getattr(a, "tslice", None)
        domain_opts = a.weight is not None or a.cap is not None
        pool_opts = tslice is not None or a.ratelimit is not None
        refusal = ("Specifying a cpupool or schedparam is not allowed with domain options."
                   if a.schedparam and (a.domain is not None or domain_opts) else
                   "Must specify a domain." if a.domain is None and domain_opts else
                   "Must specify schedparam to set schedule parameter values."
                   if pool_opts and not a.schedparam else None)
        if refusal:
            print(f"xenray sched-{kind}: {refusal}", file=sys.stderr)
            return 1
        args = {"kind": kind, "name": a.domain, "weight": a.weight, "cap": a.cap,
                "ratelimit_us": a.ratelimit}
        if kind == "credit":
            args["tslice_ms"] = tslice
        answers = ask("sched", **args)
        if a.json:
            print(json.dumps(answers))
        elif not (domain_opts or pool_opts):
            print(sched_text(kind, answers, pool=a.domain is None,
                             domains=not a.schedparam))
        return 0
    return impl


cmd_sched_credit = _sched("credit")
cmd_sched_credit2 = _sched("credit2")


def cmd_vcpu_list(a: argparse.Namespace) -> int:
    answer = ask("vcpu_list", name=a.name)
    print(json.dumps(answer["rows"]) if a.json else vcpu_table(answer["rows"]))
    return _warn("vcpu-list", answer["errors"])


def cmd_vcpu_set(a: argparse.Namespace) -> int:
    ask("vcpu_set", name=a.name, count=a.count, ignore_host=a.ignore_host)
    return 0


def cmd_vcpu_pin(a: argparse.Namespace) -> int:
    vcpu = None if a.vcpu == "all" else _vcpu_number(a.vcpu)
    ask("vcpu_pin", name=a.name, vcpu=vcpu, cpus=a.cpus)
    return 0


def _vcpu_number(word: str) -> int:
    if not word.isdigit():
        raise SystemExit(f"xenray vcpu-pin: `{word}' is not a vCPU number or `all'")
    return int(word)


def _by_name(op: str):
    def impl(a: argparse.Namespace) -> int:
        ask(op, name=a.name)
        return 0
    return impl


cmd_destroy = _by_name("destroy")
cmd_pause = _by_name("pause")
cmd_unpause = _by_name("unpause")


def _sized(op: str):
    """``xl mem-set`` / ``mem-max NAME SIZE``: silent on success, as xl."""
    def impl(a: argparse.Namespace) -> int:
        ask(op, name=a.name, size=a.size)
        return 0
    return impl


cmd_mem_set = _sized("mem_set")
cmd_mem_max = _sized("mem_max")


def cmd_shutdown(a: argparse.Namespace) -> int:
    ask("shutdown", name=a.name, wait=a.wait)
    return 0


def cmd_reboot(a: argparse.Namespace) -> int:
    ask("reboot", name=a.name, wait=a.wait)
    return 0


def cmd_console(a: argparse.Namespace) -> int:
    """The last ``--lines`` lines, then (unless ``--no-follow``) each new one until the domain
    goes away or Ctrl-C."""
    if a.no_follow:
        for line in ask("console", name=a.name, lines=a.lines):
            print(line)
        return 0
    ask("follow", on_message=lambda m: print(m["line"], flush=True), name=a.name, lines=a.lines)
    return 0


def cmd_fault(a: argparse.Namespace) -> int:
    """``xenray fault``: inject one (``cluster.fault.nemesis``), list those in force, heal."""
    if a.kind == "list":
        rows = ask("faults")
        if a.json:
            print(json.dumps(rows))
        for r in [] if a.json else rows:
            until = "" if r["for"] is None else f", healed after {r['for']:g} s"
            print(f"{r['id']}: {r['kind']} {', '.join(r['targets'])}{until}")
        if not rows and not a.json:
            print("no faults in force")
        return 0
    if a.kind == "heal":
        for r in ask("heal", id=a.id):
            print(f"healed {r['id']}: {r['kind']} {', '.join(r['targets'])}")
        return 0
    target = {key: value for key, value in (("role", a.role), ("host", a.host),
                                            ("name", a.name)) if value is not None}
    if a.random:
        target["random"] = True
    params = {}
    for item in a.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"a parameter is KEY=VALUE, not {item!r}")
        params[key] = _number(value)
    done = ask("fault", kind=a.kind, target=target, params=params, seed=a.seed,
               **{"for": a.for_s})
    if a.json:
        print(json.dumps(done))
        return 0
    what = ", ".join(f"{k} {v}" for k, v in done.items()
                     if k not in ("id", "kind", "targets", "healable", "for"))
    heal = (f"; healed in {done['for']:g} s" if done["for"] is not None else
            f"; `xenray fault heal {done['id']}` heals it" if done["healable"] else "")
    print(f"fault {done['id']}: {done['kind']} {', '.join(done['targets'])}"
          f"{f' ({what})' if what else ''}{heal}")
    return 0


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def cmd_audit(a: argparse.Namespace) -> int:
    """``xenray audit``: a line per leak (``cluster.audit``); exit status 1 if any, or if a
    host did not answer."""
    from cluster.audit import Leak

    answer = ask("audit")
    if a.json:
        print(json.dumps(answer["leaks"]))
    elif answer["leaks"]:
        for row in answer["leaks"]:
            print(Leak(**row))
    elif not answer["errors"]:
        print("no leaks")
    return _warn("audit", answer["errors"]) or int(bool(answer["leaks"]))


def cmd_result(a: argparse.Namespace) -> int:
    result = ask("result", name=a.name)
    if result is None:
        print(f"xenray result: {a.name} has published no result (yet)", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>12}: {value}")
    return 0


def cmd_migrate(a: argparse.Namespace) -> int:
    """``xenray migrate NAME HOST``: the rounds as a table (or JSON), and ``--report DIR``."""
    from rich.console import Console

    with Console(stderr=True).status(f"migrating {a.name} to {a.host}..."):
        report = ask("migrate", name=a.name, host=a.host, live=not a.no_live, debug=a.debug,
                     max_iters=a.max_iters, dirty_threshold=a.dirty_threshold,
                     policy=a.policy)
    if a.json:
        print(json.dumps(report))
    else:
        print(f"migrated {report['name']} from {report['from']} to {report['to']} "
              f"(now domid {report['domid']})")
        print(migration_text(report))
    if a.report:
        from cluster.plots import write_migration_report

        for path in write_migration_report(report, a.report):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if report.get("verify_mismatches") else 0


def cmd_save(a: argparse.Namespace) -> int:
    path = os.path.abspath(a.file)
    report = ask("save", name=a.name, path=path, checkpoint=a.checkpoint)
    if a.json:
        print(json.dumps(report))
    else:
        after = "left running" if a.checkpoint else "destroyed"
        print(f"saved {a.name} to {a.file} ({report['bytes'] / 2**20:.1f} MiB); {after}")
    return 0


def cmd_restore(a: argparse.Namespace) -> int:
    info = ask("restore", path=os.path.abspath(a.file), host=a.host, paused=a.paused)
    state = "paused" if a.paused else "running"
    print(f"restored {info['name']} (domid {info['domid']}) on {info['host']}, {state}")
    return 0


def cmd_link(a: argparse.Namespace) -> int:
    """``xenray link [A B [--bandwidth 100M] [--latency 5ms] [--loss 1%]]``: shape a link,
    or show every link."""
    if a.a is not None:
        if a.b is None:
            raise ValueError("name both hosts, e.g. `xenray link h1 h2 --latency 5ms`")
        spec = ask("set_link", a=a.a, b=a.b, bandwidth=a.bandwidth, latency=a.latency,
                   loss=a.loss, both_ways=not a.one_way)
        print(f"{a.a} {'->' if a.one_way else '<->'} {a.b}: {link_text(spec)}")
        return 0
    answer = ask("links")
    for row in answer["rows"]:
        print(link_row_text(row))
    return _warn("link", answer["errors"])


def cmd_capture(a: argparse.Namespace) -> int:
    """``xenray capture HOST BRIDGE --out FILE.pcap [--seconds N]``: tcpdump on a bridge.
    The daemon writes the file (it runs on this machine, as this user)."""
    from rich.console import Console

    path = os.path.abspath(a.out)
    until = "Ctrl-C to stop" if a.seconds is None else f"{a.seconds:g} s"
    with Console(stderr=True).status(f"capturing on {a.host}/{a.bridge} into {a.out} "
                                     f"({until})...") as st:
        def progress(message: dict[str, Any]) -> None:
            st.update(f"capturing on {a.host}/{a.bridge} into {a.out}: "
                      f"{message['progress']} frames")

        n = ask("capture", on_message=progress, host=a.host, bridge=a.bridge, out=path,
                seconds=a.seconds)
    print(f"{n} frames written to {a.out}")
    return 0
