"""The domain configuration libxl consumes: ``libxl_domain_config`` and its devices.

``tools/libs/light/libxl_types.idl`` declares these types once for every libxl caller; here
:class:`DomainConfig`, :class:`DiskSpec` (``libxl_device_disk``), :class:`VifSpec`
(``libxl_device_nic``), :class:`RateLimit` and :class:`Action` (``libxl_action_on_shutdown``)
are what the xl.cfg parser (``cluster.xlcfg``) produces and the toolstack (``actors.toolstack``)
builds domains from, so neither depends on the other. Each is immutable plain data with
``to_dict``/``from_dict`` (it crosses the transport as msgpack), with libxl's defaults.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from protocols.netif import DEFAULT_MTU

DOMAIN_TYPES = ("pv", "pvh", "hvm")
DEFAULT_MEMORY_MIB = 32  # libxl: max_memkb 32 * 1024 when neither memory nor maxmem is set
DEFAULT_MAX_GRANT_FRAMES = 64
DEFAULT_MAX_MAPTRACK_FRAMES = 1024
DEFAULT_MAX_EVENT_CHANNELS = 1023
XENRAY_FORMATS = ("raw", "empty")  # what xenray's blkback can serve
DEFAULT_BRIDGE = "xenbr0"
DEFAULT_SCRIPT = "vif-bridge"


class Action(enum.IntEnum):
    """``libxl_action_on_shutdown`` (reference 12.3); :attr:`xl_name` is the xl.cfg word."""

    DESTROY = 1
    RESTART = 2
    RENAME_RESTART = 3
    PRESERVE = 4
    COREDUMP_DESTROY = 5
    COREDUMP_RESTART = 6
    SOFT_RESET = 7

    @property
    def xl_name(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_xl_name(cls, name: str) -> Action:
        for action in cls:
            if action.xl_name == name:
                return action
        raise ValueError(name)


ON_SHUTDOWN_DEFAULTS = {"on_poweroff": Action.DESTROY, "on_reboot": Action.RESTART,
                        "on_watchdog": Action.DESTROY, "on_crash": Action.DESTROY,
                        "on_soft_reset": Action.SOFT_RESET}


@dataclasses.dataclass(frozen=True, slots=True)
class DiskSpec:
    """One parsed disk spec: libxl's ``libxl_device_disk`` as ``xlu_disk_parse`` fills it.

    ``target`` is None when the spec has none (an empty cdrom drive); ``backend`` None means
    dom0; tri-state flags (``discard``, ``trusted``) are None when the spec leaves them to
    the default.
    """

    vdev: str
    devid: int
    target: str | None = None
    format: str = "raw"
    readwrite: bool = True
    is_cdrom: bool = False
    removable: bool = False
    backend: str | None = None
    backendtype: str | None = None
    script: str | None = None
    specification: str | None = None
    direct_io_safe: bool = False
    discard: bool | None = None
    trusted: bool | None = None

    @property
    def mode(self) -> str:
        """The backend's xenstore ``mode`` node: "w" or "r" (reference 8.3)."""
        return "w" if self.readwrite else "r"

    @property
    def device_type(self) -> str:
        """The ``device-type`` xenstore node: "cdrom" or "disk"."""
        return "cdrom" if self.is_cdrom else "disk"

    def unsupported_reason(self) -> str | None:
        """Why xenray cannot attach this disk (checked by ``create``), or None."""
        if self.format not in XENRAY_FORMATS:
            return (f"disk {self.vdev}: format `{self.format}' is not supported by xenray "
                    f"(only raw images and devices)")
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiskSpec:
        return cls(**data)


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimit:
    """A credit-based rate: ``bytes_per_interval`` refilled every ``interval_usecs``."""

    bytes_per_interval: int
    interval_usecs: int

    @property
    def xenstore(self) -> str:
        """The backend's ``rate`` node, as ``libxl_nic.c`` writes it: "bytes,usec"."""
        return f"{self.bytes_per_interval},{self.interval_usecs}"


