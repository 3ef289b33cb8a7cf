"""What the project records in MLflow, defined once: names of experiments, models, tags, params,
metrics and artifacts that a training or a prediction writes and that the fleet view, the CLI, the
notebook and the DAG generator read; typed :class:`TrainingRecord` and :class:`PredictionRecord`
to and from a run's tags and metrics. Nothing here imports MLflow (scripts import it too).
"""
from dataclasses import dataclass, field
from typing import Mapping, Optional

# Tags of a run started by an Airflow task (the generated DAGs set MLFLOW_RUN_CONTEXT): which DAG run
# trained a model, or made a prediction.
DAG_ID_TAG = "airflow_dag_id"
DAG_RUN_ID_TAG = "airflow_dag_run_id"
# champion-from-run's "no": the DAG task running it is skipped on this code, so it emits no asset event.
NOT_CHAMPION_EXIT_CODE = 99

# ------------------------------------------------------------------ registry: models, aliases, artifacts
# The registry alias of the version that prediction serves (stages are deprecated since 2.9).
CHAMPION = "champion"
MODEL_ARTIFACT = "model"  # the model's folder in its training run's artifacts
EVALUATION_ARTIFACTS = "evaluation"  # the training run's reports and plots
MODEL_CHOICE_FILE = "model_choice.json"  # in EVALUATION_ARTIFACTS: candidates and why the family won
TOP_K_FILE = "top_k_accuracy.json"
RELIABILITY_FILE = "reliability.json"
# A companion file's SHA-256 is the version tag "<file name>.sha256" (e.g. drift_reference.json.sha256).
COMPANION_DIGEST_SUFFIX = ".sha256"

# ------------------------------------------------------------------ tags of every run
CLIENT_ID_TAG = "client_id"
STAGE_TAG = "stage"
TRAINING = "training"  # the stage tag's values
PREDICTION = "prediction"
# Where a run runs, and why a run was closed as failed.
HOST_TAG = "host"
PID_TAG = "pid"
FAILURE_REASON_TAG = "failure_reason"

# ------------------------------------------------------------------ a training run
TRAINING_DATE_TAG = "training_date"  # also a tag of the registered version
DATA_PATH_TAG = "data_path"
PROMOTION_DECISION_TAG = "promotion_decision"  # also a tag of the registered version
PROMOTED = "promoted"  # the decision's value when the version became champion
PROMOTION_REASON_TAG = "promotion_reason"
CHAMPION_BEFORE_TAG = "champion_version_before"
MODEL_FAMILY_PARAM = "model_family"
TEST_TOP_5_METRIC = "test_top_5_accuracy"
TEST_ACCURACY_METRIC = "test_accuracy"
MODEL_MEMORY_METRIC = "model_memory_bytes"
MODEL_SIZE_METRIC = "model_size_bytes"  # the stored (deflated) model file
CHALLENGER_SCORE = "promotion_challenger_top_5_accuracy"  # the gate's score of the new version
PREVIOUS_SCORE = "promotion_champion_top_5_accuracy"  # the gate's score of the champion it compared with
PROMOTION_TOLERANCE_METRIC = "promotion_tolerance"

# ------------------------------------------------------------------ a prediction run
INFERENCE_DATE_TAG = "inference_date"
ROWS_OUT_METRIC = "rows_out"
ROWS_SKIPPED_METRIC = "rows_skipped"
DURATION_METRIC = "duration_seconds"
MODEL_VERSION_METRIC = "model_version"
DRIFT_METRIC_PREFIX = "drift_psi_"  # + a feature's name: its PSI against the training data
DRIFT_MAX_METRIC = "drift_max"


def model_name(client_id: str) -> str:
    """Registered model name of a client: ``<client_id>_model``."""
    return f"{client_id}_model"


def experiment_name(client_id: str) -> str:
    """MLflow experiment holding every run of a client."""
    return f"categories_{client_id}"


def training_run_name(date: str) -> str:
    """``training_<date>``."""
    return f"{TRAINING}_{date}"


