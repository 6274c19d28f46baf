"""Reference 18 (the xl.cfg keys) and 12.3 (on_* actions): the typed DomainConfig."""

import pathlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.guest.api import init_program
from cluster.xlcfg import Action, DomainConfig, XlCfgError, load_config, parse_config

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "cluster" / "examples" / "xlexample.pvlinux"


def _cfg(text: str) -> DomainConfig:
    return parse_config(text, filename="g.cfg")[0]


def _error(text: str) -> XlCfgError:
    with pytest.raises(XlCfgError) as e:
        parse_config(text, filename="g.cfg")
    return e.value


def test_xlcfg_18_shipped_pvlinux_example_parses_as_xl_reads_it():
    cfg, warnings = load_config(EXAMPLE)
    assert warnings == []
    assert (cfg.name, cfg.type, cfg.kernel, cfg.cmdline) == (
        "example.pvlinux", "pv", "/boot/vmlinuz", "root=/dev/xvda1")
    assert (cfg.memory, cfg.maxmem, cfg.vcpus, cfg.maxvcpus) == (128, 128, 2, 2)
    assert len(cfg.vif) == 1 and cfg.vif[0].devid == 0 and cfg.vif[0].bridge == "xenbr0"
    (disk,) = cfg.disk
    assert (disk.target, disk.format, disk.vdev, disk.readwrite, disk.devid) == (
        "/dev/vg/guest-volume", "raw", "xvda", True, 51712)
    assert cfg.text == EXAMPLE.read_text() and cfg.filename == str(EXAMPLE)


def test_xlcfg_18_defaults_of_xl_and_libxl():
    cfg = _cfg('name = "d"')
    assert (cfg.type, cfg.memory, cfg.maxmem, cfg.vcpus, cfg.maxvcpus) == ("pv", 32, 32, 1, 1)
    assert (cfg.cpu_weight, cfg.cap, cfg.max_event_channels) == (256, 0, 1023)
    assert (cfg.max_grant_frames, cfg.max_maptrack_frames) == (64, 1024)
    assert (cfg.kernel, cfg.cmdline, cfg.disk, cfg.vif, cfg.uuid) == (None, None, (), (), None)


def test_xlcfg_12_3_on_shutdown_defaults():
    cfg = _cfg('name = "d"')
    assert (cfg.on_poweroff, cfg.on_reboot, cfg.on_watchdog, cfg.on_crash,
            cfg.on_soft_reset) == (Action.DESTROY, Action.RESTART, Action.DESTROY,
                                   Action.DESTROY, Action.SOFT_RESET)


@pytest.mark.parametrize("word,action,number", [
    ("destroy", Action.DESTROY, 1), ("restart", Action.RESTART, 2),
    ("rename-restart", Action.RENAME_RESTART, 3), ("preserve", Action.PRESERVE, 4),
    ("coredump-destroy", Action.COREDUMP_DESTROY, 5),
    ("coredump-restart", Action.COREDUMP_RESTART, 6), ("soft-reset", Action.SOFT_RESET, 7),
])
@pytest.mark.parametrize("key", ["on_poweroff", "on_reboot", "on_watchdog", "on_crash",
                                 "on_soft_reset"])
def test_xlcfg_12_3_actions_and_their_numbers(key, word, action, number):
    assert getattr(_cfg(f'name = "d"\n{key} = "{word}"'), key) == action == number


def test_xlcfg_12_3_unknown_action_names_key_and_line():
    e = _error('name = "d"\n\non_crash = "reboot"\n')
    assert (e.key, e.line) == ("on_crash", 3) and "reboot" in str(e)
    assert str(e).startswith("g.cfg:3: on_crash: ")


def test_xlcfg_18_name_is_mandatory():
    assert "name must be specified" in _error("memory = 64\n").message
    assert _error('name = ""\n').key == "name"


@pytest.mark.parametrize("text,memory,maxmem", [
    ("memory = 256", 256, 256), ("maxmem = 512", 512, 512),
    ("memory = 256\nmaxmem = 512", 256, 512), ('memory = "0x100"', 256, 256),
    ("memory = 0400", 256, 256),
])
def test_xlcfg_18_memory_and_maxmem(text, memory, maxmem):
    cfg = _cfg(f'name = "d"\n{text}')
    assert (cfg.memory, cfg.maxmem) == (memory, maxmem)


