"""Everything MLflow: tracking URI, per-client experiment and model names, logging, registering,
resolving and fetching model versions.

Models are stored in skops format and loaded with *this module's* list of trusted types, never
with the list recorded inside the artifact and never with pickle: a model file that needs any
other type is refused. Each version carries the SHA-256 of its stored file (the version tag
``model_sha256``): a file damaged or changed in the artifact store is refused before anything
reads it.
"""
import fcntl
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import zipfile
import zlib
import time
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Optional, Sequence
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from categories_classification import serving
from categories_classification.errors import (
    ConfigError,
    InfrastructureError,
    ModelIntegrityError,
    ModelNotFoundError,
    TrackingError,
    describe_os_error,
    one_line,
)
from categories_classification.serialization import (  # DIGEST_TAG: the version tag checked before every load
    DIGEST_TAG,
    SKOPS_TRUSTED_TYPES,
    digest_problem,
    deflate_file,
    load_model_bytes,
    sha256_hex,
    zip_damage,
)
from categories_classification.topk import TOP_K

LOGGER = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE.parent
# The distributions a registered model needs besides MLflow (its requirements.txt, pinned).
SERVING_DISTRIBUTIONS = ("scikit-learn", "skops", "numpy", "scipy", "pandas", "pyarrow")
MODEL_ARTIFACT = "model"
# The registry alias of the version that prediction serves (stages are deprecated since 2.9).
CHAMPION = "champion"
# A companion file's SHA-256 is the version tag "<file name>.sha256" (e.g. drift_reference.json.sha256).
COMPANION_DIGEST_SUFFIX = ".sha256"
# What a damaged file's deserialization raises (zip, deflate, skops' JSON schema and types).
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, TypeError)
# How long one MLflow request may take in all, retries included, before a command fails (seconds).
TIMEOUT_VARIABLE = "CATEGORIES_MLFLOW_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 30.0
# Where a run runs (tags on every training and prediction run), and why a run was closed as failed.
HOST_TAG = "host"
PID_TAG = "pid"
FAILURE_REASON_TAG = "failure_reason"
# A RUNNING run of another host (or without host/pid tags) is only closed after this long: its
# process cannot be checked from here, and a training or a prediction takes minutes, not a day.
FOREIGN_RUN_LIMIT_SECONDS = 24 * 3600.0


def model_name(client_id: str) -> str:
    """Registered model name of a client: ``<client_id>_model``."""
    return f"{client_id}_model"


SEARCH_PAGE = 1000  # results per MLflow search page (MLflow allows up to 50,000 runs)


def experiment_name(client_id: str) -> str:
    """MLflow experiment holding every run of a client."""
    return f"categories_{client_id}"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the project's own SQLite store (``mlflow.db``)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def configure_tracking() -> str:
    """Point MLflow's fluent API at :func:`tracking_uri` (called by entry points, never on import).

    A SQLite store is created (or migrated) under an exclusive file lock: two commands starting
    at once on a new store would otherwise both run MLflow's schema migrations, and one would
    fail with "duplicate column name" (seen with parallel DAG runs on a fresh install).
    """
    uri = tracking_uri()
    for name, value in http_limits(timeout_seconds()).items():
        os.environ.setdefault(name, value)  # what the user set wins
    mlflow.set_tracking_uri(uri)
    database = _sqlite_file(uri)
    if database is not None and not (uri in _READY_STORES and database.exists()):
        database.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(_lock_file(database, "store")), tracking_errors(None):
            MlflowClient(uri).search_experiments(max_results=1)
        _READY_STORES.add(uri)  # a train-all worker trains many clients into the same store
    return uri


_READY_STORES: set[str] = set()


def timeout_seconds() -> float:
    """``$CATEGORIES_MLFLOW_TIMEOUT`` (seconds, a positive number), else :data:`DEFAULT_TIMEOUT_SECONDS`."""
    raw = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(f"environment variable {TIMEOUT_VARIABLE}: expected a positive number of seconds, found {raw!r}")
    return value


