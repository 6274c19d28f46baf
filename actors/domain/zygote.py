"""The zygote: a plain process that has imported the domain kernel, and forks a domain
process on request (Android's zygote, Python's ``forkserver``).

Its fork server (``actors.forkserver``, a Ray actor) starts it with pipes for stdin and stdout. It
imports everything a domain runs, freezes the garbage collector's generations (so a child
touching no object does not copy the page it lies in), says ``ready``, and then, for each
line read (a
component, ``vm-1a2b``), forks: the child connects to the fork server's socket and waits to
be bound to a domain; the zygote writes the child's pid back. It has one thread, so the fork
is safe, and it ignores SIGCHLD, so its children are reaped by the kernel (the hypervisor
watches each through a pidfd all the same). Its stdin closing (the fork server gone) ends
it; its children live on and connect to the server Ray starts again.

A child shares the zygote's pages until it writes them: an idle domain costs a few MiB of
its own (``xenray bench scale`` measures it) where a Ray worker costs 43.
"""

from __future__ import annotations

import gc
import os
import signal
import sys


def main(argv: list[str]) -> None:
    name, host, log_dir = argv
    address = "\0" + name  # the fork server's socket, in the abstract namespace
    from actors.domain.actor import DomainProcess  # noqa: F401 - imported once, for all
    from actors.transport import relay  # noqa: F401
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    out = sys.stdout
    out.write("ready\n")  # the first create does not wait for the imports
    out.flush()
    for line in sys.stdin:
        component = line.strip()
        if not component:
            continue
        pid = os.fork()
        if pid == 0:
            _child(address, host, component, log_dir or None)
        out.write(f"{pid}\n")
        out.flush()


def _child(address: str, host: str, component: str, log_dir: str | None) -> None:
    """Become a domain process: connect to the fork server, serve until it is gone for
    good. Never returns."""
    status = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # not in the zygote's process group: a signal to it is not ours
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)  # the zygote's pipes are its own
        os.dup2(2, 1)
        os.close(null)
        from actors.domain.actor import DomainProcess
        from actors.transport.naming import forked_component
        from actors.transport.relay import RelayClient

        process: DomainProcess | None = None
        client = RelayClient(address, component, lambda kind, *args: process.deliver(
            kind, *args))
        process = DomainProcess(host, forked_component(component), log_dir, client)
        client.connect()
        client.serve()
        status = 0
    except BaseException as e:  # noqa: BLE001 - the child must never return into the loop
        print(f"domain process {component} failed: {e!r}", file=sys.stderr, flush=True)
    finally:
        os._exit(status)


if __name__ == "__main__":
    main(sys.argv[1:])
