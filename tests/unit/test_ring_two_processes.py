"""One blkif ring in a /dev/shm page between two OS processes (xen-reference.md 7.3, 19.2).

The backend is a forked process; each direction has an eventfd doorbell, rung only when the
push's notify check says so, and each side makes the two-step final check before it blocks.
A lost wakeup shows up as a wait that times out, which fails the test instead of hanging it.
"""

import array
import functools
import multiprocessing
import os
import traceback
from collections import deque

import pytest

from cluster.bench.raw_ring import RawRing, doorbell, forked_ring, mapped
from protocols.blkif import (BLKIF_OP_READ, BLKIF_OP_WRITE, REQUEST_SIZE, RESPONSE_SIZE,
                             BlkifRequest, BlkifRequestSegment, BlkifResponse)
from protocols.ring import BackRing, FrontRing

N = 200_000
NO_PROGRESS_S = 60.0  # a wait this long without a doorbell means a lost wakeup


def _request(seq: int) -> BlkifRequest:
    """Request ``seq``: id = seq, every other field varying with it."""
    nr = 1 + seq % 11
    segs = tuple(BlkifRequestSegment(gref=(seq * 13 + i) & 0xFFFFFFFF, first_sect=(seq + i) % 8,
                                     last_sect=7) for i in range(nr))
    return BlkifRequest(operation=BLKIF_OP_WRITE if seq % 3 == 0 else BLKIF_OP_READ,
                        nr_segments=nr, handle=51712 + seq % 16, id=seq,
                        sector_number=seq * 8 + (seq >> 5), segments=segs)


def _checksum(req: BlkifRequest) -> int:
    """A positive s16 digest of every field, which the backend returns as the status."""
    h = req.operation * 31 + req.nr_segments * 7 + req.handle * 3 + req.sector_number
    for s in req.segments[:req.nr_segments]:
        h = h * 33 + s.gref * 5 + s.first_sect * 9 + s.last_sect
    return h % 32749


def _backend(path: str, kick_fd: int, notify_fd: int, *, conn, n: int) -> None:
    """blkback's loop: copy requests out, answer each, push, ring only when told to."""
    try:
        with mapped(path, 1) as page:
            back = BackRing(page, REQUEST_SIZE)
            back.init()
            ids, rung, done = array.array("Q"), 0, 0
            while done < n:
                reqs = back.get_requests(REQUEST_SIZE)
                if not reqs:
                    if not back.final_check_for_requests():
                        doorbell(kick_fd, None, f"requests after {done}", NO_PROGRESS_S)
                    continue
                for raw in reqs:
                    req = BlkifRequest.unpack(raw)
                    ids.append(req.id)
                    back.put_response(BlkifResponse(req.id, req.operation,
                                                    _checksum(req)).pack())
                done += len(reqs)
                if back.push_responses():
                    os.eventfd_write(notify_fd, 1)
                    rung += 1
            conn.send({"ids": ids.tobytes(), "rung": rung, "stats": back.statistics()})
            back.release()
    except Exception:  # reported by the parent
        conn.send({"error": traceback.format_exc()})


def _frontend(front: FrontRing, ring: RawRing, n: int) -> int:
    """blkfront's loop: fill the ring, push, check each response; returns doorbells rung."""
    inflight: deque[tuple[int, int, int]] = deque()
    sent = received = rung = 0
    while received < n:
        put = 0
        while sent < n and not front.full():
            req = _request(sent)
            front.put_request(req.pack())
            inflight.append((req.id, req.operation, _checksum(req)))
            sent += 1
            put += 1
        if put and front.push_requests():
            os.eventfd_write(ring.kick, 1)
            rung += 1
        rsps = front.get_responses(RESPONSE_SIZE)
        for raw in rsps:
            rsp = BlkifResponse.unpack(raw)
            expected = inflight.popleft()
            assert (rsp.id, rsp.operation, rsp.status) == expected, f"response {received}"
            received += 1
        if not put and not rsps and not front.final_check_for_responses():
            ring.wait(f"responses after {received}", NO_PROGRESS_S)
    assert not inflight
    return rung


def test_ring_7_3_two_processes_exchange_blkif_requests_with_few_doorbells():
    parent_conn, child_conn = multiprocessing.get_context("fork").Pipe(duplex=False)
    backend = functools.partial(_backend, conn=child_conn, n=N)
    try:
        with forked_ring(1, backend, "test-ring") as ring:
            front = FrontRing(ring.view, REQUEST_SIZE)
            front.init()  # only the frontend runs SHARED_RING_INIT
            try:
                front_rung = _frontend(front, ring, N)
            except ChildProcessError as e:
                report = parent_conn.recv() if parent_conn.poll(0) else {"error": "no report"}
                pytest.fail(f"{e}:\n{report.get('error')}")
            finally:
                front.release()
            assert parent_conn.poll(NO_PROGRESS_S), "the backend sent no result"
            result = parent_conn.recv()
            assert "error" not in result, result.get("error")
            ids = array.array("Q")
            ids.frombytes(result["ids"])
            assert ids == array.array("Q", range(N)), "backend saw requests lost or out of order"
            back_rung = result["rung"]
            assert front.statistics().notifies == front_rung
            assert result["stats"].notifies == back_rung
            counts = f"front rang {front_rung}, back rang {back_rung} for {N} requests"
            assert 0 < front_rung < N / 4, counts
            assert 0 < back_rung < N / 4, counts
        assert ring.backend.exitcode == 0
    finally:
        parent_conn.close()
        child_conn.close()
