"""Xen's page: the 4 KiB frame every grant, ring and guest memory map is counted in.

x86's ``PAGE_SHIFT`` (``xen/arch/x86/include/asm/page.h``), which Linux calls
``XEN_PAGE_SHIFT`` (``include/xen/page.h``): rings and grant tables are laid out in these
pages whatever the guest's own page size.
"""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

MIB_SHIFT = 20  # what xl.cfg's ``memory``/``maxmem`` and xl list's Mem column count in
PAGES_PER_MIB = 1 << (MIB_SHIFT - PAGE_SHIFT)  # 256 pages of 4 KiB
