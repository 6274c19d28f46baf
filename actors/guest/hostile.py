"""``init=hostile``: a DomU that fuzzes its own interfaces from inside (issue 12).

Why: Xen promises every other domain that whatever one guest puts into its hypercalls, its
xenstore connection, its rings and its grant and event-channel operations, they go on as
before, and the guest gets Xen's error. This init is that guest, so a campaign
(``cluster.fault.fuzz``) can check the promise.

``init=hostile target=T count=N seed=S`` sends the ``N`` inputs
:func:`actors.guest.hostile_inputs.generate` makes for target ``T`` (or for each target, in
:data:`~actors.guest.hostile_inputs.TARGETS` order, with ``all``) through the lowest doors
a guest kernel has (:class:`Doors`), and labels each answer by Xen's name for it. Any
answer other than the ones Xen gives is *unexpected*. The summary (:func:`summary`) is a
``RESULT {json}`` console line, after one line per target; then the guest idles, its own
interfaces maybe broken, as they would be on Xen.

Xenstore goes before the rings, and its last input (which may leave the connection dead or
half a message in it) after them: the ring targets read their rings and their backends'
states from xenstore, and a ring's fatal input sets its driver talking to xenstore (the
backend goes Closing), which would interleave with a message the guest sends in pieces.

The init reaches under the guest OS API to its kernel (``GuestOS._kernel``): a hostile
guest is its own kernel, and the doors it needs (raw envelopes, raw xs_wire bytes on its
connection, its own ring pages) are the kernel's.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from actors.guest.api import GuestOS, option
from actors.guest.hostile_inputs import (NO_ANSWER, TARGETS, XVDA, Context, Envelope, Input,
                                         RingSend, XsSend, generate)
from protocols.blkif import (BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
                             RESPONSE_SIZE, BlkifRequest, BlkifResponse)
from protocols.errno import Errno, XenError
from protocols.gnttab import GNTST
from protocols.hypercall import DOMID_SELF, EvtchnOp, GnttabOp, Hypercall, decode_result
from protocols.netif import (NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY,
                             TX_SLOT_SIZE, NetifTxResponse)
from protocols.ring import FrontRing
from protocols.xenbus import XenbusState
from protocols.xenstore.wire import XsDecoder, XsType, error_from_reply

ANSWER_S = 30.0  # how long the guest waits for a ring response (a loaded host is slow)
DISCONNECT_S = 30.0  # ... and for a backend to leave Connected after a fatal input


# -- the doors: how each target's input reaches Xen ----------------------------------------

def _errno_label(rc: int) -> str:
    try:
        return Errno(-rc).name
    except ValueError:
        return f"rc {rc}"


_BLKIF_STATUS = {BLKIF_RSP_OKAY: "BLKIF_RSP_OKAY", BLKIF_RSP_ERROR: "BLKIF_RSP_ERROR",
                 BLKIF_RSP_EOPNOTSUPP: "BLKIF_RSP_EOPNOTSUPP"}
_NETIF_STATUS = {NETIF_RSP_OKAY: "NETIF_RSP_OKAY", NETIF_RSP_ERROR: "NETIF_RSP_ERROR",
                 NETIF_RSP_DROPPED: "NETIF_RSP_DROPPED", NETIF_RSP_NULL: "NETIF_RSP_NULL"}


class Ring:
    """A second front end on one of the guest's own rings (its page found through its own
    grant table), publishing what :mod:`actors.domain.blkfront` or ``netfront`` never would.
    The driver still takes the responses (and counts them spurious, or calls itself
    broken); this end reads them from the page with its own consumer index, from where the
    driver left the ring idle."""

    def __init__(self, page: memoryview, entry_size: int, rsp_size: int,
                 notify: Callable[[], None], backend_connected: Callable[[], bool],
                 sleep: Callable[[float], None]) -> None:
        self.ring = FrontRing(page, entry_size)
        self.rsp_size, self.notify = rsp_size, notify
        self.backend_connected, self.sleep = backend_connected, sleep

    def attach_idle(self, timeout: float) -> bool:
        """Start at the driver's indices once every request it made is answered."""
        sring, deadline = self.ring.sring, time.monotonic() + timeout
        while sring.rsp_prod != sring.req_prod:
            if time.monotonic() > deadline:
                return False
            self.sleep(0.001)
        self.ring.attach(sring.req_prod)
        return True

    def exchange(self, send: RingSend) -> list[bytes] | str:
        """Publish, kick the backend, and return the responses, or "none" if the backend
        left Connected without answering, or "hung" if it did neither (its state is read
        every 50 ms, not on every poll of the ring)."""
        ring, sring = self.ring, self.ring.sring
        if send.jump:
            sring.req_prod = sring.rsp_prod + send.jump
        else:
            for slot in send.slots:
                ring.put_request(slot)
            ring.push_requests()
        self.notify()
        now = time.monotonic()
        deadline, look = now + (DISCONNECT_S if send.jump else ANSWER_S), now + 0.05
        want = len(send.slots) or 1
        while now < deadline:
            if ring.has_unconsumed_responses() >= want:
                return ring.get_responses(self.rsp_size)
            if now >= look:
                if not self.backend_connected():
                    return "none"
                look = now + 0.05
            self.sleep(0.001)
            now = time.monotonic()
        return "hung"


