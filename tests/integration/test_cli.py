"""The README's CLI path as a user runs it, on the session's `xenray up` cluster
(conftest.py): every command asks that process over its control socket (it never joins Ray
itself), errors are one line, a sick host does not stop commands about the others, and
`xenray down` stops exactly what `up` started and leaves no file behind."""

import json
import os
import pathlib
import stat
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import ROOT, cli


def xenray(home, *args, timeout=180, python_args=()):
    if python_args:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN",
                                                                 "RAY_AUTH_TOKEN_PATH")}
        return subprocess.run([sys.executable, *python_args, "-m", "cluster.cli", *args],
                              cwd=ROOT, env={**env, "XENRAY_HOME": str(home)},
                              capture_output=True, text=True, timeout=timeout)
    return cli(home, *args, timeout=timeout)


def wait_console(home, name, text, timeout=30):
    deadline = time.monotonic() + timeout
    while text not in (got := xenray(home, "console", name, "--no-follow").stdout):
        assert time.monotonic() < deadline, f"{name}'s console never showed {text!r}: {got}"
        time.sleep(0.5)


@pytest.fixture
def home(cluster_home):
    return cluster_home


def test_cli_create_list_console_result(home):
    made = xenray(home, "create", "cluster/examples/counter3.cfg", "--host", "h2")
    assert made.returncode == 0 and "built-in pv kernel" in made.stdout, made.stderr
    rows = json.loads(xenray(home, "list", "--json").stdout)
    row = next(r for r in rows if r["name"] == "counter3")
    assert row["host"] == "h2" and row["pid"] > 0 and row["mem"] == 64
    table = xenray(home, "list").stdout.splitlines()
    assert table[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)", "Host",
                                "Health"]
    hosts = json.loads(xenray(home, "info", "--json").stdout)
    assert [h["host"] for h in hosts] == ["h1", "h2"]
    assert all(pathlib.Path(h["xenstored_socket"]).exists() for h in hosts)
    wait_console(home, "counter3", "counter 2")
    assert xenray(home, "destroy", "counter3").returncode == 0


def test_cli_info_reads_well_at_80_columns(home):
    text = xenray(home, "info").stdout
    assert "{" not in text, "no raw dict in a table"
    assert all(len(line) <= 80 for line in text.splitlines() if "xenstored-h" not in line)


def test_cli_never_joins_ray_and_says_what_it_cost(home):
    """The command asks the daemon: ray is never imported in the CLI's process."""
    timed = xenray(home, "list", python_args=("-X", "importtime"))
    assert timed.returncode == 0
    imported = {line.split("|")[-1].strip() for line in timed.stderr.splitlines()
                if line.startswith("import time:")}
    assert "ray" not in imported and "cluster.cli" in imported
    verbose = xenray(home, "-v", "list")
    assert "xenray list:" in verbose.stderr and "the daemon:" in verbose.stderr


def test_cli_errors_are_one_line_never_a_traceback(home, tmp_path):
    """From the daemon (a typed XenError), from the client's own parse, and from the guest's
    kernel through the toolstack: one line each (test_create.py has every refusal)."""
    cases = {
        "big.cfg": ('name = "big"\nmemory = 4096\nextra = "init=idle"\n',
                    "ENOMEM: host has memory for"),
        "neg.cfg": ('name = "n"\nmemory = -5\n', "memory: `-5' is not a valid value"),
        "init.cfg": ('name = "i"\nextra = "init=nosuchinit"\n',
                     "Requested init nosuchinit failed"),
    }
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        got = xenray(home, "create", str(tmp_path / name))
        assert got.returncode == 1 and words in got.stderr, got.stderr
        assert len(got.stderr.strip().splitlines()) == 1, got.stderr
        assert "Traceback" not in got.stderr and "ray." not in got.stderr
    bad = xenray(home, "pause", "nosuch")
    assert bad.returncode == 1 and bad.stderr.strip() == "xenray pause: no domain named 'nosuch'"
    ambiguous = xenray(home, "li")
    assert ambiguous.returncode == 2 and "ambiguous command 'li': list, link" in ambiguous.stderr