def http_limits(budget: float) -> dict[str, str]:
    """MLflow's HTTP retry and timeout variables that bound one request to about ``budget`` seconds.

    MLflow's defaults (7 retries, backoff factor 2, 120 s per attempt) let a command stall for
    minutes on an unreachable server; Airflow's task retries cover longer outages. urllib3
    sleeps 0 s after the first failure, then ``factor * 2 ** (n - 1)`` plus up to ``jitter``
    seconds: with 2 retries, at most 3 s of sleep and 3 attempts of ``timeout`` seconds each.
    Below 12 s there is no retry: the whole budget goes to one attempt.
    """
    retries, factor, jitter = (2, 1, 1.0) if budget >= 12 else (0, 1, 0.0)
    sleeps = sum(factor * 2 ** (n - 1) + jitter for n in range(2, retries + 1))
    timeout = max(1, int((budget - sleeps) // (retries + 1)))  # MLflow reads an integer
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(factor),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(jitter), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}


def promotion_lock(client_id: str) -> ContextManager[None]:
    """Serialises "read the champion, compare, move the alias" between trainings of one client.

    A file lock beside a SQLite store covers every process of this machine (parallel DAG runs,
    a manual ``trainer``). With a PostgreSQL store (``MLFLOW_TRACKING_URI=postgresql://...``), or
    a tracking server whose tasks are given ``CATEGORIES_LOCK_URL=postgresql://...``, it is a
    PostgreSQL advisory lock keyed by the client: it holds across machines (Celery workers), and
    the server frees it if the training's process dies. A tracking server without a lock URL
    relies on the training DAG's ``max_active_runs=1``.
    """
    uri = tracking_uri()
    database = _sqlite_file(uri)
    if database is not None:
        return _file_lock(_lock_file(database, model_name(client_id)))
    lock_url = uri if _is_postgres(uri) else os.environ.get(LOCK_URL_VARIABLE, "")
    if _is_postgres(lock_url):
        return _advisory_lock(lock_url, model_name(client_id), client_id)
    return nullcontext()


# Where the promotion lock lives when the tracking URI is a server (http): a PostgreSQL database.
LOCK_URL_VARIABLE = "CATEGORIES_LOCK_URL"


def _is_postgres(url: str) -> bool:
    return urlparse(url).scheme.split("+", 1)[0] in ("postgresql", "postgres")


@contextmanager
def _advisory_lock(url: str, key: str, client_id: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock on ``hashtext(key)``, held on its own connection for the block."""
    import psycopg2  # pylint: disable=import-outside-toplevel  # only PostgreSQL stores need the driver

    parsed = urlparse(url)
    dsn = parsed._replace(scheme="postgresql").geturl()  # libpq knows no SQLAlchemy "+driver" suffix
    try:
        connection = psycopg2.connect(dsn, connect_timeout=10, application_name="categories promotion lock")
    except psycopg2.Error as exc:
        raise TrackingError(f"promotion lock at {_masked(url)} failed: {one_line(exc)}", client_id) from None
    try:
        connection.autocommit = True  # a session lock: no transaction left open while the gate runs
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"categories.promotion:{key}",))
        yield
    finally:
        # Closing the session releases the lock, also when the block raised or the lock query failed.
        connection.close()


def _masked(url: str) -> str:
    """``url`` without its credentials (for messages)."""
    parsed = urlparse(url)
    if parsed.password or parsed.username:
        host = f"{parsed.hostname}:{parsed.port}" if parsed.port else f"{parsed.hostname}"
        return parsed._replace(netloc=f"***@{host}").geturl()
    return url


def close_abandoned_runs(*client_ids: str) -> list[str]:
    """Tag this process's next runs with where they run; end the clients' runs whose process is gone.

    Called when a training or a (fleet) prediction starts (after :func:`configure_tracking`). A
    run left ``RUNNING`` by a killed process is ended ``FAILED`` with a :data:`FAILURE_REASON_TAG`;
    a run whose process still runs (another training of the same client) is left alone, and a
    run of another host only after :data:`FOREIGN_RUN_LIMIT_SECONDS`. One run search covers every
    client. Returns the ids of the runs ended.
    """
    # MLflow adds the tags of $MLFLOW_RUN_CONTEXT (JSON) to every run this process starts.
    context = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT") or "{}")
    context.update({HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})
    os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps(context)
    client = MlflowClient()
    closed: list[str] = []
    with tracking_errors(client_ids[0] if len(client_ids) == 1 else None):
        experiments = _experiment_ids(client, client_ids)
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
                           run.data.tags.get("client_id", "?"), run.info.run_id, reason)
            closed.append(run.info.run_id)
    return closed


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


@dataclass(frozen=True)
class ModelRef:
    """One registered model version and the run that produced it.

    ``digest`` is the SHA-256 registered with the file (the ``model_sha256`` tag): "" when the
    version was registered without one, None when it has not been looked up;
    ``companion_digests`` those of the files stored beside it, as (file name, SHA-256) pairs.
    """

    client_id: str
    name: str
    version: int
    run_id: str
    digest: Optional[str] = None
    companion_digests: tuple[tuple[str, str], ...] = ()

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``."""
        return f"models:/{self.name}/{self.version}"


def ensure_experiment(client_id: str) -> str:
    """Id of the client's experiment, created (tagged with the client id) if it does not exist."""
    name = experiment_name(client_id)
    with tracking_errors(client_id):
        existing = mlflow.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        try:
            return mlflow.create_experiment(
                name,
                artifact_location=local_artifact_location(name),
                tags={"client_id": client_id, "mlflow.note.content": f"Training and prediction runs of client {client_id}."},
            )
        except MlflowException as exc:
            # Another process (a parallel training) created it between our lookup and create.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return mlflow.get_experiment_by_name(name).experiment_id


class _DeflatedSklearnFlavor:
    """MLflow's sklearn flavour, with its skops file deflated before upload, and a self-contained pyfunc.

    A forest's class-probability arrays are mostly zeros: deflate stores them 5-7x smaller, which
    is what the registry's disk, the upload and every download pay for. The file stays a skops
    zip, so MLflow's own loader and ours read it unchanged. The model carries the few project
    modules it needs (:data:`~categories_classification.serving.SHIPPED_MODULES`, MLflow's
    ``code_paths``) and its ``python_function`` flavour is :mod:`categories_classification.serving`
    (top-k rows, digest checked, trusted types only): stock MLflow loads and serves it anywhere.
    """

    def __init__(self, client_id: str, companions: Optional[Mapping[str, str]] = None) -> None:
        self.__name__ = "mlflow.sklearn"  # what MLflow reports as the flavour
        self.client_id = client_id
        self.stored_bytes = 0
        self.digest = ""
        self.companions = dict(companions or {})
        self.companion_digests = {name: sha256_hex(text.encode("utf-8")) for name, text in self.companions.items()}

    def save_model(self, path: str, mlflow_model: Any, **kwargs: Any) -> None:
        """Save with MLflow's sklearn flavour and the shipped code, deflate the model file, take its SHA-256.

        Companion files are written into the model's folder: they are uploaded with it and come
        back with every download of the version, at no extra request.
        """
        kwargs.pop("validate_serving_input", None)  # Model.log's own option, passed on to every flavour
        with tempfile.TemporaryDirectory(prefix="categories_code_") as staging:
            mlflow.sklearn.save_model(path=path, mlflow_model=mlflow_model, code_paths=[str(_shipped_package(Path(staging)))],
                                      **kwargs)
        sklearn_conf = mlflow_model.flavors["sklearn"]
        model_file = Path(path) / sklearn_conf["pickled_model"]
        self.stored_bytes = deflate_file(model_file)
        # The digest of exactly the bytes that are uploaded: every load checks them against it.
        self.digest = sha256_hex(model_file.read_bytes())
        # MLflow's sklearn pyfunc would predict the top-1 label only: serve the top-k rows instead.
        env = mlflow_model.flavors.pop(mlflow.pyfunc.FLAVOR_NAME)[mlflow.pyfunc.ENV]
        mlflow.pyfunc.add_to_model(mlflow_model, loader_module=serving.__name__, data=sklearn_conf["pickled_model"],
                                   code=sklearn_conf["code"], conda_env=env["conda"], python_env=env["virtualenv"],
                                   **{DIGEST_TAG: self.digest, serving.CLIENT_KEY: self.client_id})
        mlflow_model.save(str(Path(path) / MLMODEL_FILE_NAME))
        for name, text in self.companions.items():
            (Path(path) / name).write_text(text, encoding="utf-8")


def _shipped_package(staging: Path) -> Path:
    """A copy of the package holding only the modules a registered model needs (its ``code_paths``)."""
    package = staging / PACKAGE.name
    package.mkdir()
    for module in serving.SHIPPED_MODULES:
        shutil.copy2(PACKAGE / module, package / module)
    return package


def serving_signature(features: Sequence[str]) -> ModelSignature:
    """A version's signature: the features (doubles) and an optional ``product_id`` in, the top-k rows out.

    The outputs are declared (lists per product, as :class:`~categories_classification.serving.TopKCategories`
    returns them), so ``spark_udf`` knows its result type; ``k`` is a request parameter.
    """
    return ModelSignature(
        inputs=Schema([*(ColSpec(DataType.double, feature) for feature in features),
                       ColSpec(DataType.string, serving.PRODUCT, required=False)]),
        outputs=Schema([ColSpec(DataType.string, serving.PRODUCT, required=False),
                        ColSpec(Array(DataType.string), serving.LABEL),
                        ColSpec(Array(DataType.double), serving.SCORE),
                        ColSpec(Array(DataType.integer), serving.RANK)]),
        params=ParamSchema([ParamSpec(serving.K_PARAM, DataType.long, TOP_K)]),
    )


def log_and_register(client_id: str, model: Any, input_example: Any, signature: Any,
                     companions: Optional[Mapping[str, str]] = None) -> ModelRef:
    """Log ``model`` (deflated skops) in the active run and register it as a new version of the client's model.

    Logs the stored file's size as the run's ``model_size_bytes`` metric and tags the version with
    the file's SHA-256 (``model_sha256``). ``companions`` (file name -> text) are stored in the
    model's folder, beside the model file (the drift reference).
    """
    name = model_name(client_id)
    chatter = io.StringIO()
    flavor = _DeflatedSklearnFlavor(client_id, companions)
    # MLflow prints "Successfully registered model ..." straight to stderr: keep it for debug logs.
    with tracking_errors(client_id), redirect_stderr(chatter):
        info = mlflow.models.Model.log(
            artifact_path=None,  # deprecated in favour of name=, but still a positional parameter
            flavor=flavor,
            sk_model=model,
            name=MODEL_ARTIFACT,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            signature=signature,
            input_example=input_example,
            registered_model_name=name,
            # Explicit requirements: MLflow would otherwise re-load the model in a subprocess to
            # infer them, which costs seconds per training for a known answer. The numeric
            # libraries are pinned too: a served score is then the batch's to the last bit.
            pip_requirements=pinned_requirements(),
            # MLflow would load the model back and predict the input example to check it could be
            # served: this project's loaders (the gate, prediction) read it back anyway.
            validate_serving_input=False,
        )
    LOGGER.debug("%s", chatter.getvalue().strip())
    with tracking_errors(client_id):
        mlflow.log_metric("model_size_bytes", float(flavor.stored_bytes))
        client = MlflowClient()
        run_id = mlflow.active_run().info.run_id
        version = info.registered_model_version
        client.set_model_version_tag(name, str(version), DIGEST_TAG, flavor.digest)
        for companion, digest in flavor.companion_digests.items():
            client.set_model_version_tag(name, str(version), companion + COMPANION_DIGEST_SUFFIX, digest)
        # The registered model's own tag is read-then-inserted by MLflow: two trainings of one client
        # at once collide on PostgreSQL (a unique-key violation). One at a time, under the client's lock.
        with promotion_lock(client_id):
            if not client.get_registered_model(name).description:
                client.update_registered_model(name, f"Product categoriser of client {client_id} (top-5 categories; "
                                                     "the model family is chosen at each training).")
            client.set_registered_model_tag(name, "client_id", client_id)
        client.set_model_version_tag(name, str(version), "client_id", client_id)
    return ModelRef(client_id, name, int(version), run_id, flavor.digest, tuple(sorted(flavor.companion_digests.items())))


def pinned_requirements() -> list[str]:
    """What a registered model needs to load and serve (MLflow adds itself), pinned to this environment's versions."""
    return [f"{name}=={metadata.version(name)}" for name in SERVING_DISTRIBUTIONS]


def resolve_model(client_id: str, version: Optional[int] = None) -> ModelRef:
    """The version to serve: ``version`` if given (pin or roll back), else the ``champion`` alias.

    :class:`ModelNotFoundError` if the client has no registered model, no champion, or no such
    version.
    """
    name = model_name(client_id)
    client = MlflowClient()
    with tracking_errors(client_id):
        if version is not None:
            try:
                found = client.get_model_version(name, str(version))
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version}: expected one of "
                    f"{_version_list(client, name) or '(none: train the client first)'}",
                    client_id,
                ) from None
            return _ref(client_id, found)
        champion = champion_version(client_id)
    if champion is None:
        existing = _version_list(client, name)
        if not existing:
            raise ModelNotFoundError(
                f"no registered model {name!r} in {display_tracking_uri()}: train the client first (trainer / train-all)",
                client_id,
            )
        raise ModelNotFoundError(
            f"registered model {name!r} has no {CHAMPION!r} version (versions: {existing}): "
            "choose one with set-champion or pass --model_version",
            client_id,
        )
    return champion


