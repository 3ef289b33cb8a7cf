"""Fit a client's model on its training split: the family (chosen or pinned), its size, its calibration.

No MLflow here (the trainer logs what this returns). Every choice is made on a validation split
carved out of the training split (:func:`sizing.validation_split`), never on the test split:

1. each candidate family is fitted on a sample of the validation split's fit rows (at most
   :data:`CANDIDATE_FIT_ROWS`, forests of at most :data:`CANDIDATE_TREES` fully grown trees,
   HistGradientBoosting with early stopping) and scored on all its validation rows: the
   comparison costs about one small fit per family, whatever the client's size;
2. :func:`selection.choose` keeps the smallest candidate within a standard error of the best;
3. only the chosen family is sized on the whole training split (forests: the automatic
   ``max_leaf_nodes`` of :mod:`sizing`, the search a RandomForest always had), fitted, and
   wrapped with the temperature that calibrates its validation probabilities (:mod:`calibration`).

So a training costs what it cost before families were compared, plus the small comparison;
a family pinned by the config skips the comparison.
"""
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
from threadpoolctl import threadpool_limits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from categories_classification.calibrated import TemperatureScaledClassifier, temper
from categories_classification.config import DEFAULT_FAMILY, estimator_class
from categories_classification.training.calibration import expected_calibration_error, fit_temperature
from categories_classification.training.evaluation import top_k_hits
from categories_classification.training.selection import Candidate, Choice, choose
from categories_classification.training.sizing import (
    MB,
    SIZE_PARAMS,
    SizeChoice,
    choose_max_leaf_nodes,
    estimate_forest_bytes,
    forest_memory_bytes,
    model_memory_bytes,
    sized_hits,
    validation_split,
)

SEED = 42
# Project defaults, overridden by a client's explicit params. random_state makes a retraining
# reproducible; n_jobs=-1 uses every core for a single client's fit. The trees' size is not a
# fixed default: unless the params set one of sizing.SIZE_PARAMS, max_leaf_nodes is chosen per
# client on its training split (the smallest that loses no validation top-5 accuracy against
# fully grown trees and is near the best leaf count), within the size budget below.
DEFAULT_MODEL_PARAMS: Mapping[str, Any] = {
    "n_estimators": 100,
    "random_state": SEED,
    "n_jobs": -1,
}
# HistGradientBoosting: small trees, early stopping on its own slice of the rows it is given, so
# that a candidate costs a few seconds even with 60 categories (one tree per category and round).
HIST_GRADIENT_BOOSTING_DEFAULTS: Mapping[str, Any] = {
    "max_iter": 100,
    "learning_rate": 0.1,
    "max_leaf_nodes": 15,
    "early_stopping": True,
    "n_iter_no_change": 10,
    "random_state": SEED,
}
# Forest settings of a client's params that the ExtraTrees candidate shares with the RandomForest one:
# the same number of trees, threads and seed, so that the families compete at the same cost.
SHARED_FOREST_PARAMS = ("n_estimators", "n_jobs", "random_state")
# Size budget of one client's model in memory (MB, 10^6 bytes), overridable per client
# (`max_model_mb:` in the config, `--max_model_mb`): a ceiling, well above what the automatic choice
# usually picks (see benchmarks/results.md).
DEFAULT_MAX_MODEL_MB = 64.0
FAMILY_ORDER = ("random_forest", "extra_trees", "hist_gradient_boosting")  # simpler first: ties go to it
# The family comparison's sample: enough rows and trees to rank families whose validation scores
# differ by more than their noise, a fraction of the sized fit's cost on the design's clients.
CANDIDATE_FIT_ROWS = 6_000
CANDIDATE_TREES = 50
FOREST_FAMILIES = ("random_forest", "extra_trees")


