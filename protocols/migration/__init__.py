"""Xen's save/restore/migration stream, as a pure codec (no I/O, no actors).

* :mod:`.vcpu` -- ``struct vcpu_guest_context`` (x86_64 PV), the body of X86_PV_VCPU_BASIC;
* :mod:`.libxc` -- the libxc stream v3 (``docs/specs/libxc-migration-stream.pandoc``);
* :mod:`.libxl` -- the libxl stream v2 that wraps it (``docs/specs/libxl-migration-stream.pandoc``);
* :mod:`.savefile` -- ``xl save``'s file header (``tools/xl/xl_saverestore.c``).
"""
