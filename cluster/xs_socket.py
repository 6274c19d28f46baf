"""A Dom0 tool's reads of a host's xenstore, over xenstored's Unix socket (``XENSTORED_PATH``)
as ``xenstore-ls`` makes them (``tools/libs/store/xs.c``).

Real xs_wire, so the tool sees the store exactly as Xen's own tools do; the socket is a
privileged Dom0 connection, so nothing is hidden from it. A directory is listed with
``XS_DIRECTORY_PART`` chunk by chunk, as libxenstore's ``xs_directory`` does, so no listing is
too long for one 4096-byte reply (a host's ``/vm`` holds one 36-byte UUID per domain).
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any

from protocols.errno import Errno, XenError
from protocols.xenstore.wire import XsDecoder, XsType, make_request, parse_reply

TIMEOUT_S = 10.0
MAX_RESTARTS = 100  # a directory that keeps changing under the listing


class XsSocket:
    """One privileged connection to the xenstored listening on ``path``; a context manager.
    OSError if nobody listens there."""

    def __init__(self, path: str | os.PathLike, timeout: float = TIMEOUT_S) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(os.fspath(path))
        except OSError:
            self.sock.close()
            raise
        self._decoder = XsDecoder()
        self._req_ids = itertools.count(1)

    def __enter__(self) -> XsSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, type_: XsType, *args: Any) -> Any:
        """One request, its decoded reply (an ERROR reply raises its XenError)."""
        req_id = next(self._req_ids)
        self.sock.sendall(make_request(type_, *args, req_id=req_id).pack())
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("xenstored closed the socket")
            for msg in self._decoder.feed(data):
                if msg.req_id == req_id and msg.type != XsType.WATCH_EVENT:
                    return parse_reply(msg)

    def directory(self, path: str) -> list[str]:
        """The children of ``path`` (``xs_directory``); ENOENT if it does not exist."""
        for _ in range(MAX_RESTARTS):
            children: list[str] = []
            offset, generation = 0, None
            while True:
                part = self.request(XsType.DIRECTORY_PART, path, offset)
                if generation is not None and part.generation != generation:
                    break  # changed under us: list it again
                if not (part.children or part.complete):
                    raise XenError(Errno.EINVAL, f"an empty, incomplete part of {path}")
                generation = part.generation
                children += part.children
                offset += sum(len(c) + 1 for c in part.children)
                if part.complete:
                    return children
        raise XenError(Errno.EAGAIN, f"{path} kept changing while it was listed")
