"""The name registry's Ray shell: one actor for the cluster, on the head node.

Its calls run one at a time (a plain, single-threaded actor), which is what makes each
registry operation atomic. Every entry a call changes is written through to Ray's GCS
key-value store under the run's namespace, so a killed registry restarts (``max_restarts``)
with every name still reserved; calls are idempotent, so Ray may retry them.
"""

from __future__ import annotations

from typing import Any

import msgpack
import ray
from ray.experimental import internal_kv

from actors.registry.state import Holder, NameRegistry
from actors.transport.raycall import RayEndpoint

PREFIX = b"name/"


@ray.remote(max_restarts=-1, max_task_retries=-1)
class RegistryActor(RayEndpoint):
    def __init__(self, run_id: str) -> None:
        self.namespace = f"xenray-{run_id}"
        entries = {}
        for key in internal_kv._internal_kv_list(PREFIX, namespace=self.namespace):
            value = internal_kv._internal_kv_get(key, namespace=self.namespace)
            if value is not None:
                entries[key[len(PREFIX):].decode()] = msgpack.unpackb(value)
        self.state = NameRegistry(entries)

    def _persist(self, *names: str) -> None:
        for name in names:
            key = PREFIX + name.encode()
            held = self.state.lookup(name)
            if held is None:
                internal_kv._internal_kv_del(key, namespace=self.namespace)
            else:
                internal_kv._internal_kv_put(key, msgpack.packb(held), overwrite=True,
                                             namespace=self.namespace)

    def on_reserve(self, name: str, host: str) -> Holder | None:
        held = self.state.reserve(name, host)
        self._persist(name)
        return held

    def on_take_over(self, name: str, stale: Holder, host: str) -> bool:
        done = self.state.take_over(name, stale, host)
        self._persist(name)
        return done

    def on_confirm(self, name: str, host: str, domid: int) -> None:
        self.state.confirm(name, host, domid)
        self._persist(name)

    def on_release(self, name: str, host: str) -> bool:
        done = self.state.release(name, host)
        self._persist(name)
        return done

    def on_rename(self, old: str, new: str, host: str) -> Holder | None:
        held = self.state.rename(old, new, host)
        self._persist(old, new)
        return held

    def on_lookup(self, name: str) -> Holder | None:
        return self.state.lookup(name)

    def on_names(self, host: str | None = None) -> dict[str, Any]:
        return self.state.names(host)
