"""fit_model end to end on small arrays (no MLflow): every family candidate fits, whatever the data's shape."""
import numpy as np
import pytest

from categories_classification.training.fitting import fit_model


@pytest.mark.parametrize("family", [None, "hist_gradient_boosting"])
def test_few_rows_per_category_still_fit_and_rank_every_category(family):
    # 40 categories, 10 rows each: HistGradientBoosting's early-stopping slice must still hold every one.
    rng = np.random.default_rng(0)
    labels = np.repeat([f"c{i:02d}" for i in range(40)], 10)
    features = rng.normal(size=(len(labels), 4)) + np.repeat(np.arange(40), 10)[:, None] * 0.1
    fitted = fit_model(features, labels, {"n_estimators": 10} if family is None else {}, family=family)
    proba = fitted.model.predict_proba(features[:7])
    assert proba.shape == (7, 40) and np.allclose(proba.sum(axis=1), 1.0)
    assert fitted.family == (family or fitted.choice.family)


def test_random_forest_only_params_pin_the_forest():
    rng = np.random.default_rng(1)
    labels = rng.choice(["a", "b", "c"], 300)
    fitted = fit_model(rng.normal(size=(300, 3)), labels, {"n_estimators": 5, "max_depth": 2})
    assert fitted.family == "random_forest" and fitted.pinned and not fitted.candidates
    assert fitted.describe()["family_choice"] == "the config's params set RandomForest parameter(s) max_depth"