def champion_version(client_id: str) -> Optional[ModelRef]:
    """The client's current champion, or None (no model, or no version has the alias yet)."""
    name = model_name(client_id)
    with tracking_errors(client_id):
        try:
            found = MlflowClient().get_model_version_by_alias(name, CHAMPION)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
    return _ref(client_id, found)


def _ref(client_id: str, found: Any) -> ModelRef:
    """A :class:`ModelRef` of an MLflow ``ModelVersion`` (whose tags hold the files' digests)."""
    tags = found.tags or {}
    companions = tuple(sorted((key[:-len(COMPANION_DIGEST_SUFFIX)], value) for key, value in tags.items()
                              if key.endswith(COMPANION_DIGEST_SUFFIX)))
    return ModelRef(client_id, found.name, int(found.version), found.run_id, tags.get(DIGEST_TAG, ""), companions)


def set_champion(client_id: str, version: int) -> ModelRef:
    """Give the ``champion`` alias to ``version`` (promotion, or a rollback by hand)."""
    ref = resolve_model(client_id, version)
    with tracking_errors(client_id):
        MlflowClient().set_registered_model_alias(ref.name, CHAMPION, str(ref.version))
    return ref


def list_versions(client_id: str) -> list[dict[str, Any]]:
    """Every version of the client's model, newest first, with its training metrics and aliases."""
    name = model_name(client_id)
    client = MlflowClient()
    with tracking_errors(client_id):
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ModelNotFoundError(f"no registered model {name!r} in {display_tracking_uri()}", client_id)
        aliases = client.get_registered_model(name).aliases
        rows = []
        for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
            run = client.get_run(version.run_id)
            rows.append({
                "version": int(version.version),
                "aliases": sorted(alias for alias, number in aliases.items() if str(number) == str(version.version)),
                "training_date": run.data.tags.get("training_date", ""),
                "run_id": version.run_id,
                "metrics": dict(run.data.metrics),
                "decision": run.data.tags.get("promotion_decision", ""),
            })
    return rows


