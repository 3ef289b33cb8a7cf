"""The production profile of the local stack: Airflow with CeleryExecutor on PostgreSQL and Redis.

    python -m scripts.local_stack start --profile celery    # or: make start-airflow PROFILE=celery
    python -m scripts.local_stack stop --profile celery
    python -m scripts.local_stack e2e --profile celery    # the e2e proof: scripts/airflow_e2e.py (both profiles)

Runs Airflow's API server (127.0.0.1:8080), scheduler, DAG processor, triggerer and two Celery
workers, an MLflow server (127.0.0.1:5000) whose backend store is PostgreSQL, a Spark Connect
service (sc://127.0.0.1:15002) that every prediction task shares, a PostgreSQL server (databases
``airflow`` and ``mlflow``) and a Redis broker, each in its own process group, all bound to
127.0.0.1. Everything lives in ``.run/celery/`` (databases, logs, pid files, AIRFLOW_HOME, and the
data prefix ``.run/celery/data`` unless ``DATA_PREFIX`` names one): a second ``start`` reuses it.
The profile's outputs and its MLflow store belong together (a manifest names runs of that store),
hence a data prefix of its own, filled with the example clients' files on first start.
``CATEGORIES_POSTGRES_URL`` / ``CATEGORIES_REDIS_URL`` name existing servers to use instead of
starting throwaway ones. Tasks get ``CATEGORIES_LOCK_URL``
(the MLflow database): trainings of one client on different workers take turns at the gate.
"""
import json
import os
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from scripts import airflow_cfg, services, spark_connect
from scripts.airflow_api import AirflowClient
from scripts.generate_example_data import main as generate_example_data
from scripts.profiles import airflow, mlflow
from scripts.profiles.airflow import AIRFLOW, PASSWORDS_FILE, ROOT, Endpoints
from scripts.supervisor import HOST, ProcessSpec, StartError, Supervisor

RUN_DIR = ROOT / ".run" / "celery"


class StackError(RuntimeError):
    """The stack did not start (one line, credentials masked)."""


@dataclass(frozen=True)
class Settings(Endpoints):  # pylint: disable=too-many-instance-attributes  # one field per setting users and tests change
    """Where the profile runs: ports, folders, how many workers, extra Airflow settings (tests, benchmarks)."""

    run_dir: Path = RUN_DIR
    dags_folder: Path = ROOT / "dags"
    airflow_port: int = field(default_factory=lambda: int(os.environ.get("AIRFLOW_PORT", "8080")))
    mlflow_port: int = field(default_factory=lambda: int(os.environ.get("MLFLOW_PORT", "5000")))
    postgres_port: int = field(default_factory=lambda: int(os.environ.get("CATEGORIES_POSTGRES_PORT", "5433")))
    redis_port: int = field(default_factory=lambda: int(os.environ.get("CATEGORIES_REDIS_PORT", "6380")))
    spark_connect_port: int = field(default_factory=lambda: int(os.environ.get("SPARK_CONNECT_PORT", "15002")))
    # Tests and benchmarks that run training only may do without the Spark service (a JVM less).
    spark_connect: bool = True
    data_prefix: Optional[Path] = field(
        default_factory=lambda: Path(os.environ["DATA_PREFIX"]).resolve() if os.environ.get("DATA_PREFIX") else None)
    postgres_url: str = field(default_factory=lambda: os.environ.get("CATEGORIES_POSTGRES_URL", ""))
    redis_url: str = field(default_factory=lambda: os.environ.get("CATEGORIES_REDIS_URL", ""))
    workers: int = 2
    # Task slots per worker: each task is a CLI process (a Python with sklearn, or Spark's JVM).
    worker_concurrency: int = field(default_factory=lambda: int(os.environ.get("CATEGORIES_WORKER_CONCURRENCY", "2")))
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def airflow_home(self) -> Path:
        """This profile's own AIRFLOW_HOME (the standalone profile's ``airflow_home/`` stays SQLite's)."""
        return self.run_dir / "airflow_home"

    @property
    def data(self) -> Path:
        """The tasks' DATA_PREFIX: ``DATA_PREFIX`` if given, else the profile's own folder."""
        return self.data_prefix or self.run_dir / "data"

    def worker_names(self) -> list[str]:
        """The Celery workers' process names."""
        return [f"worker-{number}" for number in range(1, self.workers + 1)]

    def stop_order(self) -> list[tuple[str, ...]]:
        """Every process the profile starts, in the steps it is stopped (each step's at once): the workers
        first, Airflow's other processes, the MLflow and Spark servers, the databases last."""
        return [tuple(self.worker_names()), *airflow.STOP_STEPS, ("spark-connect", "mlflow"), ("redis", "postgres")]