@dataclass(frozen=True)
class FittedForest:
    """A fitted forest with the parameters it was fitted with and how its size was decided."""

    model: Any  # a RandomForestClassifier or an ExtraTreesClassifier
    params: Mapping[str, Any]  # what the estimator got, max_leaf_nodes included
    budget_bytes: float
    explicit_size_params: tuple[str, ...]  # size parameters the user set (then no automatic choice)
    size: Optional[SizeChoice]  # the automatic choice, None when the user's params decided
    fit_seconds: float
    search_seconds: float

    @property
    def memory_bytes(self) -> int:
        """The forest's tree arrays in memory (what pickling it costs)."""
        return forest_memory_bytes(self.model)

    @property
    def over_budget(self) -> bool:
        """True when the forest is larger than the budget (explicit size params, or a budget below 2 leaves)."""
        return self.memory_bytes > self.budget_bytes

    def size_params(self) -> dict[str, str]:
        """MLflow params saying how the size was decided (the chosen value is ``max_leaf_nodes``)."""
        rule = (f"explicit: {', '.join(self.explicit_size_params)}" if self.explicit_size_params
                else "auto: smallest max_leaf_nodes beating fully grown trees on validation top-5 and near the best, "
                     "within the budget")
        return {"size_rule": rule, "max_model_mb": f"{self.budget_bytes / MB:g}"}

    def size_metrics(self) -> dict[str, float]:
        """The budget and, when automatic, the search's figures."""
        metrics = {"size_budget_bytes": self.budget_bytes, "size_search_seconds": self.search_seconds}
        if self.size is not None:
            metrics.update({
                "size_budget_max_leaf_nodes": float(self.size.budget_leaves),
                "size_estimated_bytes": float(self.size.estimated_bytes),
                "size_search_val_top_5_accuracy": self.size.search.accuracy,
                "size_search_fully_grown_val_top_5_accuracy": self.size.search.reference_accuracy,
                "size_search_best_val_top_5_accuracy": self.size.search.best_accuracy,
                "size_search_margin": self.size.search.margin,
            })
        return metrics

    def size_tags(self) -> dict[str, str]:
        """Why this size: the automatic choice's reason, or the explicit parameters."""
        reason = self.size.reason if self.size is not None else f"explicit {', '.join(self.explicit_size_params)}"
        bound = self.size.budget_bound if self.size is not None else False
        return {"size_choice": reason, "size_budget_bound": str(bound).lower()}


def fit_forest(x_train: Any, y_train: Any, model_params: Optional[Mapping[str, Any]] = None,
               max_model_mb: Optional[float] = None, estimator: type = RandomForestClassifier) -> FittedForest:
    """Fit the client's forest of ``estimator``: the explicit ``model_params`` over :data:`DEFAULT_MODEL_PARAMS`.

    When ``model_params`` set none of :data:`~categories_classification.training.sizing.SIZE_PARAMS`,
    ``max_leaf_nodes`` is chosen on ``(x_train, y_train)`` only (a validation split carved out
    of it) within ``max_model_mb`` (default :data:`DEFAULT_MAX_MODEL_MB`); see
    :func:`categories_classification.training.sizing.choose_max_leaf_nodes`. Explicit values always win.
    """
    params = {**DEFAULT_MODEL_PARAMS, **dict(model_params or {})}
    size, search_seconds = _forest_size(x_train, y_train, params, max_model_mb, estimator)
    return _fit_sized_forest(x_train, y_train, params, max_model_mb, estimator, size=size, search_seconds=search_seconds)


def _forest_size(x_train: Any, y_train: Any, params: Mapping[str, Any], max_model_mb: Optional[float],
                 estimator: type) -> tuple[Optional[SizeChoice], float]:
    """The automatic size of a forest of ``params`` (None when the params size it) and the search's seconds."""
    if any(key in SIZE_PARAMS for key in params):
        return None, 0.0
    started = time.perf_counter()
    size = choose_max_leaf_nodes(x_train, y_train, params, _budget_bytes(max_model_mb), seed=SEED, estimator=estimator)
    return size, time.perf_counter() - started


