"""What every domain of a host holds, for ``xenray audit`` (``cluster/audit.py``): a
read-only view of the hypervisor's state, apart from the state machine that changes it.

Per domain: its state, pages and UUID (the toolstack's ``/vm/<uuid>``), the grant maps it
holds (granter, gref, ``GNTMAP_*``; who maps a domain's grants is in the others' lists) and
its event channels in use, with their peer and the endpoint that bound them. A zombie
(destroyed, its pages still mapped by another domain) is listed, dead, with no ports.
"""

from __future__ import annotations

import uuid
from typing import Any

from actors.hypervisor.domains import Domain
from actors.hypervisor.state import Hypervisor
from protocols import evtchn as ev
from protocols.errno import XenError


def audit(hv: Hypervisor) -> dict[str, Any]:
    return {"domains": [_domain(hv, hv.table.domains[d]) for d in sorted(hv.table.domains)]}


def _domain(hv: Hypervisor, dom: Domain) -> dict[str, Any]:
    d = dom.domid
    try:
        rows = hv.evtchn.save(d)["ports"]
    except XenError:  # a zombie: its event channels went with it
        rows = []
    ports = [{"port": port, "state": ev.ECS(state).name.lower(), "vcpu": vcpu,
              "remote_dom": a if state in (ev.ECS.UNBOUND, ev.ECS.INTERDOMAIN) else None,
              "remote_port": b if state == ev.ECS.INTERDOMAIN else None,
              "endpoint": hv.port_endpoint(d, port)}
             for port, state, vcpu, a, b in rows]
    return {"domid": d, "state": dom.dying.name.lower(), "privileged": dom.privileged,
            "pages": dom.tot_pages, "uuid": str(uuid.UUID(bytes=dom.handle)),
            "maps": [list(m) for m in hv.grants.mappings(d)], "ports": ports}
