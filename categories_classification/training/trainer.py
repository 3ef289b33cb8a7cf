"""Training stage: load -> validate -> split -> fit -> evaluate -> log and register in MLflow."""
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import mlflow
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from categories_classification import drift
from categories_classification.records import (
    CHALLENGER_SCORE,
    CHAMPION_BEFORE_TAG,
    EVALUATION_ARTIFACTS,
    FAILURE_REASON_TAG,
    MODEL_CHOICE_FILE,
    MODEL_FAMILY_PARAM,
    MODEL_MEMORY_METRIC,
    PREVIOUS_SCORE,
    PROMOTION_DECISION_TAG,
    PROMOTION_REASON_TAG,
    PROMOTION_TOLERANCE_METRIC,
    RELIABILITY_FILE,
    TEST_TOP_5_METRIC,
    TOP_K_FILE,
    TRAINING_DATE_TAG,
    TrainingRecord,
)
from categories_classification.tracking.artifacts import load_model
from categories_classification.tracking.flavor import (
    discard_artifacts,
    discard_version,
    log_model,
    register,
    serving_signature,
)
from categories_classification.tracking.locks import promotion_lock
from categories_classification.tracking.registry import ModelRef, champion_version, describe_version, set_champion
from categories_classification.tracking.runs import close_abandoned_runs, log_to_run, record_failed_run, training_run
from categories_classification.tracking.store import configure_tracking, retrying
from categories_classification.errors import CategoriesError, InfrastructureError, InputDataError, describe_os_error
from categories_classification.config import (
    validate_client_id,
    validate_family,
    validate_features,
    validate_max_model_mb,
    validate_model_params,
)
from categories_classification.training.data import load_training_data
from categories_classification.training.evaluation import classification_metrics, per_class_report, top_k_accuracy, top_k_curve
from categories_classification.paths import normalize_date, train_path
from categories_classification.training.calibration import reliability
from categories_classification.training.fitting import SEED, FittedModel, fit_model
from categories_classification.training.plots import close_figure, per_class_figure, reliability_figure, top_k_figure
from categories_classification.training.promotion import DEFAULT_TOLERANCE, Decision, decide
from categories_classification.training.sizing import MB

LOGGER = logging.getLogger(__name__)
TEST_SIZE = 0.2
FAMILY_RULE = ("auto: the best validation top-5 within the budget, ties to the smaller; an ensemble only when it "
               "beats the best single candidate by more than 1 SE")


@dataclass(frozen=True)
class TrainingResult:
    """What a training produced: the registered version, its run and its metrics."""

    client_id: str
    model_name: str
    version: int
    run_id: str
    metrics: Mapping[str, float]
    decision: Decision
    params: Mapping[str, Any] = field(default_factory=dict)
    n_rows: int = 0


