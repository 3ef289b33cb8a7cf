"""Fit a client's model on its training split: the family or ensemble (chosen or pinned), its size, its calibration.

No MLflow here (the trainer logs what this returns). Every choice is made on a validation split
carved out of the training split (:func:`sizing.validation_split`), never on the test split:

1. every candidate family of :data:`families.FAMILY_ORDER` is scored on the validation rows: the
   smooth families (logistic regression, QDA, kNN, MLP: standardised inputs) fitted on all the fit
   rows, which costs a second or two; the tree families on a sample of them (at most
   :data:`CANDIDATE_FIT_ROWS`, forests of at most :data:`CANDIDATE_TREES` trees at their automatic
   leaf count, HistGradientBoosting with early stopping), which bounds their cost on big clients;
2. the averages of the best two and best three candidates' calibrated probabilities are scored on
   the same rows (no fit: the candidates' probabilities are averaged);
3. :func:`selection.choose` keeps the most accurate within the size budget (ties: the smaller); an
   ensemble only when it beats the best single candidate by more than the noise;
4. only the chosen family (or each member) is sized on the whole training split (forests: the
   automatic ``max_leaf_nodes`` of :mod:`sizing`), refitted on it, and wrapped with the temperature
   that calibrates its validation probabilities (:mod:`calibration`); an ensemble averages its
   calibrated members and is calibrated once more as a whole.

A family pinned by the config skips the comparison; ``ensemble`` pins the best ensemble of the
candidates, a list of families pins an ensemble of those.
"""
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from threadpoolctl import threadpool_limits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from categories_classification.calibrated import AveragedClassifier, TemperatureScaledClassifier, temper
from categories_classification.config import DEFAULT_FAMILY, MEMBER_SEPARATOR, ensemble_members, estimator_class
from categories_classification.training.calibration import expected_calibration_error, fit_temperature
from categories_classification.training.evaluation import top_k_hits
from categories_classification.training.families import (
    DEFAULT_PARAMS,
    FAMILY_ORDER,
    INSTANCE_BASED,
    SEED,
    build,
    compact,
    final_params,
    is_forest,
    params_for,
)
from categories_classification.training.selection import Candidate, Choice, choose, ranked
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

