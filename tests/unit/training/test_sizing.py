"""Model size: the size formula, the budget, truncated best-first trees and the leaf-count choice."""
import pickle

import skops.io

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from categories_classification.training import sizing
from categories_classification.training.evaluation import top_k_accuracy
from categories_classification.serialization import dump_model, load_model_bytes


def _data(n_rows=1200, n_classes=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(n_classes, 4))
    labels = rng.integers(0, n_classes, n_rows)
    features = (centres[labels] + rng.normal(0.0, 0.9, size=(n_rows, 4))).astype(np.float32)
    return features, np.array([f"c{label:02d}" for label in labels])


def test_the_size_formula_is_what_the_forest_takes_in_memory_and_pickled():
    features, labels = _data()
    model = RandomForestClassifier(n_estimators=7, max_leaf_nodes=20, random_state=0).fit(features, labels)
    assert all(tree.tree_.n_leaves == 20 for tree in model.estimators_)
    assert sizing.forest_memory_bytes(model) == sizing.estimate_forest_bytes(7, 20, 12) == 7 * 39 * (64 + 8 * 12)
    pickled = len(pickle.dumps(model, protocol=5))
    assert sizing.forest_memory_bytes(model) < pickled < sizing.forest_memory_bytes(model) + 7 * 2000


@pytest.mark.parametrize("n_trees, n_classes", [(100, 62), (300, 15), (1, 2)])
def test_the_budget_gives_the_largest_leaf_count_that_fits(n_trees, n_classes):
    for budget in (5e4, 1e6, 11e6, 64e6):
        leaves = sizing.max_leaves_for_budget(budget, n_trees, n_classes)
        if leaves > 2:
            assert sizing.estimate_forest_bytes(n_trees, leaves, n_classes) <= budget
        assert sizing.estimate_forest_bytes(n_trees, leaves + 1, n_classes) > budget
    assert sizing.max_leaves_for_budget(1, 100, 62) == 2  # never below a stump


def test_leaf_grid():
    grid = sizing.leaf_grid(100)
    assert grid[0] == 4 and grid[-1] == 100 and grid == sorted(set(grid))
    assert all(later / earlier < 1.3 for earlier, later in zip(grid[8:], grid[9:]))
    assert sizing.leaf_grid(3) == [3] and sizing.leaf_grid(1) == []


def test_truncated_best_first_trees_are_exactly_the_trees_grown_with_max_leaf_nodes():
    features, labels = _data()
    x_fit, y_fit, x_val, y_val = features[:900], labels[:900], features[900:], labels[900:]
    grown = RandomForestClassifier(n_estimators=6, max_leaf_nodes=len(y_fit), random_state=3).fit(x_fit, y_fit)
    curve = sizing.leaf_curve([grown], x_val, y_val, leaves=[2, 7, 30, 120])
    for leaves in (2, 7, 30, 120):
        direct = RandomForestClassifier(n_estimators=6, max_leaf_nodes=leaves, random_state=3).fit(x_fit, y_fit)
        assert curve.accuracy(leaves) == pytest.approx(top_k_accuracy(y_val, direct.predict_proba(x_val), direct.classes_))
    assert curve.reference_accuracy == pytest.approx(top_k_accuracy(y_val, grown.predict_proba(x_val), grown.classes_))


def test_chunks_of_a_forest_add_up_like_one_forest_and_unknown_labels_are_misses():
    features, labels = _data()
    x_fit, y_fit, x_val = features[:900], labels[:900], features[900:]
    y_val = labels[900:].copy()
    y_val[:10] = "never_seen"
    chunks = [RandomForestClassifier(n_estimators=3, max_leaf_nodes=900, random_state=seed).fit(x_fit, y_fit)
              for seed in (1, 2)]
    curve = sizing.leaf_curve(iter(chunks), x_val, y_val, leaves=[16])
    proba = (chunks[0].predict_proba(x_val) + chunks[1].predict_proba(x_val)) / 2
    assert curve.reference_accuracy == pytest.approx(top_k_accuracy(y_val, proba, chunks[0].classes_))
    assert not curve.reference[:10].any() and not curve.candidates[16][:10].any()
    with pytest.raises(ValueError):
        sizing.leaf_curve([], x_val, y_val)


