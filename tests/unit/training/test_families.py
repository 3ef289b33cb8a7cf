"""Each model family fits, predicts, survives skops with the trusted types and is calibrated; ensembles are one estimator."""
import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from categories_classification.calibrated import AveragedClassifier, TemperatureScaledClassifier, temper
from categories_classification.config import SMOOTH_FAMILIES
from categories_classification.serialization import dump_model, load_model_bytes, untrusted_types
from categories_classification.training.families import build, compact, early_stopping_fits
from categories_classification.training.fitting import fit_model


def _blobs(rows: int = 900, categories: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    which = rng.integers(0, categories, rows)
    # Skewed, badly scaled features: the smooth families must standardise them themselves.
    features = rng.normal(size=(categories, 4))[which] + rng.normal(0.0, 0.7, size=(rows, 4))
    return features * np.array([1.0, 100.0, 0.01, 5.0]), np.array([f"c{c}" for c in which])


@pytest.mark.parametrize("family", SMOOTH_FAMILIES)
def test_each_smooth_family_fits_scores_round_trips_and_is_calibrated(family):
    features, labels = _blobs()
    fitted = fit_model(features, labels, {}, family=family)
    model = fitted.model
    # Inputs standardised inside the registered model: it takes the raw columns.
    assert isinstance(model.estimator, Pipeline) and isinstance(model.estimator.steps[0][1], StandardScaler)
    proba = model.predict_proba(features[:50])
    assert proba.shape == (50, 6) and np.allclose(proba.sum(axis=1), 1.0)
    assert (model.predict(features) == labels).mean() > 0.6  # it learned the categories
    # The top-5 order is the underlying model's: calibration only rescales each row.
    assert np.array_equal(np.argsort(-proba, axis=1, kind="stable"),
                          np.argsort(-model.estimator.predict_proba(features[:50]), axis=1, kind="stable"))
    assert fitted.calibration.temperature > 0
    assert fitted.calibration.val_ece_after <= fitted.calibration.val_ece_before + 1e-9
    data = dump_model(model)
    assert untrusted_types(data) == []
    assert np.array_equal(load_model_bytes(data).predict_proba(features[:50]), proba)


def test_a_pinned_ensemble_is_one_estimator_averaging_its_calibrated_members():
    features, labels = _blobs()
    fitted = fit_model(features, labels, {"qda": {"reg_param": 0.1}}, family="mlp+qda")
    assert fitted.family == "mlp+qda" and fitted.members == ("mlp", "qda") and fitted.pinned
    inner = fitted.model.estimator
    assert isinstance(inner, AveragedClassifier) and len(inner.estimators) == 2
    assert all(isinstance(member, TemperatureScaledClassifier) for member in inner.estimators)
    assert inner.estimators[1].estimator.steps[-1][1].reg_param == 0.1
    rows = features[:40]
    mean = (inner.estimators[0].predict_proba(rows) + inner.estimators[1].predict_proba(rows)) / 2
    assert np.allclose(fitted.model.predict_proba(rows), temper(mean, fitted.model.temperature))
    assert set(fitted.estimator_params()) >= {"mlp.hidden_layer_sizes", "qda.reg_param"}
    loaded = load_model_bytes(dump_model(fitted.model))
    assert np.array_equal(loaded.predict_proba(rows), fitted.model.predict_proba(rows))


def test_family_ensemble_pins_the_best_ensemble_of_the_candidates():
    features, labels = _blobs()
    fitted = fit_model(features, labels, {}, family="ensemble")
    assert len(fitted.members) >= 2 and "knn" not in fitted.members  # kNN never inside an ensemble
    assert [candidate.family for candidate in fitted.candidates][:7] == [
        "logistic", "qda", "knn", "mlp", "random_forest", "extra_trees", "hist_gradient_boosting"]


def test_a_candidate_that_cannot_fit_is_left_out_with_its_reason_and_the_others_compete():
    features, labels = _blobs()
    labels = labels.astype(object)
    labels[:1] = "lonely"  # a category of one row: QDA's covariance is undefined
    fitted = fit_model(features, labels, {"n_estimators": 10})
    assert "qda" in fitted.skipped and "lonely" in fitted.skipped["qda"]
    assert "qda" not in [candidate.family for candidate in fitted.candidates]
    assert fitted.model.predict_proba(features[:3]).shape[1] == 7


def test_compact_drops_training_state_and_keeps_predictions():
    features, labels = _blobs()
    model = build("mlp", {"hidden_layer_sizes": (16,), "max_iter": 30, "random_state": 0}, labels).fit(features, labels)
    before = model.predict_proba(features)
    compact("mlp", model)
    assert not hasattr(model.steps[-1][1], "_optimizer")
    assert np.array_equal(model.predict_proba(features), before)


def test_settings_the_rows_cannot_support_are_relaxed():
    labels = np.repeat(["a", "b", "c"], 4)
    assert build("knn", {"n_neighbors": 75}, labels).steps[-1][1].n_neighbors == 12
    hist = {"early_stopping": True}
    assert early_stopping_fits("hist_gradient_boosting", hist, labels)["validation_fraction"] == 6  # a row of each, twice
    lonely = np.array(["a"] * 11 + ["b"])
    assert early_stopping_fits("hist_gradient_boosting", hist, lonely) == {"early_stopping": False}
    # The MLP's slice of more than two categories is not stratified: a few rows do.
    assert early_stopping_fits("mlp", {"early_stopping": True}, labels)["validation_fraction"] == pytest.approx(2 / 12)
    many = np.repeat(np.arange(10), 15)  # 10% is 15 rows: fewer than two of each category
    assert early_stopping_fits("hist_gradient_boosting", {"early_stopping": True}, many)["validation_fraction"] == 20
    assert early_stopping_fits("logistic", {"max_iter": 5}, labels) == {"max_iter": 5}