__all__ = ["DEFAULT_MAX_MODEL_MB", "FAMILY_ORDER", "SEED", "FittedModel", "fit_forest", "fit_model"]
LOGGER = logging.getLogger(__name__)
# The RandomForest's defaults (what a client's params are laid over when no family is pinned). The
# trees' size is not a fixed default: unless the params set one of sizing.SIZE_PARAMS, max_leaf_nodes
# is chosen per client on its training split, within the size budget below.
DEFAULT_MODEL_PARAMS: Mapping[str, Any] = DEFAULT_PARAMS[DEFAULT_FAMILY]
# Forest settings of a client's params that the ExtraTrees candidate shares with the RandomForest one:
# the same number of trees, threads and seed, so that the families compete at the same cost.
SHARED_FOREST_PARAMS = ("n_estimators", "n_jobs", "random_state")
# Size budget of one client's model in memory (MB, 10^6 bytes), overridable per client
# (`max_model_mb:` in the config, `--max_model_mb`): a ceiling, well above what the automatic choice
# usually picks (see benchmarks/results.md).
DEFAULT_MAX_MODEL_MB = 64.0
# The tree families' comparison sample: enough rows and trees to rank families whose validation
# scores differ by more than their noise, a fraction of the sized fit's cost on the design's clients.
CANDIDATE_FIT_ROWS = 6_000
CANDIDATE_TREES = 50
ENSEMBLE_SIZES = (2, 3)  # the ensembles tried: the best two candidates, the best three


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
class FittedModel:  # pylint: disable=too-many-instance-attributes  # a record the trainer logs as a whole
    """The client's calibrated model, its family (or ensemble) and parameters, and how both were decided."""

    model: TemperatureScaledClassifier
    family: str  # a model family, or an ensemble's members joined by "+"
    params: Mapping[str, Any]  # what the family's estimator got; an ensemble's: per member
    pin: Optional[str]  # why the family was not chosen (the config pinned it), None if chosen
    candidates: tuple[Candidate, ...]  # single families, then the ensembles tried
    choice: Optional[Choice]
    forest: Optional[FittedForest]  # the size decision, when the model is one forest
    calibration: Calibration
    budget_bytes: float
    seconds: tuple[float, float]  # (search: candidates and sizes, fit of the final model)
    skipped: Mapping[str, str] = field(default_factory=dict)  # candidates that could not be fitted, and why

    @property
    def pinned(self) -> bool:
        """True when the config decided the family."""
        return self.pin is not None

    @property
    def members(self) -> tuple[str, ...]:
        """The families the model holds (one, or an ensemble's members)."""
        return tuple(self.family.split(MEMBER_SEPARATOR))

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
            # An ensemble's members vary from run to run: its metrics are named by its size (the
            # members are in evaluation/model_choice.json), so that runs compare.
            members = candidate.family.split(MEMBER_SEPARATOR)
            name = candidate.family if len(members) == 1 else f"ensemble_of_{len(members)}"
            metrics.update({f"candidate_{name}_val_top_5_accuracy": candidate.accuracy,
                            f"candidate_{name}_size_bytes": float(candidate.size_bytes),
                            f"candidate_{name}_fit_seconds": candidate.fit_seconds})
        return metrics

    def estimator_params(self) -> dict[str, str]:
        """The fitted estimators' full parameters as MLflow params (an ensemble's prefixed ``<member>.``)."""
        inner = self.model.estimator
        if len(self.members) == 1:
            return {key: str(value) for key, value in _final_step(inner).get_params(deep=False).items()}
        return {f"{family}.{key}": str(value) for family, member in zip(self.members, inner.estimators)
                for key, value in _final_step(member.estimator).get_params(deep=False).items()}

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
    are that family's and win over its defaults; an ensemble's are keyed by member family.
    """
    explicit = dict(model_params or {})
    family, pin = _pinned(family, explicit)
    features, labels = np.asarray(x_train, dtype=np.float32), np.asarray(y_train)
    split = validation_split(features, labels, SEED)
    started = time.perf_counter()
    members = ensemble_members(family)

    def params_of(name: str) -> dict[str, Any]:
        if family is None:
            return _auto_params(name, explicit)
        return params_for(name, explicit.get(name, {}) if members is not None else explicit)

    if family is None or members == ():
        compared = _compare(split, params_of, max_model_mb, pinned_ensemble=family is not None)
    else:
        compared = _Compared(members or (family,), {}, (), None, {})
    plans = [_plan(name, features, labels, split, params_of(name), max_model_mb, scored=compared.scored.get(name))
             for name in compared.chosen]
    search_seconds = time.perf_counter() - started
    finals = [_fit_plan(plan, x_train, y_train, max_model_mb) for plan in plans]  # a DataFrame keeps its names
    model, calibration = _assemble(plans, finals, split)
    params = dict(finals[0].params) if len(finals) == 1 else {plan.family: dict(final.params)
                                                               for plan, final in zip(plans, finals)}
    return FittedModel(model, MEMBER_SEPARATOR.join(compared.chosen), params, pin, compared.candidates,
                       compared.choice, finals[0].forest if len(finals) == 1 else None, calibration,
                       _budget_bytes(max_model_mb), (search_seconds, sum(final.final_seconds for final in finals)),
                       compared.skipped)


def _pinned(family: Optional[str], explicit: Mapping[str, Any]) -> tuple[Optional[str], Optional[str]]:
    """The family the config decides (None: chosen) and why: pinned, or RandomForest-only params given."""
    if family is not None:
        return family, "pinned by the config"
    own = sorted(set(explicit) - set(SHARED_FOREST_PARAMS))
    if own:
        return DEFAULT_FAMILY, f"the config's params set RandomForest parameter(s) {', '.join(own)}"
    return None, None


@dataclass(frozen=True)
class _Compared:
    """The comparison's outcome: the families chosen (one, or an ensemble's members) and what it saw."""

    chosen: tuple[str, ...]
    scored: Mapping[str, "_Scored"]
    candidates: tuple[Candidate, ...]
    choice: Optional[Choice]
    skipped: Mapping[str, str]


def _compare(split: tuple, params_of: Any, max_model_mb: Optional[float], *, pinned_ensemble: bool) -> _Compared:
    """Every candidate and the ensembles scored on the validation rows, and the choice among them.

    With ``pinned_ensemble`` (``family: ensemble``), the most accurate ensemble is taken, whatever
    the best single candidate scores.
    """
    scored, skipped = _score_candidates(split, params_of, max_model_mb)
    ensembles = _ensembles(scored, split[3], max_model_mb)
    singles = tuple(entry.candidate for entry in scored.values())
    if pinned_ensemble:
        best, choice = ranked(list(ensembles) or list(singles))[0].family, None
    else:
        choice = choose(singles, list(ensembles))
        best = choice.family
    return _Compared(tuple(best.split(MEMBER_SEPARATOR)), scored, singles + tuple(ensembles), choice, skipped)


@dataclass(frozen=True)
class _Scored:
    """A candidate scored on the validation rows, with what an ensemble or a plan reuses."""

    candidate: Candidate
    val_proba: np.ndarray  # one column per class of the fit rows
    temperature: float  # calibrates val_proba
    params: Mapping[str, Any]  # to refit it on the whole training split
    columns: np.ndarray  # the fit rows' classes: val_proba's columns
    whole_fit_rows: bool  # fitted on all the fit rows (else on a sample): its plan needs no other fit


@dataclass(frozen=True)
class _Plan:
    """A family scored on the validation rows: how to fit it on the whole training split."""

    family: str
    params: Mapping[str, Any]  # for the final fit (HistGradientBoosting: the rounds early stopping found)
    size: Optional[SizeChoice]  # a forest's automatic size
    search_seconds: float
    val_proba: np.ndarray  # on the validation rows, one column per class of the fit rows
    temperature: float


@dataclass(frozen=True)
class _Final:
    """The planned family fitted on the whole training split."""

    model: Any
    params: Mapping[str, Any]
    forest: Optional[FittedForest]
    final_seconds: float


def _auto_params(family: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """``family``'s parameters when the family is chosen: a client's params are the RandomForest's."""
    if family == DEFAULT_FAMILY:
        return params_for(family, explicit)
    if is_forest(family):
        return params_for(family, {key: explicit[key] for key in SHARED_FOREST_PARAMS if key in explicit})
    return params_for(family, {})


