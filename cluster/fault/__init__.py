"""Fault injection: nemeses for every part of a host (:mod:`.nemesis`), the processes they
signal (:mod:`.processes`), and the faults of the disks, the network and a hostile guest."""
