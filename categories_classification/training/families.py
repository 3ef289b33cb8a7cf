"""The model families a client may get: their estimators, defaults, and how each is built and fitted.

Pure: scikit-learn only, no MLflow. The smooth families (:data:`SMOOTH_FAMILIES`) see standardised
inputs: their estimator is a ``Pipeline(StandardScaler, estimator)``, so the registered model takes
the raw feature columns and prediction needs nothing else. The tree families take the features as
they are. Which family a client gets is decided in :mod:`categories_classification.training.fitting`.
"""
from typing import Any, Mapping

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from categories_classification.config import ENSEMBLE, FOREST_FAMILIES, SMOOTH_FAMILIES, estimator_class

SEED = 42
# Candidates in the order ties go: the cheaper, simpler family first.
FAMILY_ORDER = ("logistic", "qda", "knn", "mlp", "random_forest", "extra_trees", "hist_gradient_boosting")
# The project's defaults per family, under a client's explicit params. Forests: n_jobs=-1 uses every
# core for a single client's fit; their size (max_leaf_nodes) is chosen per client (training.sizing).
DEFAULT_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "random_forest": {"n_estimators": 100, "random_state": SEED, "n_jobs": -1},
    "extra_trees": {"n_estimators": 100, "random_state": SEED, "n_jobs": -1},
    # Small trees, early stopping on its own slice of the rows: a few seconds even with 60 categories.
    "hist_gradient_boosting": {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 15, "early_stopping": True,
                               "n_iter_no_change": 10, "random_state": SEED},
    # Two layers of 128: on the design's clients (5 smooth features, 15-62 categories) wider or deeper
    # nets gain nothing measurable and cost more; early stopping on 10% of the rows bounds the epochs.
    "mlp": {"hidden_layer_sizes": (128, 128), "alpha": 1e-3, "early_stopping": True, "max_iter": 200,
            "random_state": SEED},
    # Distance-weighted votes of many neighbours: smooth scores over 5 categories, not one vote.
    "knn": {"n_neighbors": 75, "weights": "distance"},
    # Shrinks each category's covariance towards the identity (scaled inputs): few rows per category.
    "qda": {"reg_param": 0.05},
    "logistic": {"max_iter": 300},
}
# Families whose scoring cost grows with the training rows (a kNN searches its stored rows: about 3x a
# sized forest's time per product, 20x an MLP's): they compete alone, never inside an ensemble, so that
# an ensemble scores in about the time of its members' matrix products and trees.
INSTANCE_BASED = ("knn",)
# Training state a smooth estimator keeps after fit that predicting never reads (the MLP's optimiser
# moments and best-epoch copies): dropped before the model is registered, it would double its size.
_TRAINING_ONLY = {"mlp": ("_optimizer", "_best_coefs", "_best_intercepts")}


def params_for(family: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """``family``'s parameters: the project's defaults under ``explicit`` (the explicit values win)."""
    return {**DEFAULT_PARAMS.get(family, {}), **dict(explicit)}


def build(family: str, params: Mapping[str, Any], labels: np.ndarray) -> Any:
    """An unfitted estimator of ``family`` with ``params``, fit for ``labels`` (the rows it will see).

    Settings the rows cannot support are relaxed, never failed on: a kNN asks for at most as many
    neighbours as there are rows, and early stopping that cannot hold out a row of every category
    is made larger or switched off (see :func:`early_stopping_fits`).
    """
    if family == ENSEMBLE:
        raise ValueError("an ensemble is built from fitted members, not from params")
    params = early_stopping_fits(family, params, labels)
    if family == "knn":
        params = {**params, "n_neighbors": max(1, min(int(params.get("n_neighbors", 5)), len(labels)))}
    estimator = estimator_class(family)(**params)
    if family in SMOOTH_FAMILIES:
        return Pipeline([("scale", StandardScaler()), ("model", estimator)])
    return estimator


def early_stopping_fits(family: str, params: Mapping[str, Any], labels: np.ndarray) -> dict[str, Any]:
    """``params`` whose early stopping (a slice of the rows the estimator is given) can split.

    HistGradientBoosting's slice is stratified (so is the MLP's with two categories): it needs a row
    of every category, so with few rows and many categories it is made as large as that takes (a
    row count for HistGradientBoosting, a fraction for the MLP), or early stopping is switched off
    when even half the rows would not do or a category has a single row. The MLP's slice of more
    than two categories is a plain random one: it only needs a few rows.
    """
    params = dict(params)
    if family not in ("hist_gradient_boosting", "mlp") or not params.get("early_stopping"):
        return params
    classes, counts = np.unique(labels, return_counts=True)
    rows = len(labels)
    fraction = params.get("validation_fraction", 0.1)
    stratified = family == "hist_gradient_boosting" or len(classes) == 2
    needed = 2 * len(classes) if stratified else 2
    if fraction is None or (isinstance(fraction, float) and rows * fraction >= needed
                            and (counts.min() >= 2 or not stratified)):
        return params
    if needed <= rows // 2 and (counts.min() >= 2 or not stratified):
        return {**params, "validation_fraction": needed if family == "hist_gradient_boosting" else needed / rows}
    return {**params, "early_stopping": False}


def final_params(family: str, params: Mapping[str, Any], fitted: Any) -> dict[str, Any]:
    """The params to refit ``family`` on more rows after a fit on fewer (HistGradientBoosting: the rounds found)."""
    if family == "hist_gradient_boosting" and params.get("early_stopping"):
        return {**params, "early_stopping": False, "max_iter": int(fitted.n_iter_)}
    return dict(params)


def compact(family: str, model: Any) -> Any:
    """``model`` without the training-only state of :data:`_TRAINING_ONLY` (predictions unchanged)."""
    inner = model.named_steps["model"] if isinstance(model, Pipeline) else model
    for name in _TRAINING_ONLY.get(family, ()):
        if hasattr(inner, name):
            delattr(inner, name)
    return model


def is_forest(family: str) -> bool:
    """True for the forest families, whose size is chosen by :mod:`categories_classification.training.sizing`."""
    return family in FOREST_FAMILIES
