"""The schedule (cluster.scenario.schedule): the same seed gives the same steps at the same
times and, through each inject's own RNG, the same random targets; another seed does not."""

from cluster.fault import nemesis
from cluster.scenario import schedule, spec

TEXT = '''
name = "t"
seed = {seed}
duration = 60
[hosts]
count = 2
[[domain]]
name = "c1"
config = 'extra = "init=counter"'
[[fault]]
kind = "freeze"
target = {{ role = "domu", random = true }}
at = 5
for = 2
every = 7
[[fault]]
kind = "crash"
target = {{ role = "blkback", random = true }}
at = 3
every = 20
[[fault]]
kind = "freeze"
target = {{ role = "xenstored", host = "h2" }}
at = 50
'''


class Listing:
    """What nemesis.candidates reads of a cluster: its hosts and `xl list` rows."""

    hosts = ["h1", "h2"]

    def list(self, errors=None):
        return [{"name": f"d{i}", "domid": i + 1, "host": self.hosts[i % 2]} for i in range(8)]


def plan(seed: int) -> list[tuple]:
    """The schedule with every inject's targets resolved as the nemesis resolves them."""
    scenario = spec.parse(TEXT.format(seed=seed))
    out = []
    for step in schedule.build(scenario):
        targets = None
        if step.action == "inject":
            targets = nemesis.choose(Listing(), scenario.faults[step.index].target, step.rng())
        out.append((step.at, step.action, step.index, step.occurrence, targets))
    return out


def test_the_schedule_is_every_step_in_time_order():
    steps = schedule.build(spec.parse(TEXT.format(seed=7)))
    assert [(s.at, s.action, s.index) for s in steps] == sorted(
        [(3.0, "inject", 1), (23.0, "inject", 1), (43.0, "inject", 1)]
        + [(5.0 + 7 * k, "inject", 0) for k in range(8)]
        + [(7.0 + 7 * k, "heal", 0) for k in range(8)]
        + [(50.0, "inject", 2), (60.0, "heal", 2)],  # no `for`: healed when the run ends
        key=lambda x: (x[0], schedule.ACTIONS.index(x[1])))


def test_a_heal_and_an_inject_at_one_instant_heal_first():
    steps = schedule.build(spec.parse(TEXT.format(seed=7).replace("for = 2", "for = 7")
                                      .replace("every = 7", "every = 7.5")))
    at = {(s.at, s.action) for s in steps}
    assert (12.0, "heal") in at and (12.5, "inject") in at
    first = [s.action for s in steps if s.at == 12.0]
    assert first == ["heal"]


def test_the_same_seed_gives_the_same_faults_at_the_same_times_and_targets():
    assert plan(7) == plan(7)
    randoms = [p[4] for p in plan(7) if p[1] == "inject" and p[2] in (0, 1)]
    assert all(len(t) == 1 for t in randoms)  # one part picked each time
    assert len({t[0] for t in randoms}) > 2  # and not always the same one
    assert [p[4] for p in plan(7) if p[2] == 2 and p[1] == "inject"] == [["h2/xenstored"]]


def test_another_seed_picks_other_targets_at_the_same_times():
    a, b = plan(7), plan(8)
    assert [p[:4] for p in a] == [p[:4] for p in b]
    assert [p[4] for p in a] != [p[4] for p in b]
