"""The choice rule: the most accurate candidate within the budget (ties: the smaller); an ensemble only beyond the noise."""
import numpy as np
import pytest

from categories_classification.training.selection import Candidate, choose, paired_gap, ranked


def _hits(correct: int, total: int = 400, offset: int = 0) -> np.ndarray:
    hits = np.zeros(total, dtype=bool)
    hits[offset:offset + correct] = True
    return hits


def test_accuracy_comes_first_a_smaller_slightly_worse_candidate_loses():
    best = Candidate("mlp", _hits(300), size_bytes=40_000_000, fit_seconds=2.0)
    # 1 point lower and 13x smaller: the rule before this one took it; accuracy first does not.
    close = Candidate("qda", _hits(296, offset=20), size_bytes=3_000_000, fit_seconds=3.0)
    choice = choose([close, best])
    assert choice.family == "mlp" and choice.best_family == "mlp" and choice.margin == 0.0
    assert "the best validation top-5" in choice.reason


def test_exact_ties_go_to_the_smaller_then_to_the_first_listed():
    same = _hits(300)
    first, second = Candidate("random_forest", same, 10, 1.0), Candidate("extra_trees", same, 10, 1.0)
    assert choose([first, second]).family == "random_forest"
    choice = choose([Candidate("random_forest", same, 20, 1.0), second])
    assert choice.family == "extra_trees" and "the smallest of 2 equals" in choice.reason


def test_an_ensemble_is_kept_only_when_it_beats_the_best_single_by_more_than_the_noise():
    best = Candidate("mlp", _hits(300), 1_000_000, 1.0)
    noise = Candidate("mlp+qda", _hits(304, offset=20), 1_100_000, 1.1)  # +1 point, but 44 rows move both ways
    assert choose([best], [noise]).family == "mlp"
    clear = Candidate("mlp+qda", _hits(330), 1_100_000, 1.1)  # right on 30 more rows, wrong on none
    choice = choose([best], [noise, clear])
    assert choice.family == "mlp+qda" and choice.best_family == "mlp" and choice.margin > 1
    assert choice.reason.startswith("ensemble mlp+qda")


def test_an_ensemble_over_the_budget_never_wins():
    best = Candidate("mlp", _hits(300), 1_000_000, 1.0)
    big = Candidate("mlp+random_forest", _hits(380), 90_000_000, 3.0, within_budget=False)
    assert choose([best], [big]).family == "mlp"


def test_the_gap_is_paired_on_the_same_rows():
    # Same accuracy, but one candidate gets right exactly the rows the other gets wrong: a real difference
    # row by row averages to zero, and the standard error is large.
    first, second = _hits(200), ~_hits(200)
    gap, error = paired_gap(first, second)
    assert gap == 0.0 and error == pytest.approx(1 / np.sqrt(400), rel=0.01)
    assert paired_gap(first, first) == (0.0, 0.0)


def test_candidates_over_the_budget_are_left_out_unless_none_fits():
    best_but_big = Candidate("random_forest", _hits(320), 90_000_000, 2.0, within_budget=False)
    fitting = Candidate("extra_trees", _hits(250), 30_000_000, 1.0)
    assert choose([best_but_big, fitting]).family == "extra_trees"
    none_fit = choose([best_but_big, Candidate("extra_trees", _hits(250), 95_000_000, 1.0, within_budget=False)])
    assert none_fit.family == "random_forest" and "no candidate fits" in none_fit.reason


def test_ranked_orders_by_accuracy_then_size_and_drops_what_does_not_fit():
    a, b = Candidate("a", _hits(300), 5, 1.0), Candidate("b", _hits(310), 9, 1.0)
    c, d = Candidate("c", _hits(300), 2, 1.0), Candidate("d", _hits(400), 1, 1.0, within_budget=False)
    assert [candidate.family for candidate in ranked([a, b, c, d])] == ["b", "c", "a"]


def test_candidates_must_share_the_validation_rows():
    with pytest.raises(ValueError, match="same validation rows"):
        choose([Candidate("random_forest", _hits(10, 100), 1, 1.0), Candidate("extra_trees", _hits(10, 90), 1, 1.0)])
    with pytest.raises(ValueError, match="same validation rows"):
        choose([Candidate("mlp", _hits(10, 100), 1, 1.0)], [Candidate("mlp+qda", _hits(10, 90), 1, 1.0)])
    with pytest.raises(ValueError):
        choose([])