def train_model(client_id: str, features: Sequence[str], model_params: Optional[Mapping[str, Any]],  # pylint: disable=too-many-arguments
                training_date: str, *, data_prefix: Optional[str] = None,
                promotion_tolerance: Optional[float] = None, max_model_mb: Optional[float] = None,
                family: Optional[str] = None) -> TrainingResult:
    """Train the client's model on its training file and register it as a new version.

    The whole event is one MLflow run named ``training_<training_date>`` in the client's
    experiment, with the model family and parameters, every candidate family's validation score,
    size and fit time, train and test metrics, calibration error before and after, model size.
    The family is ``family`` if given (then ``model_params`` are its parameters), else chosen on
    the training split; ``model_params`` win over the project defaults; unless they bound the
    trees' size themselves, a forest's ``max_leaf_nodes`` is chosen on the training split within
    ``max_model_mb`` (default :data:`~categories_classification.training.fitting.DEFAULT_MAX_MODEL_MB`),
    see :func:`~categories_classification.training.fitting.fit_model`.
    The new version becomes ``champion`` only if the promotion gate lets it (see
    :mod:`categories_classification.training.promotion`); the decision and both scores are on the run.
    """
    client_id = validate_client_id(client_id)
    features = validate_features(list(features), client_id)
    family = validate_family(family, client_id)
    model_params = validate_model_params(dict(model_params or {}), client_id, family)
    max_model_mb = validate_max_model_mb(max_model_mb, client_id)
    tolerance = DEFAULT_TOLERANCE if promotion_tolerance is None else float(promotion_tolerance)
    date = normalize_date(training_date, "training_date", client_id)
    path = train_path(client_id, data_prefix)

    try:
        data = load_training_data(client_id, features, path)
    except InputDataError as exc:
        _record_failed_training(client_id, date, path, exc)
        raise
    fitted = _fit_and_evaluate(data.features, data.labels, model_params, max_model_mb, family)
    chosen = fitted.chosen
    if fitted.metrics[MODEL_MEMORY_METRIC] > chosen.budget_bytes:
        LOGGER.warning("client %s: the %s model takes %.1f MB in memory, over its %.1f MB budget (%s)", client_id,
                       chosen.family, fitted.metrics[MODEL_MEMORY_METRIC] / MB, chosen.budget_bytes / MB,
                       _tags(chosen).get("size_choice", chosen.describe()["family_choice"]))
    configure_tracking(client_id)
    retrying(client_id, lambda: close_abandoned_runs(client_id))  # runs a killed process left RUNNING
    with training_run(TrainingRecord(client_id, date, path)) as run_id:
        # The whole record first (parameters, metrics, model, evaluation files), the version last:
        # a training that fails half-way registers nothing and leaves none of its files.
        ref, model_id = _write_record(client_id, run_id, fitted, features, date)

        def gate() -> Decision:
            # One gate at a time per client (two DAG runs, or a manual run beside one): read the
            # champion, compare and move the alias as one step, so the alias never goes back.
            with promotion_lock(client_id):
                decision = _promotion_gate(client_id, ref, fitted, tolerance)
                if decision.promote:
                    set_champion(client_id, ref.version)
            return decision

        decision = retrying(client_id, gate)
        retrying(client_id, lambda: _log_decision(run_id, model_id, decision, tolerance))
        retrying(client_id, lambda: describe_version(
            ref,
            f"Trained {date} on {len(fitted.x_train)} rows ({', '.join(features)}); test top-5 accuracy "
            f"{fitted.metrics[TEST_TOP_5_METRIC]:.4f}. Gate: {decision.label}, {decision.reason}.",
            {PROMOTION_DECISION_TAG: decision.label},
        ))
    LOGGER.info("client %s: registered %s version %s (run %s), %s", client_id, ref.name, ref.version, ref.run_id,
                decision.label)
    return TrainingResult(client_id, ref.name, ref.version, ref.run_id, fitted.metrics, decision,
                          {"family": chosen.family, **chosen.params}, len(data.labels))


def _write_record(client_id: str, run_id: str, fitted: "_Evaluated", features: Sequence[str],
                  date: str) -> tuple[ModelRef, str]:
    """Log the run's parameters, metrics and tags, the model and the evaluation files, then register the
    model: the version exists only once its whole training record does. Returns it and its logged model's id.

    If any of it fails, what was written is undone (the version deleted, the run's and the logged
    model's files removed), the run gets a ``failure_reason`` tag, and the error is raised; a file
    system failure of the artifact store (ENOSPC) is told as one line naming the store.
    """
    chosen = fitted.chosen
    ref: Optional[ModelRef] = None
    try:
        # Parameters and tags first: the logged model takes the run's parameters as its own.
        retrying(client_id, lambda: log_to_run(run_id, params=_run_params(chosen, features), tags=_tags(chosen)))
        example = fitted.x_train.head(5)
        # The metrics are logged with the model's size once the model is: on the run and on the logged model at once.
        logged = log_model(client_id, chosen.model, example, serving_signature(list(example.columns)),
                           companions={drift.REFERENCE_FILE: json.dumps(drift_reference(fitted.x_train))},
                           metrics=fitted.metrics)
        retrying(client_id, lambda: _log_evaluation_artifacts(client_id, fitted))
        ref = register(logged, {TRAINING_DATE_TAG: date})
        return ref, logged.model_id
    except CategoriesError as exc:
        error = _artifact_store_error(client_id, exc)
        if ref is not None:
            discard_version(ref)
        discard_artifacts(client_id, run_id)
        try:
            retrying(client_id, lambda: mlflow.set_tag(FAILURE_REASON_TAG, str(error or exc)))
        except CategoriesError as tagging:
            LOGGER.info("client %s: run %s: the failure reason could not be recorded: %s", client_id, run_id, tagging)
        if error is None:
            raise
        raise error from exc


