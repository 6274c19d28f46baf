"""The PV guest's memory map: where the domain builder and the hypervisor put what the kernel
boots from.

This is xenray's domain-builder ABI (Xen's ``xc_dom`` chooses its own): the toolstack writes
the start-info and console pages before the first unpause and the PV kernel finds them here.
The grant table's frames are the hypervisor's (``setup_table`` reports them, as Xen reports
its grant frames); they lie between the console page and the first page the guest allocates.

Two pages are the guest kernel's own, for what must outlive its process (issue 11: a migrated
guest is a new process, and only its memory and vCPU context travel): the kernel data page
(the guest clock and the balloon's pfns at suspend, ``actors.domain.kdata``) and the directory
of the init program's memory regions (``actors.domain.initmem``), whose pages are taken from
the top of memory down while the drivers' page pool grows from ``PFN_FIRST_FREE`` up. Pfns
12..15 are unused.
"""

PFN_START_INFO = 0  # struct start_info (protocols.start_info)
PFN_KERNEL_DATA = 1  # the guest kernel's state across a suspend (actors.domain.kdata)
PFN_INIT_MEMORY = 2  # the init program's memory directory (actors.domain.initmem)
PFN_CONSOLE = 3  # xencons_interface (protocols.console)
GNTTAB_FIRST_PFN = 4  # the v1 grant table (protocols.gnttab), NR_GNTTAB_FRAMES frames
NR_GNTTAB_FRAMES = 8
PFN_FIRST_FREE = 16  # pages from here on are the guest's to allocate
