"""Fit a client's model on its training split: the family or ensemble (chosen or pinned), its size, its calibration.

No MLflow here (the trainer logs what this returns). Every choice is made on a validation split
carved out of the training split (:func:`sizing.validation_split`), never on the test split:

1. every candidate family of :data:`families.FAMILY_ORDER` is scored on the validation rows: the
   smooth families (logistic regression, QDA, kNN, MLP: standardised inputs) fitted on all the fit
   rows, which costs a second or two; the tree families on a sample of them (at most
   :data:`candidates.CANDIDATE_FIT_ROWS`, forests of at most :data:`candidates.CANDIDATE_TREES` trees at their automatic
   leaf count, HistGradientBoosting with early stopping), which bounds their cost on big clients
   (:mod:`candidates`);
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
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from categories_classification.calibrated import AveragedClassifier, TemperatureScaledClassifier, temper
from categories_classification.config import DEFAULT_FAMILY, MEMBER_SEPARATOR, ensemble_members, estimator_class
from categories_classification.training.calibration import expected_calibration_error
from categories_classification.training.candidates import (
    Compared,
    Scored,
    aligned,
    compare,
    final_step,
    one_thread,
    temperature_of,
)
from categories_classification.training.families import FAMILY_ORDER, SEED, build, compact, final_params, is_forest, params_for
from categories_classification.training.forest import (
    DEFAULT_MAX_MODEL_MB,
    SHARED_FOREST_PARAMS,
    FittedForest,
    budget_bytes,
    fit_forest,
    fit_sized_forest,
    forest_size,
)
from categories_classification.training.selection import Candidate, Choice
from categories_classification.training.sizing import SizeChoice, model_memory_bytes, validation_split

__all__ = ["DEFAULT_MAX_MODEL_MB", "FAMILY_ORDER", "SEED", "FittedModel", "fit_forest", "fit_model"]


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
            return {key: str(value) for key, value in final_step(inner).get_params(deep=False).items()}
        return {f"{family}.{key}": str(value) for family, member in zip(self.members, inner.estimators)
                for key, value in final_step(member.estimator).get_params(deep=False).items()}

    def describe(self) -> dict[str, str]:
        """Why this family: the choice's reason, or the pin."""
        return {"model_family": self.family,
                "family_choice": self.pin or (self.choice.reason if self.choice is not None else "")}
def fit_model(x_train: Any, y_train: Any, model_params: Optional[Mapping[str, Any]] = None,
              max_model_mb: Optional[float] = None, family: Optional[str] = None) -> FittedModel:
    """The client's calibrated model on ``(x_train, y_train)``: ``family`` if pinned, else the chosen one.

    Without ``family``, ``model_params`` are RandomForest parameters (as they always were): they
    configure the RandomForest candidate, and the ExtraTrees one shares :data:`forest.SHARED_FOREST_PARAMS`;
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
        compared = compare(split, params_of, max_model_mb, pinned_ensemble=family is not None)
    else:
        compared = Compared(members or (family,), {}, (), None, {})
    plans = [_plan(name, features, labels, split, params_of(name), max_model_mb, scored=compared.scored.get(name))
             for name in compared.chosen]
    search_seconds = time.perf_counter() - started
    finals = [_fit_plan(plan, x_train, y_train, max_model_mb) for plan in plans]  # a DataFrame keeps its names
    model, calibration = _assemble(plans, finals, split)
    params = dict(finals[0].params) if len(finals) == 1 else {plan.family: dict(final.params)
                                                               for plan, final in zip(plans, finals)}
    return FittedModel(model, MEMBER_SEPARATOR.join(compared.chosen), params, pin, compared.candidates,
                       compared.choice, finals[0].forest if len(finals) == 1 else None, calibration,
                       budget_bytes(max_model_mb), (search_seconds, sum(final.final_seconds for final in finals)),
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
def _plan(family: str, features: np.ndarray, labels: np.ndarray, split: tuple, params: Mapping[str, Any],
          max_model_mb: Optional[float], *, scored: Optional[Scored]) -> _Plan:
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
        size, _ = forest_size(features, labels, params, max_model_mb, estimator_class(family))
    if size is not None:
        proba = size.validation_proba
    else:
        with one_thread():
            model = build(family, params, y_fit).fit(x_fit, y_fit)
            proba = aligned(model.predict_proba(x_val), model.classes_, columns)
        params = final_params(family, params, final_step(model))
    return _Plan(family, params, size, time.perf_counter() - started, proba, temperature_of(y_val, proba, columns))


def _fit_plan(plan: _Plan, features: Any, labels: Any, max_model_mb: Optional[float]) -> _Final:
    """The planned family fitted on the whole training split."""
    if is_forest(plan.family):
        forest = fit_sized_forest(features, labels, plan.params, max_model_mb, estimator_class(plan.family),
                                   size=plan.size, search_seconds=plan.search_seconds if plan.size is not None else 0.0)
        return _Final(forest.model, forest.params, forest, forest.fit_seconds)
    started = time.perf_counter()
    with one_thread():
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
    temperature = plans[0].temperature if len(plans) == 1 else temperature_of(y_val, proba, classes)
    calibration = Calibration(temperature, expected_calibration_error(y_val, proba, classes),
                              expected_calibration_error(y_val, temper(proba, temperature), classes))
    return TemperatureScaledClassifier(inner, temperature), calibration