def test_xlcfg_18_maxmem_below_memory_names_key_and_line():
    e = _error('name = "d"\nmemory = 512\nmaxmem = 256\n')
    assert (e.key, e.line) == ("maxmem", 3) and "512" in e.message


@pytest.mark.parametrize("text,key", [
    ("memory = 0", "memory"), ('memory = "lots"', "memory"), ("memory = 12ab", "memory"),
    ("memory = [1]", "memory"), ("vcpus = 0", "vcpus"), ("maxvcpus = 0", "maxvcpus"),
    ("cpu_weight = 0", "cpu_weight"), ("cpu_weight = 65536", "cpu_weight"),
    ('cap = "-1"', "cap"), ("cap = 65536", "cap"),
    ('max_event_channels = "-1"', "max_event_channels"),
    ('max_grant_frames = "-1"', "max_grant_frames"), ("max_maptrack_frames = 0x80000000",
                                                    "max_maptrack_frames"),
    ('uuid = "not-a-uuid"', "uuid"), ('uuid = "12345678123456781234567812345678"', "uuid"),
    ('type = "hvm2"', "type"), ('builder = "linux"', "builder"), ("kernel = ['/k']", "kernel"),
    ('disk = "/img,raw,xvda"', "disk"), ("vif = [ [''] ]", "vif"), ('cpus = "0-"', "cpus"),
    ('cpus = "^all"', "cpus"), ('cpus = "3-1"', "cpus"),
    ("memory = 99999999999999999999", "memory"),
])
def test_xlcfg_18_bad_values_name_key_and_line(text, key):
    e = _error(f'name = "d"\n#\n{text}\n')
    assert (e.key, e.line, e.filename) == (key, 3, "g.cfg")
    assert str(e).startswith(f"g.cfg:3: {key}: ")


def test_xlcfg_18_plus_equals_is_refused_for_numbers():
    e = _error('name = "d"\nmemory = 1\nmemory += 2\n')
    assert (e.key, e.line) == ("memory", 3) and "+=" in e.message


def test_xlcfg_18_vcpus_and_maxvcpus():
    assert (_cfg('name="d"\nvcpus=2').maxvcpus, _cfg('name="d"\nmaxvcpus=4').vcpus) == (2, 1)
    cfg = _cfg('name="d"\nvcpus=2\nmaxvcpus=8')
    assert (cfg.vcpus, cfg.maxvcpus) == (2, 8)
    assert "maxvcpus < vcpus" in _error('name="d"\nvcpus=4\nmaxvcpus=2').message


def test_xlcfg_18_scheduler_and_grant_limits():
    cfg = _cfg('name="d"\ncpu_weight=512\ncap=50\nmax_event_channels=4095\n'
               'max_grant_frames=32\nmax_maptrack_frames=0\nnomigrate=1\npool="p1"')
    assert (cfg.cpu_weight, cfg.cap, cfg.max_event_channels, cfg.max_grant_frames,
            cfg.max_maptrack_frames, cfg.nomigrate, cfg.pool) == (512, 50, 4095, 32, 0, True, "p1")
    assert _cfg('name="d"\nmax_event_channels=0').max_event_channels == 1023  # libxl: 0 = default


def test_xlcfg_18_type_and_deprecated_builder():
    assert [_cfg(f'name="d"\ntype="{t}"').type for t in ("pv", "pvh", "hvm")] == [
        "pv", "pvh", "hvm"]
    cfg, warnings = parse_config('name="d"\nbuilder="hvm"')
    assert cfg.type == "hvm" and "deprecated" in warnings[0]
    assert _cfg('name="d"\nbuilder="generic"\ntype="pv"').type == "pv"
    assert "contradicting" in _error('name="d"\nbuilder="generic"\ntype="hvm"').message


@pytest.mark.parametrize("text,cmdline", [
    ('root = "/dev/xvda1"\nextra = "ro quiet"', "root=/dev/xvda1 ro quiet"),
    ('root = "/dev/xvda1"', "root=/dev/xvda1"),
    ('extra = "init=counter"', "init=counter"),
    ('cmdline = "console=hvc0"', "console=hvc0"),
    ('extra = "a"\nextra += " b"', "a b"),
])
def test_xlcfg_18_cmdline_from_root_and_extra_as_xl(text, cmdline):
    assert _cfg(f'name="d"\n{text}').cmdline == cmdline