def test_cli_link_and_capture(home, tmp_path):
    linked = xenray(home, "link", "h1", "h2", "--latency", "5ms", "--loss", "1%")
    assert linked.returncode == 0, linked.stderr
    assert "latency 5 ms" in linked.stdout and "loss 1%" in linked.stdout
    shown = xenray(home, "link").stdout
    assert "h1 -> h2" in shown and "h2 -> h1" in shown and "latency 5 ms" in shown
    # unshaped again: a 1% loss left behind made later tests' pings fail at random
    assert xenray(home, "link", "h1", "h2").returncode == 0
    assert "latency 0 ms, loss 0%" in xenray(home, "link").stdout.split("h1 -> h2")[1]
    bad = xenray(home, "link", "h1", "h9", "--latency", "1ms")
    assert bad.returncode == 1 and "no host 'h9'" in bad.stderr
    bad = xenray(home, "link", "h1", "h2", "--latency", "fast")
    assert bad.returncode == 1 and "latency" in bad.stderr
    pcap = tmp_path / "idle.pcap"
    cap = xenray(home, "capture", "h1", "xenbr0", "--out", str(pcap), "--seconds", "1")
    assert cap.returncode == 0 and "frames written" in cap.stdout, cap.stderr
    read = subprocess.run(["tshark", "-r", str(pcap)], capture_output=True, text=True)
    assert read.returncode == 0, read.stderr  # a valid (empty) pcap


def test_cli_private_files_are_0600(home):
    run = home / "run"
    record = json.loads((run / "cluster.json").read_text())
    files = [run / "cluster.json", run / "auth_token", run / "xenray.sock",
             run / "xenstored-h1.sock", run / "xenstored-h2.sock"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    made = xenray(home, "create", "cluster/examples/counter1.cfg", "--host", "h1")
    assert made.returncode == 0, made.stderr
    try:
        shm = list(pathlib.Path("/dev/shm").glob(f"xenray-{record['run_id']}-*"))
        names = {p.name.split("-")[-1] for p in shm}
        assert any(n.startswith("d") for n in names), f"a domain's memory file in {names}"
        assert any(n.startswith("pipe") and n.endswith(".up") for n in names), names
        for path in shm:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        xenray(home, "destroy", "counter1")


def test_cli_a_script_joins_the_running_cluster_with_its_token(home):
    """``Cluster.running()`` (the README's way for scripts) joins `xenray up`'s cluster."""
    code = ("from cluster.api import Cluster\n"
            "xen = Cluster.running()\n"
            "print(sorted(r['host'] for r in xen.list() if r['domid'] == 0))\n"
            "xen.stop()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN",
                                                             "RAY_AUTH_TOKEN_PATH")}
    got = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**env, "XENRAY_HOME": str(home)})
    assert got.returncode == 0 and "['h1', 'h2']" in got.stdout, got.stderr[-2000:]
    assert xenray(home, "list").returncode == 0, "the script's stop left the cluster running"


@pytest.mark.destructive
def test_cli_a_sick_host_does_not_stop_commands_about_the_others(home, xen):
    """h1's toolstack agent is gone for good (killed without the restart Ray would give a
    crashed one): list shows h2's domains and names h1 on stderr; a create on h2 works;
    nothing tries to boot h1 again."""
    from actors.transport import launch

    record = json.loads((home / "run" / "cluster.json").read_text())
    made = xenray(home, "create", "cluster/examples/counter4.cfg", "--host", "h2")
    assert made.returncode == 0, made.stderr
    assert launch.kill("h1", "xl")
    deadline = time.monotonic() + 30
    while (got := xenray(home, "list")).returncode == 0:
        assert time.monotonic() < deadline, "h1's agent never went"
        time.sleep(0.5)
    assert "counter4" in got.stdout and "h2" in got.stdout
    assert "host h1 does not answer" in got.stderr and len(got.stderr.splitlines()) == 1
    assert xenray(home, "pause", "counter4").returncode == 0
    assert xenray(home, "unpause", "counter4").returncode == 0
    assert xenray(home, "info").returncode == 0
    assert xenray(home, "destroy", "counter4").returncode == 0
    assert json.loads((home / "run" / "cluster.json").read_text()) == record


@pytest.mark.destructive(last=True)
def test_cli_down_stops_everything_and_leaves_no_file(home):
    record = json.loads((home / "run" / "cluster.json").read_text())
    down = xenray(home, "down")
    assert down.returncode == 0 and "cluster stopped" in down.stdout, down.stderr
    assert list((home / "run").iterdir()) == [], "record, token and sockets all removed"
    assert not list(pathlib.Path("/dev/shm").glob(f"xenray-{record['run_id']}-*"))
    assert "no cluster is running" in xenray(home, "list").stderr
    assert "no cluster is running" in xenray(home, "down").stdout  # and down again is fine


def test_cli_help_and_prefix_lookup():
    helped = xenray("/nonexistent-home", "help")
    assert all(cmd in helped.stdout for cmd in ("create", "list", "console", "demo", "bench"))
    ambiguous = xenray("/nonexistent-home", "d")
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr
