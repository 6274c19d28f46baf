"""netback: Dom0's network backend (Linux ``drivers/net/xen-netback``) and its bridge."""
