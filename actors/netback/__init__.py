"""netback: Dom0's network backend (Linux ``drivers/net/xen-netback``).

``xenbus`` is the control path (the vif's part of the handshake and its hotplug, pure),
``vif`` the data path (the rings and the vifs' bridge ports), ``credit`` the ``rate``; the
bridges and uplinks are actors/hostnet/'s; only ``actor`` knows Ray.
"""