def _artifact_store_error(client_id: str, error: CategoriesError) -> Optional[InfrastructureError]:
    """The one line for a file system failure while the training's files were written (a full artifact
    store), naming the store, the errno and the path; None for any other failure."""
    cause = error.__cause__
    if not isinstance(cause, OSError):
        return None
    run = mlflow.active_run()
    # <experiment's artifact location>/<run id>/artifacts
    store = run.info.artifact_uri.rsplit("/", 2)[0] if run is not None and run.info.artifact_uri else "?"
    return InfrastructureError(
        f"the artifact store at {store} failed while the training was written: {describe_os_error(cause)}; "
        "this attempt's files were removed and nothing was registered, the champion is unchanged", client_id)


def _run_params(chosen: FittedModel, features: Sequence[str]) -> dict[str, Any]:
    """The run's parameters: the estimator's, the family and size decisions, the split."""
    return {**chosen.estimator_params(),
            "features": ",".join(features), "test_size": TEST_SIZE, "split_seed": SEED,
            MODEL_FAMILY_PARAM: chosen.family,
            "family_rule": "pinned" if chosen.pinned else FAMILY_RULE,
            **(chosen.forest.size_params() if chosen.forest is not None else
               {"max_model_mb": f"{chosen.budget_bytes / MB:g}"})}


def _log_decision(run_id: str, model_id: str, decision: Decision, tolerance: float) -> None:
    """The gate's decision and both scores, on the training's run and its logged model (one request)."""
    log_to_run(run_id, model_id=model_id,
               tags={PROMOTION_DECISION_TAG: decision.label, PROMOTION_REASON_TAG: decision.reason,
                     CHAMPION_BEFORE_TAG: str(decision.champion_version or "")},
               metrics={CHALLENGER_SCORE: decision.challenger_score,
                        PROMOTION_TOLERANCE_METRIC: tolerance,
                        **({PREVIOUS_SCORE: decision.champion_score}
                           if decision.champion_score is not None else {})})


def _record_failed_training(client_id: str, date: str, path: str, error: InputDataError) -> None:
    """A FAILED training run naming why, so that the fleet view flags the client ("training failed").

    Nothing is registered. If MLflow itself fails here, the data error is still the one raised.
    """
    try:
        configure_tracking()
        close_abandoned_runs(client_id)
        record_failed_run(TrainingRecord(client_id, date, path, failure_reason=str(error)))
    except CategoriesError as tracking:
        LOGGER.warning("client %s: the failed training could not be recorded in MLflow: %s", client_id, tracking)


def _tags(chosen: FittedModel) -> dict[str, str]:
    """The run's tags on the family and size decisions."""
    over = str(chosen.over_budget).lower()
    return {**chosen.describe(), **(chosen.forest.size_tags() if chosen.forest is not None else {}),
            "size_over_budget": over}


def drift_reference(x_train: pd.DataFrame) -> dict[str, Any]:
    """What prediction compares its input with: each feature's quantile bins on the training split."""
    return drift.build_reference({str(name): x_train[name].to_numpy(dtype=np.float64) for name in x_train.columns})


