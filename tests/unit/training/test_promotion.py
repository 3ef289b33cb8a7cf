"""The promotion gate (pure)."""
import numpy as np
import pytest

from categories_classification.training.evaluation import top_k_accuracy
from categories_classification.training.promotion import DEFAULT_TOLERANCE, decide


def test_first_version_is_always_promoted():
    decision = decide(0.1, None, None)
    assert decision.promote and decision.label == "promoted" and "first version" in decision.reason


@pytest.mark.parametrize("challenger, champion, promoted", [
    (0.90, 0.80, True),                         # better
    (0.80, 0.80, True),                         # equal
    (0.80 - DEFAULT_TOLERANCE, 0.80, True),     # worse, but within tolerance
    (0.78, 0.80, False),                        # worse than tolerance allows
])
def test_not_worse_than_champion_by_more_than_tolerance(challenger, champion, promoted):
    decision = decide(challenger, champion, 4)
    assert decision.promote is promoted
    assert "champion v4" in decision.reason and decision.champion_version == 4


def test_tolerance_is_configurable():
    assert decide(0.70, 0.80, 1, tolerance=0.2).promote
    assert not decide(0.799, 0.80, 1, tolerance=0.0).promote


def test_top_k_accuracy_counts_unknown_labels_as_misses():
    classes = np.array(list("abcdefg"))
    proba = np.tile(np.linspace(1, 0.1, 7), (3, 1))  # a > b > ... > g
    assert top_k_accuracy(np.array(["a", "e", "z"]), proba, classes) == pytest.approx(2 / 3)
    assert top_k_accuracy(np.array(["f"]), proba[:1], classes) == 0.0
    assert top_k_accuracy(np.array([]), np.zeros((0, 7)), classes) == 0.0