class Doors:
    """The hostile guest's ways in, from its kernel: raw hypercall envelopes, raw xs_wire
    on its own xenstore connection, and its own rings."""

    def __init__(self, os: GuestOS) -> None:
        kernel = os._kernel  # noqa: SLF001 - a hostile guest is its own kernel (docstring)
        self.hv, self.xs, self.memory = kernel.hypercall, kernel.xs, kernel.memory
        self.pages, self.start_info = kernel.pages, kernel.start_info
        self.blk, self.net = kernel.blk, kernel.net_devices
        self.os = os
        self.rings: dict[str, Ring] = {}

    # -- what it knows of itself -----------------------------------------------------------

    def context(self) -> Context:
        """Probe its own ports (EVTCHNOP_status), look at its own grant table, and grant two
        pages of its own: one to a domain that is not its backend, one read-only."""
        domid = self.os.domid
        own, nr_ports = [], 0
        for port in range(1024):
            rc, res = self.hv.raw(Hypercall.event_channel_op, EvtchnOp.status,
                                  {"dom": DOMID_SELF, "port": port})
            if rc < 0:
                break
            nr_ports = port + 1
            if res["status"]:
                own.append(port)
        table, grefs = self.blk.table, self.blk.grefs
        scratch, page = self.pages.alloc(), self.pages.alloc()
        foreign, ro = grefs.alloc(), grefs.alloc()
        table.grant_access(foreign, domid + 1000, page)
        table.grant_access(ro, 0, page, readonly=True)
        high = max(foreign, ro) + 64  # clear of what the drivers may still take
        bad = tuple(r for r in range(high, min(high + 32, table.nr_entries))
                    if not table.entry(r).flags)
        disk = self.blk.fronts.get(XVDA)
        return Context(domid=domid, others=(0, *(d for d in range(1, domid + 3) if d != domid),
                                            0x7FEF),
                       own_ports=tuple(own), nr_ports=nr_ports, nr_grefs=table.nr_entries,
                       bad_grefs=bad, foreign_gref=foreign, ro_gref=ro, scratch_pfn=scratch,
                       nr_pages=self.start_info.nr_pages,
                       sectors=disk.info.get("sectors", 0) if disk is not None else 0)

    def prepare(self, target: str) -> str:
        """Get ``target`` ready; why it cannot be fuzzed on this guest ("" if it can). A
        ring target needs its device, connected and idle; xenstore a node of its own
        (``data/hostile``) to try to give away."""
        if target == "xenstore":
            self.xs.write("data/hostile", "")
        elif target in ("blkif", "netif"):
            ring = self._ring(target)
            if isinstance(ring, str):
                return ring
            self.rings[target] = ring
        return ""

    def _ring(self, target: str) -> Ring | str:
        devices = self.blk if target == "blkif" else self.net
        front = devices.fronts.get(XVDA if target == "blkif" else 0) if devices else None
        if front is None:
            return f"no {'vbd xvda' if target == 'blkif' else 'vif 0'}"
        if target == "blkif":
            self.os.disk("xvda").read(0, 512, timeout=60)  # connected, one honest request done
            key, entry, rsp = "ring-ref", BlkifRequest.SIZE, RESPONSE_SIZE
        else:
            self.os.net(0)  # waits for the carrier
            key, entry, rsp = "tx-ring-ref", TX_SLOT_SIZE, NetifTxResponse.SIZE
        gref = int(self.xs.read(f"{front.nodename}/{key}"))
        port, state = front.evtchn, f"{front.backend}/state"
        ring = Ring(self.memory.page(self.blk.table.frame(gref)), entry, rsp,
                    lambda: self.hv.post(Hypercall.event_channel_op, EvtchnOp.send, port=port),
                    lambda: self.xs.read_str(state, "") == str(int(XenbusState.CONNECTED)),
                    self.os.sleep)
        return ring if ring.attach_idle(ANSWER_S) else "its ring never went idle"

    # -- sending ----------------------------------------------------------------------------

    def send(self, inp: Input) -> list[str]:
        """The input's answers, as labels."""
        return getattr(self, f"_send_{inp.target}")(inp.data)

    def _send_hypercall(self, env: Envelope) -> list[str]:
        cred = self.hv.cred
        domid, secret = env.claim or (cred.domid, None)
        secret = cred.secret if secret is None else secret
        try:
            reply = self.hv.transport.call(self.hv.hypervisor, "hypercall", domid, secret,
                                           cred.endpoint, env.raw, timeout=30)
            rc = decode_result(reply).rc
        except XenError as e:
            return [e.errno.name]
        except Exception as e:  # noqa: BLE001 - not Xen's answer: recorded as unexpected
            return [f"raised {type(e).__name__}"]
        return ["OK" if rc >= 0 else _errno_label(rc)]

    def _send_evtchn(self, call: tuple) -> list[str]:
        sub, args = call
        rc, _ = self.hv.raw(Hypercall.event_channel_op, sub, args)
        return ["OK" if rc >= 0 else _errno_label(rc)]

    def _send_grant(self, call: tuple) -> list[str]:
        sub, elem = call
        rc, res = self.hv.raw(Hypercall.grant_table_op, sub, {"ops": [elem]})
        if rc < 0:
            return [_errno_label(rc)]
        status = res[0]["status"]
        if sub == GnttabOp.map_grant_ref and status == GNTST.okay:  # unexpected: let go
            self.hv.raw(Hypercall.grant_table_op, GnttabOp.unmap_grant_ref, {"ops": [
                {"host_addr": 0, "dev_bus_addr": 0, "handle": res[0]["handle"]}]})
        try:
            return [f"GNTST_{GNTST(status).name}"]
        except ValueError:
            return [f"GNTST {status}"]

    def _send_xenstore(self, send: XsSend) -> list[str]:
        xs = self.xs
        domid = xs.domid if send.claim is None else send.claim
        replies: dict[int, str] = {}
        early = []
        for i, chunk in enumerate(send.chunks):
            try:
                data = xs.transport.call(xs.xenstored, "xs", domid, xs.secret, xs.endpoint,
                                         chunk, timeout=30)
            except XenError as e:
                return [e.errno.name]
            except Exception as e:  # noqa: BLE001 - not Xen's answer
                return [f"raised {type(e).__name__}"]
            got = self._xs_replies(data)
            if i < len(send.chunks) - 1 and got:
                early += [f"early {label}" for label in got.values()]
            replies.update(got)
        return early or [replies.get(req, "none") for req in send.req_ids]

    def _xs_replies(self, data: bytes) -> dict[int, str]:
        """Labels of the replies in ``data`` by req_id; watch events go to the kernel."""
        out = {}
        for msg in XsDecoder().feed(data):
            if msg.type == XsType.WATCH_EVENT:
                self.xs.on_event(msg.pack())
            elif msg.type == XsType.ERROR:
                out[msg.req_id] = error_from_reply(msg).errno.name
            else:
                out[msg.req_id] = "OK"
        return out

    def _send_blkif(self, send: RingSend) -> list[str]:
        got = self.rings["blkif"].exchange(send)
        if isinstance(got, str):
            return [got]
        return [_BLKIF_STATUS.get(s, f"status {s}") for s in
                (BlkifResponse.unpack(raw).status for raw in got)]

    def _send_netif(self, send: RingSend) -> list[str]:
        got = self.rings["netif"].exchange(send)
        if isinstance(got, str):
            return [got]
        labels = [_NETIF_STATUS.get(s, f"status {s}") for s in
                  (NetifTxResponse.unpack(raw).status for raw in got)]
        data = [label for label in labels if label != "NETIF_RSP_NULL"]  # extra-info slots
        return sorted(set(data)) if len(set(data)) > 1 else data[:1]