def describe_version(ref: ModelRef, description: str, tags: dict[str, str]) -> None:
    """Set a version's description and tags (what the MLflow UI shows next to it)."""
    client = MlflowClient()
    with tracking_errors(ref.client_id):
        client.update_model_version(ref.name, str(ref.version), description=description)
        for key, value in tags.items():
            client.set_model_version_tag(ref.name, str(ref.version), key, value)


def fetch_model_bytes(ref: ModelRef) -> tuple[bytes, list[str]]:
    """A version's skops file content, checked against its digest, and its input columns.

    Nothing deserializes the bytes before the check: a file that does not match the digest
    registered with it is refused (:class:`ModelIntegrityError`). A version registered without a
    digest is checked as a zip (every entry's CRC-32) and loaded with a warning.
    """
    data, features, _, _ = _fetch_verified(ref)
    return data, features


def fetch_model_and_companion(ref: ModelRef, companion: str) -> tuple[bytes, list[str], Optional[str]]:
    """:func:`fetch_model_bytes`, plus the text of a companion file stored with the model (None if absent).

    The companion comes with the same download as the model file (versions registered before it
    existed simply lack it).
    """
    data, features, _, text = _fetch_verified(ref, companion)
    return data, features, text


def _fetch_verified(ref: ModelRef, companion: Optional[str] = None) -> tuple[bytes, list[str], str, Optional[str]]:
    """:func:`fetch_model_bytes`, plus the model file's name (for messages) and the companion's text."""
    if ref.digest is None:
        ref = _ref(ref.client_id, _model_version(ref))
    text = None
    try:
        with tempfile.TemporaryDirectory(prefix="categories_model_") as scratch:
            model_file, features = download_model_file(ref, scratch)
            data = model_file.read_bytes()
            if companion is not None and (model_file.parent / companion).is_file():
                text = (model_file.parent / companion).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:  # the local scratch folder, not MLflow (download_model_file maps those)
        raise InfrastructureError(f"model {ref.name} version {ref.version}: cannot download it to a local "
                                  f"temporary folder: {describe_os_error(exc)}", ref.client_id) from exc
    problem = model_file_problem(ref, data)
    if problem is not None:
        raise _integrity_error(ref, model_file.name, problem)
    if not ref.digest:
        LOGGER.warning("client %s: model %s version %s was registered without a %s tag: its file cannot be "
                       "checked against a digest (retrain to get one)", ref.client_id, ref.name, ref.version,
                       DIGEST_TAG)
    return data, features, model_file.name, text


