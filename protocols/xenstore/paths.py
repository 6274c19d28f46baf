"""Xenstore path syntax and tree arithmetic (reference 11.1 "Paths"; ``tools/xenstored/core.c``
``canonicalize``, ``get_parent``; ``tools/xenstored/watch.c`` ``is_child``).

Every request that names a node goes through :func:`canonicalize` first, so this is where a
hostile or buggy peer's path is refused with EINVAL, whatever string it sends. The rules:

* characters: ASCII alphanumerics and ``-/_@`` only, never empty;
* no ``//`` anywhere and no trailing ``/`` (except ``/`` itself);
* a leading ``@`` names a special node (``@introduceDomain``, ``@releaseDomain``), accepted only
  by WATCH, UNWATCH, GET_PERMS and SET_PERMS;
* a relative path is relative to the caller's home, ``/local/domain/<domid>``: a domain's
  own, or for a Unix-socket connection the store domain's, normally ``/local/domain/0``
  (``get_implicit_path`` in ``tools/xenstored/domain.c``);
* at most ``XENSTORE_ABS_PATH_MAX`` (3072) characters in all; an unprivileged caller is also
  held to the path-length quota (``XENSTORE_REL_PATH_MAX``, 2048) for the part after any
  ``/local/domain/<id>/`` prefix, as C's ``domain_max_chk(conn, ACC_PATHLEN, ...)`` does.
"""

from __future__ import annotations

import re

from protocols.errno import Errno, XenError

XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
SPECIAL_PATHS = (INTRODUCE_DOMAIN, RELEASE_DOMAIN)

_VALID = re.compile(r"[A-Za-z0-9/_@-]+")
_LOCAL_PREFIX = re.compile(r"/local/domain/[0-9]{1,5}/")


LOCAL_DOMAIN = "/local/domain"  # every domain's home is below it


def domain_path(domid: int) -> str:
    """``GET_DOMAIN_PATH``: the home of domain ``domid``, base of its relative paths."""
    return f"{LOCAL_DOMAIN}/{domid}"


def canonicalize(path: str, domid: int, *, allow_special: bool = False,
                 path_max: int | None = None) -> str:
    """The absolute path ``path`` names for a caller ``domid``, or EINVAL.

    ``domid`` is the caller's domain, the store domain for a Unix-socket connection (C sets a
    socket connection's id to ``store_domid``); ``path_max`` is the caller's path-length
    quota (None for privileged callers).
    """
    if not isinstance(path, str) or not _VALID.fullmatch(path):
        raise XenError(Errno.EINVAL, f"invalid characters in path {path!r:.80}")
    if path[0] == "@":
        if not allow_special:
            raise XenError(Errno.EINVAL, f"special path {path:.80} not allowed here")
        name = path
    elif path[0] == "/":
        name = path
    else:
        name = f"{domain_path(domid)}/{path}"
    if (name.endswith("/") and name != "/") or "//" in name:
        raise XenError(Errno.EINVAL, f"malformed path {name:.80}")
    if len(name) > XENSTORE_ABS_PATH_MAX:
        raise XenError(Errno.EINVAL, f"path longer than {XENSTORE_ABS_PATH_MAX}")
    if path_max:
        local = _LOCAL_PREFIX.match(name)
        if len(name) - (local.end() if local else 0) > path_max:
            raise XenError(Errno.EINVAL, f"path longer than the quota of {path_max}")
    return name


def parent(name: str) -> str:
    """``get_parent``: drop the last component; ``/x`` and ``@x`` have parent ``/``."""
    slash = name.rfind("/", 1)
    return name[:slash] if slash > 0 else "/"


def basename(name: str) -> str:
    """The last component of a path other than ``/``."""
    return name[name.rfind("/") + 1:]


def child(name: str, leaf: str) -> str:
    """``child_name``: the path of child ``leaf`` of ``name``."""
    return f"/{leaf}" if name == "/" else f"{name}/{leaf}"


def ancestors(name: str) -> list[str]:
    """The :func:`parent` chain of ``name`` up to and including ``/``, nearest first."""
    found = []
    while name != "/":
        name = parent(name)
        found.append(name)
    return found


def is_child(name: str, watched: str, depth: int | None) -> bool:
    """``is_child``: ``name`` is ``watched`` or below it, at most ``depth`` levels down
    (None: any depth; 0: the node only; 1: it and its direct children)."""
    if name == watched:
        return True
    if watched == "/":
        if not name.startswith("/"):
            return False
        levels = name.count("/")
    elif name.startswith(watched) and name[len(watched)] == "/":
        levels = name.count("/", len(watched))
    else:
        return False
    return depth is None or levels <= depth


# -- where the toolstack puts things (reference 11.5; docs/misc/xenstore-paths.pandoc) -------

# xenray's guest kernel writes "running NAME" here (relative to its home, in the guest-writable
# ``~/data``) just before it runs its init program, or "panic: ..." when it cannot; the
# toolstack's create waits for it.
INIT_STATUS = "data/init"

def backend_path(kind: str, domid: int, devid: int | None = None,
                 backend_domid: int = 0) -> str:
    """A device's backend directory, ``<backend home>/backend/<kind>/<domid>[/<devid>]``
    (``libxl__device_backend_path``); without ``devid``, all of that domain's of that kind."""
    base = f"{domain_path(backend_domid)}/backend/{kind}/{domid}"
    return base if devid is None else f"{base}/{devid}"


def frontend_path(kind: str, domid: int, devid: int | None = None) -> str:
    """A device's frontend directory, ``~/device/<kind>[/<devid>]`` (``libxl__device_frontend_path``)."""
    base = f"{domain_path(domid)}/device/{kind}"
    return base if devid is None else f"{base}/{devid}"


def vm_path(uuid: str) -> str:
    """``/vm/<uuid>``: the domain's toolstack-side record, not visible to the guest."""
    return f"/vm/{uuid}"


def libxl_path(domid: int) -> str:
    """``/libxl/<domid>``: libxl's private record of a domain (Dom0 only)."""
    return f"/libxl/{domid}"


def pool_path(poolid: int) -> str:
    """``/local/pool/<poolid>``: a cpupool's entry (``xen-init-dom0`` writes Pool-0's name)."""
    return f"/local/pool/{poolid}"


def libxl_device_path(domid: int, kind: str, devid: int) -> str:
    """``/libxl/<domid>/device/<kind>/<devid>``: libxl's own record of a device's frontend
    and backend (``libxl__domain_device_libxl_path``)."""
    return f"{libxl_path(domid)}/device/{kind}/{devid}"


def backend_kind_path(kind: str, backend_domid: int = 0) -> str:
    """``<backend home>/backend/<kind>``: every device of that kind the domain serves, the
    directory a backend driver watches (Linux ``xenbus_probe_backend``); the parent of each
    :func:`backend_path` of that kind."""
    return f"{domain_path(backend_domid)}/backend/{kind}"


def tool_path(tool: str) -> str:
    """``/tool/<tool>``: a tool's own records (xenstore-paths.pandoc ``/tool/$TOOL``)."""
    return f"/tool/{tool}"
