"""The guest side of a hypercall: encode, send to the host's hypervisor, decode.

Used by every domain's kernel and by Dom0's tools alike. The call crosses the transport
as msgpack bytes (``protocols.hypercall``); the caller proves who it is with the domain's
credential (domid, secret), and names the endpoint that should receive upcalls for the
event-channel ports it binds (``/dev/xen/evtchn`` is per process in a real Dom0 too).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from actors.transport import Transport
from protocols.errno import Errno, XenError
from protocols.hypercall import decode_result, encode_call


@dataclasses.dataclass(frozen=True)
class Credential:
    """Who is calling: handed to a domain (or a Dom0 process) at creation, never forged."""

    domid: int
    secret: str
    endpoint: str  # actor name receiving this caller's upcalls


class HypercallClient:
    def __init__(self, transport: Transport, hypervisor: str, cred: Credential) -> None:
        self.transport = transport
        self.hypervisor = hypervisor
        self.cred = cred

    def raw(self, op: int, subop: int, args: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Issue a hypercall; returns ``(rc, result)`` without raising on a negative rc."""
        reply = self.transport.call(self.hypervisor, "hypercall", self.cred.domid,
                                    self.cred.secret, self.cred.endpoint,
                                    encode_call(op, subop, args or {}))
        res = decode_result(reply)
        return res.rc, res.result

    def post(self, op: int, subop: int, /, **args: Any) -> None:
        """Issue a hypercall whose result nobody reads, without waiting for it: an event-channel
        notification, which Linux's ``notify_remote_via_evtchn`` also fires and forgets. The
        hypervisor still runs it, after every hypercall this caller issued before."""
        self.transport.send(self.hypervisor, "hypercall", self.cred.domid, self.cred.secret,
                            self.cred.endpoint, encode_call(op, subop, args))

    def __call__(self, op: int, subop: int, /, **args: Any) -> Any:
        """Issue a hypercall; a negative rc raises :class:`XenError` with Xen's errno."""
        rc, result = self.raw(op, subop, args)
        if rc < 0:
            raise XenError(Errno(-rc), f"hypercall {op}/{subop}")
        return result if result is not None else rc
