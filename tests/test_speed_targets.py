"""`benchmarks/speed_targets.py`'s per-round ratios: each AA round paired with its twin's round."""

import pytest

from benchmarks import speed_targets


def test_round_ratios_pair_each_round_with_its_twin():
    # Rounds 0.5, 4, 0.5; each side sorted first would pair 1/1, 2/2, 4/4 (all 1), as would the
    # ratio of the medians (2 / 2).
    paired = speed_targets._round_ratios([1, 4, 2], [2, 1, 4])["round_ratios"]
    assert paired == pytest.approx({"q1": 0.5, "median": 0.5, "q3": 2.25})
    drifting = speed_targets._round_ratios([3, 6, 1.5], [1, 2, 0.5])["round_ratios"]  # the machine's speed moved
    assert drifting == pytest.approx({"q1": 3.0, "median": 3.0, "q3": 3.0})


def test_round_ratios_quartiles():
    quartiles = speed_targets._round_ratios([1, 2, 4, 8, 16], [2, 2, 2, 2, 2])["round_ratios"]
    assert quartiles == pytest.approx({"q1": 1.0, "median": 2.0, "q3": 4.0})


def test_round_ratios_need_two_rounds():
    assert speed_targets._round_ratios([1.0], [2.0]) == {}
    assert speed_targets._round_ratios(None, [1.0, 2.0]) == {}


@pytest.mark.parametrize(
    "quartiles, verdict",
    [((1.0, 1.1, 1.15), "met"), ((1.16, 1.2, 1.3), "not met"), ((1.1, 1.2, 1.3), "within the spread"),
     ((1.15, 1.16, 1.2), "within the spread")],
)
def test_verdict_reads_the_rounds_quartiles_against_the_target(quartiles, verdict):
    row = {"target_max": 1.15, "ratio": 1.0, "round_ratios": dict(zip(("q1", "median", "q3"), quartiles))}
    assert speed_targets._verdict(row) == verdict


def test_verdict_of_a_single_measurement_is_its_ratio():
    assert speed_targets._verdict({"target_max": 1.25, "ratio": 1.05}) == "met"
    assert speed_targets._verdict({"target_max": 1.25, "ratio": 1.3}) == "not met"
    assert speed_targets._verdict({"target_max": 1.25, "ratio": None}) is None
