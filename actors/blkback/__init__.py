"""blkback: Dom0's block backend (Linux ``drivers/block/xen-blkback``), serving blkif rings
(``xen/include/public/io/blkif.h``) from raw image files.

``xenbus`` is the control path (the vbd's part of the handshake, pure), ``ring`` the data
path (the rings, served on Dom0's ports), ``vbd`` the image; only ``actor`` knows Ray.
"""
