"""The PV start-info page (``struct start_info``, ``xen/include/public/xen.h``).

The domain builder writes it into the new guest's memory before the first unpause; the PV
kernel reads it first thing to find its xenstore and console rings, their event channels and
its command line. x86_64 layout (offsets checked against the header):

    magic[32] @0, nr_pages @32, shared_info @40, flags u32 @48, store_mfn @56,
    store_evtchn u32 @64, console.domU.mfn @72, console.domU.evtchn u32 @80,
    pt_base @88, nr_pt_frames @96, mfn_list @104, mod_start @112, mod_len @120,
    cmd_line[1024] @128, first_p2m_pfn @1152, nr_p2m_frames @1160; 1168 bytes.
"""

from __future__ import annotations

import dataclasses
import struct

from protocols.errno import Errno, XenError

MAGIC = b"xen-3.0-x86_64"
MAX_GUEST_CMDLINE = 1024
SIZE = 1168

SIF_PRIVILEGED = 1 << 0
SIF_INITDOMAIN = 1 << 1

_HEAD = struct.Struct("<32sQQI4xQI4xQI4xQQQQQ")  # through mod_len: 128 bytes
_TAIL = struct.Struct("<QQ")  # first_p2m_pfn, nr_p2m_frames @1152
assert _HEAD.size == 128


@dataclasses.dataclass(frozen=True, slots=True)
class StartInfo:
    """``struct start_info``: what a PV guest kernel boots from."""

    nr_pages: int
    shared_info: int  # machine address of the shared-info page
    flags: int
    store_mfn: int
    store_evtchn: int
    console_mfn: int
    console_evtchn: int
    cmd_line: str = ""
    magic: bytes = MAGIC
    pt_base: int = 0
    nr_pt_frames: int = 0
    mfn_list: int = 0
    mod_start: int = 0
    mod_len: int = 0
    first_p2m_pfn: int = 0
    nr_p2m_frames: int = 0

    def pack(self) -> bytes:
        cmd = self.cmd_line.encode()
        if len(cmd) >= MAX_GUEST_CMDLINE:
            raise XenError(Errno.E2BIG, f"command line longer than {MAX_GUEST_CMDLINE - 1} bytes")
        head = _HEAD.pack(self.magic, self.nr_pages, self.shared_info, self.flags,
                          self.store_mfn, self.store_evtchn, self.console_mfn,
                          self.console_evtchn, self.pt_base, self.nr_pt_frames, self.mfn_list,
                          self.mod_start, self.mod_len)
        return head + cmd.ljust(MAX_GUEST_CMDLINE, b"\0") + _TAIL.pack(
            self.first_p2m_pfn, self.nr_p2m_frames)

    @classmethod
    def unpack(cls, data: bytes) -> StartInfo:
        if len(data) < SIZE:
            raise XenError(Errno.EINVAL, f"start_info needs {SIZE} bytes, got {len(data)}")
        (magic, nr_pages, shared_info, flags, store_mfn, store_evtchn, console_mfn,
         console_evtchn, pt_base, nr_pt_frames, mfn_list, mod_start,
         mod_len) = _HEAD.unpack_from(data, 0)
        if not magic.startswith(b"xen-"):
            raise XenError(Errno.EINVAL, "start_info magic is not xen-*")
        raw = bytes(data[128:128 + MAX_GUEST_CMDLINE]).split(b"\0", 1)[0]
        try:
            cmd_line = raw.decode()
        except UnicodeDecodeError as e:
            raise XenError(Errno.EINVAL, "command line is not UTF-8") from e
        first_p2m_pfn, nr_p2m_frames = _TAIL.unpack_from(data, 1152)
        return cls(nr_pages=nr_pages, shared_info=shared_info, flags=flags,
                   store_mfn=store_mfn, store_evtchn=store_evtchn, console_mfn=console_mfn,
                   console_evtchn=console_evtchn, cmd_line=cmd_line,
                   magic=magic.rstrip(b"\0"), pt_base=pt_base, nr_pt_frames=nr_pt_frames,
                   mfn_list=mfn_list, mod_start=mod_start, mod_len=mod_len,
                   first_p2m_pfn=first_p2m_pfn, nr_p2m_frames=nr_p2m_frames)