# -- the campaign ----------------------------------------------------------------------------

def unexpected(inp: Input, answers: list[str]) -> bool:
    """Whether Xen would have answered ``inp`` otherwise."""
    return len(answers) != len(inp.expect) or any(
        a not in e for a, e in zip(answers, inp.expect))


def summary(target: str, count: int, seed: int, results: dict[str, list[tuple[Input, list]]],
            skipped: dict[str, str], seconds: float) -> dict[str, Any]:
    """The RESULT: per target the count of each answer (the first of each input's), why
    some got none, and the inputs answered otherwise than Xen would (the first 20)."""
    odd = [{"target": inp.target, "index": inp.index, "what": inp.what, "answers": answers,
            "expected": [sorted(e) for e in inp.expect]}
           for inputs in results.values() for inp, answers in inputs if unexpected(inp, answers)]
    answers = {t: dict(Counter(a[0] if a else "none" for _, a in inputs))
               for t, inputs in results.items()}
    return {"init": "hostile", "target": target, "count": count, "seed": seed,
            "inputs": sum(map(len, results.values())), "answers": answers,
            "no_answer": {t: NO_ANSWER[t] for t, a in answers.items() if "none" in a},
            "skipped": skipped, "unexpected_count": len(odd), "unexpected": odd[:20],
            "seconds": round(seconds, 3)}