def companion_problem(ref: ModelRef, name: str, text: str) -> Optional[str]:
    """What is wrong with a companion file's text against its registered digest, or None.

    A version registered before companions had digests has nothing to check against: None.
    """
    expected = dict(ref.companion_digests).get(name)
    if not expected:
        return None
    found = sha256_hex(text.encode("utf-8"))
    if found != expected:
        return (f"does not match its digest (expected {name}{COMPANION_DIGEST_SUFFIX} {expected}, found {found}): "
                "it was damaged or changed after registration")
    return None


def model_file_problem(ref: ModelRef, data: bytes) -> Optional[str]:
    """What is wrong with a version's stored file content, or None; never deserializes it.

    With a registered digest, any difference is a problem; without one (a version registered
    before digests were recorded), a zip that does not read back intact.
    """
    if ref.digest:
        return digest_problem(ref.digest, data)
    damage = zip_damage(data)
    if damage is not None:
        return (f"cannot be read ({damage}): expected an intact skops zip file (the version has no "
                f"{DIGEST_TAG} tag to check it against)")
    return None


def load_model(ref: ModelRef) -> tuple[Any, list[str]]:
    """Download, verify and deserialize a version (trusted types only); return it with its input columns."""
    data, features, file_name, _ = _fetch_verified(ref)
    try:
        return load_model_bytes(data), features
    except _UNREADABLE as exc:
        # Reached only by a file that passed its checks (no digest, intact zip) but not skops.
        raise _integrity_error(ref, file_name, f"cannot be deserialized ({type(exc).__name__}: {one_line(exc)})") from exc


