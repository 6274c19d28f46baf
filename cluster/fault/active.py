"""The faults in force on a cluster: numbered, listed, healed on demand or when their time
is up (``xenray fault ... --for S``), and all healed when the cluster stops.

``xenray fault`` asks the process that holds the cluster (the ``xenray up`` daemon), so a
fault outlives the command that injected it, as an ``iptables`` rule outlives its shell.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any

from cluster.fault import nemesis


class ActiveFaults:
    """The faults one cluster object injected and has not healed yet."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._active: dict[int, tuple[nemesis.Injected, float, float | None]] = {}
        self._timers: dict[int, threading.Timer] = {}

    def inject(self, kind: str, target: dict[str, Any] | None = None,
               params: dict[str, Any] | None = None, *, for_s: float | None = None,
               seed: int | None = None) -> dict[str, Any]:
        """Carry out a fault now; healed after ``for_s`` seconds if given. What it did,
        with its id."""
        if for_s is not None and for_s <= 0:
            raise ValueError("--for must be a positive number of seconds")
        injected = nemesis.inject(self.cluster, kind, dict(target or {}), dict(params or {}),
                                  random.Random(seed))
        with self._lock:
            fid = next(self._ids)
            if injected.undo is not None:
                self._active[fid] = (injected, time.time(), for_s)
                if for_s is not None:
                    timer = self._timers[fid] = threading.Timer(for_s, self._expire, (fid,))
                    timer.daemon = True
                    timer.start()
        return {"id": fid, "healable": injected.undo is not None, "for": for_s,
                **injected.as_dict()}

    def _expire(self, fid: int) -> None:
        try:
            self.heal(fid)
        except ValueError:
            pass  # healed by hand meanwhile

    def heal(self, fid: int) -> dict[str, Any]:
        with self._lock:
            if fid not in self._active:
                raise ValueError(f"no fault {fid} in force")
            injected, _, _ = self._active.pop(fid)
            timer = self._timers.pop(fid, None)
        if timer is not None:
            timer.cancel()
        nemesis.heal(injected)
        return {"id": fid, **injected.as_dict()}

    def heal_all(self) -> list[dict[str, Any]]:
        with self._lock:
            ids = sorted(self._active)
        healed = []
        for fid in ids:
            try:
                healed.append(self.heal(fid))
            except Exception:  # noqa: BLE001 - a part that died cannot be healed; go on
                continue
        return healed

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"id": fid, "since": since, "for": for_s, **injected.as_dict()}
                    for fid, (injected, since, for_s) in sorted(self._active.items())]
