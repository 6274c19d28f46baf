"""One xenstore node (``struct node``, ``tools/xenstored/core.h``): the unit the store keeps,
a transaction copies and a commit compares by generation."""

from __future__ import annotations

import dataclasses

from protocols.xenstore.perms import Perm


@dataclasses.dataclass(slots=True)
class Node:
    """A node: value, permission list, child names in creation order, last-change generation."""

    value: bytes
    perms: tuple[Perm, ...]
    children: dict[str, None]
    gen: int = 0

    def copy(self) -> Node:
        return Node(self.value, self.perms, dict(self.children), self.gen)
