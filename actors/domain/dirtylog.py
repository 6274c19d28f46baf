"""The guest process's dirty-logging hardware, handed to its hypervisor at boot.

Xen logs a guest's writes in the guest's page tables; here the guest is this process's
mapping of its memory file, and only a descriptor created *by this process* sees its writes
(``actors.uffd``). So at start, once the memory is mapped, the domain's process creates its
``userfaultfd`` (async write-protect, user-mode faults only: it works without root), opens
its own ``/proc/self/pagemap`` and hands both, with the mapping's address and length, to its
host's hypervisor over the hypervisor's handover socket (next to the memory file) with
``SCM_RIGHTS``, as a CPU comes with the dirty-logging hardware the hypervisor drives. From
then on it does nothing: the hypervisor registers, protects and scans.

Best-effort: a process that cannot (an old kernel, no userfaultfd, no socket) still runs; the
hypervisor then answers ``SHADOW_OP_ENABLE_LOGDIRTY`` for it with ``-EOPNOTSUPP``, so it can
be saved but not live-migrated.

Why at boot and not on the first unpause: the toolstack only names this process to the
hypervisor (``setvcpucontext``) after the process is up, i.e. after this returns, so the
hypervisor keeps the handover pending for this pid until then, and the domain has its dirty
logging before it first runs, with no hand-over racing a migration.
"""

from __future__ import annotations

import os
from typing import Any

from actors import uffd
from actors.memory import Mapping
from protocols.page import PAGE_SIZE

HANDOVER_TIMEOUT_S = 5.0


def hand_over(domid: int, secret: str, memory: Mapping, log: Any,
              timeout: float = HANDOVER_TIMEOUT_S) -> bool:
    """Hand this process's dirty logging of ``memory`` (the domain's whole memory, pfn 0
    first) to the hypervisor; True if it took it. Never raises."""
    path = uffd.handover_path_for(memory.path, domid)
    if path is None or memory.first_frame != 0:
        log.warning("no dirty logging: the memory file is not the hypervisor's",
                    memory_path=memory.path)
        return False
    fds: list[int] = []
    try:
        fds.append(uffd.create())
        fds.append(uffd.open_pagemap())
        message = uffd.encode_handover(domid, secret, uffd.address_of(memory.mm),
                                       memory.nr_pages * PAGE_SIZE)
        rc = uffd.send_handover(path, message, fds, timeout)
    except OSError as e:
        log.warning("no dirty logging: this domain cannot be live-migrated "
                    "(SHADOW_OP_ENABLE_LOGDIRTY will be -EOPNOTSUPP)", error=str(e))
        return False
    finally:
        for fd in fds:
            os.close(fd)
    if rc:
        log.warning("no dirty logging: the hypervisor refused it; this domain cannot be "
                    "live-migrated (SHADOW_OP_ENABLE_LOGDIRTY will be -EOPNOTSUPP)", rc=rc)
        return False
    log.info("dirty logging handed over", pages=memory.nr_pages)
    return True
