"""skops with an exact list of trusted types: a forest round-trips, anything else is refused."""
import numpy as np
import pytest
import skops.io
from skops.io.exceptions import UntrustedTypesFoundException
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from categories_classification.serialization import (
    SKOPS_TRUSTED_TYPES,
    dump_model,
    load_model_bytes,
    untrusted_types,
)


def _forest():
    rng = np.random.default_rng(0)
    return RandomForestClassifier(n_estimators=3, random_state=0).fit(rng.random((60, 3)), rng.choice(["a", "b", "c"], 60))


def test_the_listed_types_are_exactly_what_a_forest_needs():
    assert sorted(skops.io.get_untrusted_types(data=dump_model(_forest()))) == sorted(SKOPS_TRUSTED_TYPES)


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
