"""Xen's network protocol (``xen/include/public/io/netif.h``), byte-exact.

A vif is two rings per queue (reference section 9): on **tx** the frontend grants the frames
it sends and netback answers each slot; on **rx** the frontend posts empty granted pages and
netback fills them, putting each response in the slot of the request it consumed (19.5).
A packet spans several slots: the first tx slot's ``size`` is the *total* length, later
fragments follow while ``NETTXF_more_data`` is set, and extra-info slots (GSO, multicast,
hash) follow the first request and are answered ``NETIF_RSP_NULL``.
:func:`tx_packet_chain` is netback's reading of such a chain and :func:`tx_slots` is
netfront's writing of one.

Startup is blkif's handshake (section 10) with netback's quirks: it goes Initialising ->
InitWait at probe and to Connected once the frontend is Connected, but **holds back**
Connected until the hotplug script writes ``hotplug-status`` = "connected"; and it refuses
a frontend without ``request-rx-copy`` = 1 (-EOPNOTSUPP).

Who writes which key ("be" ``/local/domain/<B>/backend/vif/<D>/<devid>``, "fe"
``/local/domain/<D>/device/vif/<devid>``)::

    writer     dir  when                 keys
    toolstack  be   device add           TOOLSTACK_BACKEND_KEYS (mtu only if not 1500)
    toolstack  fe   device add           TOOLSTACK_FRONTEND_KEYS (mtu read-only)
    hotplug    be   after InitWait       hotplug-status
    backend    be   before InitWait      BACKEND_FEATURE_KEYS; carrier (absent = up)
    frontend   fe   before Connected     FRONTEND_KEYS (split evtchn, multi-queue, ctrl forms)
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Sequence
from typing import ClassVar

from protocols.errno import Errno, XenError
from protocols.page import PAGE_SIZE
from protocols.ring import ring_size


class NetTxFlag(enum.IntFlag):
    """``NETTXF_*``: flags of a tx request."""

    csum_blank = 1 << 0
    data_validated = 1 << 1
    more_data = 1 << 2
    extra_info = 1 << 3


class NetRxFlag(enum.IntFlag):
    """``NETRXF_*``: flags of an rx response (bits 0 and 1 are swapped against tx)."""

    data_validated = 1 << 0
    csum_blank = 1 << 1
    more_data = 1 << 2
    extra_info = 1 << 3
    gso_prefix = 1 << 4  # deprecated


class NetifExtraType(enum.IntEnum):
    """``XEN_NETIF_EXTRA_TYPE_*``."""

    NONE = 0  # never valid on the wire
    GSO = 1
    MCAST_ADD = 2
    MCAST_DEL = 3
    HASH = 4


XEN_NETIF_EXTRA_TYPE_MAX = 5
XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0
XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1  # the response in an extra-info slot

XEN_NETIF_MAX_TX_SIZE = 0xFFFF
XEN_NETIF_NR_SLOTS_MIN = 18  # slots per packet every backend must accept
FATAL_SKB_SLOTS = 20  # netback's fatal_skb_slots: more is a hostile frontend

_TX_REQ = struct.Struct("<IHHHH")  # gref, offset, flags, id, size
_TX_RSP = struct.Struct("<Hh")  # id, status
_RX_REQ = struct.Struct("<H2xI")  # id, gref
_RX_RSP = struct.Struct("<HHHh")  # id, offset, flags, status
_GSO = struct.Struct("<HBxH")  # size, type, features
_HASH = struct.Struct("<BBI")  # type, algorithm, value (LSB first)

_MORE_DATA = int(NetTxFlag.more_data)  # plain ints on the per-packet path
_EXTRA_INFO = int(NetTxFlag.extra_info)
_UNION_SIZE = 6  # the union in struct netif_extra_info

TX_SLOT_SIZE = _TX_REQ.size  # 12; a tx response uses 4 of them
RX_SLOT_SIZE = _RX_REQ.size  # 8
EXTRA_INFO_SIZE = 8
TX_RING_SIZE = ring_size(max(_TX_REQ.size, _TX_RSP.size))  # 256
RX_RING_SIZE = ring_size(max(_RX_REQ.size, _RX_RSP.size))  # 256
CTRL_RING_SIZE = ring_size(16)  # xen_netif_ctrl_request {u16 id, u16 type, u32 data[3]}
assert (TX_SLOT_SIZE, _TX_RSP.size, RX_SLOT_SIZE, _RX_RSP.size) == (12, 4, 8, 8)


def _check_len(data, sizes: tuple[int, ...], what: str) -> None:
    if len(data) not in sizes:
        want = " or ".join(map(str, sizes))
        raise XenError(Errno.EINVAL, f"{what} needs {want} bytes, got {len(data)}")


@dataclasses.dataclass(frozen=True, slots=True)
class NetifTxRequest:
    """``struct netif_tx_request`` (``io/netif.h``), 12 bytes: ``size`` bytes at ``offset``
    of the frame granted as ``gref`` (the whole packet's length in a packet's first slot)."""

    gref: int
    offset: int
    flags: int
    id: int
    size: int

    SIZE: ClassVar[int] = TX_SLOT_SIZE

    def pack(self) -> bytes:
        return _TX_REQ.pack(self.gref, self.offset, self.flags, self.id, self.size)

    @classmethod
    def unpack(cls, data) -> NetifTxRequest:
        _check_len(data, (TX_SLOT_SIZE,), "netif_tx_request")
        return cls(*_TX_REQ.unpack(data))


@dataclasses.dataclass(frozen=True, slots=True)
class NetifTxResponse:
    """``struct netif_tx_response`` (``io/netif.h``), 4 bytes in a 12-byte slot."""

    id: int
    status: int

    SIZE: ClassVar[int] = _TX_RSP.size

    def pack(self) -> bytes:
        return _TX_RSP.pack(self.id, self.status)

    @classmethod
    def unpack(cls, data) -> NetifTxResponse:
        """Decode 4 bytes or a whole 12-byte slot."""
        _check_len(data, (_TX_RSP.size, TX_SLOT_SIZE), "netif_tx_response")
        return cls(*_TX_RSP.unpack_from(data))


@dataclasses.dataclass(frozen=True, slots=True)
class NetifRxRequest:
    """``struct netif_rx_request`` (``io/netif.h``), 8 bytes: an empty frame to fill."""

    id: int
    gref: int

    SIZE: ClassVar[int] = RX_SLOT_SIZE

    def pack(self) -> bytes:
        return _RX_REQ.pack(self.id, self.gref)

    @classmethod
    def unpack(cls, data) -> NetifRxRequest:
        _check_len(data, (RX_SLOT_SIZE,), "netif_rx_request")
        return cls(*_RX_REQ.unpack(data))


@dataclasses.dataclass(frozen=True, slots=True)
class NetifRxResponse:
    """``struct netif_rx_response`` (``io/netif.h``), 8 bytes: ``status`` is this fragment's
    length if positive, a NETIF_RSP_* error if negative."""

    id: int
    offset: int
    flags: int
    status: int

    SIZE: ClassVar[int] = RX_SLOT_SIZE

    def pack(self) -> bytes:
        return _RX_RSP.pack(self.id, self.offset, self.flags, self.status)

    @classmethod
    def unpack(cls, data) -> NetifRxResponse:
        _check_len(data, (RX_SLOT_SIZE,), "netif_rx_response")
        return cls(*_RX_RSP.unpack(data))


@dataclasses.dataclass(frozen=True, slots=True)
class NetifExtraGso:
    """``netif_extra_info.u.gso``: segment ``size`` (the MSS), ``XEN_NETIF_GSO_TYPE_*``."""

    size: int
    type: int
    features: int = 0

    def pack(self) -> bytes:
        return _GSO.pack(self.size, self.type, self.features)

    @classmethod
    def unpack(cls, data) -> NetifExtraGso:
        _check_len(data, (_UNION_SIZE,), "netif_extra_info.u.gso")
        return cls(*_GSO.unpack(data))


@dataclasses.dataclass(frozen=True, slots=True)
class NetifExtraMcast:
    """``netif_extra_info.u.mcast``: the 6-byte MAC address to add to or remove from the filter."""

    addr: bytes

    def pack(self) -> bytes:
        if len(self.addr) != _UNION_SIZE:
            raise XenError(Errno.EINVAL, f"a MAC address has 6 bytes, got {len(self.addr)}")
        return bytes(self.addr)

    @classmethod
    def unpack(cls, data) -> NetifExtraMcast:
        _check_len(data, (_UNION_SIZE,), "netif_extra_info.u.mcast")
        return cls(bytes(data))


@dataclasses.dataclass(frozen=True, slots=True)
class NetifExtraHash:
    """``netif_extra_info.u.hash``: ``_XEN_NETIF_CTRL_HASH_TYPE_*``, algorithm, u32 value."""

    type: int
    algorithm: int
    value: int

    def pack(self) -> bytes:
        return _HASH.pack(self.type, self.algorithm, self.value)

    @classmethod
    def unpack(cls, data) -> NetifExtraHash:
        _check_len(data, (_UNION_SIZE,), "netif_extra_info.u.hash")
        return cls(*_HASH.unpack(data))


_EXTRA_UNIONS = {NetifExtraType.GSO: NetifExtraGso, NetifExtraType.MCAST_ADD: NetifExtraMcast,
                 NetifExtraType.MCAST_DEL: NetifExtraMcast, NetifExtraType.HASH: NetifExtraHash}


@dataclasses.dataclass(frozen=True, slots=True)
class NetifExtraInfo:
    """``struct netif_extra_info`` (``io/netif.h``), 8 bytes filling a whole tx or rx slot.

    ``u`` is the union member ``type`` selects; for a type this module does not know it is
    the raw 6 payload bytes. ``flags``: XEN_NETIF_EXTRA_FLAG_MORE chains another extra.
    """

    type: int
    flags: int
    u: NetifExtraGso | NetifExtraMcast | NetifExtraHash | bytes

    SIZE: ClassVar[int] = EXTRA_INFO_SIZE

    def pack(self) -> bytes:
        payload = self.u if isinstance(self.u, bytes) else self.u.pack()
        if len(payload) != _UNION_SIZE:
            raise XenError(Errno.EINVAL, f"extra info payload has 6 bytes, got {len(payload)}")
        return bytes((self.type, self.flags)) + payload

    @classmethod
    def unpack(cls, data) -> NetifExtraInfo:
        """Decode 8 bytes, or a whole 12-byte tx slot."""
        _check_len(data, (EXTRA_INFO_SIZE, TX_SLOT_SIZE), "netif_extra_info")
        payload = bytes(data[2:8])
        union = _EXTRA_UNIONS.get(data[0])
        return cls(data[0], data[1], union.unpack(payload) if union else payload)


# -- the tx wire format (reference 9, 19.5; Linux netback xenvif_tx_build_gops) -------------


@dataclasses.dataclass(frozen=True, slots=True)
class TxPacket:
    """One packet read from consecutive tx slots.

    ``requests`` are its data slots in order (``requests[0].size`` is the total length) and
    ``extras`` its extra-info slots, which sit between the first and second request.
    ``sizes`` are the fragments' own lengths (``sizes[0]`` = total - the rest); empty when
    the packet is dropped. ``status`` is NETIF_RSP_OKAY, or NETIF_RSP_ERROR for a packet the
    backend must drop (answering every slot), with ``reason``.
    """

    requests: tuple[NetifTxRequest, ...]
    extras: tuple[NetifExtraInfo, ...]
    sizes: tuple[int, ...]
    status: int = NETIF_RSP_OKAY
    reason: str = ""

    @property
    def nr_slots(self) -> int:
        return len(self.requests) + len(self.extras)

    @property
    def size(self) -> int:
        return self.requests[0].size

    def responses(self, status: int | None = None) -> list[NetifTxResponse]:
        """One response per slot in slot order: the first request's, NETIF_RSP_NULL per
        extra, then each later request's (``status`` defaults to the packet's)."""
        status = self.status if status is None else status
        first, *rest = self.requests
        return [NetifTxResponse(first.id, status),
                *(NetifTxResponse(0, NETIF_RSP_NULL) for _ in self.extras),
                *(NetifTxResponse(r.id, status) for r in rest)]


def tx_packet_chain(slots: Sequence[bytes], start: int = 0, *,
                    max_slots: int = XEN_NETIF_NR_SLOTS_MIN,
                    fatal_slots: int = FATAL_SKB_SLOTS) -> TxPacket:
    """Read the packet whose first request is ``slots[start]``; ``slots`` are the 12-byte
    tx slots the frontend has published. The next packet starts at ``start + nr_slots``.

    Two kinds of failure, as netback (``xenvif_count_requests``, ``xenvif_get_extras``):

    * dropped, ``status`` NETIF_RSP_ERROR (the ring goes on): more than ``max_slots`` data
      slots (Linux tolerates one more), or a later fragment larger than what remains of the
      total (a frame of 64 KiB or more overflowed the u16 ``size``);
    * hostile, XenError(EINVAL) (``xenvif_fatal_tx_err``: stop servicing the ring): a chain
      running past the published slots, an extra type that is NONE or unknown, a fragment
      crossing its 4 KiB frame (``offset`` + length > 4096), over ``fatal_slots`` data slots.

    The total is at most XEN_NETIF_MAX_TX_SIZE by construction (``size`` is a u16).
    """
    n = len(slots)
    if not 0 <= start < n:
        raise XenError(Errno.EINVAL, f"no tx slot at {start} of {n}")
    first = NetifTxRequest.unpack(slots[start])
    i = start + 1
    extras: list[NetifExtraInfo] = []
    more = first.flags & _EXTRA_INFO
    while more:
        if i >= n:
            raise XenError(Errno.EINVAL, "missing extra info: the chain runs past req_prod")
        extra = NetifExtraInfo.unpack(slots[i])
        i += 1
        if not 0 < extra.type < XEN_NETIF_EXTRA_TYPE_MAX:
            raise XenError(Errno.EINVAL, f"invalid extra type {extra.type}")
        extras.append(extra)
        more = extra.flags & XEN_NETIF_EXTRA_FLAG_MORE
    requests = [first]
    remaining = first.size
    drop = ""
    more = first.flags & _MORE_DATA
    while more:
        if i >= n:
            raise XenError(Errno.EINVAL, "the packet runs past req_prod")
        if len(requests) >= fatal_slots:
            raise XenError(Errno.EINVAL, f"malicious frontend: over {fatal_slots} slots")
        if not drop and len(requests) >= max_slots:
            drop = f"too many slots: over {max_slots}"
        txp = NetifTxRequest.unpack(slots[i])
        i += 1
        if not drop and txp.size > remaining:
            drop = f"fragment of {txp.size} bytes, only {remaining} remain of the total"
        remaining -= txp.size
        if txp.offset + txp.size > PAGE_SIZE:
            raise XenError(Errno.EINVAL, f"fragment crosses its page: offset {txp.offset} "
                                         f"size {txp.size}")
        requests.append(txp)
        more = txp.flags & _MORE_DATA
    if drop:
        return TxPacket(tuple(requests), tuple(extras), (), NETIF_RSP_ERROR, drop)
    if first.offset + remaining > PAGE_SIZE:
        raise XenError(Errno.EINVAL, f"first fragment crosses its page: offset "
                                     f"{first.offset} size {remaining}")
    sizes = (remaining, *(r.size for r in requests[1:]))
    return TxPacket(tuple(requests), tuple(extras), sizes)


def tx_slots_needed(length: int, offset: int = 0) -> int:
    """Data slots a ``length``-byte frame needs when it starts at ``offset`` in its first page."""
    return max(1, -(-(offset + length) // PAGE_SIZE))


def tx_slots(length: int, grefs: Sequence[int], ids: Sequence[int], *, offset: int = 0,
             flags: int = 0, extras: Sequence[NetifExtraInfo] = ()
             ) -> list[NetifTxRequest | NetifExtraInfo]:
    """Netfront's side: the tx slots, in ring order, for a ``length``-byte frame that starts
    at ``offset`` of the page granted as ``grefs[0]`` and continues at offset 0 of each next
    page (:func:`tx_slots_needed` of them; ``ids`` one per data slot).

    The first request carries the total length and ``flags`` (csum_blank/data_validated);
    more_data, extra_info and XEN_NETIF_EXTRA_FLAG_MORE are set here.
    """
    if not 0 <= length <= XEN_NETIF_MAX_TX_SIZE:
        raise XenError(Errno.E2BIG, f"a {length}-byte frame, at most {XEN_NETIF_MAX_TX_SIZE}")
    if not 0 <= offset < PAGE_SIZE:
        raise XenError(Errno.EINVAL, f"offset {offset} outside the page")
    need = tx_slots_needed(length, offset)
    if len(grefs) < need or len(ids) < need:
        raise XenError(Errno.EINVAL, f"{need} slots need {need} grefs and ids")
    first_flags = (int(flags) & ~(_MORE_DATA | _EXTRA_INFO) | (_MORE_DATA if need > 1 else 0)
                   | (_EXTRA_INFO if extras else 0))
    out: list[NetifTxRequest | NetifExtraInfo] = [
        NetifTxRequest(grefs[0], offset, first_flags, ids[0], length)]
    for k, e in enumerate(extras):
        more = XEN_NETIF_EXTRA_FLAG_MORE if k < len(extras) - 1 else 0
        out.append(dataclasses.replace(e, flags=(e.flags & ~XEN_NETIF_EXTRA_FLAG_MORE) | more))
    left = length - min(length, PAGE_SIZE - offset)
    for k in range(1, need):
        size = min(left, PAGE_SIZE)
        left -= size
        out.append(NetifTxRequest(grefs[k], 0, _MORE_DATA if k < need - 1 else 0, ids[k], size))
    return out


# -- xenstore and addresses (reference 9; libxl_nic.c) --------------------------------------

DEFAULT_MTU = 1500  # LIBXL_DEVICE_NIC_MTU_DEFAULT
XEN_OUI = "00:16:3e"


def xen_mac(random3: bytes) -> str:
    """libxl's generated MAC: Xen's OUI 00:16:3e, then 3 random bytes, the first below 0x80."""
    if len(random3) != 3:
        raise XenError(Errno.EINVAL, f"need 3 random bytes, got {len(random3)}")
    tail = bytes((random3[0] & 0x7F, random3[1], random3[2]))
    return f"{XEN_OUI}:{tail.hex(':')}"


TOOLSTACK_BACKEND_KEYS = ("frontend", "frontend-id", "online", "state", "mac", "bridge",
                          "handle", "type", "script", "ip", "rate", "mtu", "hotplug-status")
TOOLSTACK_FRONTEND_KEYS = ("backend", "backend-id", "state", "handle", "mac", "mtu", "trusted")
BACKEND_FEATURE_KEYS = ("feature-sg", "feature-gso-tcpv4", "feature-gso-tcpv6",
                        "feature-ipv6-csum-offload", "feature-rx-copy", "feature-rx-flip",
                        "feature-multicast-control", "feature-dynamic-multicast-control",
                        "feature-split-event-channels", "multi-queue-max-queues",
                        "feature-ctrl-ring", "feature-xdp-headroom")
FRONTEND_KEYS = ("tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy",
                 "feature-rx-notify", "feature-sg", "feature-gso-tcpv4", "feature-gso-tcpv6",
                 "feature-no-csum-offload", "feature-ipv6-csum-offload")
# Split event channels replace event-channel; several queues move the ring and channel keys
# under queue-N/; a control ring adds its own ref and channel.
FRONTEND_SPLIT_EVTCHN_KEYS = ("event-channel-tx", "event-channel-rx")
FRONTEND_MULTI_QUEUE_KEYS = ("multi-queue-num-queues", "queue-%u/tx-ring-ref",
                             "queue-%u/rx-ring-ref", "queue-%u/event-channel",
                             "queue-%u/event-channel-tx", "queue-%u/event-channel-rx")
FRONTEND_CTRL_KEYS = ("ctrl-ring-ref", "event-channel-ctrl", "request-multicast-control")
