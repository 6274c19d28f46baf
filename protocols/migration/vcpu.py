"""``struct vcpu_guest_context`` for a 64-bit PV guest (x86_64 layout).

From ``xen/include/public/arch-x86/xen.h`` (the struct and the ``VGCF_*`` flags) and
``arch-x86/xen-x86_64.h`` (``struct cpu_user_regs``, ``struct trap_info``). It is what
``XEN_DOMCTL_getvcpucontext`` returns and what the libxc stream carries in an
X86_PV_VCPU_BASIC record (``tools/libs/guest/xg_sr_save_x86_pv.c``
``write_one_vcpu_basic``). Offsets (checked against the header; 5168 bytes in all)::

    fpu_ctxt[512] @0        flags @512
    user_regs @520 (200 bytes): r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi
        (u64 each, @520..640), error_code u32 @640, entry_vector u32 @644, rip @648,
        cs u16 @656 (+2 pad), saved_upcall_mask u8 @660 (+3 pad), rflags @664, rsp @672,
        ss @680 es @688 ds @696 fs @704 gs @712 (u16 each + 6 pad)
    trap_ctxt[256] @720 (struct trap_info: u8 vector, u8 flags, u16 cs, 4 pad, u64 address)
    ldt_base @4816  ldt_ents @4824  gdt_frames[16] @4832  gdt_ents @4960
    kernel_ss @4968  kernel_sp @4976  ctrlreg[8] @4984  debugreg[8] @5048
    event_callback_eip @5112  failsafe_callback_eip @5120  syscall_callback_eip @5128
    vm_assist @5136  fs_base @5144  gs_base_kernel @5152  gs_base_user @5160

Every byte round-trips: the FPU block and the virtual IDT are kept as raw bytes, and the
padding inside ``cpu_user_regs`` is kept in ``user_pad`` (Xen writes zeroes there).
"""

from __future__ import annotations

import dataclasses
import struct

from protocols.errno import Errno, XenError

# VGCF_* (arch-x86/xen.h)
VGCF_I387_VALID = 1 << 0
VGCF_IN_KERNEL = 1 << 2
VGCF_FAILSAFE_DISABLES_EVENTS = 1 << 3
VGCF_SYSCALL_DISABLES_EVENTS = 1 << 4
VGCF_ONLINE = 1 << 5

SIZE = 5168
FPU_SIZE = 512
TRAP_CTXT_SIZE = 256 * 16
USER_PAD_SIZE = 2 + 3 + 5 * 6  # cs, saved_upcall_mask, ss..gs

GPRS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
        "rax", "rcx", "rdx", "rsi", "rdi")

_STRUCT = struct.Struct(
    "<512sQ"                      # fpu_ctxt, flags
    "15QIIQ"                      # user_regs: GPRs, error_code, entry_vector, rip
    "H2sB3sQQ"                    # cs, _pad0, saved_upcall_mask, _pad1, rflags, rsp
    "H6sH6sH6sH6sH6s"             # ss es ds fs gs with their padding
    "4096s"                       # trap_ctxt[256]
    "QQ16QQQQ8Q8QQQQQQQQ")        # ldt_base .. gs_base_user
assert _STRUCT.size == SIZE
_TRAP = struct.Struct("<BBH4xQ")


@dataclasses.dataclass(frozen=True, slots=True)
class TrapInfo:
    """``struct trap_info``: one virtual IDT entry (``HYPERVISOR_set_trap_table``)."""

    vector: int
    flags: int  # bits 0-1 DPL, bit 2: clear the event mask on entry
    cs: int
    address: int


