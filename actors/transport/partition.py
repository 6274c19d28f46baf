"""A network partition of the calls an agent makes to other hosts (issue 12's nemesis).

Between hosts, xenray carries three things: the emulated network's frames (netback's
uplinks: :mod:`actors.hostnet`), and the toolstack agents' calls to each other, which include
every migration stream. This wraps the agents' transport so that a partition cuts the
second: a call to an actor of a host on the far side is lost, which its caller sees as
silence (``TimeoutError``: it cannot know whether the far side acted), and a one-way message
is dropped. The cluster's registry (on the head node, Ray's control plane) stays reachable, as
Ray's GCS does. A partition is set on both sides, so calls in neither direction cross.
"""

from __future__ import annotations

from typing import Any

from actors.transport import Transport


class PartitionedTransport:
    """``inner``, except to the hosts in :attr:`blocked`."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.blocked: frozenset[str] = frozenset()
        self.dropped = 0

    def set_blocked(self, hosts: list[str]) -> None:
        self.blocked = frozenset(hosts)

    def _cut(self, dest: str) -> bool:
        if dest.partition("/")[0] in self.blocked:
            self.dropped += 1
            return True
        return False

    def call(self, dest: str, kind: str, *args: Any, timeout: float | None = None) -> Any:
        if self._cut(dest):
            raise TimeoutError(f"{dest} did not answer: the network is partitioned")
        return self.inner.call(dest, kind, *args, timeout=timeout)

    def send(self, dest: str, kind: str, *args: Any) -> None:
        if not self._cut(dest):
            self.inner.send(dest, kind, *args)

    def forget(self, dest: str) -> None:
        self.inner.forget(dest)

    def prefetch(self, dest: str) -> None:
        self.inner.prefetch(dest)
