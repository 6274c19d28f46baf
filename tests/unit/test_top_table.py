"""``xenray top``'s pure parts (cluster/top.py) against xentop.c: CPU(%) from two samples,
the state letters, the sort of each column and the ``s`` key's cycle, the column widths and
formats, the vCPU, vif and vbd lines, the keys, and the JSON lines; and the CLI's batch loop
and screen over a fake daemon (cluster/cli/top.py)."""

import copy
import io
import json
import os
import re

import pytest

from cluster import top
from cluster.cli import main as cli_main
from cluster.cli import top as cli_top
from protocols.hypercall import DomInfoFlag, ShutdownReason, dominf_flags

GIB = 1 << 30
RUNNING, BLOCKED = int(DomInfoFlag.running), int(DomInfoFlag.blocked)
# xentop's header, from fields[] (every width its default), and our HOST column after it
XENTOP_HEADER = ("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) "
                 "VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  "
                 "VBD_WSECT SSID")


def dom(domid, name, *, flags=BLOCKED, cpu_ns=0, mem=64 << 20, maxmem=64 << 20, vcpus=1,
        vcpu_stats=(), networks=(), vbds=()):
    return {"domid": domid, "name": name, "flags": flags, "cpu_ns": cpu_ns, "num_vcpus": vcpus,
            "online_vcpus": vcpus, "vcpus": list(vcpu_stats), "cur_mem": mem,
            "max_mem": maxmem, "ssid": 0, "networks": list(networks), "vbds": list(vbds)}


def vcpu(seconds, online=1):
    """A ``xenstat_vcpu``: a little over ``seconds`` of CPU (xentop prints whole seconds)."""
    return {"online": online, "ns": seconds * 10**9 + 999_999_999}