class CeleryStack:
    """Start, check and stop the profile's processes; pid files in ``settings.run_dir`` say what it started."""

    def __init__(self, settings: Optional[Settings] = None) -> None:
        self.settings = settings or Settings()
        self.run_dir = self.settings.run_dir
        self.supervisor = Supervisor(self.run_dir, self.settings.stop_order())
        self._postgres: Optional[services.Postgres] = None
        self._redis: Optional[services.Server] = None

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every service (databases first), migrate the schemas, wait until Airflow and MLflow answer."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)  # PostgreSQL's own user must reach its folder in here
        try:
            self._start_databases()
            self._example_data()
            env = self.airflow_env()
            self._migrate(env)
            self.supervisor.start(self.specs(env))
        except StartError as exc:
            self.stop(quiet=True)
            raise StackError(services.mask(str(exc))) from None
        except BaseException:
            self.stop(quiet=True)
            raise

    def specs(self, env: dict[str, str]) -> list[ProcessSpec]:
        """The profile after its databases: Spark Connect (unless off), MLflow on PostgreSQL, Airflow's
        components, the Celery workers (``env``: Airflow's environment)."""
        settings = self.settings
        connect = ([spark_connect.server_spec(settings.spark_connect_port, spark_connect.MASTER,
                                              self.run_dir / "spark-connect")] if settings.spark_connect else [])
        server = mlflow.server_spec(settings.mlflow_port, self._mlflow_db(), self.run_dir / "mlartifacts", timeout=180)
        # Log serving is off here too: every process of this machine writes and reads the same logs/ folder.
        # A worker finishes its running tasks on SIGTERM (warm shutdown): it gets time.
        workers = [ProcessSpec(name, [AIRFLOW, "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency",
                                      str(settings.worker_concurrency), "--skip-serve-logs"], env, grace=60.0)
                   for name in settings.worker_names()]
        return [*connect, server, *airflow.component_specs(env, settings.airflow_port), *workers]

    def _start_databases(self) -> None:
        if self.settings.postgres_url or self.supervisor.running("postgres"):
            self._postgres = self._server_postgres()
        else:
            self._postgres = services.start_postgres(run_dir=self.run_dir / "postgres", port=self.settings.postgres_port,
                                                     supervisor=self.supervisor)
        for database in ("airflow", "mlflow"):
            self._postgres.create_database(database)
        if self.settings.redis_url or self.supervisor.running("redis"):
            self._redis = self._server_redis()
        else:
            self._redis = services.start_redis(run_dir=self.run_dir / "redis", port=self.settings.redis_port,
                                               supervisor=self.supervisor)

    def _example_data(self) -> None:
        data = self.settings.data
        if self.settings.data_prefix is None and not (data / "train").is_dir():
            if generate_example_data(["--output-dir", str(data)]) != 0:
                raise StackError(f"could not write the example clients' files into {data}")

    def _mlflow_db(self) -> str:
        return services.sqlalchemy_url(self._server_postgres().database_url("mlflow"))

    def _server_postgres(self) -> services.Postgres:
        if self._postgres is None:  # a stack started by an earlier command: the same server, from its files
            self._postgres = (services.existing_postgres(self.settings.postgres_url) if self.settings.postgres_url
                              else services.Postgres("PostgreSQL", self._local_url("postgres"), Path(os.devnull)))
        return self._postgres

    def _server_redis(self) -> services.Server:
        if self._redis is None:
            self._redis = (services.existing_redis(self.settings.redis_url) if self.settings.redis_url
                           else services.Server("Redis", self._local_url("redis"), Path(os.devnull)))
        return self._redis

    def _local_url(self, name: str) -> str:
        password = (self.run_dir / name / "password").read_text(encoding="utf-8").strip()
        if name == "postgres":
            return f"postgresql://{services.SUPERUSER}:{password}@{HOST}:{self.settings.postgres_port}/postgres"
        return f"redis://:{password}@{HOST}:{self.settings.redis_port}/0"

    def airflow_env(self) -> dict[str, str]:
        """The environment of every Airflow process (and so of every task); holds credentials: never print it."""
        settings = self.settings
        airflow_db = services.sqlalchemy_url(self._server_postgres().database_url("airflow"))
        profile = {
            "AIRFLOW_HOME": str(settings.airflow_home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            # No async engine: Airflow would derive a postgresql+asyncpg one, and asyncpg is not in the
            # environment; the API routes and task calls this project uses are synchronous.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": "",
            "AIRFLOW__CELERY__BROKER_URL": self._server_redis().url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{airflow_db}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.worker_concurrency),
            # Workers' tasks report to the API server's execution API (the default is localhost:8080).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(settings.airflow_port),
            "AIRFLOW__API__BASE_URL": settings.airflow_url,
            # The scheduler signs the tasks' tokens, the API server checks them: one secret for all.
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
            "AIRFLOW__API__SECRET_KEY": self._secret("api_secret_key"),
            "DATA_PREFIX": str(settings.data),
            "MLFLOW_TRACKING_URI": settings.mlflow_url,
            "CATEGORIES_LOCK_URL": self._mlflow_db(),
            **({"SPARK_REMOTE": settings.spark_remote} if settings.spark_connect else {}),
        }
        # The broker's tuning is a default: the caller's AIRFLOW__* win (then the tests' extra_env).
        tuning = {key: value for key, value in broker_recovery().items() if key not in os.environ}
        return airflow.airflow_env(os.environ, settings.dags_folder, profile, {**tuning, **settings.extra_env})

    def _secret(self, name: str) -> str:
        path = self.run_dir / name
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_urlsafe(32))
        return path.read_text(encoding="utf-8").strip()

    def _migrate(self, env: dict[str, str]) -> None:
        self.settings.airflow_home.mkdir(parents=True, exist_ok=True)
        # airflow.cfg as the profile runs Airflow (its databases, broker, DAGs folder, ports), so that a
        # plain `airflow ...` with only AIRFLOW_HOME set agrees; only its owner reads it (credentials).
        try:
            airflow_cfg.write(env)
        except airflow_cfg.ConfigWriteError as exc:
            raise StackError(services.mask(str(exc))) from None
        result = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True,
                                timeout=600, check=False)
        if result.returncode != 0:
            raise StackError(f"`airflow db migrate` on {self._server_postgres().display} failed: "
                             f"{services.mask(result.stderr.strip().splitlines()[-1]) if result.stderr.strip() else ''}")

    # -- stop --------------------------------------------------------------------------------

    def process_names(self) -> list[str]:
        """Every process this profile starts, in stopping order."""
        return [name for step in self.settings.stop_order() for name in step]

    def pid(self, name: str) -> Optional[int]:
        """The recorded pid (process-group leader) of ``name``, or None."""
        return self.supervisor.pid(name)

    def stop(self, quiet: bool = False) -> list[str]:
        """Stop the process groups recorded in the run folder (workers first, databases last), nothing else;
        the names SIGTERM did not end (SIGKILL did)."""
        for spec in self._stop_specs():  # a stack started by an earlier command: how to stop each of its processes
            self.supervisor.specs.setdefault(spec.name, spec)
        return self.supervisor.stop(quiet=quiet)

    def _stop_specs(self) -> list[ProcessSpec]:
        """What stopping needs to know of each process (grace, leaders first), without a database to ask."""
        return [*airflow.component_specs({}, self.settings.airflow_port),
                *(ProcessSpec(name, [], {}, grace=60.0) for name in self.settings.worker_names())]

    # -- use ---------------------------------------------------------------------------------

    def workers_of(self, dag_id: str, run_id: str) -> dict[int, str]:
        """Which Celery worker ran each attempt of the run's tasks (``{attempt: "worker-N"}``), from their logs."""
        found = {}
        for name in self.settings.worker_names():
            log = self.supervisor.log(name)
            text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            for line in text.splitlines():
                marker = f"log_path='dag_id={dag_id}/run_id={run_id}/"
                if "Executing workload in Celery" in line and marker in line:
                    attempt = int(line.split(marker, 1)[1].split("attempt=", 1)[1].split(".log", 1)[0])
                    found[attempt] = name
        return found

    def client(self) -> AirflowClient:
        """A REST client of this stack's API server, logged in as the admin user."""
        return AirflowClient(self.settings.airflow_url, self.settings.airflow_home)

    def describe(self) -> str:
        """Where everything is (credentials masked)."""
        settings = self.settings
        return (f"MLflow UI:  {settings.mlflow_url}  (backend store {services.mask(self._mlflow_db())})\n"
                f"Airflow UI: {settings.airflow_url}  (user admin, password in {settings.airflow_home / PASSWORDS_FILE})\n"
                f"Executor:   CeleryExecutor, {settings.workers} workers x {settings.worker_concurrency} slots, "
                f"broker {self._server_redis().display}, "
                f"metadata {services.mask(self._server_postgres().database_url('airflow'))}\n"
                + (f"Spark:      {settings.spark_remote} (Spark Connect, shared by the prediction tasks)\n"
                   if settings.spark_connect else "")
                + f"Data:       {settings.data} (DATA_PREFIX of the tasks)\n"
                f"Logs:       {self.run_dir}/*.log")


