"""xenconsoled (reference 7.4, 11.2, 11.5; ``tools/console/daemon/io.c``): one per emulated
host, in Dom0. ``daemon`` drains every guest's console ring into a log file; ``actor`` is its
Ray shell."""

from actors.console.daemon import ConsoleDaemon

__all__ = ["ConsoleDaemon"]
