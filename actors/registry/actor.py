"""The name registry's shell: one for the cluster (``cluster/registry``, on the head node).

:class:`RegistryShell` serialises its calls under one lock, which is what makes each registry
operation atomic, and writes every entry a call changed through to its store: any mutable
mapping of name to msgpack bytes. :class:`RegistryActor` is it as a Ray actor over
:class:`GcsStore`, Ray's GCS key-value store under the run's namespace, so a killed registry
restarts (``max_restarts``) with every name still reserved; calls are idempotent, so Ray may
retry them. The in-process test host runs the same shell over a dict.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping

import msgpack
import ray
from ray.experimental import internal_kv

from actors.registry.state import Holder, NameRegistry
from actors.transport import Endpoint
from actors.transport.raycall import RayEndpoint

PREFIX = b"name/"


class RegistryShell(Endpoint):
    """The registry over ``store`` (name -> msgpack of its holder), read once at start."""

    def __init__(self, store: MutableMapping[str, bytes]) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.state = NameRegistry({name: msgpack.unpackb(value)
                                   for name, value in store.items()})
        self.dead: dict[str, dict] = {}  # host -> its fence report (re-learnt on a restart)

    def _persist(self, *names: str) -> None:
        for name in names:
            held = self.state.lookup(name)
            if held is None:
                self.store.pop(name, None)
            else:
                self.store[name] = msgpack.packb(held)

    def on_reserve(self, name: str, host: str, token: str) -> Holder | None:
        with self.lock:
            held = self.state.reserve(name, host, token)
            self._persist(name)
            return held

    def on_take_over(self, name: str, stale: Holder, host: str, token: str) -> bool:
        with self.lock:
            done = self.state.take_over(name, stale, host, token)
            self._persist(name)
            return done

    def on_confirm(self, name: str, host: str, token: str, domid: int) -> None:
        with self.lock:
            self.state.confirm(name, host, token, domid)
            self._persist(name)

    def on_release(self, name: str, host: str, token: str) -> bool:
        with self.lock:
            done = self.state.release(name, host, token)
            self._persist(name)
            return done

    def on_rename(self, old: str, new: str, host: str, token: str) -> Holder | None:
        with self.lock:
            held = self.state.rename(old, new, host, token)
            self._persist(old, new)
            return held

    def on_host_lost(self, host: str, report: dict) -> list[str]:
        """A host was declared dead and fenced: free its names; remember it as dead, with
        ``report`` and the names of the domains lost with it, for every client's list."""
        with self.lock:
            lost = self.state.host_lost(host)
            self._persist(*lost)
            self.dead[host] = {**report, "lost": sorted({*self.dead.get(host, {}).get(
                "lost", []), *lost})}
            return lost

    def on_dead_hosts(self) -> dict[str, dict]:
        with self.lock:
            return dict(self.dead)

    def on_lookup(self, name: str) -> Holder | None:
        with self.lock:
            return self.state.lookup(name)


class GcsStore(MutableMapping):
    """Ray's GCS key-value store in ``namespace``, keys under :data:`PREFIX`."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def __getitem__(self, name: str) -> bytes:
        value = internal_kv._internal_kv_get(PREFIX + name.encode(), namespace=self.namespace)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: bytes) -> None:
        internal_kv._internal_kv_put(PREFIX + name.encode(), value, overwrite=True,
                                     namespace=self.namespace)

    def __delitem__(self, name: str) -> None:
        internal_kv._internal_kv_del(PREFIX + name.encode(), namespace=self.namespace)

    def __iter__(self) -> Iterator[str]:
        keys = internal_kv._internal_kv_list(PREFIX, namespace=self.namespace)
        return (key[len(PREFIX):].decode() for key in keys)

    def __len__(self) -> int:
        return len(internal_kv._internal_kv_list(PREFIX, namespace=self.namespace))


@ray.remote(max_restarts=-1, max_task_retries=-1)
class RegistryActor(RayEndpoint, RegistryShell):
    def __init__(self, run_id: str) -> None:
        super().__init__(GcsStore(f"xenray-{run_id}"))
