"""Training stage: load -> validate -> split -> fit -> evaluate -> log and register in MLflow."""
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from categories_classification import drift, registry
from categories_classification.config import (
    validate_client_id,
    validate_features,
    validate_max_model_mb,
    validate_model_params,
)
from categories_classification.training.data import load_training_data
from categories_classification.training.evaluation import classification_metrics, per_class_report, top_k_accuracy, top_k_curve
from categories_classification.paths import normalize_date, train_path
from categories_classification.training.plots import close_figure, per_class_figure, top_k_figure
from categories_classification.training.promotion import DEFAULT_TOLERANCE, Decision, decide
from categories_classification.training.sizing import MB, SIZE_PARAMS, SizeChoice, choose_max_leaf_nodes, forest_memory_bytes

LOGGER = logging.getLogger(__name__)
TEST_SIZE = 0.2
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
# Size budget of one client's forest in memory (MB, 10^6 bytes), overridable per client
# (`max_model_mb:` in the config, `--max_model_mb`): a ceiling, well above what the automatic choice
# usually picks (see benchmarks/results.md).
DEFAULT_MAX_MODEL_MB = 64.0


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


def train_model(client_id: str, features: Sequence[str], model_params: Optional[Mapping[str, Any]],
                training_date: str, *, data_prefix: Optional[str] = None,
                promotion_tolerance: Optional[float] = None, max_model_mb: Optional[float] = None) -> TrainingResult:
    """Train the client's RandomForest on its training file and register it as a new version.

    The whole event is one MLflow run named ``training_<training_date>`` in the client's
    experiment, with the model parameters, train and test metrics, model size and fit time.
    ``model_params`` win over the project defaults; unless they bound the trees' size
    themselves, ``max_leaf_nodes`` is chosen on the training split within ``max_model_mb``
    (default :data:`DEFAULT_MAX_MODEL_MB`), see :func:`fit_forest`.
    The new version becomes ``champion`` only if the promotion gate lets it (see
    :mod:`categories_classification.training.promotion`); the decision and both scores are on the run.
    """
    client_id = validate_client_id(client_id)
    features = validate_features(list(features), client_id)
    explicit = validate_model_params(dict(model_params or {}), client_id)
    budget_mb = validate_max_model_mb(max_model_mb, client_id)
    tolerance = DEFAULT_TOLERANCE if promotion_tolerance is None else float(promotion_tolerance)
    date = normalize_date(training_date, "training_date", client_id)
    path = train_path(client_id, data_prefix)

    data = load_training_data(client_id, features, path)
    fitted = _fit_and_evaluate(data.features, data.labels, explicit, budget_mb)
    model, metrics = fitted.forest.model, fitted.metrics
    if fitted.forest.over_budget:
        LOGGER.warning("client %s: the forest takes %.1f MB in memory, over its %.1f MB budget (%s)", client_id,
                       metrics["model_memory_bytes"] / MB, fitted.forest.budget_bytes / MB,
                       fitted.forest.size_tags()["size_choice"])
    registry.configure_tracking()
    registry.close_abandoned_runs(client_id)  # runs a killed process left RUNNING
    experiment_id = registry.ensure_experiment(client_id)
    with registry.tracking_errors(client_id), mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"training_{date}",
        tags={"client_id": client_id, "training_date": date, "stage": "training", "data_path": path},
    ):
        mlflow.log_params({key: str(value) for key, value in model.get_params().items()})
        mlflow.log_params({"features": ",".join(features), "test_size": TEST_SIZE, "split_seed": SEED,
                           **fitted.forest.size_params()})
        mlflow.log_metrics(metrics)
        mlflow.set_tags(fitted.forest.size_tags())
        example = fitted.x_train.head(5)
        ref = registry.log_and_register(
            client_id, model, example, infer_signature(example, model.predict(example)),
            companions={drift.REFERENCE_FILE: json.dumps(drift_reference(fitted.x_train))},
        )
        _log_evaluation_artifacts(client_id, fitted)
        # One gate at a time per client (two DAG runs, or a manual run beside one): read the
        # champion, compare and move the alias as one step, so the alias never goes back.
        with registry.promotion_lock(client_id):
            decision = _promotion_gate(client_id, ref, fitted, tolerance)
            if decision.promote:
                registry.set_champion(client_id, ref.version)
        mlflow.set_tags({"promotion_decision": decision.label, "promotion_reason": decision.reason,
                         "champion_version_before": str(decision.champion_version or "")})
        mlflow.log_metrics({"promotion_challenger_top_5_accuracy": decision.challenger_score,
                            "promotion_tolerance": tolerance,
                            **({"promotion_champion_top_5_accuracy": decision.champion_score}
                               if decision.champion_score is not None else {})})
        registry.describe_version(
            ref,
            f"Trained {date} on {len(fitted.x_train)} rows ({', '.join(features)}); test top-5 accuracy "
            f"{metrics['test_top_5_accuracy']:.4f}. Gate: {decision.label}, {decision.reason}.",
            {"training_date": date, "promotion_decision": decision.label},
        )
    LOGGER.info("client %s: registered %s version %s (run %s), %s", client_id, ref.name, ref.version, ref.run_id,
                decision.label)
    return TrainingResult(client_id, ref.name, ref.version, ref.run_id, metrics, decision, fitted.forest.params,
                          len(data.labels))


