"""The fleet view: one row per configured client from what MLflow already records (no new store).

:func:`read_fleet` reads with a few paged searches whatever the number of clients (experiments,
registered models with their aliases, model versions, the latest training and prediction runs,
the champions' and previous champions' runs by id), never one query per client. Turning those
records into rows and flags (:func:`fleet_rows`) is pure, and so is rendering them
(:mod:`categories_classification.fleet_report`).
"""
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Iterable, Mapping, Optional, Sequence

from mlflow.tracking import MlflowClient

from categories_classification.config import ClientConfig, ClientsConfig
from categories_classification.records import (
    CHAMPION,
    INFERENCE_DATE_TAG,
    PREDICTION,
    STAGE_TAG,
    TRAINING,
    PredictionRecord,
    TrainingRecord,
    model_name,
)
from categories_classification.tracking.runs import SEARCH_PAGE, client_experiments, pages
from categories_classification.tracking.store import configure_tracking, tracking_errors
from categories_classification.tracking.uri import display_tracking_uri
from categories_classification.training.promotion import DEFAULT_TOLERANCE


IDS_PER_SEARCH = 100  # run ids per "run_id IN (...)" search, to keep filter strings short
FAILED_STATUSES = ("FAILED", "KILLED")
# code -> label: what a person sees in the table, the page and the JSON.
FLAG_LABELS = {
    "no_model": "no model",
    "training_failed": "training failed",
    "stale": "model stale",
    "no_output": "no output",
    "accuracy_dropped": "accuracy dropped",
    "drift": "drift",
}


@dataclass(frozen=True)
class RunRecord:
    """What the fleet view needs of one MLflow run."""

    run_id: str
    status: str
    start_time: datetime
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def training(self) -> TrainingRecord:
        """What the run records as a training."""
        return TrainingRecord.from_run(self.tags, self.metrics)

    @property
    def prediction(self) -> PredictionRecord:
        """What the run records as a prediction."""
        return PredictionRecord.from_run(self.tags, self.metrics)


@dataclass(frozen=True)
class VersionRecord:
    """One registered model version: its number, training run and tags."""

    version: int
    run_id: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetRecords:
    """Everything read from MLflow, keyed by client id (the input of :func:`fleet_rows`)."""

    champions: Mapping[str, int] = field(default_factory=dict)  # client -> champion version
    versions: Mapping[tuple[str, int], VersionRecord] = field(default_factory=dict)
    runs: Mapping[str, RunRecord] = field(default_factory=dict)  # by run id: champions, previous champions
    last_training: Mapping[str, RunRecord] = field(default_factory=dict)  # any status
    last_prediction: Mapping[str, RunRecord] = field(default_factory=dict)  # finished, latest inference date
    predicted_on_date: Optional[frozenset[str]] = None  # clients with output for an asked date (--date)


@dataclass(frozen=True)
class Flag:
    """Something about a client that needs a person: a code, its label and the facts behind it."""

    code: str
    detail: str

    @property
    def label(self) -> str:
        """What the table and the page show."""
        return FLAG_LABELS[self.code]


@dataclass(frozen=True)
class FleetRow:  # pylint: disable=too-many-instance-attributes  # one field per column of the view
    """One client's line of the fleet view."""

    client_id: str
    champion_version: Optional[int] = None
    trained_on: Optional[str] = None  # the champion's training date
    model_age_days: Optional[int] = None
    test_top_5_accuracy: Optional[float] = None
    previous_version: Optional[int] = None  # the champion before this one
    top_5_change: Optional[float] = None  # champion - previous champion, test top-5 accuracy
    training_status: Optional[str] = None  # of the last training run
    training_started: Optional[str] = None
    training_decision: Optional[str] = None  # its promotion_decision tag
    prediction_date: Optional[str] = None  # latest inference date with a finished prediction
    rows_written: Optional[int] = None
    rows_skipped: Optional[int] = None
    drift: Optional[float] = None  # drift_max of that prediction, when recorded
    drift_threshold: Optional[float] = None
    flags: tuple[Flag, ...] = ()


