"""All clients of a config in one command: one failing client never stops the others.

``train_all`` trains clients in parallel worker processes, one per core (a forest of a few
thousand rows keeps one core busy for a second or two, so parallelism across clients beats
threads inside one fit); ``predict_all`` scores every client in one Spark job, each row with
its own client's model.
"""
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

from categories_classification.config import FOREST_FAMILIES, ClientConfig, ClientsConfig
from categories_classification.errors import CategoriesError, infrastructure_error, unexpected

if TYPE_CHECKING:  # each command imports only its own stage (predict-all never loads the trainer)
    from categories_classification.prediction.predictor import PredictionResult
    from categories_classification.training.trainer import TrainingResult

Step = Callable[[], Union["TrainingResult", "PredictionResult"]]


@dataclass(frozen=True)
class Outcome:
    """The result of one client's step, or the one-line error that stopped it."""

    client_id: str
    seconds: float
    result: Optional[Union["TrainingResult", "PredictionResult"]] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True when the client's step succeeded."""
        return self.error is None


def train_all(config: ClientsConfig, training_date: str, on_done: Optional[Callable[[Outcome], None]] = None,
              workers: Optional[int] = None) -> list[Outcome]:
    """Train every client of ``config``; errors are recorded, not raised. Outcomes in client order.

    ``workers`` processes (default: one per core, at most one per client) train clients side by
    side; each fit then gets ``cores // workers`` threads unless the client's params set
    ``n_jobs`` themselves.
    """
    clients = list(config)
    workers = max(1, min(workers or os.cpu_count() or 1, len(clients)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        return [_report(_train_one(client, training_date, threads), on_done) for client in clients]
    outcomes: dict[str, Outcome] = {}
    with training_pool(workers) as pool:
        pending: dict[Future, ClientConfig] = {
            pool.submit(_train_one, client, training_date, threads): client for client in clients
        }
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                client = pending.pop(future)
                outcomes[client.client_id] = _report(_collect(future, client), on_done)
    return [outcomes[client.client_id] for client in clients]


def training_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` processes that fork from a server which has imported the trainer once (not once per worker)."""
    context = multiprocessing.get_context("forkserver")
    # skops first: it lists the types it trusts by searching every loaded module (~0.7 s imported
    # alone, ~2 s after MLflow and the rest of the trainer, in each worker's first training).
    context.set_forkserver_preload(["skops.io", "categories_classification.training.trainer"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                               initargs=(logging.getLogger().getEffectiveLevel(), dict(os.environ)))


def predict_all(config: ClientsConfig, inference_date: str, on_done: Optional[Callable[[Outcome], None]] = None,
                fail_on_drift: bool = False) -> list[Outcome]:
    """Predict every client of ``config`` in one Spark job (many models); errors are recorded, not raised.

    A client's bad input or missing model fails that client only; the others are written. Each
    client's input drift is checked against its config's ``drift_threshold`` (with
    ``fail_on_drift``, a client over it fails and keeps its previous output).
    """
    # pylint: disable=import-outside-toplevel  # the prediction stage (Spark) only where it is used
    from categories_classification.paths import data_prefix
    from categories_classification.prediction.engine import prepare

    clients = [client.client_id for client in config]
    prepare(clients, data_prefix())  # Spark starts, or the model loader loads, before the prediction code and MLflow
    from categories_classification.prediction.predictor import predict_clients

    started = time.perf_counter()
    thresholds = {client.client_id: client.drift_threshold for client in config}
    try:
        results = predict_clients(clients, inference_date, drift_thresholds=thresholds, fail_on_drift=fail_on_drift)
    except CategoriesError as exc:  # the date, the store: nothing could start for any client
        results = {client_id: _for_client(exc, client_id) for client_id in clients}
    seconds = (time.perf_counter() - started) / max(1, len(clients))  # the job's time, shared
    outcomes = []
    for client_id in clients:
        result = results[client_id]
        if isinstance(result, CategoriesError):
            outcome = Outcome(client_id, seconds, error=str(result))
        elif isinstance(result, Exception):
            fault = infrastructure_error(result, client_id)
            outcome = Outcome(client_id, seconds, error=str(fault) if fault is not None else unexpected(result, client_id))
        else:
            outcome = Outcome(client_id, result.seconds, result)
        outcomes.append(_report(outcome, on_done))
    return outcomes


def _for_client(error: CategoriesError, client_id: str) -> CategoriesError:
    """``error`` told as ``client_id``'s (one cause shared by every client, each line naming its own client)."""
    if error.client_id == client_id:
        return error
    named = CategoriesError(error.detail, client_id)
    named.exit_code = error.exit_code
    return named


def _train_one(client: ClientConfig, training_date: str, threads: int) -> Outcome:
    """One client's training (runs in a worker process when training in parallel)."""
    # pylint: disable-next=import-outside-toplevel  # preloaded by the workers' fork server
    from categories_classification.training.trainer import train_model

    # HistGradientBoosting has no n_jobs (OpenMP sizes its threads): only forests get the share.
    params = {"n_jobs": threads, **client.params} if client.family in (None, *FOREST_FAMILIES) else dict(client.params)
    return _run(client.client_id, lambda: train_model(
        client.client_id, client.features, params, training_date, promotion_tolerance=client.promotion_tolerance,
        max_model_mb=client.max_model_mb, family=client.family))


def _collect(future: Future, client: ClientConfig) -> Outcome:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        # A worker died (killed, out of memory): its client failed, the others carry on.
        return Outcome(client.client_id, 0.0, error=f"client {client.client_id!r}: training process died ({exc})")


def _run(client_id: str, step: Step) -> Outcome:
    started = time.perf_counter()
    try:
        result, error = step(), None
    except CategoriesError as exc:
        result, error = None, str(exc)
    except Exception as exc:  # pylint: disable=broad-except  # one client's bug must not stop the others
        fault = infrastructure_error(exc, client_id)
        result, error = None, str(fault) if fault is not None else unexpected(exc, client_id)
    return Outcome(client_id, time.perf_counter() - started, result, error)


def _report(outcome: Outcome, on_done: Optional[Callable[[Outcome], None]]) -> Outcome:
    if on_done is not None:
        on_done(outcome)
    return outcome


def _init_worker(level: int, environ: dict[str, str]) -> None:
    """Give a worker the parent's environment and log level (the CLI's --verbose or not)."""
    # The fork server keeps the environment it started with; MLFLOW_TRACKING_URI, DATA_PREFIX
    # and friends must be today's, the parent's.
    os.environ.clear()
    os.environ.update(environ)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(level))
