"""blkback: Dom0's block backend (Linux ``drivers/block/xen-blkback``), serving blkif rings
(``xen/include/public/io/blkif.h``) from raw image files.

``vbd`` is the image, ``ring`` the per-device data path; both are pure (no Ray).
"""