def _score_candidates(split: tuple, params_of: Any, max_model_mb: Optional[float]
                      ) -> tuple[dict[str, _Scored], dict[str, str]]:
    """Every family of :data:`FAMILY_ORDER` scored on the validation rows; those that cannot fit, and why."""
    sample = _candidate_sample(split)
    scored, skipped = {}, {}
    for family in FAMILY_ORDER:
        try:
            scored[family] = _score(family, split, sample, params_of(family), max_model_mb)
        except (ValueError, np.linalg.LinAlgError) as exc:  # e.g. QDA with a category of one row
            skipped[family] = " ".join(str(exc).split())
            LOGGER.info("candidate %s left out: %s", family, skipped[family])
    if not scored:
        raise ValueError("no model family could be fitted on these rows: "
                         + "; ".join(f"{family}: {why}" for family, why in skipped.items()))
    return scored, skipped


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


def _score(family: str, split: tuple, sample: tuple, params: Mapping[str, Any],
           max_model_mb: Optional[float]) -> _Scored:
    """``family`` fitted (smooth families: on all the fit rows; trees: on the sample) and scored on the validation rows.

    A forest is scored at its automatic leaf count on the sample (fully grown trees overfit where
    sized ones do not), with at most :data:`CANDIDATE_TREES` trees; its size is estimated for the
    client's number of trees at that leaf count.
    """
    columns = np.unique(split[2])
    rows = split if not (is_forest(family) or family == "hist_gradient_boosting") else sample
    x_fit, x_val, y_fit, y_val = rows
    started = time.perf_counter()
    if is_forest(family) and not any(key in SIZE_PARAMS for key in params):
        trees = int(params.get("n_estimators", DEFAULT_MODEL_PARAMS["n_estimators"]))
        _, leaves, proba = sized_hits(rows, {**params, "n_estimators": min(trees, CANDIDATE_TREES)},
                                      _budget_bytes(max_model_mb), seed=SEED, estimator=estimator_class(family))
        proba = _aligned(proba, np.unique(y_fit), columns)
        size_bytes = estimate_forest_bytes(trees, leaves, len(columns))
    else:
        with _one_thread():
            model = build(family, params, y_fit).fit(x_fit, y_fit)
            proba = _aligned(model.predict_proba(x_val), model.classes_, columns)
        size_bytes = model_memory_bytes(compact(family, model))
        params = final_params(family, params, _final_step(model))
    candidate = Candidate(family, top_k_hits(y_val, proba, columns), int(size_bytes), time.perf_counter() - started,
                          size_bytes <= _budget_bytes(max_model_mb))
    return _Scored(candidate, proba, _temperature(y_val, proba, columns), params, columns, rows is split)


def _ensembles(scored: Mapping[str, _Scored], y_val: np.ndarray, max_model_mb: Optional[float]) -> list[Candidate]:
    """The averages of the best two and best three candidates' calibrated validation probabilities.

    Instance-based families (:data:`families.INSTANCE_BASED`) are not members: see there why.
    """
    best = ranked([entry.candidate for family, entry in scored.items() if family not in INSTANCE_BASED])
    found = []
    for size in ENSEMBLE_SIZES:
        if len(best) < size:
            break
        members = [scored[candidate.family] for candidate in best[:size]]
        proba = np.mean([temper(member.val_proba, member.temperature) for member in members], axis=0)
        size_bytes = sum(member.candidate.size_bytes for member in members)
        found.append(Candidate(MEMBER_SEPARATOR.join(member.candidate.family for member in members),
                               top_k_hits(y_val, proba, members[0].columns), int(size_bytes),
                               sum(member.candidate.fit_seconds for member in members),
                               size_bytes <= _budget_bytes(max_model_mb)))
    return found