@dataclass(frozen=True)
class FleetView:
    """The rows, the inference date they were checked against and where they come from."""

    rows: list[FleetRow]
    inference_date: Optional[str]  # the date outputs were checked for
    today: date
    generated_at: datetime
    tracking_uri: str
    config_path: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (flags as codes, labels and details)."""
        rows = []
        for row in self.rows:
            entry = {name: getattr(row, name) for name in row.__dataclass_fields__ if name != "flags"}
            entry["flags"] = [{"code": flag.code, "label": flag.label, "detail": flag.detail} for flag in row.flags]
            rows.append(entry)
        return {"generated_at": self.generated_at.isoformat(timespec="seconds"), "tracking_uri": self.tracking_uri,
                "config": self.config_path, "inference_date": self.inference_date, "today": self.today.isoformat(),
                "clients": len(self.rows), "needing_attention": sum(1 for row in self.rows if row.flags),
                "rows": rows}


def fleet_rows(config: ClientsConfig, records: FleetRecords, today: date, inference_date: Optional[str] = None,
               ) -> tuple[list[FleetRow], Optional[str]]:
    """One row per client of ``config`` (sorted by id) and the date outputs were checked for.

    That date is ``inference_date``, else the fleet's latest inference date with a finished
    prediction (None when nothing was ever predicted: then no client is flagged for output).
    """
    checked = inference_date or max(
        (run.prediction.inference_date for run in records.last_prediction.values()), default="") or None
    return [_row(client, records, today, checked) for client in config], checked


def _row(client: ClientConfig, records: FleetRecords, today: date, checked: Optional[str]) -> FleetRow:
    """One client's row and flags (docs/fleet.md says what each flag means)."""
    cid = client.client_id
    values: dict[str, Any] = {"client_id": cid, "drift_threshold": client.drift_threshold}
    flags = []
    champion = records.versions.get((cid, records.champions[cid])) if cid in records.champions else None
    if champion is None:
        flags.append(Flag("no_model", "no registered version holds the champion alias: train the client"))
    else:
        values.update(_champion_values(cid, champion, records, today))
        age = values.get("model_age_days")
        if age is not None and age > client.max_model_age_days:
            flags.append(Flag("stale", f"trained on {values['trained_on']}, {age} days ago "
                                       f"(limit {client.max_model_age_days})"))
        change, tolerance = values.get("top_5_change"), _tolerance(client)
        if change is not None and change < -tolerance - 1e-9:
            flags.append(Flag("accuracy_dropped", f"test top-5 {values['test_top_5_accuracy']:.3f} vs "
                                                  f"{values['test_top_5_accuracy'] - change:.3f} for v{values['previous_version']} "
                                                  f"({change:+.3f}, tolerance {tolerance:g})"))
    training = records.last_training.get(cid)
    if training is not None:
        values.update(training_status=training.status, training_started=_time(training.start_time),
                      training_decision=training.training.promotion_decision)
        if training.status in FAILED_STATUSES:
            reason = training.training.failure_reason
            flags.append(Flag("training_failed", f"last training run {training.run_id} ended {training.status} "
                                                 f"(started {_time(training.start_time)})" + (f": {reason}" if reason else "")))
    prediction = records.last_prediction.get(cid)
    if prediction is not None:
        record = prediction.prediction
        values.update(prediction_date=record.inference_date or None, rows_written=_int(record.rows_out),
                      rows_skipped=_int(record.rows_skipped), drift=record.drift_max)
        if values["drift"] is not None and values["drift"] > client.drift_threshold:
            flags.append(Flag("drift", f"drift {values['drift']:.3f} on {values['prediction_date']} over the "
                                       f"threshold {client.drift_threshold:g}"))
    if checked is not None and not _has_output(cid, records, checked):
        last = values.get("prediction_date")
        flags.append(Flag("no_output", f"no finished prediction for {checked}" + (f" (last: {last})" if last else "")))
    flags.sort(key=lambda flag: list(FLAG_LABELS).index(flag.code))
    return FleetRow(**values, flags=tuple(flags))


def _champion_values(cid: str, champion: VersionRecord, records: FleetRecords, today: date) -> dict[str, Any]:
    run = records.runs.get(champion.run_id)
    # The version's own tags win over its run's (both record the training date).
    tags = {**(run.tags if run else {}), **champion.tags}
    trained_on = TrainingRecord.from_run(tags, {}).training_date or None
    values: dict[str, Any] = {"champion_version": champion.version, "trained_on": trained_on}
    try:
        values["model_age_days"] = (today - date.fromisoformat(values["trained_on"][:10])).days
    except (TypeError, ValueError):
        pass  # no or unreadable training date: no age, no stale flag
    if run is None:
        return values
    training = run.training
    values["test_top_5_accuracy"] = training.test_top_5_accuracy
    before = training.champion_before
    previous = records.versions.get((cid, before)) if before is not None and before != champion.version else None
    if previous is None:
        return values
    values["previous_version"] = previous.version
    # The gate scored the previous champion on this run's test rows: the same rows, and no
    # second run to read. Without that score (features changed), its own run's test figure.
    gate = training.previous_score
    previous_run = records.runs.get(previous.run_id)
    reference = gate if gate is not None else (previous_run.training.test_top_5_accuracy if previous_run else None)
    own = training.challenger_score if gate is not None and training.challenger_score is not None \
        else values["test_top_5_accuracy"]
    if reference is not None and own is not None:
        values["top_5_change"] = own - reference
    return values


def _has_output(cid: str, records: FleetRecords, checked: str) -> bool:
    if records.predicted_on_date is not None:
        return cid in records.predicted_on_date
    prediction = records.last_prediction.get(cid)
    return prediction is not None and prediction.prediction.inference_date == checked


