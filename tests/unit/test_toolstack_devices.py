"""The toolstack's device checks and vif defaults (actors.toolstack): what ``create``
refuses before anything is built, and the MAC libxl would choose."""

import dataclasses
import re

import pytest

from actors.toolstack.builder import check_config
from actors.toolstack.devices import with_macs
from cluster.xlcfg import parse_config
from protocols.errno import Errno, XenError

XEN_MAC = re.compile(r"00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}")


def test_vif_without_mac_gets_one_under_xens_oui_and_keeps_it():
    cfg = parse_config('name = "n"\nvif = [ "ip=10.0.0.1", "mac=00:16:3e:01:02:03" ]\n')[0]
    given = with_macs(cfg)
    assert XEN_MAC.fullmatch(given.vif[0].mac), given.vif[0].mac
    assert given.vif[1].mac == "00:16:3e:01:02:03"
    assert with_macs(given) == given, "a config that has its MACs keeps them (reboots)"
    again = type(cfg).from_dict(given.to_dict())
    assert again.vif[0].mac == given.vif[0].mac, "the record's config carries the MAC"


def test_vif_in_a_driver_domain_is_refused_before_anything_is_built():
    cfg = parse_config('name = "n"\nvif = [ "backend=netdom" ]\n')[0]
    with pytest.raises(XenError) as e:
        check_config(cfg)
    assert e.value.errno == Errno.EOPNOTSUPP and "driver domains" in str(e.value)
    check_config(parse_config('name = "n"\nvif = [ "bridge=xenbr1" ]\n')[0])  # accepted


@pytest.mark.parametrize("avail", [(0, 3), (0, 0), (0,), (0, "2"), "02", 2, (0, -1)])
def test_an_online_vcpu_set_that_does_not_fit_the_domain_is_einval(avail):
    """A retrieved configuration (a save file's, a migration's) carries libxl's avail_vcpus:
    ``vcpus`` distinct vCPUs below maxvcpus, or EINVAL before anything is built."""
    cfg = dataclasses.replace(parse_config('name = "n"\nvcpus = 2\nmaxvcpus = 3\n')[0],
                              avail_vcpus=avail)
    with pytest.raises(XenError) as e:
        check_config(cfg)
    assert e.value.errno == Errno.EINVAL and "avail_vcpus" in str(e.value)
    gap = dataclasses.replace(cfg, avail_vcpus=(0, 2))
    check_config(gap)  # accepted, and it survives the record's round trip
    assert type(cfg).from_dict(gap.to_dict()).online_vcpus == {0, 2}