def _fit_sized_forest(x_train: Any, y_train: Any, params: Mapping[str, Any], max_model_mb: Optional[float],
                      estimator: type, *, size: Optional[SizeChoice], search_seconds: float) -> FittedForest:
    explicit_size = tuple(sorted(key for key in params if key in SIZE_PARAMS))
    params = dict(params) if size is None else {**params, "max_leaf_nodes": size.max_leaf_nodes}
    started = time.perf_counter()
    model = estimator(**params).fit(x_train, y_train)
    return FittedForest(model, params, _budget_bytes(max_model_mb), explicit_size, size,
                        time.perf_counter() - started, search_seconds)


@dataclass(frozen=True)
class Calibration:
    """The temperature fitted on the validation rows, and the top-1 ECE there before and after."""

    temperature: float
    val_ece_before: float
    val_ece_after: float


@dataclass(frozen=True)
class FittedModel:
    """The client's calibrated model, its family and parameters, and how both were decided."""

    model: TemperatureScaledClassifier
    family: str
    params: Mapping[str, Any]  # what the family's estimator got
    pin: Optional[str]  # why the family was not chosen (the config pinned it; then no candidates), None if chosen
    candidates: tuple[Candidate, ...]
    choice: Optional[Choice]
    forest: Optional[FittedForest]  # the size decision, for the forest families
    calibration: Calibration
    budget_bytes: float
    seconds: tuple[float, float]  # (search: candidates and sizes, fit of the final model)

    @property
    def pinned(self) -> bool:
        """True when the config decided the family."""
        return self.pin is not None

    @property
    def memory_bytes(self) -> int:
        """The registered model's size in memory (its pickled size), whatever the family."""
        return model_memory_bytes(self.model)

    @property
    def over_budget(self) -> bool:
        """True when the model is larger than its budget (explicit size params, or nothing fits)."""
        return self.memory_bytes > self.budget_bytes

    def candidate_metrics(self) -> dict[str, float]:
        """Each candidate's validation top-5, size and fit time, for the run."""
        metrics: dict[str, float] = {}
        for candidate in self.candidates:
            metrics.update({f"candidate_{candidate.family}_val_top_5_accuracy": candidate.accuracy,
                            f"candidate_{candidate.family}_size_bytes": float(candidate.size_bytes),
                            f"candidate_{candidate.family}_fit_seconds": candidate.fit_seconds})
        return metrics

    def describe(self) -> dict[str, str]:
        """Why this family: the choice's reason, or the pin."""
        return {"model_family": self.family,
                "family_choice": self.pin or (self.choice.reason if self.choice is not None else "")}


def fit_model(x_train: Any, y_train: Any, model_params: Optional[Mapping[str, Any]] = None,
              max_model_mb: Optional[float] = None, family: Optional[str] = None) -> FittedModel:
    """The client's calibrated model on ``(x_train, y_train)``: ``family`` if pinned, else the chosen one.

    Without ``family``, ``model_params`` are RandomForest parameters (as they always were): they
    configure the RandomForest candidate, and the ExtraTrees one shares :data:`SHARED_FOREST_PARAMS`;
    params beyond those (``max_depth``, ``criterion``, ...) describe the client's forest, so they
    pin RandomForest: explicit settings always win over the choice. With ``family``, ``model_params``
    are that family's and win over its defaults.
    """
    explicit = dict(model_params or {})
    pin = "pinned by the config" if family is not None else None
    own = sorted(set(explicit) - set(SHARED_FOREST_PARAMS))
    if family is None and own:
        family, pin = DEFAULT_FAMILY, f"the config's params set RandomForest parameter(s) {', '.join(own)}"
    features, labels = np.asarray(x_train, dtype=np.float32), np.asarray(y_train)
    split = validation_split(features, labels, SEED)
    started = time.perf_counter()
    if family is None:
        sample = _candidate_sample(split)
        candidates = tuple(_candidate(name, sample, _family_params(name, explicit), max_model_mb)
                           for name in FAMILY_ORDER)
        choice = choose(candidates)
        plan = _plan(choice.family, features, labels, split, _family_params(choice.family, explicit), max_model_mb)
    else:
        candidates, choice = (), None
        plan = _plan(family, features, labels, split, _family_params(family, explicit, pinned=True), max_model_mb)
    search_seconds = time.perf_counter() - started
    final = _fit_plan(plan, x_train, y_train, max_model_mb)  # as given: a DataFrame keeps its feature names
    calibration = _calibrate(plan.val_proba, split[2], split[3])
    return FittedModel(TemperatureScaledClassifier(final.model, calibration.temperature), plan.candidate.family,
                       final.params, pin, candidates, choice, final.forest, calibration,
                       _budget_bytes(max_model_mb), (search_seconds, final.final_seconds))