def _tolerance(client: ClientConfig) -> float:
    return DEFAULT_TOLERANCE if client.promotion_tolerance is None else client.promotion_tolerance


def _int(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(value)


def _time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


# ----------------------------------------------------------------------------------- MLflow reading


def read_fleet(config: ClientsConfig, *, inference_date: Optional[str] = None, today: Optional[date] = None) -> FleetView:
    """The fleet view of ``config`` from the tracking store (a few paged searches, see the module docstring)."""
    configure_tracking()
    client = MlflowClient()
    now = datetime.now(timezone.utc)
    with tracking_errors(None):
        records = read_records(client, config, inference_date)
    rows, checked = fleet_rows(config, records, today or now.date(), inference_date)
    return FleetView(rows, checked, today or now.date(), now, display_tracking_uri(), str(config.path))


def read_records(client: Any, config: ClientsConfig, inference_date: Optional[str] = None) -> FleetRecords:
    """Everything :func:`fleet_rows` needs, read with ``client`` (an ``MlflowClient``)."""
    experiments = client_experiments(client, (c.client_id for c in config))
    models = {model_name(c.client_id): c.client_id for c in config}
    champions = {models[model.name]: int(model.aliases[CHAMPION]) for model in pages(
        client.search_registered_models, filter_string="name LIKE '%_model'", max_results=1000)
        if model.name in models and CHAMPION in model.aliases}
    versions = {(models[version.name], int(version.version)): VersionRecord(int(version.version), version.run_id,
                                                                            dict(version.tags))
                for version in pages(client.search_model_versions, filter_string="name LIKE '%_model'",
                                      max_results=10_000) if version.name in models}
    ids = list(experiments)
    last_training = _latest(client, experiments, f"tags.{STAGE_TAG} = '{TRAINING}'", ["attributes.start_time DESC"])
    # Latest inference date first (a backfill of an older date may have started later).
    last_prediction = _latest(client, experiments, f"tags.{STAGE_TAG} = '{PREDICTION}' AND attributes.status = 'FINISHED'",
                              [f"tags.{INFERENCE_DATE_TAG} DESC", "attributes.start_time DESC"])
    # The champion's run is usually the last training: only the others are fetched, by id; a
    # previous champion's run only when the gate did not score it (see _champion_values).
    runs = {run.run_id: run for run in last_training.values()}
    champion_versions = [versions[key] for key in champions.items() if key in versions]
    runs.update(_by_id(client, ids, {version.run_id for version in champion_versions} - set(runs)))
    previous = set()
    for cid, version in champions.items():
        run = runs.get(versions[(cid, version)].run_id) if (cid, version) in versions else None
        training = run.training if run else None
        if training is not None and training.champion_before is not None and training.previous_score is None \
                and (cid, training.champion_before) in versions:
            previous.add(versions[(cid, training.champion_before)].run_id)
    runs.update(_by_id(client, ids, previous - set(runs)))
    dated = None
    if inference_date is not None:
        dated = frozenset(experiments[run.info.experiment_id] for run in pages(
            client.search_runs, experiment_ids=ids, max_results=SEARCH_PAGE,
            filter_string=f"tags.{STAGE_TAG} = '{PREDICTION}' AND attributes.status = 'FINISHED' "
                          f"AND tags.{INFERENCE_DATE_TAG} = '{inference_date}'")) if ids else frozenset()
    return FleetRecords(champions, versions, runs, last_training, last_prediction, dated)


def _latest(client: Any, experiments: Mapping[str, str], filter_string: str, order_by: list[str]) -> dict[str, RunRecord]:
    """The first run per client in ``order_by`` order; stops paging once every client has one."""
    found: dict[str, RunRecord] = {}
    if not experiments:
        return found
    for run in pages(client.search_runs, experiment_ids=list(experiments), filter_string=filter_string,
                      order_by=order_by, max_results=SEARCH_PAGE):
        found.setdefault(experiments[run.info.experiment_id], _record(run))
        if len(found) == len(experiments):
            break
    return found


def _by_id(client: Any, experiment_ids: Sequence[str], run_ids: Iterable[str]) -> dict[str, RunRecord]:
    wanted = sorted(run_ids)
    found = {}
    for start in range(0, len(wanted), IDS_PER_SEARCH):
        chunk = ", ".join(f"'{run_id}'" for run_id in wanted[start:start + IDS_PER_SEARCH])
        for run in pages(client.search_runs, experiment_ids=list(experiment_ids),
                          filter_string=f"attributes.run_id IN ({chunk})", max_results=SEARCH_PAGE):
            found[run.info.run_id] = _record(run)
    return found


def _record(run: Any) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.status, datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc),
                     dict(run.data.tags), dict(run.data.metrics))
