"""The PV guest's memory map: where the domain builder puts what the kernel boots from.

This is xenray's domain-builder ABI (Xen's ``xc_dom`` chooses its own): the toolstack writes
these pages before the first unpause and the PV kernel finds them here. The grant table's
frames are the hypervisor's to place (``actors.hypervisor.grants.GNTTAB_FIRST_PFN``, reported
by ``setup_table``), between the console page and the first free page.
"""

PFN_START_INFO = 0  # struct start_info (protocols.start_info)
PFN_CONSOLE = 3  # xencons_interface (protocols.console)
PFN_FIRST_FREE = 16  # pages from here on are the guest's to allocate
