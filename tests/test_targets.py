"""`benchmarks/targets.py`'s budget: what a target ratio leaves the fused attention."""

import pytest

from benchmarks import targets


def test_budget_is_the_target_minus_everything_else():
    # Twin 100 ms, target 1.3: the step may take 130 ms; 150 - 60 = 90 ms is not the attention.
    budget = targets.budget(1.3, 100.0, 150.0, 60.0, {"products": 20.0, "products and exponentials": 30.0})
    assert budget["budget_ms"] == pytest.approx(40.0)
    assert budget["speedup_needed"] == pytest.approx(1.5)
    assert budget["floor_share_needed"] == pytest.approx({"products": 0.5, "products and exponentials": 0.75})
    assert budget["floor_share_now"] == pytest.approx({"products": 1 / 3, "products and exponentials": 0.5})


def test_budget_below_the_floor_and_below_zero():
    below_floor = targets.budget(1.3, 100.0, 150.0, 60.0, {"products": 50.0})
    assert below_floor["floor_share_needed"]["products"] == pytest.approx(1.25)  # > 1: out of reach
    nothing_left = targets.budget(1.0, 100.0, 160.0, 50.0, {"products": 10.0})  # the rest alone is 110 ms
    assert nothing_left["budget_ms"] == pytest.approx(-10.0)
    assert nothing_left["speedup_needed"] is None and nothing_left["floor_share_needed"] == {"products": None}


def test_every_layer_target_is_at_a_distinct_shape():
    shapes = [(filters, size) for filters, size, _ in targets.LAYER_SHAPES]
    assert len(set(shapes)) == len(shapes)
