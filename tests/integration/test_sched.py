"""The hypervisor's scheduler on a real cluster (issue 14): CPU shares by weight and cap, as
the hypervisor accounts them (``xl list``'s Time), r and b states, vcpu-list and vcpu-pin,
sched-credit2 through the CLI. Both domains of a case are pinned to pCPU 0 of h1, so they
compete for one pCPU whatever else runs on the host. The algorithms themselves (credit and
credit2) are tested in virtual time in tests/unit/test_sched_*; ``xenray bench sched``
measures both end to end."""

import json
import time

import pytest

from cluster.xlcfg import parse_config
from tests.integration.conftest import cli

WINDOW_CPU_S = 1.0  # the CPU time a measurement waits for the domains to use between them


def burn(name: str, **keys) -> object:
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return parse_config(f'name = "{name}"\nmemory = 32\nextra = "init=cpuburn"\n'
                        f'cpus = "0"\n{extra}')[0]


def cpu_seconds(xen) -> dict[str, float]:
    return {r["name"]: r["time"] for r in xen.list()}


def shares(xen, names) -> dict[str, float]:
    """Each domain's share of one pCPU, from the hypervisor's cpu_time, over the time they
    take to use :data:`WINDOW_CPU_S` of it between them."""
    xen.wait_for(lambda: all(cpu_seconds(xen).get(n, 0) > 0.2 for n in names), 60,
                 "the burners to run")
    before, t0 = cpu_seconds(xen), time.monotonic()
    after = xen.wait_for(lambda: (now := cpu_seconds(xen)) and sum(
        now[n] - before[n] for n in names) >= WINDOW_CPU_S and now, 60, "the window's CPU time")
    elapsed = time.monotonic() - t0
    return {n: (after[n] - before[n]) / elapsed for n in names}


def test_weights_256_and_512_share_one_pcpu_1_to_2(xen, domains):
    domains(burn("w256", cpu_weight=256), "h1")
    domains(burn("w512", cpu_weight=512), "h1")
    got = shares(xen, ["w256", "w512"])
    ratio = got["w512"] / got["w256"]
    assert 1.8 <= ratio <= 2.2, got  # 1:2 within 10%
    assert got["w256"] + got["w512"] <= 1.02, got  # one pCPU between them
    rows = {r["name"]: r for r in xen.list()}
    assert {rows["w256"]["state"][0], rows["w512"]["state"][0]} <= {"r", "-"}


def test_a_cap_of_25_holds_a_burner_at_a_quarter_of_a_pcpu(xen, domains):
    domains(burn("cap25", cap=25), "h1")
    got = shares(xen, ["cap25"])["cap25"]
    assert 0.20 <= got <= 0.30, got


def test_an_idle_domain_is_blocked_and_costs_no_cpu_time(xen, domains):
    domains(parse_config('name = "sleeper"\nmemory = 32\nextra = "init=idle"\n')[0], "h2")
    row = xen.wait_for(lambda: (r := next(r for r in xen.list() if r["name"] == "sleeper"))
                       ["state"][1] == "b" and r, 30, "sleeper to block")
    assert row["state"] == "-b----"
    first = cpu_seconds(xen)
    domains(burn("witness"), "h2")  # the window: while a burner on its host uses 1 s of CPU
    xen.wait_for(lambda: cpu_seconds(xen).get("witness", 0) >= 1.0, 60, "the witness to burn")
    assert cpu_seconds(xen)["sleeper"] - first["sleeper"] < 0.05


