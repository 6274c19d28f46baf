"""A DomU: its PV guest kernel (:mod:`.kernel`), the init programs it runs and their guest OS
API (:mod:`.inits`, :mod:`.guestos`), and the Ray shell around them (:mod:`.actor`, the only file using Ray)."""

from actors.domain.kernel import PVKernel
from actors.guest.api import GuestOS
from actors.guest.inits import INITS

__all__ = ["INITS", "GuestOS", "PVKernel"]
