"""Xenstore (reference section 11): the store model and its permissions, paths and quotas."""

from protocols.xenstore.domain import DomainInfo
from protocols.xenstore.paths import (INTRODUCE_DOMAIN, RELEASE_DOMAIN, XENSTORE_ABS_PATH_MAX,
                                      XENSTORE_REL_PATH_MAX, canonicalize, domain_path)
from protocols.xenstore.perms import (DOMID_ANY, DOMID_SELF, XS_PERM_NONE, XS_PERM_OWNER,
                                      XS_PERM_READ, XS_PERM_WRITE, Conn, Perm, format_perms,
                                      parse_perms, perm_for_conn)
from protocols.xenstore.quota import Quota
from protocols.xenstore.store import Store, StoreStatistics
from protocols.xenstore.watches import WatchEvent

__all__ = [
    "DOMID_ANY", "DOMID_SELF", "INTRODUCE_DOMAIN", "RELEASE_DOMAIN", "XENSTORE_ABS_PATH_MAX",
    "XENSTORE_REL_PATH_MAX", "XS_PERM_NONE", "XS_PERM_OWNER", "XS_PERM_READ", "XS_PERM_WRITE",
    "Conn", "DomainInfo", "Perm", "Quota", "Store", "StoreStatistics", "WatchEvent",
    "canonicalize", "domain_path", "format_perms", "parse_perms", "perm_for_conn",
]