def _curve(reference, candidates):
    return sizing.LeafCurve(np.array(reference, dtype=bool), {key: np.array(value, dtype=bool)
                                                              for key, value in candidates.items()})


def test_pick_leaves_takes_the_smallest_candidate_that_beats_the_reference_by_the_margin():
    reference = [1] * 50 + [0] * 50
    curve = _curve(reference, {
        8: [0] * 10 + [1] * 40 + [0] * 50,  # worse
        16: [0] * 2 + [1] * 48 + [1] * 4 + [0] * 46,  # +2 points (4 gains, 2 losses): within one standard error
        32: [1] * 50 + [1] * 8 + [0] * 42,  # +8 points
        64: [1] * 50 + [1] * 9 + [0] * 41,
    })
    choice = sizing.pick_leaves(curve, z=1.0, max_loss=1.0)
    assert choice.leaves == 32 and choice.accuracy == 0.58 and choice.reference_accuracy == 0.5
    assert 0 < choice.margin < 0.08 and choice.best_accuracy == 0.59
    assert sizing.pick_leaves(curve, z=0.0, max_loss=1.0).leaves == 16
    # ... and not further than max_loss from the best candidate (64: 0.59).
    assert sizing.pick_leaves(curve, z=0.0, max_loss=0.05).leaves == 32
    assert sizing.pick_leaves(curve, z=0.0, max_loss=0.0).leaves == 64
    none = sizing.pick_leaves(_curve(reference, {8: [0] * 100}), z=0.0)
    assert none.leaves is None and none.accuracy == 0.0


def test_choose_max_leaf_nodes_within_the_budget_and_reproducible():
    features, labels = _data(n_rows=2000)
    params = {"n_estimators": 20, "random_state": 42, "n_jobs": 1}
    choice = sizing.choose_max_leaf_nodes(features, labels, params, 64e6)
    assert choice == sizing.choose_max_leaf_nodes(features, labels, params, 64e6)
    assert 2 <= choice.max_leaf_nodes <= choice.budget_leaves and not choice.budget_bound
    assert choice.search.leaves is not None and choice.search.accuracy >= choice.search.reference_accuracy
    assert (choice.search_rows, choice.validation_rows) == (1600, 400)
    assert choice.estimated_bytes == sizing.estimate_forest_bytes(20, choice.max_leaf_nodes, 12)
    assert "smallest max_leaf_nodes" in choice.reason

    tight = sizing.choose_max_leaf_nodes(features, labels, params, 0.03e6)
    assert tight.budget_bound and tight.max_leaf_nodes == tight.budget_leaves
    assert tight.estimated_bytes <= 0.03e6


def test_choose_max_leaf_nodes_with_rare_categories_and_user_params():
    features, labels = _data(n_rows=300, n_classes=40)
    labels[:3] = ["solo_a", "solo_b", "solo_c"]  # one row each: no stratified validation split possible
    params = {"n_estimators": 5, "random_state": None, "max_features": 2, "min_samples_leaf": 4, "warm_start": True}
    choice = sizing.choose_max_leaf_nodes(features, labels, params, 64e6)
    assert choice.max_leaf_nodes >= 2 and choice.validation_rows == 60


def test_compressed_skops_is_smaller_and_loads_with_the_trusted_types():
    features, labels = _data()
    model = RandomForestClassifier(n_estimators=5, max_leaf_nodes=40, random_state=0).fit(features, labels)
    plain, packed = skops.io.dumps(model), dump_model(model)
    assert len(packed) < len(plain) / 2
    assert np.array_equal(load_model_bytes(packed).predict_proba(features[:20]), model.predict_proba(features[:20]))