def hostile(os: GuestOS) -> None:
    """``target=hypercall|grant|evtchn|blkif|netif|xenstore|all count=20 seed=1``: the
    campaign (module docstring); prints a line per target, publishes :func:`summary`,
    then idles."""
    target = os.options().get("target", "all")
    count, seed = option(os, "count", 20, int), option(os, "seed", 1, int)
    if target != "all" and target not in TARGETS:
        raise ValueError(f"target={target!r}: want one of {', '.join(TARGETS)} or all")
    t0 = os.clock()
    doors = Doors(os)
    ctx = doors.context()
    results: dict[str, list[tuple[Input, list[str]]]] = {}
    skipped: dict[str, str] = {}
    last: list[Input] = []
    for t in TARGETS if target == "all" else (target,):
        why = doors.prepare(t)  # just before: a ring is taken where its driver left it
        if why:
            skipped[t] = why
            continue
        inputs = generate(t, count, seed, ctx)
        if t == "xenstore":  # its fatal one goes last of all (module docstring)
            inputs, last = inputs[:-1], inputs[-1:]
        results[t] = [(inp, doors.send(inp)) for inp in inputs]
    for inp in last:
        results[inp.target].append((inp, doors.send(inp)))
    out = summary(target, count, seed, results, skipped, os.clock() - t0)
    lines = [f"hostile: {t}: {len(inputs)} inputs, answers "
             f"{', '.join(f'{k} {v}' for k, v in sorted(out['answers'][t].items()))}"
             for t, inputs in results.items()]
    lines += [f"hostile: {t}: skipped: {why}" for t, why in skipped.items()]
    lines += [f"hostile: unexpected: {u['target']} #{u['index']} ({u['what']}): "
              f"{u['answers']}, Xen answers {u['expected']}" for u in out["unexpected"]]
    os.result(out, text="\n".join(lines))
    os.idle()

