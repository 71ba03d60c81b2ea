"""qkernels bench's timing loop: candidates take turns, cycling through their weight copies."""

from qkernels.bench import timing


def test_candidates_take_turns_and_cycle_through_copies(monkeypatch):
    monkeypatch.setattr(timing, "SLICE", 0.0)  # a turn is one call
    order = []
    candidates = [[lambda: order.append("a")], [lambda: order.append("b1"), lambda: order.append("b2")]]
    times = timing.measure_together(candidates, budget=0.0, min_repeats=3)
    assert [len(t) for t in times] == [3, 3]
    assert order == ["a", "b1", "a", "b2", "a", "b1"]


def test_the_repeat_limits_bound_each_candidate():
    calls = [0, 0]

    def fast(i):
        def call():
            calls[i] += 1
        return [call]

    times = timing.measure_together([fast(0), fast(1)], budget=0.0, min_repeats=5)
    assert [len(t) for t in times] == [5, 5] and calls == [5, 5]  # no budget: the minimum only
    times = timing.measure_together([fast(0), fast(1)], budget=1.0)
    assert [len(t) for t in times] == [timing.MAX_REPEATS] * 2  # fast calls stop at the repeat limit
