"""The deterministic schedule of a scenario: every op, inject and heal, at its second.

Jepsen's generator, written out in full before the run: the same scenario (same seed) gives
the same steps at the same times, and each inject its own seeded RNG (from the scenario's
seed, the fault's index and the occurrence), which the nemesis uses to pick a ``random``
target among the sorted candidates. So a run repeated from one seed hits the same parts at
the same times, and one step's choice never shifts another's.

A fault with ``every`` comes again every so many seconds until the run's end; one with
``for`` is healed that long after each inject; one without (and not a crash) is healed when
the run ends.
"""

from __future__ import annotations

import dataclasses
import random

from cluster.scenario.spec import Scenario

ACTIONS = ("heal", "inject", "op")  # at one instant: heal first, so faults never overlap


@dataclasses.dataclass(frozen=True, order=True)
class Step:
    at: float  # seconds after the workload's start
    action: str  # "heal", "inject" or "op"
    index: int  # which fault (inject, heal) or op of the scenario
    occurrence: int = 0  # which repetition of the fault
    seed: int = 0  # of this inject's RNG

    def rng(self) -> random.Random:
        return random.Random(self.seed)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def step_seed(scenario_seed: int, index: int, occurrence: int) -> int:
    """A 64-bit seed of its own for each inject (stable across Python runs: a str seed is
    hashed with SHA-512, not Python's salted hash)."""
    return random.Random(f"{scenario_seed}/{index}/{occurrence}").getrandbits(64)


def build(scenario: Scenario) -> list[Step]:
    """Every step of the run, in time order."""
    steps = [Step(op.at, "op", i) for i, op in enumerate(scenario.ops)]
    for i, fault in enumerate(scenario.faults):
        k, at = 0, fault.at
        while at < scenario.duration:
            steps.append(Step(at, "inject", i, k, step_seed(scenario.seed, i, k)))
            if not fault.instant:
                heal = scenario.duration if fault.lasts is None else at + fault.lasts
                steps.append(Step(min(heal, scenario.duration), "heal", i, k))
            if fault.every is None:
                break
            k += 1
            at = fault.at + k * fault.every
    return sorted(steps, key=lambda s: (s.at, ACTIONS.index(s.action), s.index, s.occurrence))