@dataclass(frozen=True)
class FittedForest:
    """A fitted forest with the parameters it was fitted with and how its size was decided."""

    model: RandomForestClassifier
    params: Mapping[str, Any]  # what RandomForestClassifier got, max_leaf_nodes included
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
        """Sizes (bytes), the budget and, when automatic, the search's figures."""
        metrics = {"model_memory_bytes": float(self.memory_bytes), "size_budget_bytes": self.budget_bytes,
                   "size_search_seconds": self.search_seconds}
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
        return {"size_choice": reason, "size_budget_bound": str(bound).lower(),
                "size_over_budget": str(self.over_budget).lower()}


def drift_reference(x_train: pd.DataFrame) -> dict[str, Any]:
    """What prediction compares its input with: each feature's quantile bins on the training split."""
    return drift.build_reference({str(name): x_train[name].to_numpy(dtype=np.float64) for name in x_train.columns})


def split_training_data(features: pd.DataFrame, labels: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """The stratified train/test split every training uses (``TEST_SIZE``, seed ``SEED``)."""
    return train_test_split(features, labels, test_size=TEST_SIZE, stratify=labels, random_state=SEED)


def fit_forest(x_train: pd.DataFrame, y_train: pd.Series, model_params: Optional[Mapping[str, Any]] = None,
               max_model_mb: Optional[float] = None) -> FittedForest:
    """Fit the client's forest: the explicit ``model_params`` over :data:`DEFAULT_MODEL_PARAMS`.

    When ``model_params`` set none of :data:`~categories_classification.training.sizing.SIZE_PARAMS`,
    ``max_leaf_nodes`` is chosen on ``(x_train, y_train)`` only (a validation split carved out
    of it) within ``max_model_mb`` (default :data:`DEFAULT_MAX_MODEL_MB`); see
    :func:`categories_classification.training.sizing.choose_max_leaf_nodes`. Explicit values always win.
    """
    explicit = dict(model_params or {})
    params = {**DEFAULT_MODEL_PARAMS, **explicit}
    budget_bytes = float(DEFAULT_MAX_MODEL_MB if max_model_mb is None else max_model_mb) * MB
    explicit_size = tuple(sorted(key for key in explicit if key in SIZE_PARAMS))
    size, search_seconds = None, 0.0
    if not explicit_size:
        started = time.perf_counter()
        size = choose_max_leaf_nodes(x_train, y_train, params, budget_bytes, seed=SEED)
        search_seconds = time.perf_counter() - started
        params["max_leaf_nodes"] = size.max_leaf_nodes
    model = RandomForestClassifier(**params)
    started = time.perf_counter()
    model.fit(x_train, y_train)
    return FittedForest(model, params, budget_bytes, explicit_size, size, time.perf_counter() - started, search_seconds)


@dataclass(frozen=True)
class _EvaluatedForest:
    """The fitted forest with both splits, their predicted probabilities and the metrics on each."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    train_proba: np.ndarray
    test_proba: np.ndarray
    metrics: dict[str, float]
    forest: FittedForest


def _fit_and_evaluate(features: pd.DataFrame, labels: pd.Series, model_params: Mapping[str, Any],
                      max_model_mb: Optional[float]) -> _EvaluatedForest:
    """Stratified split (fixed seed), fit, and train/test metrics with model size and fit time."""
    x_train, x_test, y_train, y_test = split_training_data(features, labels)
    forest = fit_forest(x_train, y_train, model_params, max_model_mb)
    model = forest.model
    train_proba, test_proba = model.predict_proba(x_train), model.predict_proba(x_test)
    metrics = {
        **classification_metrics(y_train, train_proba, model.classes_, "train"),
        **classification_metrics(y_test, test_proba, model.classes_, "test"),
        "fit_time_seconds": forest.fit_seconds,
        **forest.size_metrics(),
        "n_train_rows": float(len(x_train)),
        "n_test_rows": float(len(x_test)),
        "n_categories": float(len(model.classes_)),
    }
    return _EvaluatedForest(x_train, x_test, y_train, y_test, train_proba, test_proba, metrics, forest)


def _log_evaluation_artifacts(client_id: str, fitted: _EvaluatedForest) -> None:
    """Per-category report (CSV + JSON) and top-k / per-category plots on the active run."""
    model = fitted.forest.model
    report = per_class_report(fitted.y_test, fitted.test_proba, model.classes_)
    curves = {
        "train": top_k_curve(fitted.y_train, fitted.train_proba, model.classes_),
        "test": top_k_curve(fitted.y_test, fitted.test_proba, model.classes_),
    }
    # Written side by side and uploaded in one call: one round trip to the store per training.
    with tempfile.TemporaryDirectory(prefix="categories_evaluation_") as folder:
        scratch = Path(folder)
        report.to_csv(scratch / "per_class_report.csv", index=False)
        (scratch / "per_class_report.json").write_text(
            json.dumps({"split": "test", "categories": report.to_dict(orient="records")}, indent=2), encoding="utf-8")
        (scratch / "top_k_accuracy.json").write_text(json.dumps(curves, indent=2), encoding="utf-8")
        for figure, name in ((top_k_figure(curves, f"{client_id}: top-k accuracy"), "top_k_accuracy.png"),
                             (per_class_figure(report, f"{client_id}: recall per category (test)"),
                              "per_class_recall.png")):
            figure.savefig(scratch / name)
            close_figure(figure)
        mlflow.log_artifacts(folder, "evaluation")


def _promotion_gate(client_id: str, ref: registry.ModelRef, fitted: _EvaluatedForest, tolerance: float) -> Decision:
    """Score the new version and the current champion on the same test rows and decide."""
    x_test, y_test = fitted.x_test, fitted.y_test
    challenger = top_k_accuracy(y_test, fitted.test_proba, fitted.forest.model.classes_)
    champion = registry.champion_version(client_id)
    if champion is None or champion.version == ref.version:
        return decide(challenger, None, None, tolerance)
    champion_model, champion_features = registry.load_model(champion)
    missing = [column for column in champion_features if column not in x_test.columns]
    if missing:
        # The config's features changed: the champion cannot even score today's files.
        return Decision(True, f"champion v{champion.version} needs feature(s) {', '.join(missing)} that this "
                        "training no longer has", challenger, None, champion.version, tolerance)
    rows = x_test[champion_features]
    score = top_k_accuracy(y_test, champion_model.predict_proba(rows), champion_model.classes_)
    return decide(challenger, score, champion.version, tolerance)
