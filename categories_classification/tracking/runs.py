"""Every MLflow run of the project is opened and closed here: a training's (fluent, active while the
model is logged), a failed training's, a prediction's (opened before the Spark job, closed after it);
and runs a killed process left ``RUNNING`` are closed ``FAILED`` when the next command starts."""
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from categories_classification.records import (
    CLIENT_ID_TAG,
    FAILURE_REASON_TAG,
    HOST_TAG,
    PID_TAG,
    TrainingRecord,
    experiment_name,
    training_run_name,
)
from categories_classification.errors import CategoriesError
from categories_classification.tracking.store import retrying, tracking_errors
from categories_classification.tracking.uri import local_artifact_location

LOGGER = logging.getLogger(__name__)
SEARCH_PAGE = 1000  # results per MLflow search page (MLflow allows up to 50,000 runs)
# A RUNNING run of another host (or without host/pid tags) is only closed after this long: its
# process cannot be checked from here, and a training or a prediction takes minutes, not a day.
FOREIGN_RUN_LIMIT_SECONDS = 24 * 3600.0


def store_client() -> MlflowClient:
    """A client of the store MLflow is pointed at, its registry named too: MLflow never asks Spark for it.

    Without a registry URI, ``MlflowClient()`` reads ``spark.mlflow.modelRegistryUri`` from the
    active Spark session: a call to a Spark Connect service, retried for minutes if it is lost.
    """
    uri = mlflow.get_tracking_uri()
    return MlflowClient(uri, registry_uri=uri)


def ensure_experiment(client_id: str) -> str:
    """Id of the client's experiment, created (tagged with the client id) if it does not exist."""
    name = experiment_name(client_id)
    with tracking_errors(client_id):
        client = store_client()
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        try:
            return client.create_experiment(
                name,
                artifact_location=local_artifact_location(name),
                tags={CLIENT_ID_TAG: client_id,
                      "mlflow.note.content": f"Training and prediction runs of client {client_id}."},
            )
        except MlflowException as exc:
            # Another process (a parallel training) created it between our lookup and create.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id


@contextmanager
def training_run(record: TrainingRecord) -> Iterator[str]:
    """The training's run (MLflow's active run for the block, its id yielded): FINISHED, or FAILED if the block raises.

    MLflow failures inside the block are one-line errors (:func:`~categories_classification.tracking.store.tracking_errors`);
    opening and ending the run are tried again while MLflow's database connection is lost
    (:func:`~categories_classification.tracking.store.retrying`).
    """
    client_id = record.client_id
    experiment_id = retrying(client_id, lambda: ensure_experiment(client_id))
    run_id = retrying(client_id, lambda: mlflow.start_run(
        experiment_id=experiment_id, run_name=training_run_name(record.training_date),
        tags=record.start_tags()).info.run_id)
    try:
        with tracking_errors(client_id):
            yield run_id
    except BaseException:
        _end_active_run(client_id, run_id, "FAILED", quiet=True)
        raise
    _end_active_run(client_id, run_id, "FINISHED", quiet=False)


def _end_active_run(client_id: str, run_id: str, status: str, quiet: bool) -> None:
    """End the active run ``run_id`` with ``status`` and take it off MLflow's stack of active runs.

    ``quiet``: the block already failed, and its error is the one to tell; a run that cannot be
    ended now is closed by the client's next command (:func:`close_abandoned_runs`).
    """
    try:
        retrying(client_id, lambda: MlflowClient().set_terminated(run_id, status))
    except CategoriesError as exc:
        if not quiet:
            raise
        LOGGER.info("client %s: run %s could not be ended %s now: %s", client_id, run_id, status, exc)
    finally:
        try:
            mlflow.end_run(status)  # off the stack first, then the same status again
        except (MlflowException, OSError):
            pass


def record_failed_run(record: TrainingRecord) -> str:
    """A run that failed before it could start (its record names why), ended FAILED at once; its id."""
    with tracking_errors(record.client_id):
        client = store_client()
        run = client.create_run(ensure_experiment(record.client_id), run_name=training_run_name(record.training_date),
                                tags=record.start_tags())
        client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def open_run(client_id: str, run_name: str, tags: Mapping[str, str], experiment_id: Optional[str] = None) -> str:
    """A run of the client's experiment left open (not MLflow's active run): its id, for :func:`close_run`.

    ``experiment_id``: the client's experiment when already known (a fleet's, from one search).
    """
    with tracking_errors(client_id):
        experiment_id = experiment_id or ensure_experiment(client_id)
        run = store_client().create_run(experiment_id, run_name=run_name,
                                        tags={**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})
    return run.info.run_id


def close_run(client_id: str, run_id: str, metrics: Mapping[str, float], failed: bool = False,
              tags: Optional[Mapping[str, str]] = None) -> None:
    """Log ``metrics`` (and ``tags``) on a run of :func:`open_run` and end it FINISHED (or FAILED), in one batch
    and one update."""
    now = int(time.time() * 1000)
    with tracking_errors(client_id):
        client = store_client()
        if metrics or tags:
            client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
                             tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()])
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED", end_time=now)