def test_xlcfg_18_cmdline_wins_over_root_and_extra_with_a_warning():
    cfg, warnings = parse_config('name="d"\nroot="/dev/xvda"\ncmdline="x"', filename="g.cfg")
    assert cfg.cmdline == "x"
    assert warnings == ["g.cfg:3: cmdline: ignoring root= and extra= in favour of cmdline="]


def test_xlcfg_18_kernel_ramdisk_uuid():
    cfg = _cfg('name="d"\nkernel="/k"\nramdisk="/r"\nuuid="0E1F8A2C-0000-4000-8000-00000000ABCD"')
    assert (cfg.kernel, cfg.ramdisk, cfg.uuid) == (
        "/k", "/r", "0e1f8a2c-0000-4000-8000-00000000abcd")


def test_xlcfg_18_cpus_string_or_per_vcpu_list_kept():
    assert _cfg('name="d"\ncpus="0-3,5,^1"').cpus == "0-3,5,^1"
    assert _cfg('name="d"\ncpus=["all", "nodes:0-1,^node:2"]').cpus == ("all", "nodes:0-1,^node:2")
    assert _cfg('name="d"\ncpus_soft="2"').cpus_soft == "2"


def test_xlcfg_18_unknown_key_warns_naming_key_and_line():
    cfg, warnings = parse_config('name="d"\n\nmemroy = 256\n', filename="g.cfg")
    assert cfg.memory == 32 and warnings == ["g.cfg:3: memroy: unknown key, ignored"]


def test_xlcfg_18_known_unsupported_keys_are_accepted_and_noted():
    cfg, warnings = parse_config('name="d"\nvfb=["vnc=1"]\npci=["01:00.0"]\nvnc=1\n')
    assert cfg.name == "d"
    assert [w.split(": ")[1] for w in warnings] == ["vfb", "pci", "vnc"]
    assert all("not supported by xenray" in w for w in warnings)


def test_xlcfg_18_device_errors_point_at_the_list_item_line():
    e = _error('name="d"\ndisk = [\n  "/a,raw,xvda",\n  "/b,raw,xvdz9x",\n]\n')
    assert (e.key, e.line) == ("disk", 4) and "xvdz9x" in e.message
    e = _error("name='d'\nvif = [ '',\n 'mac=nope' ]\n")
    assert (e.key, e.line) == ("vif", 3)


def test_xlcfg_18_device_ids_must_be_unique():
    assert "used twice" in _error('name="d"\ndisk=["/a,raw,xvda", "/b,raw,xvda"]').message
    assert "used twice" in _error("name='d'\nvif=['', 'devid=0']").message


def test_xlcfg_18_devices_in_order_with_vif_devid_by_index():
    cfg, warnings = parse_config(
        "name='d'\ndisk=['/a,raw,xvda', 'vdev=xvdb,access=ro,target=/b']\n"
        "vif=['bridge=br0', 'mac=00:16:3e:00:00:02', 'bogus=1']", filename="g.cfg")
    assert [d.vdev for d in cfg.disk] == ["xvda", "xvdb"] and not cfg.disk[1].readwrite
    assert [v.devid for v in cfg.vif] == [0, 1, 2] and cfg.vif[1].mac == "00:16:3e:00:00:02"
    assert len(warnings) == 1 and warnings[0].startswith("g.cfg:3: vif: ")


@pytest.mark.parametrize("extra,program", [
    ("init=counter", ("counter", ())),
    ("root=/dev/xvda1 init=blkbench rw=randread bs=4k", ("blkbench", ("rw=randread", "bs=4k"))),
    ("root=/dev/xvda1 ro", None),
])
def test_xlcfg_init_program_words_after_init_are_its_argv(extra, program):
    assert init_program(_cfg(f'name="d"\nextra="{extra}"').cmdline) == program


def test_xlcfg_init_program_from_root_plus_extra_and_from_cmdline():
    cfg = _cfg('name="d"\nroot="/dev/xvda1"\nextra="quiet init=pinger 10.0.0.1"')
    assert init_program(cfg.cmdline) == ("pinger", ("10.0.0.1",))
    assert init_program(_cfg('name="d"\ncmdline="init=x a"').cmdline) == ("x", ("a",))


