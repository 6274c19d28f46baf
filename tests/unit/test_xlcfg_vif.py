"""Reference 18 "Vif spec" (xl-network-configuration).

The rate cases are those of Xen's own ``tools/xl/check-xl-vif-parse``.
"""


import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.xlcfg.syntax import XlCfgError
from cluster.xlcfg.vif import parse_rate, parse_vif_spec
from protocols.libxl_types import RateLimit, VifSpec


def test_xlcfg_18_vif_empty_spec_is_all_defaults():
    v = parse_vif_spec("", 0)
    assert v == VifSpec(devid=0)
    assert (v.mac, v.bridge, v.script, v.mtu, v.rate, v.backend) == (
        None, "xenbr0", "vif-bridge", 1500, None, None)


def test_xlcfg_18_vif_devid_defaults_to_index_in_list():
    assert parse_vif_spec("bridge=xenbr1", 3).devid == 3
    assert parse_vif_spec("devid=7", 3).devid == 7


def test_xlcfg_18_vif_examples_of_the_man_page():
    v = parse_vif_spec("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0", 0)
    assert (v.mac, v.model, v.bridge) == ("00:16:3e:74:3d:76", "rtl8139", "xenbr0")
    assert parse_vif_spec("mac=00:16:3e:5f:48:e4,bridge=xenbr1", 1).bridge == "xenbr1"


def test_xlcfg_18_vif_every_key():
    v = parse_vif_spec("mac=0:16:3e:1:2:3, bridge=br1, ip=10.0.0.2 10.0.0.3, gatewaydev=eth0, "
                       "type=ioemu, model=e1000, vifname=guestnet, script=vif-route, "
                       "backend=netdom, rate=1MB/s@20ms, devid=4, mtu=9000, vlan=10, trusted",
                       0)
    assert v == VifSpec(devid=4, mac="00:16:3e:01:02:03", bridge="br1",
                        ip="10.0.0.2 10.0.0.3", gatewaydev="eth0", type="ioemu",
                        model="e1000", vifname="guestnet", script="vif-route",
                        backend="netdom", rate=RateLimit(20_000, 20_000), mtu=9000, vlan="10",
                        trusted=True)


def test_xlcfg_18_vif_empty_items_vanish_as_with_strtok():
    assert parse_vif_spec(",,bridge=br2,,", 0).bridge == "br2"


def test_xlcfg_18_vif_later_key_wins():
    assert parse_vif_spec("bridge=a,bridge=b", 0).bridge == "b"


def test_xlcfg_18_vif_trusted_untrusted():
    assert parse_vif_spec("trusted", 0).trusted is True
    assert parse_vif_spec("untrusted", 0).trusted is False
    assert parse_vif_spec("", 0).trusted is None


def test_xlcfg_18_vif_vifname_defaults_to_vif_domid_devid():
    assert parse_vif_spec("", 2).ifname(domid=7) == "vif7.2"
    assert parse_vif_spec("vifname=mine", 2).ifname(domid=7) == "mine"


def test_xlcfg_18_vif_unknown_keys_warn_as_xl_create_does():
    notes: list[str] = []
    v = parse_vif_spec("bridge=br0,colour=blue,accel=x,colo_compare_out=y,loose", 0,
                       warnings=notes)
    assert v.bridge == "br0" and len(notes) == 4
    assert "colour=blue" in notes[0] and "accel" in notes[1] and "loose" in notes[3]


def test_xlcfg_18_vif_netdev_is_a_deprecated_gatewaydev():
    notes: list[str] = []
    assert parse_vif_spec("netdev=eth1", 0, warnings=notes).gatewaydev == "eth1"
    assert "deprecated" in notes[0]


