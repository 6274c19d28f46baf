"""Fault-injection scenarios (issue 12): a TOML file of hosts, domains, ops, faults and
checks (:mod:`.spec`), its deterministic schedule (:mod:`.schedule`), the run
(:mod:`.runner`) and its history (:mod:`.history`), the checkers that judge it
(:mod:`.checkers`), the timeline PNG (:mod:`.plot`), what a person sees (:mod:`.report`) and
``xenray run`` (:mod:`.command`). Shipped scenarios live in ``library/``."""