def split_training_data(features: pd.DataFrame, labels: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """The stratified train/test split every training uses (``TEST_SIZE``, seed ``SEED``)."""
    return train_test_split(features, labels, test_size=TEST_SIZE, stratify=labels, random_state=SEED)


@dataclass(frozen=True)
class _Evaluated:
    """The fitted model with both splits, its predicted (calibrated) probabilities, the uncalibrated ones on
    the test split, and the metrics on each."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    train_proba: np.ndarray
    test_proba: np.ndarray
    raw_test_proba: np.ndarray
    metrics: dict[str, float]
    chosen: FittedModel


def _fit_and_evaluate(features: pd.DataFrame, labels: pd.Series, model_params: Mapping[str, Any],
                      max_model_mb: Optional[float], family: Optional[str]) -> _Evaluated:
    """Stratified split (fixed seed), fit, and train/test metrics with model size, fit time and calibration."""
    x_train, x_test, y_train, y_test = split_training_data(features, labels)
    chosen = fit_model(x_train, y_train, model_params, max_model_mb, family)
    model = chosen.model
    train_proba, test_proba = model.predict_proba(x_train), model.predict_proba(x_test)
    raw_test = model.estimator.predict_proba(x_test)
    metrics = {
        **classification_metrics(y_train, train_proba, model.classes_, "train"),
        **classification_metrics(y_test, test_proba, model.classes_, "test"),
        "fit_time_seconds": chosen.seconds[1],
        "model_search_seconds": chosen.seconds[0],
        MODEL_MEMORY_METRIC: float(chosen.memory_bytes),
        "size_budget_bytes": chosen.budget_bytes,
        **(chosen.forest.size_metrics() if chosen.forest is not None else {}),
        **chosen.candidate_metrics(),
        "calibration_temperature": chosen.calibration.temperature,
        "val_ece_before_calibration": chosen.calibration.val_ece_before,
        "val_ece": chosen.calibration.val_ece_after,
        "test_ece_before_calibration": reliability(y_test, raw_test, model.classes_).ece,
        "test_ece": reliability(y_test, test_proba, model.classes_).ece,
        "n_train_rows": float(len(x_train)),
        "n_test_rows": float(len(x_test)),
        "n_categories": float(len(model.classes_)),
    }
    return _Evaluated(x_train, x_test, y_train, y_test, train_proba, test_proba, raw_test, metrics, chosen)


def _log_evaluation_artifacts(client_id: str, fitted: _Evaluated) -> None:
    """Per-category report (CSV + JSON), top-k / per-category plots, the reliability diagram and the candidates."""
    model = fitted.chosen.model
    report = per_class_report(fitted.y_test, fitted.test_proba, model.classes_)
    curves = {
        "train": top_k_curve(fitted.y_train, fitted.train_proba, model.classes_),
        "test": top_k_curve(fitted.y_test, fitted.test_proba, model.classes_),
    }
    bins = {"before": reliability(fitted.y_test, fitted.raw_test_proba, model.classes_),
            "after": reliability(fitted.y_test, fitted.test_proba, model.classes_)}
    candidates = [{"family": candidate.family, "val_top_5_accuracy": candidate.accuracy,
                   "size_bytes": candidate.size_bytes, "fit_seconds": candidate.fit_seconds,
                   "within_budget": candidate.within_budget} for candidate in fitted.chosen.candidates]
    skipped = [{"family": family, "reason": reason} for family, reason in fitted.chosen.skipped.items()]
    # Written side by side and uploaded in one call: one round trip to the store per training.
    with tempfile.TemporaryDirectory(prefix="categories_evaluation_") as folder:
        scratch = Path(folder)
        report.to_csv(scratch / "per_class_report.csv", index=False)
        (scratch / "per_class_report.json").write_text(
            json.dumps({"split": "test", "categories": report.to_dict(orient="records")}, indent=2), encoding="utf-8")
        (scratch / TOP_K_FILE).write_text(json.dumps(curves, indent=2), encoding="utf-8")
        (scratch / RELIABILITY_FILE).write_text(json.dumps(
            {"split": "test", "temperature": fitted.chosen.calibration.temperature,
             **{name: value.to_dict() for name, value in bins.items()}}, indent=2), encoding="utf-8")
        (scratch / MODEL_CHOICE_FILE).write_text(json.dumps(
            {**fitted.chosen.describe(), "candidates": candidates, "left_out": skipped}, indent=2), encoding="utf-8")
        for figure, name in ((top_k_figure(curves, f"{client_id}: top-k accuracy"), "top_k_accuracy.png"),
                             (per_class_figure(report, f"{client_id}: recall per category (test)"),
                              "per_class_recall.png"),
                             (reliability_figure(bins, f"{client_id}: reliability of the top-1 score (test)"),
                              "reliability.png")):
            figure.savefig(scratch / name)
            close_figure(figure)
        mlflow.log_artifacts(folder, EVALUATION_ARTIFACTS)


def _promotion_gate(client_id: str, ref: ModelRef, fitted: _Evaluated, tolerance: float) -> Decision:
    """Score the new version and the current champion on the same test rows and decide."""
    x_test, y_test = fitted.x_test, fitted.y_test
    challenger = top_k_accuracy(y_test, fitted.test_proba, fitted.chosen.model.classes_)
    champion = champion_version(client_id)
    if champion is None or champion.version == ref.version:
        return decide(challenger, None, None, tolerance)
    champion_model, champion_features = load_model(champion)
    missing = [column for column in champion_features if column not in x_test.columns]
    if missing:
        # The config's features changed: the champion cannot even score today's files.
        return Decision(True, f"champion v{champion.version} needs feature(s) {', '.join(missing)} that this "
                        "training no longer has", challenger, None, champion.version, tolerance)
    rows = x_test[champion_features]
    score = top_k_accuracy(y_test, champion_model.predict_proba(rows), champion_model.classes_)
    return decide(challenger, score, champion.version, tolerance)
