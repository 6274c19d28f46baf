"""xl.cfg into a :class:`protocols.libxl_types.DomainConfig`: xl's ``parse_config_data`` for the
keys xenray acts on.

``tools/xl/xl_parse.c`` reads each key of a parsed file into libxl's domain config; this
module does the same for the keys of reference section 18 that xenray implements, with xl's
and libxl's defaults and rules:

* ``name`` is mandatory. ``type`` is pv (the x86 default), pvh or hvm; the deprecated
  ``builder`` ("generic" = pv, "hvm") must agree with it. (xl also takes a prefix of a type
  name, so ``type="h"`` is hvm; xenray wants the whole name.)
* ``memory`` and ``maxmem`` are MiB. Neither given: 32 MiB (``libxl_create.c``); one given:
  the other follows it. ``maxmem`` below ``memory`` is refused here, before the domain is
  built. ``vcpus`` defaults to 1 and ``maxvcpus`` to ``vcpus``; ``maxvcpus < vcpus`` is xl's
  own "maxvcpus < vcpus" error.
* ``cmdline`` wins over ``root``/``extra`` (with xl's warning); otherwise the command line is
  ``root=<root> <extra>``, ``root=<root>`` or ``<extra>``.
* ``on_*`` take the ``libxl_action_on_shutdown`` names (reference 12.3).
* ``cpu_weight`` 1..65535 (default 256) and ``cap`` 0..65535 (0 = none) are the credit
  scheduler's u16 fields; ``max_event_channels`` defaults to 1023 (0 also means the default,
  as in libxl); ``max_grant_frames`` / ``max_maptrack_frames`` default to Xen's 64 / 1024.
* ``kernel`` is optional: xenray guests are named by ``init=`` on the command line
  (:func:`actors.guest.api.init_program`), where xl would insist on a kernel or bootloader.

xl silently ignores keys it does not know. xenray warns instead, naming the key and line, so
a typo (``memroy``) is not lost; keys xl knows but xenray does not implement (``vfb``,
``pci``, ``vnc``, the HVM and PVH options, ...) are accepted with an "ignored" warning.
"""

from __future__ import annotations

import pathlib
import re
import uuid as uuidlib
from typing import Any

from actors.guest.api import init_program
from cluster.xlcfg.disk import parse_disk_spec
from cluster.xlcfg.syntax import Atom, ConfigFile, ListValue, XlCfgError, c_strtol, parse
from cluster.xlcfg.vif import parse_vif_spec
from protocols.cpumap import check_cpulist
from protocols.libxl_types import (DEFAULT_MAX_EVENT_CHANNELS, DEFAULT_MEMORY_MIB, DOMAIN_TYPES,
                                   ON_SHUTDOWN_DEFAULTS, Action, DiskSpec, DomainConfig, VifSpec)

_LONG_MAX = (1 << 63) - 1
_U16_MAX = 65535
_U32_MAX = (1 << 32) - 1
_INT_MAX = (1 << 31) - 1
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")

SUPPORTED_KEYS = frozenset("""
    name type builder memory maxmem vcpus maxvcpus cpus cpus_soft cpu_weight cap pool
    kernel ramdisk cmdline root extra uuid max_grant_frames max_maptrack_frames
    max_event_channels nomigrate disk vif""".split()) | frozenset(ON_SHUTDOWN_DEFAULTS)

# Keys xl reads (xl.cfg.5, xl_parse.c) that xenray accepts and ignores.
KNOWN_UNSUPPORTED_KEYS = frozenset("""
    bootloader bootloader_args firmware seclabel init_seclabel max_grant_version
    driver_domain hap oos period slice latency extratime vuart vnuma e820_host device_tree
    claim_mode vfb vnc vncdisplay vnclisten vncpasswd vncunused vncviewer sdl opengl display
    xauthority keymap channel vtpm p9 pvcalls vkb vsnd vdispl usbctrl usbdev pci virtio
    pci_msitranslate pci_power_mgmt pci_permissive pci_seize rdm dtdev passthrough iomem
    ioports irqs vif2 cpuid boot acpi apic viridian serial usb usbversion usbdevice soundhw
    videoram stdvga vga device_model_version device_model_override device_model
    device_model_stubdomain_override device_model_stubdomain_seclabel device_model_user
    device_model_args device_model_args_pv device_model_args_hvm stubdomain_kernel
    stubdomain_ramdisk stubdomain_memory tsc_mode localtime rtc_timeoffset xen_platform_pci
    shadow_memory pvshim pvshim_path pvshim_cmdline pvshim_extra timer_mode nestedhvm
    firmware_override bios_path_override bios pae acpi_s3 acpi_s4 acpi_laptop_slate nx hpet
    vpt_align mmio_hole altp2m altp2mhvm smbios_firmware acpi_firmware ms_vm_genid
    rdm_mem_boundary mca_caps vmtrace_buf_kb dm_restrict hdtype spice spiceport
    spicetls_port spicehost spicedisable_ticketing spicepasswd spiceagent_mouse spicevdagent
    spice_clipboard_sharing spiceusbredirection spice_image_compression
    spice_streaming_video nographic gfx_passthru vkb_device vendor_device gic_version tee
    xend_suspend_evtchn_compat msr_relaxed vpmu llc_colors trap_unmapped_accesses""".split())