@pytest.mark.parametrize("spec", [
    "mac=00:16:3e:00:00", "mac=00:16:3e:00:00:100", "mac=zz:16:3e:00:00:01", "mac=",
    "type=e1000", "ip=10.0.0.256", "ip=fe80::1", "ip=", "devid=-1", "devid=x", "mtu=0",
    "mtu=65536", "mtu=1e3", "rate=10MB", "vlan=0", "vlan=4095", "vlan=20-10", "vlan=10/20",
    "vlan=10p/20p", "vlan=abc", "vlan=100+10x400",
])
def test_xlcfg_18_vif_bad_values_raise_naming_the_spec(spec):
    with pytest.raises(XlCfgError) as e:
        parse_vif_spec(spec, 0)
    assert f"`{spec}'" in e.value.message


@pytest.mark.parametrize("vlan", ["10", "10u", "10p/20", "10p/100+10x4", "10p/20-30u", "4094"])
def test_xlcfg_18_vif_vlan_grammar(vlan):
    assert parse_vif_spec(f"vlan={vlan}", 0).vlan == vlan


@pytest.mark.parametrize("rate,per_interval,usecs", [
    ("16000000b/s", 100_000, 50_000), ("16000000b/s@50ms", 100_000, 50_000),
    ("2000000B/s", 100_000, 50_000), ("2000000B/s@50ms", 100_000, 50_000),
    ("16Kb/s", 100, 50_000), ("2KB/s@50ms", 100, 50_000),
    ("16Mb/s", 100_000, 50_000), ("2MB/s@50ms", 100_000, 50_000),
    ("8Gb/s", 50_000_000, 50_000), ("1GB/s@50ms", 50_000_000, 50_000),
    ("80Mb/s@1s", 10_000_000, 1_000_000), ("10MB/s@1s", 10_000_000, 1_000_000),
    ("1MB/s@20ms", 20_000, 20_000), ("10Mb/s", 62_500, 50_000), ("1MB/s@20000us", 20_000, 20_000),
    ("010MB/s", 400_000, 50_000),  # strtoull(..., 0): a leading 0 is octal
])
def test_xlcfg_18_vif_rate_as_check_xl_vif_parse(rate, per_interval, usecs):
    assert parse_rate(rate) == RateLimit(per_interval, usecs)


@pytest.mark.parametrize("rate", [
    "foo", "10MB", "10MB/m", "10ZB", "10ZB/s", "10ZB/m", "4294967296b/s", "4294967296Kb/s",
    "4294967296Mb/s", "4294967296Gb/s", "0B/s", "10Mb/s@foo", "10Mb/s@10h", "10MB/s@foo",
    "10MB/s@10h", "1B/s@4294967296us", "1B/s@4294968ms", "1B/s@4295s", "1B/s@0us",
    "4294967295GB/s@5us", "4296MB/s@4294s", "@", "",
])
def test_xlcfg_18_vif_bad_rates_as_check_xl_vif_parse(rate):
    with pytest.raises(XlCfgError):
        parse_rate(rate)


def test_xlcfg_18_vif_rate_xenstore_form_is_bytes_comma_usec():
    assert parse_vif_spec("rate=10Mb/s", 0).rate.xenstore == "62500,50000"


def test_xlcfg_18_vif_with_mac_and_round_trip_as_plain_data():
    v = parse_vif_spec("rate=1MB/s@20ms,vlan=10,untrusted", 1).with_mac("00:16:3e:00:00:01")
    assert v.mac == "00:16:3e:00:00:01"
    assert VifSpec.from_dict(v.to_dict()) == v


_PIECES = ["mac=", "00:16:3e:00:00:01", "rate=", "10Mb/s", "@", "20ms", "ip=", "10.0.0.1",
           "devid=", "mtu=", "1500", "vlan=", "10p/20", ",", " ", "=", "trusted", "bridge=br0",
           "type=", "vif", "x"]


@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join) | st.text(max_size=40))
def test_xlcfg_18_vif_any_spec_parses_or_raises_xlcfg_error(spec):
    try:
        v = parse_vif_spec(spec, 0, warnings=[])
    except XlCfgError as e:
        assert f"`{spec}'" in e.message
    else:
        assert v.devid >= 0