def node(host, domains, *, clock=100.0, tot_mem=GIB, free_mem=GIB // 2):
    return {"host": host, "time": 1_700_000_000.0, "clock": clock, "xen_version": "4.22-xenray",
            "num_cpus": 2, "cpu_hz": 0, "tot_mem": tot_mem, "free_mem": free_mem,
            "domains": domains, "errors": {}}


def net(tbytes=0, rbytes=0, **kw):
    return {"id": 0, "tbytes": tbytes, "tpackets": 0, "terrs": 0, "tdrop": 0,
            "rbytes": rbytes, "rpackets": 0, "rerrs": 0, "rdrop": 0, **kw}


def vbd(rd=0, wr=0, error=False, dev=51712):
    return {"dev": dev, "error": error, "oo_reqs": 0, "rd_reqs": rd, "wr_reqs": wr,
            "rd_sects": rd * 8, "wr_sects": wr * 8}


def later(sample, seconds, **cpu_added):
    """The same nodes ``seconds`` later on each host's clock, each named domain's cpu_ns
    grown by the ns given."""
    out = copy.deepcopy(sample)
    for n in out:
        n["clock"] += seconds
        for d in n["domains"]:
            d["cpu_ns"] += cpu_added.get(d["name"], 0)
    return out


def row(**kw):
    [r] = top.domain_rows([node(kw.pop("host", "h1"), [dom(kw.pop("domid", 1),
                                                            kw.pop("name", "d"), **kw)])])
    return r


# -- CPU(%) ----------------------------------------------------------------------------------

def test_xentop_get_cpu_pct_is_cpu_time_grown_over_the_hosts_own_elapsed_time():
    first = [node("h1", [dom(0, "Domain-0"), dom(1, "web", cpu_ns=5 * 10**9)], clock=10.0),
             node("h2", [dom(1, "db", cpu_ns=10**9)], clock=5000.0)]
    second = later(first, 2.0, web=500_000_000, db=3 * 10**9)
    second[1]["clock"] = 5004.0  # h2's clock says 4 s passed there
    pct = {r.name: r.cpu_pct for r in top.domain_rows(second, first)}
    assert pct == {"Domain-0": 0.0, "web": pytest.approx(25.0), "db": pytest.approx(75.0)}


def test_xentop_get_cpu_pct_is_0_without_a_previous_sample_of_that_domain():
    first = [node("h1", [dom(1, "web", cpu_ns=10**9)])]
    assert [r.cpu_pct for r in top.domain_rows(first)] == [0.0]
    second = later(first, 1.0, web=10**8)
    second[0]["domains"].append(dom(2, "new", cpu_ns=10**9))
    second.append(node("h2", [dom(1, "moved", cpu_ns=10**9)]))  # its domid 1 is h1's
    pct = {r.name: r.cpu_pct for r in top.domain_rows(second, first)}
    assert pct == {"web": pytest.approx(10.0), "new": 0.0, "moved": 0.0}


def test_cpu_pct_formula_and_its_guards():
    assert top.cpu_pct(3 * 10**9, 10**9, 4.0) == pytest.approx(50.0)  # 2 s over 4 s
    assert top.cpu_pct(2 * 10**9, 0, 1.0) == pytest.approx(200.0)  # two vCPUs busy
    assert top.cpu_pct(10**9, None, 1.0) == 0.0
    assert top.cpu_pct(10**9, 10**8, 0.0) == 0.0
    assert top.cpu_pct(10**8, 10**9, 1.0) == 0.0, "cpu_time went back: a domid reused"


# -- the state column --------------------------------------------------------------------------

@pytest.mark.parametrize("flags, letters, counted", [
    (DomInfoFlag.running, "-----r", "running"),
    (DomInfoFlag.blocked, "--b---", "blocked"),
    (DomInfoFlag.paused, "----p-", "paused"),
    (DomInfoFlag.paused | DomInfoFlag.blocked, "--b-p-", "blocked"),
    (dominf_flags(DomInfoFlag.shutdown, ShutdownReason.poweroff), "-s----", "shutdown"),
    (dominf_flags(DomInfoFlag.shutdown, ShutdownReason.reboot), "-s----", "shutdown"),
    (dominf_flags(DomInfoFlag.shutdown, ShutdownReason.crash), "---c--", "crashed"),
    (dominf_flags(DomInfoFlag.dying | DomInfoFlag.shutdown, ShutdownReason.crash), "d--c--",
     "crashed"),
    (DomInfoFlag.dying, "d-----", "dying"),
    (0, "------", None),
])
def test_xentop_state_letters_dsbcpr_and_do_summarys_tally(flags, letters, counted):
    assert top.state_letters(int(flags)) == letters
    assert top.summary_state(int(flags)) == counted


# -- sorting ---------------------------------------------------------------------------------

def sample_rows():
    crashed = dominf_flags(DomInfoFlag.shutdown, ShutdownReason.crash)
    return top.domain_rows([
        node("h1", [dom(0, "Domain-0", flags=RUNNING, cpu_ns=9 * 10**9, maxmem=None),
                    dom(3, "web", cpu_ns=10**9, mem=128 << 20, networks=[net(5000, 7000)]),
                    dom(4, "Batch", flags=crashed, cpu_ns=3 * 10**9,
                        vbds=[vbd(rd=10, wr=900)])]),
        node("h2", [dom(0, "Domain-0", flags=RUNNING, cpu_ns=2 * 10**9, maxmem=None),
                    dom(7, "api", flags=int(DomInfoFlag.paused), mem=32 << 20,
                        networks=[net(100, 100), net(100, 100)])]),
    ])


def names(rows):
    return [f"{r.host}:{r.name}" for r in rows]


def column(header):
    return next(i for i, f in enumerate(top.FIELDS) if f.header == header)


def test_xentop_default_sort_is_by_name_ignoring_case_ties_in_host_order():
    assert names(top.sort_rows(sample_rows())) == ["h2:api", "h1:Batch", "h1:Domain-0",
                                                   "h2:Domain-0", "h1:web"]


@pytest.mark.parametrize("header, expected", [
    ("CPU(sec)", ["h1:Domain-0", "h1:Batch", "h2:Domain-0", "h1:web", "h2:api"]),
    ("STATE", ["h1:web", "h1:Batch", "h2:api", "h1:Domain-0", "h2:Domain-0"]),  # b, c, p, r
    ("MEM(k)", ["h1:web", "h1:Domain-0", "h1:Batch", "h2:Domain-0", "h2:api"]),
    ("MAXMEM(k)", ["h1:Domain-0", "h2:Domain-0", "h1:web", "h1:Batch", "h2:api"]),  # no limit
    ("NETS", ["h2:api", "h1:web", "h1:Domain-0", "h1:Batch", "h2:Domain-0"]),
    ("NETTX(k)", ["h1:web", "h2:api", "h1:Domain-0", "h1:Batch", "h2:Domain-0"]),
    ("VBD_WR", ["h1:Batch", "h1:Domain-0", "h1:web", "h2:Domain-0", "h2:api"]),
    ("HOST", ["h1:Domain-0", "h1:web", "h1:Batch", "h2:Domain-0", "h2:api"]),
])
def test_xentop_sort_columns_numbers_largest_first(header, expected):
    assert names(top.sort_rows(sample_rows(), column(header))) == expected


def test_xentop_dom0_first_puts_every_hosts_domain_0_first():
    rows = top.sort_rows(sample_rows(), column("VBD_WR"), dom0_first=True)
    assert names(rows) == ["h1:Domain-0", "h2:Domain-0", "h1:Batch", "h1:web", "h2:api"]


def test_xentop_s_key_cycles_through_every_column_and_wraps():
    view = top.View()
    seen = []
    for _ in range(len(top.FIELDS)):
        seen.append(top.FIELDS[view.sort_field].header)
        view = top.handle_key(view, "s")
    assert view.sort_field == top.NAME and seen[0] == "NAME" and seen[-1] == "HOST"
    assert len(set(seen)) == len(top.FIELDS) == 20
    assert top.handle_key(top.View(), "S").sort_field == 1


# -- formatting ------------------------------------------------------------------------------

def test_xentop_header_and_rows_in_its_default_widths_plus_host():
    lines = top.table(top.View(), sample_rows())
    assert lines[0].kind == "header" and lines[0].text == XENTOP_HEADER + " HOST"
    assert [line.kind for line in lines] == ["header"] + ["domain"] * 5
    assert all(len(line.text) == len(lines[0].text) for line in lines)
    web = next(line.cells for line in lines if line.cells[0].strip() == "web")
    assert web == ("       web", "--b---", "         1", "   0.0", "    131072", "  12.5",
                   "     65536", "      6.2", "    1", "   1", "       4", "       6",
                   "   0", "       0", "       0", "       0", "         0", "         0",
                   "   0", "  h1")
    dom0 = next(line.cells for line in lines if line.cells[0].strip() == "Domain-0")
    assert dom0[6:8] == ("  no limit", "      n/a")


def test_xentop_name_is_cut_to_10_unless_full_name():
    rows = [row(name="a-very-long-domain-name")]
    assert top.table(top.View(), rows)[1].cells[0] == "a-very-lon"
    full = top.table(top.View(full_name=True), rows)
    assert full[1].cells[0] == "a-very-long-domain-name"
    assert full[0].cells[0] == " " * 19 + "NAME"


def test_xentop_adjust_field_widths_grows_a_column_to_its_largest_number():
    rows = [row(networks=[net(tbytes=99_999_999 * 1024)], vbds=[vbd(wr=123_456_789)])]
    cells = dict(zip((f.header for f in top.FIELDS), top.table(top.View(), rows)[1].cells))
    assert cells["NETTX(k)"] == " 99999999"  # INT_FIELD_WIDTH(99999999 + 1) = 9
    assert cells["NETRX(k)"] == "       0"
    assert cells["VBD_WR"] == "123456789" and cells["VBD_WSECT"] == " 987654312"
    long_host = top.table(top.View(), [row(host="host-number-12")])
    assert long_host[0].cells[-1] == "          HOST"


def test_xentop_vbd_columns_show_a_dash_when_no_vbd_could_be_read():
    rows = [row(vbds=[vbd(error=True)]), row(domid=2, name="e", vbds=[vbd(wr=5, error=True),
                                                                     vbd(wr=7)])]
    lines = top.table(top.View(), rows)
    cells = [dict(zip((f.header for f in top.FIELDS), line.cells)) for line in lines[1:]]
    assert cells[0]["VBD_WR"] == "       -" and cells[0]["VBD_RSECT"] == "         -"
    assert cells[1]["VBD_WR"] == "       7"


def test_xentop_n_and_x_lines_and_the_repeated_header():
    rows = [row(networks=[net(tbytes=1000, rbytes=2000, tpackets=3, rpackets=4)],
                vbds=[vbd(rd=1, wr=2)]), row(domid=2, name="e")]
    lines = top.table(top.View(networks=True, vbds=True, repeat_header=True), rows)
    assert [line.kind for line in lines] == ["header", "domain", "detail", "detail", "header",
                                             "domain"]
    assert lines[2].text == ("Net0 RX:     2000bytes        4pkts        0err        0drop  "
                             "TX:     1000bytes        3pkts        0err        0drop")
    assert lines[3].text == ("VBD BlkBack 51712 [ca: 0]  OO:        0   RD:        1   "
                             "WR:        2   RSECT:          8   WSECT:         16")


def test_xentop_vcpu_line_wraps_before_every_fifth_vcpu():
    """do_vcpu's " %2u: %10llus" per vCPU, and "\\n        " before vCPU 5 and 10."""
    assert top.vcpu_lines(row(vcpus=12, vcpu_stats=[vcpu(i * 100) for i in range(12)])) == [
        ("VCPUs(sec):   0:          0s  1:        100s  2:        200s  3:        300s"
         "  4:        400s"),
        ("          5:        500s  6:        600s  7:        700s  8:        800s"
         "  9:        900s"),
        "         10:       1000s 11:       1100s"]


def test_xentop_vcpu_line_skips_offline_vcpus_and_their_wrap():
    """The wrap is by vCPU number and inside the online test: vCPU 5 offline, no new line."""
    stats = [vcpu(1), vcpu(2, online=0), vcpu(3), vcpu(4), vcpu(5), vcpu(6, online=0),
             vcpu(1234567890)]
    assert top.vcpu_lines(row(vcpus=7, vcpu_stats=stats)) == [
        ("VCPUs(sec):   0:          1s  2:          3s  3:          4s  4:          5s"
         "  6: 1234567890s")]
    assert top.vcpu_lines(row(vcpu_stats=[vcpu(7, online=0)])) == ["VCPUs(sec): "]
    assert top.vcpu_lines(row(name="Domain-0", domid=0)) == ["VCPUs(sec): "], "no entries"


def test_xentop_vcpu_line_comes_before_the_n_and_x_lines():
    rows = [row(vcpu_stats=[vcpu(3)], networks=[net()], vbds=[vbd()])]
    lines = top.table(top.View(vcpus=True, networks=True, vbds=True), rows)
    assert [line.kind for line in lines] == ["header", "domain", "detail", "detail", "detail"]
    assert [line.text.split()[0] for line in lines[2:]] == ["VCPUs(sec):", "Net0", "VBD"]
    assert top.table(top.View(), rows)[1:] == lines[1:2], "off by default"


def test_xentop_down_key_scrolls_and_is_kept_on_the_last_domain():
    rows = sample_rows()
    view = top.handle_key(top.handle_key(top.View(), top.KEY_DOWN), top.KEY_DOWN)
    assert [line.cells[0].strip() for line in top.table(view, rows)[1:]] == [
        "Domain-0", "Domain-0", "web"]
    far = top.View(first=99)
    assert [line.cells[0].strip() for line in top.table(far, rows)[1:]] == ["web"]
    assert top.handle_key(top.View(), top.KEY_UP).first == 0
    assert top.table(top.View(), []) == [top.table(top.View(), [])[0]]  # a header, no rows


def test_xentop_summary_lines():
    nodes = [node("h1", [dom(0, "Domain-0", flags=RUNNING), dom(1, "a")]),
             node("h22", [dom(0, "Domain-0", flags=RUNNING)], tot_mem=2 * GIB, free_mem=0)]
    nodes[1]["cpu_hz"] = 1_000_000_000
    lines = top.summary(nodes, top.domain_rows(nodes), now=0.0)
    assert re.fullmatch(r"xenray top - \d\d:\d\d:\d\d   Xen 4\.22-xenray", lines[0])
    assert lines[1] == ("3 domains: 2 running, 1 blocked, 0 paused, 0 crashed, 0 dying, "
                        "0 shutdown")
    assert lines[2:] == [
        "h1   Mem: 1048576k total, 524288k used, 524288k free    CPUs: 2",
        "h22  Mem: 2097152k total, 2097152k used, 0k free    CPUs: 2 @ 1000MHz"]


# -- keys --------------------------------------------------------------------------------------

def test_xentop_keys_quit_and_toggles():
    for key in "qQ\x1b":
        assert top.handle_key(top.View(), key) is None
    view = top.View()
    for key, attr in (("n", "networks"), ("B", "vbds"), ("r", "repeat_header"),
                      ("v", "vcpus"), ("V", "vcpus")):
        assert getattr(top.handle_key(view, key), attr) is True
        assert getattr(top.handle_key(top.handle_key(view, key), key), attr) is False
    assert top.handle_key(view, "z") == view  # not one of xentop's keys


def test_xentop_d_prompts_for_the_delay():
    view = top.handle_key(top.View(), "d")
    assert view.prompt == "Delay(sec)"
    assert top.handle_key(view, "q") is not None, "q is typed, not quit, in the prompt"
    for key in "0.5x":
        view = top.handle_key(view, key)
    assert view.typed == "0.5x"
    view = top.handle_key(view, "\x7f")
    assert top.bottom_line(view) == [("Delay(sec): 0.5", "plain")]
    done = top.handle_key(view, "\r")
    assert done.delay == 0.5 and done.prompt is None
    for bad in ("0", "-2", "soon", ""):
        typed = typing_delay(bad)
        assert top.handle_key(typed, "\r").delay == 3.0, bad
    assert top.handle_key(typing_delay("9"), "\x1b").delay == 3.0  # Escape drops it


def typing_delay(text):
    return top.View(prompt="Delay(sec)", typed=text)


def test_xentop_bottom_line_shows_the_keys_and_what_is_on():
    plain = "".join(text for text, _ in top.bottom_line(top.View()))
    assert plain.rstrip() == "Delay  Networks  vBds  VCPUs  Repeat header  Sort order  Quit"
    styled = top.bottom_line(top.View(vbds=True))
    assert ("B", "key") in styled and ("v", "on") in styled and ("ds", "on") in styled
    assert ("etworks", "plain") in styled and ("CPUs", "plain") in styled
    assert ("V", "key") in styled and ("CPUs", "on") in top.bottom_line(top.View(vcpus=True))


def test_terminal_keys_decode_arrows_and_a_lone_escape():
    assert cli_top.decode_keys("s\x1b[Bq\x1bOA") == ["s", top.KEY_DOWN, "q", top.KEY_UP]
    assert cli_top.decode_keys("\x1b") == ["\x1b"]
    assert cli_top.decode_keys("\x1b[Cn") == ["n"]  # right arrow: ignored


# -- JSON ----------------------------------------------------------------------------------

def test_json_sample_has_each_column_as_a_number_and_the_hosts():
    nodes = [node("h1", [dom(0, "Domain-0", flags=RUNNING, maxmem=None),
                         dom(3, "web", mem=128 << 20, networks=[net(5000, 7000)],
                             vbds=[vbd(rd=10, wr=900)])])]
    rows = top.domain_rows(later(nodes, 1.0), nodes)
    sample = json.loads(json.dumps(top.sample_json(top.View(), nodes, rows, {"h2": "gone"},
                                                   now=12.5)))
    assert sample["time"] == 12.5 and sample["errors"] == {"h2": "gone"}
    [host] = sample["hosts"]
    assert host == {"host": "h1", "time": 1_700_000_000.0, "xen_version": "4.22-xenray",
                    "cpus": 2, "cpu_mhz": 0, "mem_total_k": 1048576, "mem_used_k": 524288,
                    "mem_free_k": 524288, "domains": 2, "running": 1, "blocked": 1,
                    "paused": 0, "shutdown": 0, "crashed": 0, "dying": 0}
    dom0, web = sample["domains"]
    assert dom0["maxmem_k"] is None and dom0["maxmem_pct"] is None
    assert {k: web[k] for k in ("name", "host", "domid", "state", "mem_k", "mem_pct",
                                "maxmem_k", "nets", "nettx_k", "netrx_k", "nettx_bytes",
                                "vbds", "vbd_rd", "vbd_wr", "vbd_wsect", "cpu_pct")} == {
        "name": "web", "host": "h1", "domid": 3, "state": "--b---", "mem_k": 131072,
        "mem_pct": 12.5, "maxmem_k": 65536, "nets": 1, "nettx_k": 4, "netrx_k": 6,
        "nettx_bytes": 5000, "vbds": 1, "vbd_rd": 10, "vbd_wr": 900, "vbd_wsect": 7200,
        "cpu_pct": 0.0}
    assert web["vifs"][0]["tbytes"] == 5000 and web["vbd_devices"][0]["dev"] == 51712
    by_mem = top.sample_json(top.View(sort_field=column("MEM(k)")), nodes, rows, {})
    assert [d["name"] for d in by_mem["domains"]] == ["web", "Domain-0"]


def test_json_vcpus_s_are_the_vcpu_lines_seconds_none_for_an_offline_vcpu():
    nodes = [node("h1", [dom(0, "Domain-0", flags=RUNNING),
                         dom(3, "web", vcpus=3, vcpu_stats=[vcpu(5), vcpu(2, online=0),
                                                            vcpu(0)])])]
    dom0, web = top.sample_json(top.View(), nodes, top.domain_rows(nodes), {})["domains"]
    assert (web["vcpus"], web["vcpus_s"]) == (3, [5, None, 0])
    assert web["vcpus_ns"] == [5_999_999_999, 2_999_999_999, 999_999_999]
    assert dom0["vcpus_s"] == dom0["vcpus_ns"] == []


# -- the CLI's loop and screen, over a fake daemon -------------------------------------------

@pytest.fixture
def daemon(monkeypatch):
    """``ask("xenstat")`` answered from a list of samples, one per call."""
    samples = []

    def ask(op, **args):
        assert op == "xenstat" and not args
        return samples.pop(0)

    monkeypatch.setattr(cli_top, "ask", ask)
    return samples


def test_batch_prints_a_table_per_iteration_and_no_summary(daemon):
    first = [node("h1", [dom(0, "Domain-0", flags=RUNNING), dom(1, "web", cpu_ns=10**9)])]
    daemon += [{"rows": first, "errors": {}},
               {"rows": later(first, 0.5, web=10**8), "errors": {}}]
    out, slept = io.StringIO(), []
    status = cli_top._batch(top.View(delay=0.5), 2, False, out, sleep=slept.append)
    lines = out.getvalue().splitlines()
    assert status == 0 and slept == [0.5] and not daemon
    assert [line.split()[0] for line in lines] == ["NAME", "Domain-0", "web"] * 2
    assert lines[0] == XENTOP_HEADER + " HOST"
    assert lines[2].split()[3] == "0.0" and lines[5].split()[3] == "20.0"


def test_top_vcpus_option_adds_the_vcpu_line_and_v_stays_verbose(daemon, capsys):
    """xentop's -v is --vcpus only: ``xenray top -v`` is every command's --verbose."""
    sample = [node("h1", [dom(1, "web", vcpus=2, vcpu_stats=[vcpu(4), vcpu(9)])])]
    daemon += [{"rows": sample, "errors": {}}, {"rows": sample, "errors": {}}]
    assert cli_main(["top", "-b", "-i", "1", "--vcpus"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "VCPUs(sec):   0:          4s  1:          9s" and len(out) == 3
    assert cli_main(["top", "-v", "-b", "-i", "1"]) == 0
    got = capsys.readouterr()
    assert len(got.out.splitlines()) == 2 and "xenray top: " in got.err


def test_batch_json_a_line_per_sample_and_what_did_not_answer(daemon, capsys):
    sample = [node("h1", [dom(1, "web")])]
    sample[0]["errors"] = {"netback": "host h1's netback did not answer: gone"}
    daemon += [{"rows": sample, "errors": {"h2": "host h2 does not answer"}}]
    out = io.StringIO()
    assert cli_top._batch(top.View(), 1, True, out, sleep=lambda s: None) == 1
    [line] = out.getvalue().splitlines()
    got = json.loads(line)
    assert [d["name"] for d in got["domains"]] == ["web"]
    assert got["errors"] == {"h2": "host h2 does not answer",
                             "h1/netback": "host h1's netback did not answer: gone"}
    assert "xenray top: host h2 does not answer" in capsys.readouterr().err


def test_screen_fits_the_terminal_and_ends_with_the_keys():
    nodes = [node("h1", [dom(i, f"dom{i}") for i in range(30)])]
    rows = top.domain_rows(nodes)
    text = cli_top.screen(top.View(), nodes, rows, {}, os.terminal_size((60, 12)))
    body = text.split("\x1b[12;3H")[0].split("\r\n")
    assert len(body) == 11  # the last line is the bottom line's
    assert all(len(re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", line)) <= 60 for line in body)
    assert len(re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", body[2])) == 60, "a long line is cut"
    bottom = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text.split("\x1b[12;3H")[1])
    assert bottom.startswith("Delay  Networks")
    assert "\x1b[7m" in body[3] and "\x1b[1m" in body[3]  # the header reversed, NAME bold
