"""Plain Ray actor calls: :class:`RayTransport`, and :class:`RayEndpoint`, what every Ray
actor mixes in. About 1 ms a round trip on these machines (ray-notes.md)."""

from __future__ import annotations

import threading
import time
from typing import Any

import ray
from ray.exceptions import (ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError,
                            RayTaskError)

from actors.transport import Endpoint, PeerGone
from actors.transport.naming import NAMESPACE, relayed


PREFETCH_S = 60.0  # how long a prefetch waits for its destination to come into being
PREFETCH_RETRY_S = 0.1


class RayTransport:
    """Plain Ray actor calls (about 1 ms a round trip on these machines).

    The handles are the process's, shared by every instance: a name is looked up once per
    process (0.1-0.4 s here), and an actor this process started is known by its handle
    (:func:`remember`), so a domain's process taken from its host's pool finds the
    hypervisor and xenstored it looked up while it waited, and the agent that started it
    calls it without a lookup."""

    _handles: dict[str, Any] = {}
    _lookups: dict[str, threading.Lock] = {}  # one name lookup at a time per dest
    _lock = threading.Lock()

    def _handle(self, dest: str) -> Any:
        """The actor's handle: cached, or looked up once (a caller finding a lookup of the
        same name under way, a prefetch's, waits for it rather than starting another)."""
        with self._lock:
            h = self._handles.get(dest)
            lookup = self._lookups.setdefault(dest, threading.Lock())
        if h is not None:
            return h
        with lookup:
            with self._lock:
                h = self._handles.get(dest)
            if h is None:
                try:
                    h = ray.get_actor(dest, namespace=NAMESPACE)
                except ValueError as e:
                    raise PeerGone(dest) from e
                with self._lock:
                    self._handles[dest] = h
        return h

    def _remote(self, dest: str, kind: str, args: tuple, wait: bool,
                timeout: float | None = None) -> Any:
        """The Ray call for ``kind(*args)`` to ``dest``: to the actor itself, or to the fork
        server relaying to a forked domain process (``naming.relayed``)."""
        route = relayed(dest)
        if route is None:
            return self._handle(dest).deliver.remote(kind, *args)
        server, component = route
        return self._handle(server).deliver.remote(
            "relay" if wait else "relay_send", component, kind, list(args),
            *([timeout] if wait else []))

    def call(self, dest: str, kind: str, *args: Any, timeout: float | None = None) -> Any:
        """The handler's value; what it raised is raised here as the same type (a XenError
        stays a XenError), not wrapped in Ray's task error."""
        try:
            return ray.get(self._remote(dest, kind, args, True, timeout), timeout=timeout)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
            self.forget(dest)
            raise PeerGone(dest) from e
        except GetTimeoutError as e:
            raise TimeoutError(f"{dest} did not answer {kind} within {timeout} s") from e

    def send(self, dest: str, kind: str, *args: Any) -> None:
        try:
            self._remote(dest, kind, args, False)
        except PeerGone:
            pass

    def forget(self, dest: str) -> None:
        """(A forked process's route is its fork server's, which stays.)"""
        with self._lock:
            self._handles.pop(dest, None)

    @classmethod
    def forget_all(cls) -> None:
        """This process left its Ray cluster: no handle of it is any good in another."""
        with cls._lock:
            cls._handles.clear()

    def prefetch(self, dest: str) -> None:
        """Look ``dest`` up on a thread, again while it does not exist yet (for at most
        :data:`PREFETCH_S`: xenstored learns a domain's endpoint before its actor starts),
        then call it once (``process``), which opens Ray's connection to its worker: the
        first call on a new route costs tens to hundreds of ms more than the next."""
        target = (relayed(dest) or (dest,))[0]

        def lookup() -> None:
            deadline = time.monotonic() + PREFETCH_S
            while time.monotonic() < deadline:
                try:
                    ray.get(self._handle(target).deliver.remote("process"),
                            timeout=PREFETCH_S)
                    return
                except PeerGone:
                    time.sleep(PREFETCH_RETRY_S)
                except Exception:  # noqa: BLE001 - a warm-up only: the real call will tell
                    return

        threading.Thread(target=lookup, name=f"prefetch-{dest}", daemon=True).start()


def remember(dest: str, handle: Any) -> None:
    """This process started actor ``dest``: its handle, so no call to it looks it up."""
    with RayTransport._lock:
        RayTransport._handles[dest] = handle


class RayEndpoint(Endpoint):
    """:class:`~actors.transport.Endpoint` for a Ray actor: ``process`` also names its node."""

    def on_process(self) -> dict[str, Any]:
        return {**super().on_process(), "node_id": ray.get_runtime_context().get_node_id()}

    def on_prefetch(self, dest: str) -> None:
        """``dest`` will be called soon (a process of the host's pool, a domain to be):
        look it up now, in the background (the lookup is the process's, for every
        transport in it)."""
        RayTransport().prefetch(dest)
