"""The PV console page (``xen/include/public/io/console.h``, reference 11.2).

A domain's first console is one page (start_info ``console.domU.mfn``, grant ref 0) holding two
byte rings: ``out`` carries the guest's output to the console daemon (xenconsoled), ``in``
carries keystrokes the other way. Both are flex rings (reference 7.4), so this module only fixes
the ``struct xencons_interface`` layout and names who may call what:

    in[1024] @0, out[2048] @1024, in_cons @3072, in_prod @3076,
    out_cons @3080, out_prod @3084, u8 connection @3088
"""

from __future__ import annotations

from protocols.flexring import ByteRing

XENCONSOLE_CONNECTED = 0
XENCONSOLE_DISCONNECTED = 1

IN_OFFSET, IN_SIZE = 0, 1024
OUT_OFFSET, OUT_SIZE = 1024, 2048
IN_CONS, IN_PROD = 3072, 3076
OUT_CONS, OUT_PROD = 3080, 3084
CONNECTION = 3088


class ConsoleInterface:
    """``struct xencons_interface`` over a mapped console page.

    Guest side: :meth:`write_out` (console output) and :meth:`read_in` (input).
    Backend side (the console daemon): :meth:`read_out` and :meth:`write_in`.
    Each returns what moved; the caller then signals the console event channel.
    ``connection`` tells whether the backend has connected (XENCONSOLE_*).
    """

    __slots__ = ("in_ring", "out_ring", "_connection")

    def __init__(self, buf) -> None:
        self.in_ring = ByteRing(buf, IN_OFFSET, IN_SIZE, IN_CONS, IN_PROD)
        self.out_ring = ByteRing(buf, OUT_OFFSET, OUT_SIZE, OUT_CONS, OUT_PROD)
        self._connection = memoryview(buf).cast("B")[CONNECTION:CONNECTION + 1]

    def write_out(self, data) -> int:
        """Guest: queue console output; returns the bytes accepted."""
        return self.out_ring.write(data)

    def read_in(self, max_bytes: int | None = None) -> bytes:
        """Guest: consume console input."""
        return self.in_ring.read(max_bytes)

    def read_out(self, max_bytes: int | None = None) -> bytes:
        """Backend: drain the guest's console output."""
        return self.out_ring.read(max_bytes)

    def write_in(self, data) -> int:
        """Backend: queue input for the guest; returns the bytes accepted."""
        return self.in_ring.write(data)

    @property
    def connection(self) -> int:
        return self._connection[0]

    @connection.setter
    def connection(self, state: int) -> None:
        self._connection[0] = state

    def release(self) -> None:
        """Drop the views on the page so that it can be unmapped."""
        self.in_ring.release()
        self.out_ring.release()
        self._connection.release()
