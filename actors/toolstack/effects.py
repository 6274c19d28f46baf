"""What the toolstack's core asks its shell to do (effects are data).

The core (:mod:`actors.toolstack.state`) decides; the shell (``actor.py``, which the in-process
test host runs too) carries these out in order, with the builder's steps and the clients it
holds. Every effect on a name carries the reserving record's ``token``: the registry acts only
for the reservation it was made for, never for a newer one of the same name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from protocols.libxl_types import DomainConfig


@dataclasses.dataclass(frozen=True)
class DestroyDomain:
    """``libxl_domain_destroy``: destroydomain in the hypervisor, then its xenstore dirs.
    First of a teardown, so the vCPUs' process going away next is not seen as a crash."""

    domid: int


@dataclasses.dataclass(frozen=True)
class ReleaseXenstored:
    """``XS_RELEASE``: xenstored forgets the domain's credential and connections."""

    domid: int


@dataclasses.dataclass(frozen=True)
class KillVcpus:
    """Stop the process that runs the domain's vCPUs (its actor, at ``endpoint``)."""

    domid: int
    endpoint: str


@dataclasses.dataclass(frozen=True)
class ReleaseName:
    """Give the name back to the cluster's registry (if record ``token`` still holds it)."""

    name: str
    token: str


@dataclasses.dataclass(frozen=True)
class ConfirmName:
    """The domain holding ``name`` is now ``domid`` (in the registry)."""

    name: str
    domid: int
    token: str


@dataclasses.dataclass(frozen=True)
class RenameDomain:
    """xl's rename-restart: the shut-down domain ``domid`` becomes ``new`` (registry and its
    ``~/name``)."""

    domid: int
    old: str
    new: str
    token: str


@dataclasses.dataclass(frozen=True)
class Rebuild:
    """Build the domain of record ``name`` again (its name stays reserved): ``restart``."""

    name: str


@dataclasses.dataclass(frozen=True)
class Create:
    """Create a new domain ``name`` from ``config`` (the restart half of rename-restart)."""

    name: str
    config: DomainConfig


@dataclasses.dataclass(frozen=True)
class Note:
    """Something xl would print (a log line): ``what`` and its fields."""

    what: str
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)


Effect = (DestroyDomain | ReleaseXenstored | KillVcpus | ReleaseName | ConfirmName
          | RenameDomain | Rebuild | Create | Note)