def log_to_run(run_id: str, *, params: Optional[Mapping[str, Any]] = None, metrics: Optional[Mapping[str, float]] = None,
               tags: Optional[Mapping[str, str]] = None, model_id: Optional[str] = None) -> None:
    """Log ``params``, ``metrics`` and ``tags`` on a run in one request (one transaction of the store, where
    MLflow's fluent calls make one each).

    ``model_id``: the metrics are also the logged model's (what ``Model.log`` would copy from the run,
    one metric history read at a time, had they been logged before it).
    """
    now = int(time.time() * 1000)
    store_client().log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, 0, model_id=model_id) for key, value in (metrics or {}).items()],
        params=[Param(key, str(value)) for key, value in (params or {}).items()],
        tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
    )


def close_abandoned_runs(*client_ids: str, experiment_ids: Optional[Sequence[str]] = None) -> list[str]:
    """Tag this process's next runs with where they run; end the clients' runs whose process is gone.

    Called when a training or a (fleet) prediction starts (after ``configure_tracking``). A
    run left ``RUNNING`` by a killed process is ended ``FAILED`` with a ``failure_reason`` tag;
    a run whose process still runs (another training of the same client) is left alone, and a
    run of another host only after :data:`FOREIGN_RUN_LIMIT_SECONDS`. One run search covers every
    client (``experiment_ids``: the clients' experiments when already known). Returns the ids of the runs ended.
    """
    # MLflow adds the tags of $MLFLOW_RUN_CONTEXT (JSON) to every run this process starts.
    context = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT") or "{}")
    context.update({HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})
    os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps(context)
    closed: list[str] = []
    with tracking_errors(client_ids[0] if len(client_ids) == 1 else None):
        client = store_client()
        experiments = list(experiment_ids) if experiment_ids is not None else _experiment_ids(client, client_ids)
        if not experiments:
            return closed
        now = time.time()
        for run in pages(client.search_runs, experiment_ids=experiments,
                         filter_string="attributes.status = 'RUNNING'", max_results=SEARCH_PAGE):
            reason = abandoned(run.data.tags, run.info.start_time / 1000, now, socket.gethostname(), process_started)
            if reason is None:
                continue
            client.set_tag(run.info.run_id, FAILURE_REASON_TAG, f"{reason}; closed by process {os.getpid()}")
            client.set_terminated(run.info.run_id, "FAILED")
            LOGGER.warning("client %s: run %s was left RUNNING (%s): ended as FAILED",
                           run.data.tags.get(CLIENT_ID_TAG, "?"), run.info.run_id, reason)
            closed.append(run.info.run_id)
    return closed


def fleet_experiments(client_ids: Sequence[str]) -> dict[str, str]:
    """Client id -> experiment id of the clients whose experiment exists, in one paged search."""
    with tracking_errors(None):
        return {client_id: experiment_id
                for experiment_id, client_id in client_experiments(store_client(), client_ids).items()}


def _experiment_ids(client: MlflowClient, client_ids: Sequence[str]) -> list[str]:
    """Ids of the clients' experiments that exist: one lookup for one client, one search for a fleet."""
    if len(client_ids) == 1:
        experiment = client.get_experiment_by_name(experiment_name(client_ids[0]))
        return [experiment.experiment_id] if experiment is not None else []
    return list(client_experiments(client, client_ids))


def client_experiments(client: Any, client_ids: Iterable[str]) -> dict[str, str]:
    """Experiment id -> client id of the clients' experiments that exist, from one paged search."""
    wanted = {experiment_name(client_id): client_id for client_id in client_ids}
    return {experiment.experiment_id: wanted[experiment.name] for experiment in pages(
        client.search_experiments, filter_string="name LIKE 'categories_%'", max_results=SEARCH_PAGE)
        if experiment.name in wanted}


def pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every result of an MLflow search, page after page."""
    token = None
    while True:
        page = search(**kwargs, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def abandoned(tags: Mapping[str, str], started: float, now: float, host: str,
              started_at: Callable[[int], Optional[float]]) -> Optional[str]:
    """Why a ``RUNNING`` run is abandoned, or None if it may still be running (pure but for ``started_at``).

    ``started`` and ``now`` are epoch seconds; ``started_at(pid)`` is when process ``pid`` of
    this host started (0.0 if unknown), None if there is no such process.
    """
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) == host and pid.isdigit():
        process_start = started_at(int(pid))
        if process_start is None:
            return f"process {pid} on {host} is gone"
        if process_start > started + 1:  # the pid was reused by a process born after the run
            return f"process {pid} on {host} is gone (its pid now belongs to a newer process)"
        return None
    if now - started > FOREIGN_RUN_LIMIT_SECONDS:
        where = f"on host {tags[HOST_TAG]}" if tags.get(HOST_TAG) else "without host/pid tags"
        return f"started {where} {(now - started) / 3600:.0f} h ago, over the {FOREIGN_RUN_LIMIT_SECONDS / 3600:.0f} h limit"
    return None


def process_started(pid: int) -> Optional[float]:
    """Start time (epoch seconds) of process ``pid`` of this host: 0.0 if unknown, None if it is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, under another user
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent: gone all the same
            return None
        with open("/proc/stat", encoding="utf-8") as stat:
            boot = next(float(line.split()[1]) for line in stat if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime (ticks since boot)
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0  # no /proc (not Linux): alive, start unknown