def test_xlcfg_init_program_without_a_name_is_an_error():
    e = _error('name="d"\nextra="init= foo"\n')
    assert (e.key, e.line) == ("extra", 2)


def test_xlcfg_config_round_trips_as_plain_data():
    cfg = _cfg("name='d'\nmemory=64\nmaxmem=128\ncpus=['0','1']\non_crash='preserve'\n"
               "uuid='0e1f8a2c-0000-4000-8000-00000000abcd'\nextra='init=counter'\n"
               "disk=['/a,raw,xvda,ro']\nvif=['rate=1MB/s@20ms,mac=00:16:3e:00:00:01']\n")
    data = cfg.to_dict()
    assert msgpack.unpackb(msgpack.packb(data)) == data  # plain data only
    assert data["on_crash"] == "preserve"
    assert DomainConfig.from_dict(msgpack.unpackb(msgpack.packb(data))) == cfg


def test_xlcfg_load_config_errors_are_xlcfg_errors(tmp_path):
    with pytest.raises(XlCfgError) as e:
        load_config(tmp_path / "missing.cfg")
    assert "unable to open" in str(e.value)
    bad = tmp_path / "bad.cfg"
    bad.write_bytes(b'name = "d"\nextra = "\xff"\n')
    with pytest.raises(XlCfgError) as e:
        load_config(bad)
    assert e.value.line == 2


_GOOD = {
    "name": ["'d'"], "memory": ["64", "'0x40'"], "maxmem": ["128"], "vcpus": ["2"],
    "maxvcpus": ["4"], "type": ["'pv'", "'hvm'"], "builder": ["'generic'"],
    "disk": ["['/a,raw,xvda']", "['vdev=xvdb,target=/b', '/c,,hdc,cdrom']"],
    "vif": ["['']", "['bridge=br0,rate=1MB/s', 'mac=00:16:3e:00:00:01']"],
    "on_crash": ["'preserve'"], "uuid": ["'0e1f8a2c-0000-4000-8000-00000000abcd'"],
    "cpus": ["'0-3'", "['all', '1']"], "cpu_weight": ["512"], "cap": ["0"],
    "extra": ["'init=counter x'"], "root": ["'/dev/xvda1'"], "cmdline": ["'quiet'"],
    "vfb": ["['vnc=1']"], "max_event_channels": ["0"], "nomigrate": ["1"], "bogus": ["1"],
}
_ATOMS = st.one_of(st.integers(-2**70, 2**70).map(str),
                   st.sampled_from(["0x1f", "017", "08", "0x"]),
                   st.text(max_size=30).map(repr))
_GARBAGE = st.recursive(_ATOMS, lambda inner: st.lists(inner, max_size=4).map(
    lambda items: "[" + ", ".join(items) + "]"), max_leaves=8)
_SETTING = st.sampled_from(sorted(_GOOD)).flatmap(lambda key: st.tuples(
    st.just(key), st.sampled_from(["=", "=", "=", "+="]),
    st.sampled_from(_GOOD[key]) | _GARBAGE))


@given(st.lists(_SETTING, max_size=10))
def test_xlcfg_structured_garbage_only_raises_xlcfg_error(settings):
    text = "\n".join(["name = 'd'"] + [f"{k} {op} {v}" for k, op, v in settings])
    try:
        parse_config(text)
    except XlCfgError:
        pass


_PIECES = list("name=[]'\",;#\n x0v1:/+\\") + ["disk", "vif", "name", "init="]


@given(st.lists(st.sampled_from(_PIECES), max_size=60).map("".join) | st.text(max_size=80))
def test_xlcfg_arbitrary_text_only_raises_xlcfg_error(text):
    try:
        cfg, warnings = parse_config(text)
    except XlCfgError as e:
        assert str(e)
    else:
        assert cfg.name and isinstance(warnings, list)


def test_xlcfg_cpus_soft_is_checked_and_said_to_have_no_effect():
    """The schedulers here have no soft affinity: cpus_soft= is checked, with a warning
    rather than silence."""
    cfg, warnings = parse_config('name="d"\ncpus_soft="0-1"')
    assert cfg.cpus_soft == "0-1" and "no soft affinity" in warnings[0]
    assert _error('name="d"\ncpus_soft="^all"').key == "cpus_soft"
