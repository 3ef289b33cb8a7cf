"""skops with an exact list of trusted types: every model family round-trips, anything else is refused."""
import warnings

import numpy as np
import pytest
import skops.io
from skops.io.exceptions import UntrustedTypesFoundException
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from categories_classification.calibrated import TemperatureScaledClassifier
from categories_classification.config import MODEL_FAMILIES
from categories_classification.serialization import (
    SKOPS_TRUSTED_TYPES,
    dump_model,
    load_model_bytes,
    untrusted_types,
)
from categories_classification.training.fitting import fit_model


def _forest():
    rng = np.random.default_rng(0)
    return RandomForestClassifier(n_estimators=3, random_state=0).fit(rng.random((60, 3)), rng.choice(["a", "b", "c"], 60))


# One thread: a forest's threads sum its trees in any order (the last bit of a score may differ).
SMALL = {"random_forest": {"n_estimators": 3, "n_jobs": 1}, "extra_trees": {"n_estimators": 3, "n_jobs": 1},
         "hist_gradient_boosting": {"max_iter": 3},
         "mlp": {"hidden_layer_sizes": (8,), "max_iter": 20}, "knn": {"n_neighbors": 5}}
# Every family, an ensemble of each kind of member, and a kNN on its other search tree.
REGISTERED = [*MODEL_FAMILIES, "mlp+qda+random_forest", "logistic+hist_gradient_boosting", "knn_ball_tree"]


def _registered(family: str) -> TemperatureScaledClassifier:
    """A small fitted model of ``family`` as training registers it (calibrated; an ensemble of calibrated members)."""
    rng = np.random.default_rng(0)
    x, y = rng.random((90, 3)), rng.choice(["a", "b", "c"], 90)
    if family == "knn_ball_tree":
        return fit_model(x, y, {"algorithm": "ball_tree", "n_neighbors": 5}, family="knn").model
    members = family.split("+")
    params = SMALL.get(family, {}) if len(members) == 1 else {member: SMALL.get(member, {}) for member in members}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few epochs: this is about the file, not the fit
        return fit_model(x, y, params, family=family).model


def test_the_listed_types_are_exactly_what_the_model_families_need():
    needed = set()
    for family in REGISTERED:
        needed |= set(skops.io.get_untrusted_types(data=dump_model(_registered(family))))
    assert sorted(needed) == sorted(SKOPS_TRUSTED_TYPES)


@pytest.mark.parametrize("family", REGISTERED)
def test_every_family_loads_back_through_the_trusted_list_and_scores_alike(family):
    model = _registered(family)
    loaded = load_model_bytes(dump_model(model))
    sample = np.random.default_rng(1).random((5, 3))
    assert type(loaded.estimator) is type(model.estimator) and loaded.temperature == model.temperature
    assert np.array_equal(loaded.predict_proba(sample), model.predict_proba(sample))
    assert list(loaded.classes_) == ["a", "b", "c"]


def test_forest_round_trips():
    model = _forest()
    loaded = load_model_bytes(dump_model(model))
    sample = np.random.default_rng(1).random((5, 3))
    assert np.array_equal(loaded.predict_proba(sample), model.predict_proba(sample))
    assert untrusted_types(dump_model(model)) == []


def test_a_model_needing_an_unlisted_type_is_refused():
    data = skops.io.dumps(make_pipeline(FunctionTransformer(print), _forest()))
    assert "builtins.print" in untrusted_types(data)
    with pytest.raises(UntrustedTypesFoundException):
        load_model_bytes(data)
