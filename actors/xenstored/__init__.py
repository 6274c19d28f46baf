"""xenstored (reference section 11): one per emulated host, in Dom0. ``server`` serves the
store (:mod:`protocols.xenstore`) to connections; ``unix_socket`` exposes it to the real Xen
tools (``xenstore-utils``, ``pyxs``) through ``XENSTORED_PATH``; ``durable`` keeps what it
acknowledged in a ``journal``, from which a killed xenstored restarts."""

from actors.xenstored.server import ServerStatistics, XenstoredServer
from actors.xenstored.unix_socket import UnixSocketServer

__all__ = ["ServerStatistics", "UnixSocketServer", "XenstoredServer"]
