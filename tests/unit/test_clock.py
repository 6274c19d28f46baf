"""The test clock (tests/clock.py): calls run when, and only when, the test moves time."""


def test_manual_runtime_runs_due_calls_in_order_and_skips_cancelled(clock):
    ran = []
    clock.call_later(2.0, ran.append, "b")
    clock.call_later(1.0, ran.append, "a")
    late = clock.call_later(3.0, ran.append, "c")
    assert clock.advance(0.5) == 0 and ran == []
    late.cancel()
    assert clock.advance(5.0) == 2 and ran == ["a", "b"]
    assert clock.monotonic() == 1005.5 and clock.pending() == 0


def test_manual_runtime_a_call_scheduled_by_a_due_call_runs_if_due(clock):
    ran = []
    clock.call_later(1.0, lambda: clock.call_later(1.0, ran.append, "again"))
    clock.advance(1.5)
    assert ran == []
    clock.advance(0.5)
    assert ran == ["again"]
