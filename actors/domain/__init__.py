"""A DomU: its PV guest kernel and the process around it (:mod:`.actor`: a process bound to
one domain, forked by :mod:`.zygote` for the host's fork server, or a Ray actor with the
``ray`` launcher; the only files that start anything). The kernel is split as Linux's is, one
concept a module:

* :mod:`.kernel`: boot from start_info (or resume in a new domain), the vCPU running the init
  program, the guest's clock, statistics (``arch/x86/xen/enlighten_pv.c``, ``init/main.c``);
* :mod:`.initmem`, :mod:`.kdata`: what a suspended guest keeps in its memory: the init's
  memory regions, the kernel's clock;
* :mod:`.rungate`: the run gate every kernel entry passes: pause, suspend's freezer, shutdown;
* :mod:`.hvc`: the console driver and printk (``drivers/tty/hvc/hvc_xen.c``);
* :mod:`.xenwatch`: the thread running xenstore watch callbacks (``xenbus_xs.c``);
* :mod:`.manage`: the PV control protocol on ``control/shutdown`` (``drivers/xen/manage.c``);
* :mod:`.blkdev`/:mod:`.blkfront`, :mod:`.netdev`/:mod:`.netfront`/:mod:`.netstack`: the
  block and network frontends.

The init programs and their guest OS API are :mod:`actors.guest`.
"""

from actors.domain.kernel import PVKernel
from actors.guest.api import GuestOS
from actors.guest.inits import INITS, find

__all__ = ["INITS", "GuestOS", "PVKernel", "find"]