def _calibrate(val_proba: np.ndarray, y_fit: np.ndarray, y_val: np.ndarray) -> Calibration:
    """The temperature of the validation probabilities (columns: the fit rows' classes), ECE before and after."""
    classes = np.unique(y_fit)
    temperature = fit_temperature(y_val, val_proba, classes)
    return Calibration(temperature, expected_calibration_error(y_val, val_proba, classes),
                       expected_calibration_error(y_val, temper(val_proba, temperature), classes))


@dataclass(frozen=True)
class _Plan:
    """A family scored on the validation rows: how to fit it on the whole training split."""

    candidate: Candidate
    params: Mapping[str, Any]  # for the final fit (HistGradientBoosting: the rounds early stopping found)
    size: Optional[SizeChoice]  # a forest's automatic size
    search_seconds: float
    val_proba: np.ndarray  # on the validation rows, one column per class of the fit rows


@dataclass(frozen=True)
class _Final:
    """The chosen family fitted on the whole training split."""

    model: Any
    params: Mapping[str, Any]
    forest: Optional[FittedForest]
    final_seconds: float


def _family_params(family: str, explicit: Mapping[str, Any], pinned: bool = False) -> dict[str, Any]:
    """``family``'s parameters: the project's defaults, under the client's params where they apply."""
    if family not in FOREST_FAMILIES:
        return {**HIST_GRADIENT_BOOSTING_DEFAULTS, **(explicit if pinned else {})}
    if pinned or family == DEFAULT_FAMILY:
        return {**DEFAULT_MODEL_PARAMS, **explicit}
    return {**DEFAULT_MODEL_PARAMS, **{key: explicit[key] for key in SHARED_FOREST_PARAMS if key in explicit}}


def _candidate_sample(split: tuple) -> tuple:
    """The validation split with at most :data:`CANDIDATE_FIT_ROWS` fit rows (a stratified sample)."""
    x_fit, x_val, y_fit, y_val = split
    if len(y_fit) <= CANDIDATE_FIT_ROWS:
        return split
    classes, counts = np.unique(y_fit, return_counts=True)
    stratify = y_fit if counts.min() >= 2 and len(classes) <= CANDIDATE_FIT_ROWS else None
    x_fit, _, y_fit, _ = train_test_split(x_fit, y_fit, train_size=CANDIDATE_FIT_ROWS, stratify=stratify,
                                          random_state=SEED)
    return x_fit, x_val, y_fit, y_val


def _candidate(family: str, sample: tuple, params: Mapping[str, Any], max_model_mb: Optional[float]) -> Candidate:
    """``family`` fitted on the sample's fit rows and scored on its validation rows.

    A forest is scored at its automatic leaf count on the sample (fully grown trees overfit where
    sized ones do not), with at most :data:`CANDIDATE_TREES` trees; its size is estimated for the
    client's number of trees at that leaf count.
    """
    x_fit, x_val, y_fit, y_val = sample
    columns = np.unique(y_fit)
    started = time.perf_counter()
    if family in FOREST_FAMILIES and not any(key in SIZE_PARAMS for key in params):
        trees = int(params.get("n_estimators", DEFAULT_MODEL_PARAMS["n_estimators"]))
        hits, leaves = sized_hits(sample, {**params, "n_estimators": min(trees, CANDIDATE_TREES)},
                                  _budget_bytes(max_model_mb), seed=SEED, estimator=estimator_class(family))
        size_bytes = estimate_forest_bytes(trees, leaves, len(columns))
    else:
        with _one_openmp_thread():
            model = estimator_class(family)(**_early_stopping_fits(params, y_fit)).fit(x_fit, y_fit)
            hits = top_k_hits(y_val, _aligned(model.predict_proba(x_val), model.classes_, columns), columns)
        size_bytes = model_memory_bytes(model)
    return Candidate(family, hits, int(size_bytes), time.perf_counter() - started,
                     size_bytes <= _budget_bytes(max_model_mb))


