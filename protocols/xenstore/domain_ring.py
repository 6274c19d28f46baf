"""The xenstore ring page (reference 11.2; ``xen/include/public/io/xs_wire.h``
``struct xenstore_domain_interface``, ``docs/misc/xenstore-ring.txt``).

A domain talks to xenstored through one shared page (start_info ``store_mfn`` or
``HVM_PARAM_STORE_PFN``, also grant ref 1) and an event channel: two 1024-byte flex rings
(reference 7.4) carrying the xs_wire byte stream (:mod:`protocols.xenstore.wire`), requests to
the server in ``req`` and replies and watch events in ``rsp``, followed by a few control words:

    req[1024] @0, rsp[1024] @1024, req_cons @2048, req_prod @2052, rsp_cons @2056,
    rsp_prod @2060, server_features @2064, connection @2068, error @2072, evtchn_port @2076

Guests must not assume the indices start at 0, nor that unused ring bytes hold any value.
"""

from __future__ import annotations

from protocols.flexring import ByteRing

XENSTORE_RING_SIZE = 1024

XENSTORE_SERVER_FEATURE_RECONNECTION = 1  # the connection field may be used
XENSTORE_SERVER_FEATURE_ERROR = 2  # the error field is present
XENSTORE_SERVER_FEATURE_WATCHDEPTH = 4  # WATCH takes an optional depth
XENSTORE_SERVER_FEATURE_DOMID_ANY = 8  # DOMID_ANY is accepted in permissions

XENSTORE_CONNECTED = 0  # the steady state
XENSTORE_RECONNECT = 1  # the guest asked for a reconnect; only the server sets it back to 0

XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1  # communication problem
XENSTORE_ERROR_RINGIDX = 2  # invalid ring index
XENSTORE_ERROR_PROTO = 3  # protocol violation (e.g. a payload over XENSTORE_PAYLOAD_MAX)

REQ_OFFSET, RSP_OFFSET = 0, 1024
REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD = 2048, 2052, 2056, 2060
SERVER_FEATURES, CONNECTION, ERROR, EVTCHN_PORT = 2064, 2068, 2072, 2076


class _Word:
    """A u32 control word of the page, read and written with one aligned 32-bit access."""

    def __init__(self, offset: int) -> None:
        self.index = (offset - SERVER_FEATURES) // 4

    def __get__(self, intf, owner=None):
        return self if intf is None else intf._words[self.index]

    def __set__(self, intf, value: int) -> None:
        intf._words[self.index] = value


class XenstoreDomainInterface:
    """``struct xenstore_domain_interface`` over a mapped xenstore ring page.

    Guest side: :meth:`write_request`, :meth:`read_response`, and ``connection =
    XENSTORE_RECONNECT`` to ask for a reconnect. Server side (xenstored): :meth:`read_request`,
    :meth:`write_response`, :meth:`reset_rings`, and ``server_features``, ``error`` and
    ``connection = XENSTORE_CONNECTED``. Ring calls return what moved; the caller then signals
    the event channel. A hostile index raises ``XenError(EIO)`` (the server then sets
    ``error = XENSTORE_ERROR_RINGIDX`` and stops serving the ring).
    """

    __slots__ = ("req", "rsp", "_words")

    server_features = _Word(SERVER_FEATURES)
    connection = _Word(CONNECTION)
    error = _Word(ERROR)
    evtchn_port = _Word(EVTCHN_PORT)

    def __init__(self, buf) -> None:
        self.req = ByteRing(buf, REQ_OFFSET, XENSTORE_RING_SIZE, REQ_CONS, REQ_PROD)
        self.rsp = ByteRing(buf, RSP_OFFSET, XENSTORE_RING_SIZE, RSP_CONS, RSP_PROD)
        self._words = memoryview(buf).cast("B")[SERVER_FEATURES:EVTCHN_PORT + 4].cast("I")

    def write_request(self, data) -> int:
        """Guest: queue xs_wire request bytes; returns the bytes accepted."""
        return self.req.write(data)

    def read_response(self, max_bytes: int | None = None) -> bytes:
        """Guest: consume reply and watch-event bytes."""
        return self.rsp.read(max_bytes)

    def read_request(self, max_bytes: int | None = None) -> bytes:
        """Server: consume request bytes."""
        return self.req.read(max_bytes)

    def write_response(self, data) -> int:
        """Server: queue reply or watch-event bytes; returns the bytes accepted."""
        return self.rsp.write(data)

    def reset_rings(self) -> None:
        """Server, on a guest's reconnect: empty both rings (xenstored ``domain_conn_reset``);
        the server then sets ``connection = XENSTORE_CONNECTED`` and signals the guest."""
        self.req.reset()
        self.rsp.reset()

    def release(self) -> None:
        """Drop the views on the page so that it can be unmapped."""
        self.req.release()
        self.rsp.release()
        self._words.release()
