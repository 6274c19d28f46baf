"""The ``xenray`` command table, as ``tools/xl/xl_cmdtable.c``: data only.

Each row names a command, its one-line description, its arguments (argparse's) and the
function that runs it (``module:function``, imported when the command runs, so ``xenray list``
loads only what listing needs). Help, prefix lookup and shell completion all come from the
table. The commands in :mod:`cluster.cli.commands` ask the process ``xenray up`` left running
(:mod:`cluster.control`); those in :mod:`cluster.cli.local` run here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cluster.hosts import LAUNCHERS, POOL_SIZE

Arg = tuple[tuple[str, ...], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """One row of the command table (xl.h ``struct cmd_spec``)."""

    name: str
    impl: str  # "module:function" taking the parsed arguments, returning the exit status
    desc: str
    args: tuple[Arg, ...] = ()


def arg(*flags: str, **kw: Any) -> Arg:
    return flags, kw


NAME = arg("name", help="domain name")
WAIT = arg("-w", "--wait", action="store_true", help="wait until the domain has gone")
JSON = arg("--json", action="store_true", help="machine-readable output")
SCHED_ARGS = (arg("-d", "--domain", default=None, help="domain name"),
              arg("-w", "--weight", type=int, default=None, help="weight (1-65535)"),
              arg("-c", "--cap", type=int, default=None,
                  help="cap, percent of one pCPU (0: none)"),
              arg("-s", "--schedparam", action="store_true",
                  help="the pool's parameters: show them, or set them with -r (-t)"),
              arg("-r", "--ratelimit", type=int, default=None,
                  help="ratelimit, us (0: off, or 100-500000; with -s)"),
              arg("--json", action="store_true", help="machine-readable output"))
C = "cluster.cli.commands"
L = "cluster.cli.local"

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("up", f"{L}:cmd_up", "start a persistent local cluster in the background",
                (arg("--hosts", type=int, default=2),
                 arg("--host-memory", type=int, default=2048, help="MiB per host"),
                 arg("--pcpus", "--host-cpus", type=int, default=None,
                     help="pCPUs per host (default: this machine's CPUs)"),
                 arg("--sched", choices=("credit2", "credit"), default="credit2",
                     help="the hypervisor's scheduler (credit2 is Xen's default)"),
                 arg("--launcher", choices=LAUNCHERS, default="fork",
                     help="fork: each host's fork server forks its domains' processes "
                          "(default); ray: each domain is a Ray actor"),
                 arg("--pool", type=int, default=POOL_SIZE,
                     help=f"with --launcher ray: Ray workers each host starts ahead of need "
                          f"({POOL_SIZE})"))),
    CommandSpec("down", f"{L}:cmd_down", "stop the persistent cluster"),
    CommandSpec("create", f"{C}:cmd_create", "create a domain from an xl.cfg file",
                (arg("file"),
                 arg("--host", default=None,
                     help="where (default auto: the host with the most free memory)"),
                 arg("--count", type=int, default=None,
                     help="create N domains NAME-1 ... NAME-N, spread over the hosts"),
                 JSON)),
    CommandSpec("list", f"{C}:cmd_list", "list domains (xl list)", (JSON,)),
    CommandSpec("info", f"{C}:cmd_info", "hosts: memory, CPUs, domains, xenstored sockets",
                (JSON,)),
    CommandSpec("sched-credit", f"{C}:cmd_sched_credit",
                "get or set credit scheduler parameters (xl sched-credit)",
                (*SCHED_ARGS, arg("-t", "--tslice", type=int, default=None,
                                  help="timeslice, ms (1-1000; with -s)"))),
    CommandSpec("sched-credit2", f"{C}:cmd_sched_credit2",
                "get or set credit2 scheduler parameters (xl sched-credit2)", SCHED_ARGS),
    CommandSpec("vcpu-list", f"{C}:cmd_vcpu_list", "list vCPUs: pCPU, state, time, affinity",
                (arg("name", nargs="?", default=None, help="domain name (default: all)"),
                 JSON)),
    CommandSpec("vcpu-set", f"{C}:cmd_vcpu_set",
                "set how many vCPUs are online (xl vcpu-set; up to maxvcpus)",
                (NAME, arg("count", type=int, help="vCPUs online"),
                 arg("-i", "--ignore-host", action="store_true",
                     help="allow more vCPUs than the host has pCPUs"))),
    CommandSpec("vcpu-pin", f"{C}:cmd_vcpu_pin",
                "set which pCPUs a vCPU may run on (xl vcpu-pin DOM VCPU|all CPUS)",
                (NAME, arg("vcpu", help="vCPU number, or all"),
                 arg("cpus", help="pCPU list: all, 0-3, 0,2, ^1 ..."))),
    CommandSpec("top", "cluster.cli.top:cmd_top",
                "domains' CPU, memory, network and disk, refreshed (xentop; keys: q d s v n b r)",
                (arg("-b", "--batch", action="store_true",
                     help="output in batch mode, no user input accepted"),
                 arg("-d", "--delay", type=float, default=3.0,
                     help="seconds between updates (default 3)"),
                 arg("-i", "--iterations", type=int, default=None,
                     help="number of iterations before exiting"),
                 arg("--vcpus", action="store_true",
                     help="output vcpu data (xentop's -v; here -v is --verbose)"),
                 arg("-n", "--networks", action="store_true", help="output vif network data"),
                 arg("-x", "--vbds", action="store_true", help="output vbd block device data"),
                 arg("-r", "--repeat-header", action="store_true",
                     help="repeat table header before each domain"),
                 arg("-f", "--full-name", action="store_true",
                     help="output the full domain name (not truncated)"),
                 arg("-z", "--dom0-first", action="store_true",
                     help="display each host's Domain-0 first (ignore sorting)"),
                 arg("--json", action="store_true",
                     help="batch mode, each sample as one JSON line"))),
    CommandSpec("destroy", f"{C}:cmd_destroy", "terminate a domain immediately", (NAME,)),
    CommandSpec("pause", f"{C}:cmd_pause", "pause a domain", (NAME,)),
    CommandSpec("unpause", f"{C}:cmd_unpause", "unpause a domain", (NAME,)),
    CommandSpec("mem-set", f"{C}:cmd_mem_set",
                "set a domain's memory: its balloon driver gives back or takes pages "
                "(xl mem-set)",
                (NAME, arg("size", help="MiB, or with a suffix b, k, m, g, t: 128m, 1g"))),
    CommandSpec("mem-max", f"{C}:cmd_mem_max", "set the most memory a domain may have "
                "(xl mem-max)",
                (NAME, arg("size", help="MiB, or with a suffix b, k, m, g, t: 128m, 1g"))),
    CommandSpec("shutdown", f"{C}:cmd_shutdown", "ask a domain to power off", (NAME, WAIT)),
    CommandSpec("reboot", f"{C}:cmd_reboot", "ask a domain to reboot", (NAME, WAIT)),
    CommandSpec("console", f"{C}:cmd_console", "show a domain's console (follows it)",
                (NAME, arg("--lines", type=int, default=20),
                 arg("--no-follow", action="store_true"))),
    CommandSpec("result", f"{C}:cmd_result", "the result an init program published",
                (NAME, JSON)),
    CommandSpec("migrate", f"{C}:cmd_migrate",
                "move a running domain to another host (xl migrate): pre-copy, then resume",
                (NAME, arg("host"),
                 arg("--no-live", action="store_true", help="suspend first, then copy"),
                 arg("--debug", action="store_true",
                     help="send every page again after the last round; the receiver "
                          "compares (Xen's VERIFY)"),
                 arg("--max-iters", type=int, default=5,
                     help="live rounds at most, the first full one included (libxc: 5)"),
                 arg("--dirty-threshold", type=int, default=50,
                     help="stop and copy once a round dirtied fewer pages (libxc: 50)"),
                 arg("--policy", choices=("libxc", "clark"), default="libxc",
                     help="when to stop pre-copying: libxc's, or Clark's rate-adaptive one"),
                 arg("--report", metavar="DIR", default=None,
                     help="write the metrics as JSON and a PNG of pages per round"),
                 JSON)),
    CommandSpec("save", f"{C}:cmd_save", "save a domain to a file (xl save), then destroy it",
                (NAME, arg("file"),
                 arg("-c", "--checkpoint", action="store_true",
                     help="leave the domain running after the save"), JSON)),
    CommandSpec("restore", f"{C}:cmd_restore", "restore a domain from a save file (xl restore)",
                (arg("file"), arg("--host", default=None),
                 arg("-p", "--paused", action="store_true",
                     help="leave the restored domain paused"))),
    CommandSpec("link", f"{C}:cmd_link",
                "show links between hosts, or shape one: link A B --latency 5ms",
                (arg("a", nargs="?"), arg("b", nargs="?"),
                 arg("--bandwidth", help="bits/s: 10M, 1G (default unlimited)"),
                 arg("--latency", help="one-way delay: 5ms, 200us"),
                 arg("--loss", help="fraction or percent of frames lost: 0.01, 1%%"),
                 arg("--one-way", action="store_true", help="shape A -> B only"))),
    CommandSpec("capture", f"{C}:cmd_capture", "write a bridge's frames to a pcap file",
                (arg("host"), arg("bridge"), arg("--out", required=True),
                 arg("--seconds", type=float, default=None))),
    CommandSpec("fault", f"{C}:cmd_fault",
                "inject a fault: fault KIND [target] [--for S]; fault list; fault heal [ID]",
                (arg("kind", help="crash, freeze, memory, partition, link, disk, powercut, "
                                  "hostile; or list, heal"),
                 arg("id", nargs="?", type=int, help="heal: the fault to heal (all if none)"),
                 arg("--role", help="domu, xl, xenstored, xenconsoled, blkback, netback, "
                                    "hypervisor, host"),
                 arg("--host", help="target this host's part"),
                 arg("--name", help="target this domain"),
                 arg("--random", action="store_true", help="one of the matches, by --seed"),
                 arg("--seed", type=int, default=None),
                 arg("--for", dest="for_s", type=float, default=None, metavar="SECONDS",
                     help="heal it after this long"),
                 arg("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a parameter of the fault: mib=512, loss=10%%, eio=write ..."),
                 JSON)),
    CommandSpec("audit", f"{C}:cmd_audit",
                "check that destroyed domains left nothing behind (exit 1 if they did)",
                (JSON,)),
    CommandSpec("image", f"{L}:cmd_image", "make a sparse raw disk image: image create PATH SIZE",
                (arg("action", choices=("create",)), arg("path"),
                 arg("size", help="bytes, or with a suffix: 512K, 64M, 1G"),
                 arg("--force", action="store_true", help="replace an existing file"))),
    CommandSpec("demo", f"{L}:cmd_demo", "run the demonstration on an embedded 2-host cluster"),
    CommandSpec("run", f"{L}:cmd_run",
                "run a fault-injection scenario (a TOML file or a library name); judge it",
                (arg("scenario", help="a scenario file, or a library scenario's name"),
                 arg("--out", metavar="DIR", default=None,
                     help="where history.jsonl, results.json, timeline.png go "
                          "(default runs/NAME-TIME)"),
                 arg("--scale", type=float, default=None,
                     help="multiply every time in the scenario by this (0.5: half as long)"),
                 arg("--domains", type=float, default=None,
                     help="multiply each group's count by this (0.1: a tenth, at least 1)"),
                 arg("--running", action="store_true",
                     help="on the cluster `xenray up` runs, not an embedded one"))),
    CommandSpec("fuzz", f"{L}:cmd_fuzz",
                "a hostile guest fuzzing its own interfaces beside honest ones; judge it",
                (arg("target", choices=("hypercall", "grant", "evtchn", "xenstore", "blkif",
                                        "netif", "all")),
                 arg("--count", type=int, default=20, help="inputs per target (20)"),
                 arg("--seed", type=int, default=1), JSON)),
    CommandSpec("bench", f"{L}:cmd_bench",
                "benchmarks: hypercall, create, blk, net, cli, migrate, scale, sched",
                (arg("what", choices=("hypercall", "create", "blk", "net", "cli", "migrate",
                                      "scale", "sched")),
                 arg("--domains", type=int, default=None,
                     help="create: domains on one host (50); cli: domains listed (100); "
                          "scale: domains over all hosts (100)"),
                 arg("--hosts", type=int, default=None, help="scale: hosts (4)"),
                 arg("--launcher", choices=LAUNCHERS, default="fork",
                     help="scale: how its own cluster's hosts start domains (fork)"),
                 arg("--pool", type=int, default=None,
                     help="scale, --launcher ray: each host's pool (default: a batch's share "
                          "of a host)"),
                 arg("--running", action="store_true",
                     help="scale: on the cluster `xenray up` runs (its hosts), not its own"),
                 arg("--out", metavar="DIR", default=None,
                     help="scale: where its JSON and PNG plots go "
                          "(default runs/bench-scale-TIME)"),
                 arg("--runtime", type=float, default=5.0,
                     help="blk, net, sched: seconds of each guest workload"),
                 JSON)),
    CommandSpec("completion", f"{L}:cmd_completion", "print a bash completion line"),
    CommandSpec("help", f"{L}:cmd_help", "this list"),
)


def lookup(word: str) -> CommandSpec:
    """An exact name or any unambiguous prefix (``cmdtable_lookup``); LookupError naming the
    candidates otherwise."""
    exact = [c for c in COMMANDS if c.name == word]
    matches = exact or [c for c in COMMANDS if c.name.startswith(word)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise LookupError(f"ambiguous command {word!r}: "
                          f"{', '.join(c.name for c in matches)}")
    raise LookupError(f"unknown command {word!r}; try `xenray help`")