def _integrity_error(ref: ModelRef, file_name: str, problem: str) -> ModelIntegrityError:
    """The one line refusing a version's stored file: which file, what is wrong, what to do."""
    return ModelIntegrityError(
        f"model {ref.name} version {ref.version}: the stored file {_stored_location(ref, file_name)} {problem}; "
        f"refusing to load it. Retrain the client, or serve another version: "
        f"set-champion --client_id={ref.client_id} --version=<an earlier version>",
        ref.client_id,
    )


def _stored_location(ref: ModelRef, file_name: str) -> str:
    """Where the version's file lives in the artifact store (asked only when it is refused)."""
    try:
        return f"{MlflowClient().get_model_version_download_uri(ref.name, str(ref.version)).rstrip('/')}/{file_name}"
    except (MlflowException, OSError):
        return f"{ref.uri}/{file_name}"


def _model_version(ref: ModelRef) -> Any:
    """The MLflow ``ModelVersion`` of ``ref`` (for its tags)."""
    with tracking_errors(ref.client_id):
        return MlflowClient().get_model_version(ref.name, str(ref.version))


def _version_list(client: MlflowClient, name: str) -> str:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return ""
    return ", ".join(str(number) for number in sorted(int(v.version) for v in versions))


def download_model_file(ref: ModelRef, destination: str) -> tuple[Path, list[str]]:
    """Download a model version; return the path of its skops file and its input column names."""
    with tracking_errors(ref.client_id):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=destination))
        meta = mlflow.models.Model.load(str(local))
    flavor = meta.flavors.get("sklearn", {})
    if flavor.get("serialization_format") != mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS:
        raise ModelNotFoundError(
            f"model {ref.name} version {ref.version}: expected the skops format, found "
            f"{flavor.get('serialization_format')!r}; refusing to load it",
            ref.client_id,
        )
    inputs = meta.get_input_schema()
    # The features are the required inputs (product_id is an optional input of the served model).
    columns = inputs.required_input_names() if inputs is not None else []
    return local / flavor["pickled_model"], [str(column) for column in columns]