def _u64_tuple(value, n: int, name: str) -> tuple[int, ...]:
    value = tuple(value)
    if len(value) != n:
        raise XenError(Errno.EINVAL, f"vcpu_guest_context.{name} needs {n} entries, "
                       f"got {len(value)}")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class VcpuContext:
    """``struct vcpu_guest_context`` (x86_64), with ``user_regs`` flattened into it."""

    flags: int = 0
    # user_regs (struct cpu_user_regs)
    r15: int = 0
    r14: int = 0
    r13: int = 0
    r12: int = 0
    rbp: int = 0
    rbx: int = 0
    r11: int = 0
    r10: int = 0
    r9: int = 0
    r8: int = 0
    rax: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    error_code: int = 0
    entry_vector: int = 0
    rip: int = 0
    cs: int = 0
    saved_upcall_mask: int = 0
    rflags: int = 0
    rsp: int = 0
    ss: int = 0
    es: int = 0
    ds: int = 0
    fs: int = 0
    gs: int = 0
    # the rest of the struct
    ldt_base: int = 0
    ldt_ents: int = 0
    gdt_frames: tuple[int, ...] = (0,) * 16
    gdt_ents: int = 0
    kernel_ss: int = 0
    kernel_sp: int = 0
    ctrlreg: tuple[int, ...] = (0,) * 8
    debugreg: tuple[int, ...] = (0,) * 8
    event_callback_eip: int = 0
    failsafe_callback_eip: int = 0
    syscall_callback_eip: int = 0
    vm_assist: int = 0
    fs_base: int = 0
    gs_base_kernel: int = 0
    gs_base_user: int = 0
    # kept as raw bytes
    fpu_ctxt: bytes = bytes(FPU_SIZE)
    trap_ctxt: bytes = bytes(TRAP_CTXT_SIZE)
    user_pad: bytes = bytes(USER_PAD_SIZE)

    @property
    def online(self) -> bool:
        return bool(self.flags & VGCF_ONLINE)

    @property
    def cr3(self) -> int:
        return self.ctrlreg[3]

    def traps(self) -> list[TrapInfo]:
        """The non-empty entries of the virtual IDT (``address != 0``)."""
        out = []
        for off in range(0, TRAP_CTXT_SIZE, _TRAP.size):
            vector, flags, cs, address = _TRAP.unpack_from(self.trap_ctxt, off)
            if address:
                out.append(TrapInfo(vector, flags, cs, address))
        return out

    @staticmethod
    def pack_traps(traps) -> bytes:
        """``trap_ctxt`` bytes from up to 256 :class:`TrapInfo`, each at its own slot
        (``trap_ctxt[vector]``, as ``set_trap_table`` stores them)."""
        buf = bytearray(TRAP_CTXT_SIZE)
        for t in traps:
            if not 0 <= t.vector < 256:
                raise XenError(Errno.EINVAL, f"trap vector {t.vector} out of range")
            _TRAP.pack_into(buf, t.vector * _TRAP.size, t.vector, t.flags, t.cs, t.address)
        return bytes(buf)

    def pack(self) -> bytes:
        gdt = _u64_tuple(self.gdt_frames, 16, "gdt_frames")
        ctrl = _u64_tuple(self.ctrlreg, 8, "ctrlreg")
        dbg = _u64_tuple(self.debugreg, 8, "debugreg")
        for name, blob, size in (("fpu_ctxt", self.fpu_ctxt, FPU_SIZE),
                                 ("trap_ctxt", self.trap_ctxt, TRAP_CTXT_SIZE),
                                 ("user_pad", self.user_pad, USER_PAD_SIZE)):
            if len(blob) != size:
                raise XenError(Errno.EINVAL, f"vcpu_guest_context.{name} must be {size} "
                               f"bytes, got {len(blob)}")
        p = self.user_pad
        try:
            return _STRUCT.pack(
                bytes(self.fpu_ctxt), self.flags,
                *(getattr(self, r) for r in GPRS), self.error_code, self.entry_vector,
                self.rip, self.cs, p[0:2], self.saved_upcall_mask, p[2:5], self.rflags,
                self.rsp, self.ss, p[5:11], self.es, p[11:17], self.ds, p[17:23],
                self.fs, p[23:29], self.gs, p[29:35],
                bytes(self.trap_ctxt),
                self.ldt_base, self.ldt_ents, *gdt, self.gdt_ents, self.kernel_ss,
                self.kernel_sp, *ctrl, *dbg, self.event_callback_eip,
                self.failsafe_callback_eip, self.syscall_callback_eip, self.vm_assist,
                self.fs_base, self.gs_base_kernel, self.gs_base_user)
        except struct.error as e:
            raise XenError(Errno.EINVAL, f"vcpu_guest_context field out of range: {e}") from e

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> VcpuContext:
        if len(data) != SIZE:
            raise XenError(Errno.EINVAL, f"vcpu_guest_context is {SIZE} bytes, got {len(data)}")
        v = _STRUCT.unpack(data)
        fpu, flags = v[0], v[1]
        gprs = dict(zip(GPRS, v[2:17]))
        (error_code, entry_vector, rip, cs, pad0, upcall, pad1, rflags, rsp,
         ss, pss, es, pes, ds, pds, fs, pfs, gs, pgs, trap_ctxt) = v[17:37]
        rest = v[37:]
        ldt_base, ldt_ents = rest[0:2]
        gdt_frames = tuple(rest[2:18])
        gdt_ents, kernel_ss, kernel_sp = rest[18:21]
        ctrlreg = tuple(rest[21:29])
        debugreg = tuple(rest[29:37])
        (event_eip, failsafe_eip, syscall_eip, vm_assist, fs_base, gs_base_kernel,
         gs_base_user) = rest[37:44]
        return cls(flags=flags, **gprs, error_code=error_code, entry_vector=entry_vector,
                   rip=rip, cs=cs, saved_upcall_mask=upcall, rflags=rflags, rsp=rsp,
                   ss=ss, es=es, ds=ds, fs=fs, gs=gs, ldt_base=ldt_base, ldt_ents=ldt_ents,
                   gdt_frames=gdt_frames, gdt_ents=gdt_ents, kernel_ss=kernel_ss,
                   kernel_sp=kernel_sp, ctrlreg=ctrlreg, debugreg=debugreg,
                   event_callback_eip=event_eip, failsafe_callback_eip=failsafe_eip,
                   syscall_callback_eip=syscall_eip, vm_assist=vm_assist, fs_base=fs_base,
                   gs_base_kernel=gs_base_kernel, gs_base_user=gs_base_user,
                   fpu_ctxt=fpu, trap_ctxt=trap_ctxt,
                   user_pad=pad0 + pad1 + pss + pes + pds + pfs + pgs)
