"""skops with an exact list of trusted types: every model family round-trips, anything else is refused."""
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import skops.io
from skops.io import _sklearn as skops_sklearn, _trusted_types as skops_trusted
from skops.io.exceptions import UntrustedTypesFoundException
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from categories_classification.calibrated import TemperatureScaledClassifier
from categories_classification.config import MODEL_FAMILIES
from categories_classification.serialization import (
    KNOWN_SAFE_NODES,
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


def test_the_nodes_checked_without_skops_are_trusted_by_skops_itself():
    numpy_types = ["numpy.ndarray", *skops_trusted.NUMPY_DTYPE_TYPE_NAMES]
    defaults = {
        "DictNode": ["builtins.dict", "collections.OrderedDict"], "ListNode": ["builtins.list"],
        "TupleNode": ["builtins.tuple"], "JsonNode": skops_trusted.PRIMITIVE_TYPE_NAMES, "NdArrayNode": numpy_types,
        "TypeNode": [*skops_trusted.PRIMITIVE_TYPE_NAMES, *skops_trusted.CONTAINER_TYPE_NAMES,
                     *skops_trusted.NUMPY_DTYPE_TYPE_NAMES],
        "TreeNode": [], "LossNode": [f"{loss.__module__}.{loss.__name__}" for loss in skops_sklearn.ALLOWED_LOSSES],
        "RandomStateNode": ["numpy.random.mtrand.RandomState"],
        "ObjectNode": [*skops_trusted.SKLEARN_ESTIMATOR_TYPE_NAMES, *skops_trusted.SKLEARN_INTERNAL_TYPE_NAMES],
    }
    assert set(KNOWN_SAFE_NODES) <= set(defaults)
    for loader, names in KNOWN_SAFE_NODES.items():
        assert names <= set(defaults[loader]) | set(SKOPS_TRUSTED_TYPES), loader


@pytest.mark.parametrize("family", REGISTERED)
def test_the_check_without_skops_agrees_with_skops(family):
    data = dump_model(_registered(family))
    assert untrusted_types(data) == sorted(set(skops.io.get_untrusted_types(data=data)) - set(SKOPS_TRUSTED_TYPES)) == []


def test_a_driver_checks_a_forest_without_importing_skops_or_sklearn(tmp_path):
    model_file = tmp_path / "forest.skops"
    model_file.write_bytes(dump_model(_registered("random_forest")))
    check = ("import sys; from pathlib import Path; from categories_classification.serialization import untrusted_types; "
             f"assert untrusted_types(Path({str(model_file)!r}).read_bytes()) == []; "
             "assert not {'skops', 'sklearn'} & set(sys.modules), sorted({'skops', 'sklearn'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", check], check=True, cwd=Path(__file__).resolve().parents[2])
