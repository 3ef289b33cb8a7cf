"""The candidates of a client's model, scored on the validation rows: every family, then the ensembles, then the choice.

Smooth families are fitted on all the fit rows; tree families on a sample (:data:`CANDIDATE_FIT_ROWS`,
forests of at most :data:`CANDIDATE_TREES` trees at their automatic leaf count). No MLflow here.
"""
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from categories_classification.calibrated import temper
from categories_classification.config import MEMBER_SEPARATOR, estimator_class
from categories_classification.training.calibration import expected_calibration_error, fit_temperature
from categories_classification.training.evaluation import top_k_hits
from categories_classification.training.families import FAMILY_ORDER, INSTANCE_BASED, SEED, build, compact, final_params, is_forest
from categories_classification.training.forest import DEFAULT_MODEL_PARAMS, budget_bytes
from categories_classification.training.selection import Candidate, Choice, choose, ranked
from categories_classification.training.sizing import SIZE_PARAMS, estimate_forest_bytes, model_memory_bytes, sized_hits

LOGGER = logging.getLogger(__name__)
# The tree families' comparison sample: enough rows and trees to rank families whose validation
# scores differ by more than their noise, a fraction of the sized fit's cost on the design's clients.
CANDIDATE_FIT_ROWS = 6_000
CANDIDATE_TREES = 50
ENSEMBLE_SIZES = (2, 3)  # the ensembles tried: the best two candidates, the best three


@dataclass(frozen=True)
class Compared:
    """The comparison's outcome: the families chosen (one, or an ensemble's members) and what it saw."""

    chosen: tuple[str, ...]
    scored: Mapping[str, "Scored"]
    candidates: tuple[Candidate, ...]
    choice: Optional[Choice]
    skipped: Mapping[str, str]


def compare(split: tuple, params_of: Any, max_model_mb: Optional[float], *, pinned_ensemble: bool) -> Compared:
    """Every candidate and the ensembles scored on the validation rows, and the choice among them.

    With ``pinned_ensemble`` (``family: ensemble``), the most accurate ensemble is taken, whatever
    the best single candidate scores.
    """
    scored, skipped = score_candidates(split, params_of, max_model_mb)
    found = ensemble_candidates(scored, split[3], max_model_mb)
    singles = tuple(entry.candidate for entry in scored.values())
    if pinned_ensemble:
        best, choice = ranked(list(found) or list(singles))[0].family, None
    else:
        choice = choose(singles, list(found))
        best = choice.family
    return Compared(tuple(best.split(MEMBER_SEPARATOR)), scored, singles + tuple(found), choice, skipped)


@dataclass(frozen=True)
class Scored:
    """A candidate scored on the validation rows, with what an ensemble or a plan reuses."""

    candidate: Candidate
    val_proba: np.ndarray  # one column per class of the fit rows
    temperature: float  # calibrates val_proba
    params: Mapping[str, Any]  # to refit it on the whole training split
    columns: np.ndarray  # the fit rows' classes: val_proba's columns
    whole_fit_rows: bool  # fitted on all the fit rows (else on a sample): its plan needs no other fit


def score_candidates(split: tuple, params_of: Any, max_model_mb: Optional[float]
                      ) -> tuple[dict[str, Scored], dict[str, str]]:
    """Every family of :data:`FAMILY_ORDER` scored on the validation rows; those that cannot fit, and why."""
    sample = candidate_sample(split)
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


def candidate_sample(split: tuple) -> tuple:
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
           max_model_mb: Optional[float]) -> Scored:
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
                                      budget_bytes(max_model_mb), seed=SEED, estimator=estimator_class(family))
        proba = aligned(proba, np.unique(y_fit), columns)
        size_bytes = estimate_forest_bytes(trees, leaves, len(columns))
    else:
        with one_thread():
            model = build(family, params, y_fit).fit(x_fit, y_fit)
            proba = aligned(model.predict_proba(x_val), model.classes_, columns)
        size_bytes = model_memory_bytes(compact(family, model))
        params = final_params(family, params, final_step(model))
    candidate = Candidate(family, top_k_hits(y_val, proba, columns), int(size_bytes), time.perf_counter() - started,
                          size_bytes <= budget_bytes(max_model_mb))
    return Scored(candidate, proba, temperature_of(y_val, proba, columns), params, columns, rows is split)


def ensemble_candidates(scored: Mapping[str, Scored], y_val: np.ndarray, max_model_mb: Optional[float]) -> list[Candidate]:
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
                               size_bytes <= budget_bytes(max_model_mb)))
    return found


def temperature_of(y_val: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """The temperature of ``proba`` on the validation rows, or 1 where it would not lower their top-1 ECE.

    The temperature minimises the log loss; on a model that is already nearly calibrated that can
    leave the top-1 score (what users threshold) a little worse: then the scores are left as they are.
    """
    temperature = fit_temperature(y_val, proba, classes)
    if temperature != 1.0 and (expected_calibration_error(y_val, temper(proba, temperature), classes)
                               > expected_calibration_error(y_val, proba, classes)):
        return 1.0
    return temperature


def final_step(estimator: Any) -> Any:
    """The estimator itself, or a Pipeline's last step (the smooth families' model behind its scaler)."""
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator


def one_thread() -> Any:
    # One thread for the non-forest fits: HistGradientBoosting's OpenMP threads spin while they
    # wait, and the MLP's small matrix products gain nothing from BLAS threads; on a shared machine,
    # or beside the other trainings of train-all, extra threads fight for cores and a fit takes many
    # times longer.
    return threadpool_limits(limits=1)


def aligned(proba: np.ndarray, classes: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``proba`` (columns in ``classes`` order) with one column per ``columns``, zeros for missing ones."""
    if np.array_equal(classes, columns):
        return np.asarray(proba, dtype=np.float64)
    out = np.zeros((len(proba), len(columns)), dtype=np.float64)
    out[:, np.searchsorted(columns, classes)] = proba
    return out
