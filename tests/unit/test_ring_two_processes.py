"""One blkif ring in a /dev/shm page between two OS processes (xen-reference.md 7.3, 19.2).

The backend is a forked process; each direction has an eventfd doorbell, rung only when the
push's notify check says so, and each side makes the two-step final check before it blocks.
A lost wakeup shows up as a wait that times out, which fails the test instead of hanging it.
"""

import array
import mmap
import multiprocessing
import os
import select
import traceback
import uuid
from collections import deque

import pytest

from protocols.blkif import (BLKIF_OP_READ, BLKIF_OP_WRITE, REQUEST_SIZE, RESPONSE_SIZE,
                             BlkifRequest, BlkifRequestSegment, BlkifResponse)
from protocols.ring import PAGE_SIZE, BackRing, FrontRing

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


def _wait(fd: int, what: str, peer_sentinel: int | None = None) -> None:
    """Block on a doorbell; fail if none comes in time or the peer process has exited."""
    watched = [fd] if peer_sentinel is None else [fd, peer_sentinel]
    ready = select.select(watched, [], [], NO_PROGRESS_S)[0]
    if fd in ready:
        os.eventfd_read(fd)
    elif ready:
        raise ChildProcessError(f"the backend exited while the frontend waited for {what}")
    else:
        raise TimeoutError(f"no doorbell in {NO_PROGRESS_S} s while waiting for {what}")


def _backend(path: str, kick_fd: int, notify_fd: int, conn, n: int) -> None:
    """blkback's loop: copy requests out, answer each, push, ring only when told to."""
    try:
        fd = os.open(path, os.O_RDWR)
        mm = mmap.mmap(fd, PAGE_SIZE)
        os.close(fd)
        back = BackRing(mm, REQUEST_SIZE)
        back.init()
        ids, rung, done = array.array("Q"), 0, 0
        while done < n:
            reqs = back.get_requests(REQUEST_SIZE)
            if not reqs:
                if not back.final_check_for_requests():
                    _wait(kick_fd, f"requests after {done}")
                continue
            for raw in reqs:
                req = BlkifRequest.unpack(raw)
                ids.append(req.id)
                back.put_response(BlkifResponse(req.id, req.operation, _checksum(req)).pack())
            done += len(reqs)
            if back.push_responses():
                os.eventfd_write(notify_fd, 1)
                rung += 1
        conn.send({"ids": ids.tobytes(), "rung": rung, "stats": back.statistics()})
        back.release()
        mm.close()
    except Exception:  # reported by the parent
        conn.send({"error": traceback.format_exc()})


def _frontend(front: FrontRing, kick_fd: int, notify_fd: int, backend: int, n: int) -> int:
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
            os.eventfd_write(kick_fd, 1)
            rung += 1
        rsps = front.get_responses(RESPONSE_SIZE)
        for raw in rsps:
            rsp = BlkifResponse.unpack(raw)
            expected = inflight.popleft()
            assert (rsp.id, rsp.operation, rsp.status) == expected, f"response {received}"
            received += 1
        if not put and not rsps and not front.final_check_for_responses():
            _wait(notify_fd, f"responses after {received}", backend)
    assert not inflight
    return rung


def test_ring_7_3_two_processes_exchange_blkif_requests_with_few_doorbells():
    path = f"/dev/shm/xenray-test-ring-{os.getpid()}-{uuid.uuid4().hex}"
    to_back = os.eventfd(0, os.EFD_NONBLOCK)
    to_front = os.eventfd(0, os.EFD_NONBLOCK)
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    proc = None
    try:
        os.ftruncate(fd, PAGE_SIZE)
        mm = mmap.mmap(fd, PAGE_SIZE)
        front = FrontRing(mm, REQUEST_SIZE)
        front.init()  # only the frontend runs SHARED_RING_INIT
        proc = ctx.Process(target=_backend, args=(path, to_back, to_front, child_conn, N))
        proc.start()
        try:
            front_rung = _frontend(front, to_back, to_front, proc.sentinel, N)
        except ChildProcessError as e:
            report = parent_conn.recv() if parent_conn.poll(0) else {"error": "no report"}
            pytest.fail(f"{e}:\n{report.get('error')}")
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
        front.release()
        mm.close()
    finally:
        if proc is not None:
            proc.join(5)  # it has sent its result, or the test is failing anyway
            if proc.is_alive():
                proc.kill()
                proc.join()
        os.close(fd)
        os.unlink(path)
        for f in (to_back, to_front):
            os.close(f)
        parent_conn.close()
        child_conn.close()
    assert proc.exitcode == 0

