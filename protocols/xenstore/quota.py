"""Per-domain xenstore quotas (reference 11.3; ``tools/xenstored/domain.c`` ``hard_quotas``).

Quotas bind unprivileged domains only; dom0 and socket clients are never limited. Two kinds of
check, both copied from xenstored, and both disabled by a value of 0:

* counts (nodes owned, watches, open transactions) fail when the total *after* the addition
  reaches the quota (``domain_quota_add_exceeds``: ``val >= quota``), so a domain holds at most
  ``quota - 1`` of them;
* maxima (node size, permissions per node, nodes per transaction, path length) fail when the
  value exceeds the quota (``domain_max_chk``: ``val > quota``).

Every quota failure is ENOSPC, except the path length, which makes the path invalid (EINVAL).
The memory quota (2.5 MB) is exposed but not enforced: the store does not model xenstored's
byte accounting. ``outstanding`` (requests in flight) is enforced by the actor, not here.
"""

from __future__ import annotations

import dataclasses

from protocols.errno import Errno, XenError
from protocols.xenstore.paths import XENSTORE_REL_PATH_MAX

NODE_HDR_SIZE = 16  # struct node_hdr: u64 generation, u16 num_perms, u16 datalen, u32 childlen
XS_PERMISSIONS_SIZE = 8  # struct xs_permissions: unsigned int id, unsigned int perms


@dataclasses.dataclass(frozen=True, slots=True)
class Quota:
    """Xen's default hard quotas per domain (``xenstored -Q``); 0 disables one."""

    nodes: int = 1000
    watches: int = 128
    outstanding: int = 20
    transactions: int = 10
    transaction_nodes: int = 1024
    node_permissions: int = 5
    node_size: int = 2048
    path_max: int = XENSTORE_REL_PATH_MAX
    memory: int = 2 * 1024 * 1024 + 512 * 1024  # soft limit 2 MB; neither enforced here

    def check_count(self, name: str, total_after: int) -> None:
        """ENOSPC if a count quota (nodes, watches, transactions) would be reached."""
        limit = getattr(self, name)
        if limit and total_after >= limit:
            raise XenError(Errno.ENOSPC, f"{name} quota of {limit} reached")

    def check_max(self, name: str, value: int) -> None:
        """ENOSPC if ``value`` is over a maximum quota (node size, permissions, ...)."""
        limit = getattr(self, name)
        if limit and value > limit:
            raise XenError(Errno.ENOSPC, f"{name} {value} over the quota of {limit}")


def node_size(value: bytes, nperms: int, children: dict[str, None]) -> int:
    """``calc_node_acc_size``: what the node-size quota measures."""
    childlen = sum(len(c) + 1 for c in children)
    return NODE_HDR_SIZE + nperms * XS_PERMISSIONS_SIZE + len(value) + childlen