def broker_recovery() -> dict[str, str]:
    """How the profile's Airflow rides out a Redis restart, and bounds what is lost anyway (issue #25, case 6).

    The throwaway Redis keeps queued messages across a restart (its append-only file,
    ``services.redis_config``). What remains is bounded here, each setting a default the caller's
    ``AIRFLOW__*`` overrides:

    - a task whose message is lost anyway (a Redis without persistence, a machine lost) waits in
      ``queued`` until the scheduler requeues it: after ``task_queued_timeout`` (Airflow: 600 s,
      checked every 120 s, so up to 12 minutes), here 300 s checked every 30 s. It must stay
      longer than a task may wait for a free worker slot (and it is also the lifetime of a queued
      task's token): raise it for fleets whose trainings queue longer than 5 minutes;
    - every broker call has a deadline: the Redis sockets time out (connect 10 s, read 30 s, with
      keep-alive) instead of hanging on a half-open connection; workers reconnect on start-up too;
    - a task the scheduler sends while Redis is down is not failed at once: each publish is cut at
      ``[celery] operation_timeout`` (1 s) and retried at the next scheduler loop, up to 30 times
      (Airflow: 3), which covers an outage of about half a minute;
    - ``visibility_timeout``: a message taken by a worker that did not acknowledge it (a worker
      lost before its task started) is sent again after this; it must exceed the longest task
      (a running task's message is acknowledged when it ends), so Airflow's 24 h is kept, stated
      (Airflow warns at every start otherwise).
    """
    return {
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "30",
        "AIRFLOW__CELERY__BROKER_CONNECTION_RETRY_ON_STARTUP": "True",
        "AIRFLOW__CELERY__TASK_PUBLISH_MAX_RETRIES": "30",
        # Celery's own publish retries (default: 3 within about a second) run until operation_timeout cuts them.
        "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps({"task_publish_retry_policy": {
            "max_retries": 100, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}}),
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__SOCKET_CONNECT_TIMEOUT": "10",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__SOCKET_TIMEOUT": "30",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__SOCKET_KEEPALIVE": "True",
    }


def manual_runs_only(dags_folder: Path, retry_delay: Optional[str] = None) -> None:
    """Rewrite generated DAGs for a measured or tested run: no schedule (switching a DAG on would also
    schedule a run of its own), and optionally another retry delay (a ``timedelta(...)`` expression)."""
    for dag in dags_folder.glob("*.py"):
        text = re.sub(r"schedule=.*,\n", "schedule=None,\n", dag.read_text(encoding="utf-8"))
        if retry_delay is not None:
            text = text.replace("timedelta(minutes=5)", retry_delay)
        dag.write_text(text, encoding="utf-8")


# The command-line actions, called by scripts/local_stack.py for `--profile celery`; the e2e proof is
# scripts/airflow_e2e.py.

def start() -> None:
    """Start the profile in the background (it outlives this command) and say where everything is."""
    stack = CeleryStack()
    try:
        stack.start()
    except (StackError, services.ServiceError) as exc:
        raise SystemExit(f"celery profile: {exc}") from None
    print(stack.describe())


def stop() -> None:
    """Stop exactly what ``start`` started."""
    CeleryStack().stop()
