"""skops with an exact list of trusted types: every model family round-trips, anything else is refused."""
import numpy as np
import pytest
import skops.io
from skops.io.exceptions import UntrustedTypesFoundException
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from categories_classification.calibrated import TemperatureScaledClassifier
from categories_classification.config import MODEL_FAMILIES, estimator_class
from categories_classification.serialization import (
    SKOPS_TRUSTED_TYPES,
    dump_model,
    load_model_bytes,
    untrusted_types,
)


def _forest():
    rng = np.random.default_rng(0)
    return RandomForestClassifier(n_estimators=3, random_state=0).fit(rng.random((60, 3)), rng.choice(["a", "b", "c"], 60))


def _registered(family: str) -> TemperatureScaledClassifier:
    """A small fitted model of ``family`` in the calibration wrapper, as training registers it."""
    rng = np.random.default_rng(0)
    x, y = rng.random((60, 3)), rng.choice(["a", "b", "c"], 60)
    small = {"n_estimators": 3} if family != "hist_gradient_boosting" else {"max_iter": 3}
    return TemperatureScaledClassifier(estimator_class(family)(random_state=0, **small).fit(x, y), 0.7)


def test_the_listed_types_are_exactly_what_the_model_families_need():
    needed = set()
    for family in MODEL_FAMILIES:
        needed |= set(skops.io.get_untrusted_types(data=dump_model(_registered(family))))
    assert sorted(needed) == sorted(SKOPS_TRUSTED_TYPES)


@pytest.mark.parametrize("family", list(MODEL_FAMILIES))
def test_every_family_loads_back_through_the_trusted_list_and_scores_alike(family):
    model = _registered(family)
    loaded = load_model_bytes(dump_model(model))
    sample = np.random.default_rng(1).random((5, 3))
    assert type(loaded.estimator) is type(model.estimator) and loaded.temperature == 0.7
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
