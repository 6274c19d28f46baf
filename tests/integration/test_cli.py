"""The README's CLI path as a user runs it: `xenray up` starts a persistent cluster in the
background, later commands attach to it, `xenray down` stops exactly what `up` started."""

import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def xenray(home, *args, timeout=180):
    env = {**os.environ, "XENRAY_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_up_create_list_console_down(tmp_path):
    home = tmp_path / "home"
    assert "no cluster is running" in xenray(home, "list").stderr
    up = xenray(home, "up", "--hosts", "2", timeout=300)
    assert up.returncode == 0, up.stderr
    try:
        made = xenray(home, "create", "cluster/examples/counter3.cfg", "--host", "h2")
        assert made.returncode == 0 and "built-in pv kernel" in made.stdout, made.stderr
        rows = json.loads(xenray(home, "list", "--json").stdout)
        row = next(r for r in rows if r["name"] == "counter3")
        assert row["host"] == "h2" and row["pid"] > 0 and row["mem"] == 64
        hosts = json.loads(xenray(home, "info", "--json").stdout)
        assert [h["host"] for h in hosts] == ["h1", "h2"]
        assert all(pathlib.Path(h["xenstored_socket"]).exists() for h in hosts)
        deadline = time.monotonic() + 30
        while "counter 2" not in (text := xenray(home, "console", "counter3", "--no-follow")
                                  .stdout) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "counter 2" in text
        bad = xenray(home, "pause", "nosuch")
        assert bad.returncode == 1 and "no domain named 'nosuch'" in bad.stderr
        linked = xenray(home, "link", "h1", "h2", "--latency", "5ms", "--loss", "1%")
        assert linked.returncode == 0, linked.stderr
        assert "latency 5 ms" in linked.stdout and "loss 1%" in linked.stdout
        shown = xenray(home, "link").stdout
        assert "h1 -> h2" in shown and "h2 -> h1" in shown and "latency 5 ms" in shown
        bad = xenray(home, "link", "h1", "h9", "--latency", "1ms")
        assert bad.returncode == 1 and "no host 'h9'" in bad.stderr
        bad = xenray(home, "link", "h1", "h2", "--latency", "fast")
        assert bad.returncode == 1 and "latency" in bad.stderr
        pcap = tmp_path / "idle.pcap"
        cap = xenray(home, "capture", "h1", "xenbr0", "--out", str(pcap), "--seconds", "1")
        assert cap.returncode == 0 and "frames written" in cap.stdout, cap.stderr
        read = subprocess.run(["tshark", "-r", str(pcap)], capture_output=True, text=True)
        assert read.returncode == 0, read.stderr  # a valid (empty) pcap
    finally:
        down = xenray(home, "down")
    assert down.returncode == 0 and "cluster stopped" in down.stdout
    assert not (home / "run" / "cluster.json").exists()


def test_cli_help_and_prefix_lookup():
    env = {**os.environ}
    helped = subprocess.run([sys.executable, "-m", "cluster.cli", "help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert all(cmd in helped.stdout for cmd in ("create", "list", "console", "demo", "bench"))
    ambiguous = subprocess.run([sys.executable, "-m", "cluster.cli", "d"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
    assert ambiguous.returncode != 0 and "ambiguous" in ambiguous.stderr
