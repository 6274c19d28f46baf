"""Reference 18 "Disk spec" (xl-disk-configuration) and the vdev encoding of 8.3.

The accepted forms are the cases of Xen's own ``tools/xl/check-xl-disk-parse``.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.xlcfg.disk import parse_disk_spec
from cluster.xlcfg.syntax import XlCfgError
from protocols.libxl_types import DiskSpec

GUEST_VOLUME = dict(target="/dev/vg/guest-volume", vdev="hda", format="raw", readwrite=True,
                    is_cdrom=False, removable=False)
ISO = dict(target="/root/image.iso", vdev="hdc", format="raw", readwrite=False, is_cdrom=True,
           removable=True)
EMPTY_CDROM = dict(target="", vdev="hdc", format="empty", readwrite=False, is_cdrom=True,
                   removable=True)


def _fields(spec: DiskSpec, names) -> dict:
    return {n: getattr(spec, n) for n in names}


@pytest.mark.parametrize("spec,expected", [
    ("/dev/vg/guest-volume,,hda", GUEST_VOLUME),
    ("/dev/vg/guest-volume,raw,hda,rw", GUEST_VOLUME),
    ("format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume", GUEST_VOLUME),
    ("raw:/dev/vg/guest-volume,hda,w", GUEST_VOLUME),
    ("/root/image.iso,,hdc,cdrom", ISO),
    ("/root/image.iso,,hdc,,cdrom", ISO),
    ("/root/image.iso,raw,hdc,devtype=cdrom", ISO),
    ("format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso", ISO),
    ("raw:/root/image.iso,hdc:cdrom,ro", ISO),
    ("devtype=cdrom,,,hdc", EMPTY_CDROM),
    (",,hdc:cdrom,r", EMPTY_CDROM),
    (",hdc:cdrom,r", EMPTY_CDROM),
    ("vdev=hdc,access=r,devtype=cdrom,target=", EMPTY_CDROM),
    (",empty,hdc:cdrom,r", EMPTY_CDROM),
    ("vdev=hdc,access=r,devtype=cdrom,format=empty", {**EMPTY_CDROM, "target": None}),
    ("vdev=hdc,access=r,devtype=cdrom", {**EMPTY_CDROM, "target": None}),
])
def test_xlcfg_18_disk_forms_of_check_xl_disk_parse(spec, expected):
    assert _fields(parse_disk_spec(spec), expected) == expected


def test_xlcfg_18_disk_example_positional_target_format_vdev_access():
    d = parse_disk_spec("/dev/vg/guest-volume,raw,xvda,rw")
    assert (d.target, d.format, d.vdev, d.readwrite, d.devid) == (
        "/dev/vg/guest-volume", "raw", "xvda", True, 51712)


def test_xlcfg_18_disk_fewer_positional_fields_take_defaults():
    d = parse_disk_spec("/img,,xvdb")
    assert (d.format, d.readwrite, d.mode, d.device_type) == ("raw", True, "w", "disk")


def test_xlcfg_18_disk_access_ro_and_r_are_read_only():
    assert not parse_disk_spec("/img,raw,xvda,ro").readwrite
    assert parse_disk_spec("access=r, vdev=xvda, target=/img").mode == "r"


def test_xlcfg_18_disk_cdrom_is_read_only_even_if_asked_rw():
    d = parse_disk_spec("/x.iso,raw,hdc,rw,cdrom")
    assert (d.readwrite, d.is_cdrom, d.device_type) == (False, True, "cdrom")


def test_xlcfg_18_disk_target_must_be_last_and_swallows_commas():
    d = parse_disk_spec("vdev=xvda, target=/images/a,b=c,d.img")
    assert d.target == "/images/a,b=c,d.img"


def test_xlcfg_18_disk_deprecated_prefixes_set_script():
    d = parse_disk_spec("iscsi:iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-"
                        "examplehost,xvda,w")
    assert d.script == "block-iscsi" and d.target.startswith("iqn.2001-05")
    assert parse_disk_spec("drbd:app01,hda,w").script == "block-drbd"
    assert parse_disk_spec("phy:/dev/sdb,xvdb,w").target == "/dev/sdb"


def test_xlcfg_18_disk_keyword_parameters():
    d = parse_disk_spec("backend=driverdom, backendtype=qdisk, script=block-foo, "
                        "specification=xen, direct-io-safe, discard, trusted, vdev=xvdc, "
                        "target=/img")
    assert (d.backend, d.backendtype, d.script, d.specification, d.direct_io_safe, d.discard,
            d.trusted) == ("driverdom", "qdisk", "block-foo", "xen", True, True, True)
    d = parse_disk_spec("no-discard,untrusted,devtype=disk,vdev=xvdc,target=/img")
    assert (d.discard, d.trusted, d.is_cdrom) == (False, False, False)


def test_xlcfg_18_disk_defaults_leave_tristates_unset():
    d = parse_disk_spec("/img,raw,xvda")
    assert (d.backend, d.backendtype, d.discard, d.trusted) == (None, None, None, None)


@pytest.mark.parametrize("fmt", ["qcow", "qcow2", "vhd", "qed"])
def test_xlcfg_18_disk_other_formats_parse_and_are_refused_only_at_create(fmt):
    d = parse_disk_spec(f"/img.{fmt},{fmt},xvda")
    assert d.format == fmt
    assert fmt in d.unsupported_reason() and "xvda" in d.unsupported_reason()
    assert parse_disk_spec("/img,raw,xvda").unsupported_reason() is None


def test_xlcfg_18_disk_colo_parameters_are_ignored_with_a_note():
    notes: list[str] = []
    d = parse_disk_spec("/img,raw,xvda,w,colo,colo-port=9000", warnings=notes)
    assert d.vdev == "xvda" and len(notes) == 2 and "colo-port=9000" in notes[1]


@pytest.mark.parametrize("vdev,devid", [
    ("xvda", 51712), ("xvdb", 51728), ("xvda1", 51713), ("xvdp15", (202 << 8) | (15 << 4) | 15),
    ("xvdq", (1 << 28) | (16 << 8)), ("xvda16", (1 << 28) | 16),
    ("sda", 8 << 8), ("sdb2", (8 << 8) | (1 << 4) | 2),
    ("d1p2", (202 << 8) | (1 << 4) | 2),
    ("hda", 3 << 8), ("hdb", (3 << 8) | (1 << 6)), ("hdc", 22 << 8),
    ("hdd1", (22 << 8) | (1 << 6) | 1),
])
def test_xlcfg_8_3_vdev_encoding(vdev, devid):
    assert parse_disk_spec(f"/img,raw,{vdev}").devid == devid


@pytest.mark.parametrize("spec,fragment", [
    ("/img,raw", "no vdev specified"),
    ("vdev=xvda", "no target specified"),
    ("/img,raw,xvda,rw,extra", "too many positional parameters"),
    ("/img,vmdk,xvda", "unknown value for format"),
    ("/img,raw,xvda,rx", "unknown value for access"),
    ("format=raw,format=qcow2,vdev=xvda,target=/i", "format respecified"),
    ("vdev=xvda,vdev=xvdb,target=/i", "vdev respecified"),
    ("/a,raw,xvda,target=/b", "target respecified"),
    ("devtype=floppy,vdev=xvda,target=/i", "unknown value for type"),
    ("backendtype=nbd,vdev=xvda,target=/i", "unknown value for backendtype"),
    ("colour=blue,vdev=xvda,target=/i", "unknown parameter"),
    ("foo:/dev/sda,xvda", "unknown deprecated disk prefix"),
    (",hdc:floppy,r", "unknown deprecated type"),
    ("/img,raw,=xvda", "bad disk syntax"),
    ("/img,raw,xvd", "invalid virtual disk name"),
    ("/img,raw,vda", "invalid virtual disk name"),
    ("/img,raw,hde", "invalid virtual disk name"),
    ("/img,raw,xvda01", "invalid virtual disk name"),
])
def test_xlcfg_18_disk_bad_specs_name_the_spec(spec, fragment):
    with pytest.raises(XlCfgError) as e:
        parse_disk_spec(spec)
    assert fragment in e.value.message and f"`{spec}'" in e.value.message


def test_xlcfg_18_disk_round_trips_as_plain_data():
    d = parse_disk_spec("format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/x.iso")
    assert DiskSpec.from_dict(d.to_dict()) == d


_PIECES = ["/img", ",", "raw", "qcow2", "xvda", "hdc", "sda1", "rw", "ro", "cdrom", "=", ":",
           "target=", "vdev=", "format=", "access=", "devtype=", "phy:", "iscsi:", "foo:", " ",
           "discard", "backend=", "colo", "x"]


@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join) | st.text(max_size=40))
def test_xlcfg_18_disk_any_spec_parses_or_raises_xlcfg_error(spec):
    try:
        d = parse_disk_spec(spec, warnings=[])
    except XlCfgError as e:
        assert f"`{spec}'" in e.message
    else:
        assert d.vdev and isinstance(d.devid, int)
