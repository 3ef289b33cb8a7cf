"""Calibrated scores: ECE and reliability bins, temperature scaling that keeps the ranking, a fitted temperature."""
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from categories_classification.calibrated import TemperatureScaledClassifier, temper
from categories_classification.topk import TOP_K, top_k_indices
from categories_classification.training.calibration import expected_calibration_error, fit_temperature, reliability


def test_ece_of_perfectly_calibrated_and_of_overconfident_scores():
    classes = np.array(["a", "b"])
    # 10 rows scored 0.8 for "a": 8 are "a" -> calibrated; all 10 scored 1.0 -> 0.2 too confident.
    proba = np.tile([0.8, 0.2], (10, 1))
    truth = np.array(["a"] * 8 + ["b"] * 2)
    assert expected_calibration_error(truth, proba, classes) == pytest.approx(0.0)
    assert expected_calibration_error(truth, np.tile([1.0, 0.0], (10, 1)), classes) == pytest.approx(0.2)
    bins = reliability(truth, proba, classes)
    assert bins.counts.sum() == 10 and bins.counts[np.searchsorted(bins.edges, 0.8) - 1] == 10
    assert bins.to_dict()["bins"][0]["mean_score"] is None  # empty bins say so
    assert reliability([], np.zeros((0, 2)), classes).ece == 0.0


def test_tempering_keeps_every_rows_order_and_ties_and_sums_to_one():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.full(30, 0.3), size=200)
    proba[:, 5] = 0.0  # forests give exact zeros
    proba[0, :4] = proba[0, 4]  # and ties
    proba /= proba.sum(axis=1, keepdims=True)
    for temperature in (0.3, 1.0, 2.5):
        tempered = temper(proba, temperature)
        assert np.array_equal(top_k_indices(tempered, TOP_K), top_k_indices(proba, TOP_K))
        assert np.allclose(tempered.sum(axis=1), 1.0) and (tempered[:, 5] == 0).all()
        assert np.sort(tempered, axis=1)[:, -TOP_K:].sum(axis=1).max() <= 1.0 + 1e-12


def _underconfident(rows: int = 3000, seed: int = 1):
    """Scores that are right more often than they say: the true class gets a squashed score."""
    rng = np.random.default_rng(seed)
    classes = np.array([f"c{i}" for i in range(10)])
    sharp = rng.dirichlet(np.full(10, 0.2), size=rows)
    truth = classes[[rng.choice(10, p=row) for row in sharp]]
    return truth, temper(sharp, 3.0), classes  # softened three times


def test_fit_temperature_undoes_a_softening_and_lowers_the_ece():
    truth, proba, classes = _underconfident()
    temperature = fit_temperature(truth, proba, classes)
    assert temperature == pytest.approx(1 / 3.0, rel=0.15)
    before = expected_calibration_error(truth, proba, classes)
    after = expected_calibration_error(truth, temper(proba, temperature), classes)
    assert after < before / 3


def test_fit_temperature_leaves_calibrated_scores_alone_and_ignores_unknown_labels():
    rng = np.random.default_rng(2)
    classes = np.array(["a", "b", "c"])
    proba = rng.dirichlet(np.ones(3), size=4000)
    truth = classes[[rng.choice(3, p=row) for row in proba]]
    assert fit_temperature(truth, proba, classes) == pytest.approx(1.0, abs=0.1)
    assert fit_temperature(np.array(["z"] * 5), proba[:5], classes) == 1.0


def test_the_wrapper_scores_a_forest_calibrated_in_the_same_order():
    rng = np.random.default_rng(3)
    x, y = rng.random((300, 4)), rng.choice(list("abcdefg"), 300)
    forest = RandomForestClassifier(n_estimators=5, random_state=0, n_jobs=2).fit(x, y)
    model = TemperatureScaledClassifier(forest, 0.5)
    raw, calibrated = forest.predict_proba(x[:50]), model.predict_proba(x[:50])
    assert np.array_equal(top_k_indices(calibrated, TOP_K), top_k_indices(raw, TOP_K))
    assert np.array_equal(model.predict(x[:50]), forest.predict(x[:50]))
    assert list(model.classes_) == list(forest.classes_)
    model.n_jobs = 1  # what prediction does for reproducible sums: reaches the forest
    assert forest.n_jobs == 1