def _plan(family: str, features: np.ndarray, labels: np.ndarray, split: tuple, params: Mapping[str, Any],
          max_model_mb: Optional[float], *, scored: Optional[_Scored]) -> _Plan:
    """How ``family`` is fitted on the training split, and its probabilities on the validation rows.

    A forest's size is searched on the training split (the search's validation rows are the
    split's); a candidate already fitted on all the fit rows is reused as it is; any other family
    is fitted on the fit rows.
    """
    x_fit, x_val, y_fit, y_val = split
    columns = np.unique(y_fit)
    started = time.perf_counter()
    if scored is not None and scored.whole_fit_rows:
        return _Plan(family, scored.params, None, scored.candidate.fit_seconds, scored.val_proba, scored.temperature)
    size = None
    if is_forest(family):
        size, _ = _forest_size(features, labels, params, max_model_mb, estimator_class(family))
    if size is not None:
        proba = size.validation_proba
    else:
        with _one_thread():
            model = build(family, params, y_fit).fit(x_fit, y_fit)
            proba = _aligned(model.predict_proba(x_val), model.classes_, columns)
        params = final_params(family, params, _final_step(model))
    return _Plan(family, params, size, time.perf_counter() - started, proba, _temperature(y_val, proba, columns))


def _fit_plan(plan: _Plan, features: Any, labels: Any, max_model_mb: Optional[float]) -> _Final:
    """The planned family fitted on the whole training split."""
    if is_forest(plan.family):
        forest = _fit_sized_forest(features, labels, plan.params, max_model_mb, estimator_class(plan.family),
                                   size=plan.size, search_seconds=plan.search_seconds if plan.size is not None else 0.0)
        return _Final(forest.model, forest.params, forest, forest.fit_seconds)
    started = time.perf_counter()
    with _one_thread():
        model = compact(plan.family, build(plan.family, plan.params, np.asarray(labels)).fit(features, labels))
    return _Final(model, dict(plan.params), None, time.perf_counter() - started)


def _assemble(plans: Sequence[_Plan], finals: Sequence[_Final], split: tuple) -> tuple[TemperatureScaledClassifier,
                                                                                      Calibration]:
    """The registered estimator: one calibrated model, or the calibrated average of calibrated members."""
    y_fit, y_val = split[2], split[3]
    if len(plans) == 1:
        proba, inner = plans[0].val_proba, finals[0].model
    else:
        proba = np.mean([temper(plan.val_proba, plan.temperature) for plan in plans], axis=0)
        inner = AveragedClassifier([TemperatureScaledClassifier(final.model, plan.temperature)
                                    for plan, final in zip(plans, finals)])
    classes = np.unique(y_fit)
    temperature = plans[0].temperature if len(plans) == 1 else _temperature(y_val, proba, classes)
    calibration = Calibration(temperature, expected_calibration_error(y_val, proba, classes),
                              expected_calibration_error(y_val, temper(proba, temperature), classes))
    return TemperatureScaledClassifier(inner, temperature), calibration


def _temperature(y_val: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """The temperature of ``proba`` on the validation rows, or 1 where it would not lower their top-1 ECE.

    The temperature minimises the log loss; on a model that is already nearly calibrated that can
    leave the top-1 score (what users threshold) a little worse: then the scores are left as they are.
    """
    temperature = fit_temperature(y_val, proba, classes)
    if temperature != 1.0 and (expected_calibration_error(y_val, temper(proba, temperature), classes)
                               > expected_calibration_error(y_val, proba, classes)):
        return 1.0
    return temperature


def _final_step(estimator: Any) -> Any:
    """The estimator itself, or a Pipeline's last step (the smooth families' model behind its scaler)."""
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator


def _one_thread() -> Any:
    # One thread for the non-forest fits: HistGradientBoosting's OpenMP threads spin while they
    # wait, and the MLP's small matrix products gain nothing from BLAS threads; on a shared machine,
    # or beside the other trainings of train-all, extra threads fight for cores and a fit takes many
    # times longer.
    return threadpool_limits(limits=1)


def _aligned(proba: np.ndarray, classes: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``proba`` (columns in ``classes`` order) with one column per ``columns``, zeros for missing ones."""
    if np.array_equal(classes, columns):
        return np.asarray(proba, dtype=np.float64)
    out = np.zeros((len(proba), len(columns)), dtype=np.float64)
    out[:, np.searchsorted(columns, classes)] = proba
    return out


def _budget_bytes(max_model_mb: Optional[float]) -> float:
    return float(DEFAULT_MAX_MODEL_MB if max_model_mb is None else max_model_mb) * MB