def parse_config(text: str, *, filename: str = "<string>") -> tuple[DomainConfig, list[str]]:
    """Parse and check an xl.cfg file; returns the config and warnings ("FILE:LINE: ...").

    Raises :class:`XlCfgError` naming the file, line and key of the first bad value.
    """
    return _Reader(parse(text, filename=filename)).config()


def load_config(path: str | pathlib.Path) -> tuple[DomainConfig, list[str]]:
    """:func:`parse_config` on a file."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise XlCfgError(f"unable to open configuration file: {e.strerror}",
                         filename=str(path)) from None
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise XlCfgError("file is not valid UTF-8", filename=str(path),
                         line=data.count(b"\n", 0, e.start) + 1) from None
    return parse_config(text, filename=str(path))


class _Reader:
    """Reads typed values out of a :class:`ConfigFile`, locating every error and warning."""

    def __init__(self, cfg: ConfigFile) -> None:
        self.cfg = cfg
        self.warnings: list[str] = []

    def error(self, key: str, message: str) -> XlCfgError:
        setting = self.cfg.get(key)
        return XlCfgError(message, filename=self.cfg.filename, key=key,
                          line=setting.line if setting else None)

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(str(self.error(key, message)))

    def string(self, key: str) -> str | None:
        setting = self.cfg.get(key)
        if setting is None:
            return None
        if not isinstance(setting.value, Atom):
            raise self.error(key, "is a list but should be a single value")
        return setting.value.text

    def integer(self, key: str, lo: int, hi: int) -> int | None:
        text = self.string(key)
        if text is None:
            return None
        if self.cfg.settings[key].op == "+=":
            raise self.error(key, "can't use += with numbers")
        try:
            value = c_strtol(text)
        except ValueError as e:
            raise self.error(key, f"`{text}' {e}") from None
        if not lo <= value <= hi:
            raise self.error(key, f"value `{value}' is out of range {lo}..{hi}")
        return value

    def items(self, key: str) -> list[Atom]:
        setting = self.cfg.get(key)
        if setting is None:
            return []
        if not isinstance(setting.value, ListValue):
            raise self.error(key, "is a single value but should be a list")
        atoms = [item for item in setting.value.items if isinstance(item, Atom)]
        if len(atoms) != len(setting.value.items):
            raise self.error(key, "list items must be strings, not lists")
        return atoms

    def config(self) -> tuple[DomainConfig, list[str]]:
        for key in self.cfg.settings:
            if key in KNOWN_UNSUPPORTED_KEYS:
                self.warn(key, "is not supported by xenray and is ignored")
            elif key not in SUPPORTED_KEYS:
                self.warn(key, "unknown key, ignored")
        if "cpus_soft" in self.cfg.settings:
            self.warn("cpus_soft", "is checked but has no effect: xenray's schedulers have "
                                   "no soft affinity")
        name = self.string("name")
        if not name:
            raise self.error("name", "domain name must be specified")
        memory, maxmem = self.memory()
        vcpus = self.integer("vcpus", 1, _INT_MAX) or 1
        maxvcpus = self.integer("maxvcpus", 1, _INT_MAX) or vcpus
        if maxvcpus < vcpus:
            raise self.error("maxvcpus", f"maxvcpus < vcpus ({maxvcpus} < {vcpus})")
        fields: dict[str, Any] = {
            "name": name, "type": self.domain_type(), "memory": memory, "maxmem": maxmem,
            "vcpus": vcpus, "maxvcpus": maxvcpus, "kernel": self.string("kernel"),
            "ramdisk": self.string("ramdisk"), "cmdline": self.cmdline(),
            "disk": self.disks(), "vif": self.vifs(), "uuid": self.uuid(),
            "pool": self.string("pool"), "cpus": self.cpus("cpus"),
            "cpus_soft": self.cpus("cpus_soft"), "text": self.cfg.text,
            "filename": self.cfg.filename,
            "nomigrate": bool(self.integer("nomigrate", -_LONG_MAX - 1, _LONG_MAX)),
            "max_event_channels": (self.integer("max_event_channels", 0, _U32_MAX)
                                   or DEFAULT_MAX_EVENT_CHANNELS)}
        for key, lo, hi in (("cpu_weight", 1, _U16_MAX), ("cap", 0, _U16_MAX),
                            ("max_grant_frames", 0, _INT_MAX),
                            ("max_maptrack_frames", 0, _INT_MAX)):
            value = self.integer(key, lo, hi)
            if value is not None:
                fields[key] = value
        for key, default in ON_SHUTDOWN_DEFAULTS.items():
            word = self.string(key)
            try:
                fields[key] = default if word is None else Action.from_xl_name(word)
            except ValueError:
                raise self.error(key, f"unknown action `{word}' (want one of "
                                      f"{', '.join(a.xl_name for a in Action)})") from None
        config = DomainConfig(**fields)
        self.check_init(config)
        return config, self.warnings

    def memory(self) -> tuple[int, int]:
        memory = self.integer("memory", 1, _LONG_MAX // 1024)
        maxmem = self.integer("maxmem", 1, _LONG_MAX // 1024)
        memory = memory or maxmem or DEFAULT_MEMORY_MIB
        maxmem = maxmem or memory
        if maxmem < memory:
            raise self.error("maxmem", f"maxmem must be >= memory ({maxmem} < {memory})")
        return memory, maxmem

    def domain_type(self) -> str:
        kind = self.string("type")
        if kind is not None and kind not in DOMAIN_TYPES:
            raise self.error("type", f"invalid domain type `{kind}' (want pv, pvh or hvm)")
        builder = self.string("builder")
        if builder is None:
            return kind or "pv"
        built = {"generic": "pv", "hvm": "hvm"}.get(builder)
        if built is None:
            raise self.error("builder", f"invalid domain type `{builder}'")
        if kind is not None and kind != built:
            raise self.error("builder", "contradicting \"builder\" and \"type\" options")
        self.warn("builder", "is deprecated since Xen 4.10, use type=")
        return built

    def cmdline(self) -> str | None:
        """xl's ``parse_cmdline``."""
        cmdline, root, extra = (self.string(k) for k in ("cmdline", "root", "extra"))
        if cmdline is not None:
            if root is not None or extra is not None:
                self.warn("cmdline", "ignoring root= and extra= in favour of cmdline=")
            return cmdline
        if root is not None:
            return f"root={root} {extra}" if extra is not None else f"root={root}"
        return extra

    def uuid(self) -> str | None:
        text = self.string("uuid")
        if text is not None and not _UUID.fullmatch(text):
            raise self.error("uuid", f"failed to parse UUID `{text}' "
                                     "(want xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
        return str(uuidlib.UUID(text)) if text is not None else None

    def cpus(self, key: str) -> str | tuple[str, ...] | None:
        """A cpu list ("all", "0-3,5,^1", "nodes:0-1") or a list of them, one per vcpu."""
        setting = self.cfg.get(key)
        if setting is None:
            return None
        items = [setting.value] if isinstance(setting.value, Atom) else self.items(key)
        for item in items:
            try:
                check_cpulist(item.text)
            except ValueError as e:
                raise self.error(key, str(e)) from None
        if isinstance(setting.value, Atom):
            return setting.value.text
        return tuple(item.text for item in items)

    def disks(self) -> tuple[DiskSpec, ...]:
        disks: list[DiskSpec] = []
        for item in self.items("disk"):
            notes: list[str] = []
            try:
                spec = parse_disk_spec(item.text, warnings=notes)
            except XlCfgError as e:
                raise self.item_error("disk", item, e) from None
            if any(d.devid == spec.devid for d in disks):
                raise self.item_error("disk", item, XlCfgError(
                    f"vdev `{spec.vdev}' (devid {spec.devid}) is used twice"))
            disks.append(spec)
            self.notes("disk", item, notes)
        return tuple(disks)

    def vifs(self) -> tuple[VifSpec, ...]:
        vifs: list[VifSpec] = []
        for index, item in enumerate(self.items("vif")):
            notes: list[str] = []
            try:
                spec = parse_vif_spec(item.text, index, warnings=notes)
            except XlCfgError as e:
                raise self.item_error("vif", item, e) from None
            if any(v.devid == spec.devid for v in vifs):
                raise self.item_error("vif", item, XlCfgError(f"devid {spec.devid} is used twice"))
            vifs.append(spec)
            self.notes("vif", item, notes)
        return tuple(vifs)

    def item_error(self, key: str, item: Atom, e: XlCfgError) -> XlCfgError:
        return e.located(filename=self.cfg.filename, line=item.line, key=key)

    def notes(self, key: str, item: Atom, notes: list[str]) -> None:
        self.warnings.extend(str(XlCfgError(n, filename=self.cfg.filename, line=item.line,
                                            key=key)) for n in notes)

    def check_init(self, config: DomainConfig) -> None:
        init = init_program(config.cmdline)
        if init is not None and not init[0]:
            key = "cmdline" if self.cfg.get("cmdline") else "extra"
            raise self.error(key, "`init=' names no program")