def _plan(family: str, features: np.ndarray, labels: np.ndarray, split: tuple, params: Mapping[str, Any],
          max_model_mb: Optional[float]) -> _Plan:
    """Size ``family`` on the training split and score it on the validation rows (forests: the size search)."""
    x_fit, x_val, y_fit, y_val = split
    columns = np.unique(y_fit)
    estimator = estimator_class(family)
    started = time.perf_counter()
    size = None
    if family in FOREST_FAMILIES:
        size, _ = _forest_size(features, labels, params, max_model_mb, estimator)
    if size is not None:
        proba, size_bytes = size.validation_proba, size.estimated_bytes
    else:  # fitted on the fit rows as given (its size there stands for its size on the whole split)
        with _one_openmp_thread():
            model = estimator(**_early_stopping_fits(params, y_fit)).fit(x_fit, y_fit)
            proba = _aligned(model.predict_proba(x_val), model.classes_, columns)
        size_bytes = model_memory_bytes(model)
        if family not in FOREST_FAMILIES and params.get("early_stopping"):
            params = {**params, "early_stopping": False, "max_iter": int(model.n_iter_)}
    seconds = time.perf_counter() - started
    candidate = Candidate(family, top_k_hits(y_val, proba, columns), int(size_bytes), seconds,
                          size_bytes <= _budget_bytes(max_model_mb))
    return _Plan(candidate, params, size, seconds, proba)


def _fit_plan(plan: _Plan, features: Any, labels: Any, max_model_mb: Optional[float]) -> _Final:
    """The planned family fitted on the whole training split."""
    estimator = estimator_class(plan.candidate.family)
    if plan.candidate.family in FOREST_FAMILIES:
        forest = _fit_sized_forest(features, labels, plan.params, max_model_mb, estimator, size=plan.size,
                                   search_seconds=plan.search_seconds if plan.size is not None else 0.0)
        return _Final(forest.model, forest.params, forest, forest.fit_seconds)
    started = time.perf_counter()
    with _one_openmp_thread():
        model = estimator(**plan.params).fit(features, labels)
    return _Final(model, dict(plan.params), None, time.perf_counter() - started)


def _early_stopping_fits(params: Mapping[str, Any], labels: np.ndarray) -> dict[str, Any]:
    """``params`` whose early stopping (HistGradientBoosting's own stratified slice of the rows) can split.

    The slice needs a row of every category: with few rows and many categories it is made as
    large as that takes, or early stopping is switched off when even half the rows would not do.
    """
    params = dict(params)
    if not params.get("early_stopping"):
        return params
    rows, needed = len(labels), 2 * len(np.unique(labels))
    fraction = params.get("validation_fraction", 0.1)
    if fraction is None or (isinstance(fraction, float) and rows * fraction >= needed):
        return params
    if needed <= rows // 2:
        return {**params, "validation_fraction": needed}
    return {**params, "early_stopping": False}


def _one_openmp_thread() -> Any:
    # HistGradientBoosting's OpenMP threads spin while they wait: on a shared machine, or beside the
    # other trainings of train-all, they fight for cores and a fit takes many times longer.
    return threadpool_limits(limits=1, user_api="openmp")


def _aligned(proba: np.ndarray, classes: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``proba`` (columns in ``classes`` order) with one column per ``columns``, zeros for missing ones."""
    if np.array_equal(classes, columns):
        return np.asarray(proba, dtype=np.float64)
    out = np.zeros((len(proba), len(columns)), dtype=np.float64)
    out[:, np.searchsorted(columns, classes)] = proba
    return out


def _budget_bytes(max_model_mb: Optional[float]) -> float:
    return float(DEFAULT_MAX_MODEL_MB if max_model_mb is None else max_model_mb) * MB
