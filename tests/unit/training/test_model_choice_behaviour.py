"""Behavioural tests of the model choice (Made-With-ML style): the shape of the data decides the family.

Where categories are smooth blobs, a smooth family (or an ensemble of them) is chosen and beats the
best tree on rows no model saw; where they are axis-aligned boxes, a tree is chosen and beats the
smooth families there. Generated data, fixed seeds: the same choice every run.
"""
import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from categories_classification.config import FOREST_FAMILIES, SMOOTH_FAMILIES
from categories_classification.training.evaluation import top_k_accuracy
from categories_classification.training.fitting import fit_model

TREES = (*FOREST_FAMILIES, "hist_gradient_boosting")


def _blobs(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """20 overlapping Gaussian blobs in 5 dimensions: boundaries are smooth surfaces."""
    centres = rng.normal(0.0, 1.0, size=(20, 5))
    which = rng.integers(0, 20, rows)
    return centres[which] + rng.normal(0.0, 0.9, size=(rows, 5)), np.array([f"blob{c:02d}" for c in which])


def _boxes(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """120 boxes cut along two axes, each given one of 30 categories at random (3 features are noise)."""
    features = rng.uniform(0.0, 1.0, size=(rows, 5))
    cell = np.floor(features[:, 0] * 12).astype(int) + 12 * np.floor(features[:, 1] * 10).astype(int)
    category = np.random.default_rng(1).integers(0, 30, 120)  # neighbouring boxes are unrelated categories
    return features, np.array([f"box{c:02d}" for c in category[cell]])


def _held_out_top5(make, family=None, params=None):
    features, labels = make(4000, np.random.default_rng(7))
    x_train, x_test, y_train, y_test = train_test_split(features, labels, test_size=0.25, stratify=labels,
                                                        random_state=0)
    fitted = fit_model(x_train, y_train, params if params is not None else {"n_estimators": 50}, family=family)
    return fitted, top_k_accuracy(y_test, fitted.model.predict_proba(x_test), fitted.model.classes_)


@pytest.mark.parametrize("make, chosen_kind, other_kind", [
    (_blobs, SMOOTH_FAMILIES, TREES),
    (_boxes, TREES, SMOOTH_FAMILIES),
], ids=["smooth blobs", "axis-aligned boxes"])
def test_the_shape_of_the_categories_picks_the_kind_of_model(make, chosen_kind, other_kind):
    chosen, chosen_top5 = _held_out_top5(make)
    assert set(chosen.members) <= set(chosen_kind), chosen.describe()
    # The best of the other kind, pinned and trained on the same rows, does worse on the held-out rows.
    best_other = max(_held_out_top5(make, family, {"n_estimators": 50} if family in FOREST_FAMILIES else {})[1]
                     for family in other_kind)
    assert chosen_top5 > best_other
