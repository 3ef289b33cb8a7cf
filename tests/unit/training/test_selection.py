"""The family choice rule: the smallest candidate within a standard error of the best, within the budget."""
import numpy as np
import pytest

from categories_classification.training.selection import Candidate, choose, paired_gap


def _hits(correct: int, total: int = 400, offset: int = 0) -> np.ndarray:
    hits = np.zeros(total, dtype=bool)
    hits[offset:offset + correct] = True
    return hits


def test_a_smaller_candidate_level_with_the_best_within_the_noise_wins():
    best = Candidate("random_forest", _hits(300), size_bytes=40_000_000, fit_seconds=2.0)
    # 1 point lower, but 20 rows right that the best gets wrong and 24 the other way round: noise.
    close = Candidate("hist_gradient_boosting", _hits(296, offset=20), size_bytes=3_000_000, fit_seconds=3.0)
    choice = choose([best, close])
    assert choice.family == "hist_gradient_boosting" and choice.best_family == "random_forest"
    assert 0 < choice.margin < 0.05 and "within 1 SE" in choice.reason


def test_a_smaller_candidate_clearly_worse_loses():
    best = Candidate("random_forest", _hits(300), 40_000_000, 2.0)
    worse = Candidate("hist_gradient_boosting", _hits(240), 3_000_000, 3.0)
    choice = choose([worse, best])
    assert choice.family == "random_forest" and choice.margin == 0.0 and "the best" in choice.reason


def test_the_gap_is_paired_on_the_same_rows():
    # Same accuracy, but one candidate gets right exactly the rows the other gets wrong: a real difference
    # row by row averages to zero, and the standard error is large.
    first, second = _hits(200), ~_hits(200)
    gap, error = paired_gap(first, second)
    assert gap == 0.0 and error == pytest.approx(1 / np.sqrt(400), rel=0.01)
    assert paired_gap(first, first) == (0.0, 0.0)


def test_equal_sizes_go_to_the_first_listed_and_a_larger_equal_never_wins():
    same = _hits(300)
    first, second = Candidate("random_forest", same, 10, 1.0), Candidate("extra_trees", same, 10, 1.0)
    assert choose([first, second]).family == "random_forest"
    assert choose([Candidate("random_forest", same, 20, 1.0), second]).family == "extra_trees"


def test_candidates_over_the_budget_are_left_out_unless_none_fits():
    best_but_big = Candidate("random_forest", _hits(320), 90_000_000, 2.0, within_budget=False)
    fitting = Candidate("extra_trees", _hits(250), 30_000_000, 1.0)
    assert choose([best_but_big, fitting]).family == "extra_trees"
    none_fit = choose([best_but_big, Candidate("extra_trees", _hits(250), 95_000_000, 1.0, within_budget=False)])
    assert none_fit.family == "random_forest" and "no candidate fits" in none_fit.reason


def test_candidates_must_share_the_validation_rows():
    with pytest.raises(ValueError, match="same validation rows"):
        choose([Candidate("random_forest", _hits(10, 100), 1, 1.0), Candidate("extra_trees", _hits(10, 90), 1, 1.0)])
    with pytest.raises(ValueError):
        choose([])