def local_artifact_location(name: str) -> Optional[str]:
    """Where experiment ``name`` keeps its artifacts: beside a SQLite store (not the current folder), else None.

    A tracking server decides on its own (the local stack's records local paths as well).
    """
    database = _sqlite_file(tracking_uri())
    if database is not None:
        return (database.parent / "mlartifacts" / name).resolve().as_uri()
    return None


def _sqlite_file(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:`` URI, else None."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or parsed.path in ("", "/", "/:memory:"):
        return None
    # sqlite:////abs/mlflow.db -> /abs/mlflow.db ; sqlite:///mlflow.db -> mlflow.db (relative)
    return Path(unquote(parsed.path[1:]))


def _lock_file(database: Path, name: str) -> Path:
    """``<store dir>/.<store file>.locks/<name>.lock``: every lock of a store in one hidden folder."""
    folder = database.with_name(f".{database.name}.locks")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.lock"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on ``path``, held for the ``with`` block."""
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def display_tracking_uri() -> str:
    """The tracking URI without any credentials in it (for messages and lineage): never print a password."""
    parsed = urlparse(tracking_uri())
    if parsed.password or parsed.username:
        return parsed._replace(netloc=f"***@{parsed.hostname}:{parsed.port}" if parsed.port else f"***@{parsed.hostname}").geturl()
    return tracking_uri()


@contextmanager
def tracking_errors(client_id: Optional[str]) -> Iterator[None]:
    """Turn MLflow failures (server unreachable, store locked, ...) into one-line errors."""
    try:
        yield
    except (MlflowException, OSError) as exc:
        detail = describe_os_error(exc) if isinstance(exc, OSError) else one_line(exc)
        if isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFoundError(f"MLflow at {display_tracking_uri()}: {detail}", client_id) from exc
        raise TrackingError(f"MLflow at {display_tracking_uri()} failed: {detail}", client_id) from exc
