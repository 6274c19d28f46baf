"""xl.cfg domain config files, read as xl reads them (reference section 18).

``syntax`` is libxlu's file format, ``config`` the checked :class:`DomainConfig`, ``disk`` and
``vif`` the device spec strings. The types themselves are libxl's
(:mod:`protocols.libxl_types`), which the toolstack consumes. Every problem a user can cause
raises :class:`XlCfgError`.
"""

from cluster.xlcfg.config import load_config, parse_config
from cluster.xlcfg.disk import parse_disk_spec
from cluster.xlcfg.syntax import XlCfgError
from cluster.xlcfg.vif import parse_rate, parse_vif_spec
from protocols.libxl_types import Action, DiskSpec, DomainConfig, RateLimit, VifSpec

__all__ = ["Action", "DiskSpec", "DomainConfig", "RateLimit", "VifSpec", "XlCfgError",
           "load_config", "parse_config", "parse_disk_spec", "parse_rate", "parse_vif_spec"]