def test_cli_vcpu_list_pin_and_sched_credit2(xen, domains, cluster_home):
    domains(burn("pinned", cpu_weight=300), "h1")
    xen.wait_for(lambda: cpu_seconds(xen).get("pinned", 0) > 0, 30, "pinned to run")
    listed = cli(cluster_home, "vcpu-list", "pinned")
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("pinned"))
    assert " 0 / all" in line or "0 / all" in line, listed.stdout
    pin = cli(cluster_home, "vcpu-pin", "pinned", "0", "1")
    assert pin.returncode == 0, pin.stderr
    rows = json.loads(cli(cluster_home, "vcpu-list", "pinned", "--json").stdout)
    assert rows[0]["hard"] == "1" and rows[0]["online"] == 1
    xen.wait_for(lambda: json.loads(cli(cluster_home, "vcpu-list", "pinned", "--json").stdout)
                 [0]["cpu"] == 1, 10, "the vCPU to move to pCPU 1")
    bad = cli(cluster_home, "vcpu-pin", "pinned", "0", "7")
    assert bad.returncode != 0 and "pcpu 7 does not exist" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    out = cli(cluster_home, "sched-credit2", "-d", "pinned", "-w", "768")
    assert (out.returncode, out.stdout) == (0, ""), out.stderr  # xl: a set prints nothing
    out = cli(cluster_home, "sched-credit2", "-d", "pinned")
    assert out.stdout.splitlines()[0].split() == ["Name", "ID", "Weight", "Cap"], out.stdout
    assert out.stdout.splitlines()[1].split()[2:] == ["768", "0"], out.stdout
    wrong = cli(cluster_home, "sched-credit", "-d", "pinned", "-w", "5")
    assert wrong.returncode != 0 and "run credit2, not credit" in wrong.stderr
    for weight, words in (("70000", "Cpu weight out of range"), ("0", "Cpu weight out of "
                                                                      "range")):
        bad = cli(cluster_home, "sched-credit2", "-d", "pinned", "-w", weight)
        assert bad.returncode == 1 and words in bad.stderr, bad.stderr
    bad_cap = cli(cluster_home, "sched-credit2", "-d", "pinned", "-c", "101")
    assert bad_cap.returncode == 1 and "valid range is from 0 to 100" in bad_cap.stderr
    no_s = cli(cluster_home, "sched-credit2", "-r", "0")
    assert no_s.returncode == 1 and "Must specify schedparam" in no_s.stderr
    # -s -r 0 switches the ratelimit off (as Xen's csched2_sys_cntl), then back on
    for ratelimit in ("0", "1000"):
        assert cli(cluster_home, "sched-credit2", "-s", "-r", ratelimit).returncode == 0
        shown = cli(cluster_home, "sched-credit2", "-s").stdout
        assert f"ratelimit={ratelimit}us" in shown and "Weight" not in shown, shown


@pytest.mark.parametrize("cfg, words", [
    ('cpus = "5"', "pcpu 5 does not exist"),
    ('cpu_weight = 0', "cpu_weight"),
])
def test_bad_cpu_settings_are_one_line_errors_and_leave_nothing(xen, tmp_path, cluster_home,
                                                                 cfg, words):
    path = tmp_path / "bad.cfg"
    path.write_text(f'name = "badcpu"\nmemory = 32\nextra = "init=idle"\n{cfg}\n')
    out = cli(cluster_home, "create", str(path))
    assert out.returncode != 0 and words in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert xen.find("badcpu") is None


def test_cli_vcpu_set_beyond_the_hosts_pcpus_needs_ignore_host(xen, domains, cluster_home):
    """xl vcpu-set refuses more vCPUs than the host has pCPUs ("You are overcommmitting!",
    xl's words) unless -i, and libxl's words for a count beyond maxvcpus."""
    pcpus = next(h["nr_cpus"] for h in xen.info() if h["host"] == "h1")
    want = pcpus + 1
    domains(parse_config(f'name = "wide"\nmemory = 32\nextra = "init=idle"\n'
                         f'maxvcpus = {want}\n')[0], "h1")
    refused = cli(cluster_home, "vcpu-set", "wide", str(want))
    assert refused.returncode == 1 and "You are overcommmitting! You have " \
        f"{pcpus} physical CPUs and want {want} vCPUs!" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    beyond = cli(cluster_home, "vcpu-set", "-i", "wide", str(want + 1))
    assert beyond.returncode == 1 and f"however maxcpus is {want}!" in beyond.stderr
    assert cli(cluster_home, "vcpu-set", "-i", "wide", str(want)).returncode == 0
    xen.wait_for(lambda: all(r["online"] for r in xen.vcpu_list("wide")), 30,
                 "every vCPU of wide to come up")
