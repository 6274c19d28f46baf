"""xl.cfg domain config files, read as xl reads them (reference section 18).

``syntax`` is libxlu's file format, ``config`` the typed :class:`DomainConfig`, ``disk`` and
``vif`` the device spec strings. Every problem a user can cause raises :class:`XlCfgError`.
"""

from cluster.xlcfg.config import Action, DomainConfig, load_config, parse_config
from cluster.xlcfg.disk import DiskSpec, parse_disk_spec
from cluster.xlcfg.syntax import XlCfgError
from cluster.xlcfg.vif import RateLimit, VifSpec, parse_rate, parse_vif_spec, random_mac

__all__ = ["Action", "DiskSpec", "DomainConfig", "RateLimit", "VifSpec", "XlCfgError",
           "load_config", "parse_config", "parse_disk_spec", "parse_rate", "parse_vif_spec",
           "random_mac"]
