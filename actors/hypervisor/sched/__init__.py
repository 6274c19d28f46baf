"""The host's CPU schedulers (reference 16): credit2, Xen's default since 4.12, and credit.

Both are pure state machines in virtual time (:mod:`.base`): the hypervisor tells them what
its vCPUs do (wake, sleep, yield), calls :meth:`~.base.SchedCore.tick` at
:meth:`~.base.SchedCore.next_event`, and carries out the :class:`Switch` es they return.
"""

from actors.hypervisor.sched.base import Scheduler, Switch, VcpuKey
from actors.hypervisor.sched.credit import Credit
from actors.hypervisor.sched.credit2 import Credit2

__all__ = ["DEFAULT", "SCHEDULERS", "Scheduler", "Switch", "VcpuKey", "make"]

SCHEDULERS = ("credit2", "credit")
DEFAULT = "credit2"


def make(name: str, pcpus: int, **params) -> Scheduler:
    """The scheduler ``sched=name`` for a host of ``pcpus``; ``params`` are its boot options
    (credit: ``tslice_ms``, ``ratelimit_us``, ``boost``; credit2: ``ratelimit_us``). One out
    of range is a ValueError (Xen warns and takes the default)."""
    if name == "credit2":
        return Credit2(pcpus, **params)
    if name == "credit":
        return Credit(pcpus, **params)
    raise ValueError(f"unknown scheduler {name!r}: one of {', '.join(SCHEDULERS)}")