@dataclasses.dataclass(frozen=True, slots=True)
class VifSpec:
    """One parsed vif: libxl's ``libxl_device_nic`` as xl fills it.

    ``mac`` None means "generate one at create"; ``vifname`` None means ``vif<domid>.<devid>``
    (:meth:`ifname`); ``backend`` None means dom0; ``trusted`` None leaves it to the default.
    """

    devid: int
    mac: str | None = None
    bridge: str = DEFAULT_BRIDGE
    ip: str | None = None
    gatewaydev: str | None = None
    type: str | None = None
    model: str | None = None
    vifname: str | None = None
    script: str = DEFAULT_SCRIPT
    backend: str | None = None
    rate: RateLimit | None = None
    mtu: int = DEFAULT_MTU
    vlan: str | None = None
    trusted: bool | None = None

    def ifname(self, domid: int) -> str:
        """The backend interface name: ``vifname`` or ``vif<domid>.<devid>``."""
        return self.vifname or f"vif{domid}.{self.devid}"

    def with_mac(self, mac: str) -> VifSpec:
        """This vif with the MAC chosen at create time (:func:`protocols.netif.xen_mac`)."""
        return dataclasses.replace(self, mac=mac)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VifSpec:
        rate = data.get("rate")
        return cls(**{**data, "rate": RateLimit(**rate) if rate is not None else None})


@dataclasses.dataclass(frozen=True)
class DomainConfig:
    """A domain's configuration, as read from its xl.cfg file (immutable).

    Sizes are MiB. ``text`` and ``filename`` keep the file as given, for ``xl config``-style
    display and so a restarted or migrated domain carries the exact config it started with.
    """

    name: str
    type: str = "pv"
    memory: int = DEFAULT_MEMORY_MIB
    maxmem: int = DEFAULT_MEMORY_MIB
    vcpus: int = 1
    maxvcpus: int = 1
    avail_vcpus: tuple[int, ...] | None = None  # libxl's bitmap; None: vCPUs 0..vcpus-1
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str | None = None
    disk: tuple[DiskSpec, ...] = ()
    vif: tuple[VifSpec, ...] = ()
    on_poweroff: Action = Action.DESTROY
    on_reboot: Action = Action.RESTART
    on_watchdog: Action = Action.DESTROY
    on_crash: Action = Action.DESTROY
    on_soft_reset: Action = Action.SOFT_RESET
    uuid: str | None = None
    cpu_weight: int = 256
    cap: int = 0
    pool: str | None = None
    cpus: str | tuple[str, ...] | None = None
    cpus_soft: str | tuple[str, ...] | None = None
    max_event_channels: int = DEFAULT_MAX_EVENT_CHANNELS
    max_grant_frames: int = DEFAULT_MAX_GRANT_FRAMES
    max_maptrack_frames: int = DEFAULT_MAX_MAPTRACK_FRAMES
    nomigrate: bool = False
    text: str = dataclasses.field(default="", repr=False)
    filename: str = "<string>"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, int, bool, None, list, dict) that :meth:`from_dict` restores."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Action):
                value = value.xl_name
            elif field.name in ("disk", "vif"):
                value = [item.to_dict() for item in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DomainConfig:
        d = dict(data)
        for key in ON_SHUTDOWN_DEFAULTS:
            d[key] = Action.from_xl_name(d[key])
        d["disk"] = tuple(DiskSpec.from_dict(x) for x in d["disk"])
        d["vif"] = tuple(VifSpec.from_dict(x) for x in d["vif"])
        for key in ("cpus", "cpus_soft", "avail_vcpus"):
            d[key] = tuple(d[key]) if isinstance(d.get(key), list) else d.get(key)
        return cls(**d)

    @property
    def online_vcpus(self) -> frozenset[int]:
        """The vCPUs that start online (``b_info.avail_vcpus``): xl.cfg's ``vcpus=`` gives
        the first ``vcpus``; a configuration libxl retrieved from a running domain (a save
        or a migration) gives the set that was online, which may have gaps."""
        if self.avail_vcpus is None:
            return frozenset(range(self.vcpus))
        return frozenset(self.avail_vcpus)