def prediction_run_name(date: str) -> str:
    """``prediction_<date>``."""
    return f"{PREDICTION}_{date}"


def _number(metrics: Mapping[str, float], key: str) -> Optional[float]:
    value = metrics.get(key)
    return None if value is None else float(value)


@dataclass(frozen=True)
class TrainingRecord:
    """What a training run records that others read (the fleet view, champion-from-run, list-models)."""

    client_id: str
    training_date: str
    data_path: str = ""
    failure_reason: Optional[str] = None
    promotion_decision: Optional[str] = None
    champion_before: Optional[int] = None  # the champion's version when the gate ran
    test_top_5_accuracy: Optional[float] = None
    challenger_score: Optional[float] = None
    previous_score: Optional[float] = None
    dag_run: tuple[Optional[str], Optional[str]] = (None, None)  # the Airflow DAG and DAG run that trained it

    def start_tags(self) -> dict[str, str]:
        """The tags a training run opens with (and, for a failed one, its failure reason)."""
        tags = {CLIENT_ID_TAG: self.client_id, TRAINING_DATE_TAG: self.training_date, STAGE_TAG: TRAINING,
                DATA_PATH_TAG: self.data_path}
        if self.failure_reason is not None:
            tags[FAILURE_REASON_TAG] = self.failure_reason
        return tags

    @property
    def promoted(self) -> bool:
        """True when this training's version became champion."""
        return self.promotion_decision == PROMOTED

    @classmethod
    def from_run(cls, tags: Mapping[str, str], metrics: Mapping[str, float]) -> "TrainingRecord":
        """The record of a run's tags and metrics (names missing from older runs are None)."""
        before = tags.get(CHAMPION_BEFORE_TAG, "")
        return cls(tags.get(CLIENT_ID_TAG, ""), tags.get(TRAINING_DATE_TAG, ""), tags.get(DATA_PATH_TAG, ""),
                   tags.get(FAILURE_REASON_TAG), tags.get(PROMOTION_DECISION_TAG),
                   int(before) if before.isdigit() else None, _number(metrics, TEST_TOP_5_METRIC),
                   _number(metrics, CHALLENGER_SCORE), _number(metrics, PREVIOUS_SCORE),
                   (tags.get(DAG_ID_TAG), tags.get(DAG_RUN_ID_TAG)))


@dataclass(frozen=True)
class PredictionRecord:
    """What a prediction run records that others read (the fleet view)."""

    client_id: str
    inference_date: str
    rows_out: Optional[float] = None
    rows_skipped: Optional[float] = None
    drift_max: Optional[float] = None
    duration_seconds: Optional[float] = None
    model_version: Optional[float] = None
    drift_scores: Mapping[str, float] = field(default_factory=dict)  # feature -> PSI

    def metrics(self) -> dict[str, float]:
        """The run's metrics (those set)."""
        named = {ROWS_OUT_METRIC: self.rows_out, ROWS_SKIPPED_METRIC: self.rows_skipped,
                 DURATION_METRIC: self.duration_seconds, MODEL_VERSION_METRIC: self.model_version,
                 **{DRIFT_METRIC_PREFIX + name: score for name, score in self.drift_scores.items()},
                 DRIFT_MAX_METRIC: self.drift_max}
        return {key: float(value) for key, value in named.items() if value is not None}

    @classmethod
    def from_run(cls, tags: Mapping[str, str], metrics: Mapping[str, float]) -> "PredictionRecord":
        """The record of a run's tags and metrics (names missing from older runs are None)."""
        scores = {key[len(DRIFT_METRIC_PREFIX):]: float(value) for key, value in metrics.items()
                  if key.startswith(DRIFT_METRIC_PREFIX)}
        return cls(tags.get(CLIENT_ID_TAG, ""), tags.get(INFERENCE_DATE_TAG, ""), _number(metrics, ROWS_OUT_METRIC),
                   _number(metrics, ROWS_SKIPPED_METRIC), _number(metrics, DRIFT_MAX_METRIC),
                   _number(metrics, DURATION_METRIC), _number(metrics, MODEL_VERSION_METRIC), scores)
