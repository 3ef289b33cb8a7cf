"""The production profile of the local stack: Airflow with CeleryExecutor on PostgreSQL and Redis.

    python -m scripts.local_stack start --profile celery    # or: make start-airflow PROFILE=celery
    python -m scripts.local_stack stop --profile celery
    python -m scripts.local_stack e2e --profile celery    # the e2e proof lives in local_stack (both profiles)

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
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from scripts import airflow_cfg, services, spark_connect
from scripts.airflow_parsing import parsing_settings
from scripts.airflow_processes import AIRFLOW_PROCESSES, LEADERS_FIRST, STOP_STEPS, commands
from scripts.generate_example_data import main as generate_example_data
from scripts._endpoints import Endpoints
from scripts._processes import alive, spawn_detached, stop_groups, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run" / "celery"
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent  # the pipenv environment's bin/ (airflow, mlflow)


class StackError(RuntimeError):
    """The stack did not start, or a DAG run did not succeed (one line, credentials masked)."""


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


class CeleryStack:
    """Start, check and stop the profile's processes; pid files in ``settings.run_dir`` say what it started."""

    def __init__(self, settings: Optional[Settings] = None) -> None:
        self.settings = settings or Settings()
        self.run_dir = self.settings.run_dir
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
            if self.settings.spark_connect:
                self._spawn("spark-connect", spark_connect.server_command(self.settings.spark_connect_port,
                                                                          spark_connect.MASTER),
                            spark_connect.server_env(self.run_dir / "spark-connect"))
            self._spawn("mlflow", [str(BIN / "mlflow"), "server", "--host", HOST,
                                   "--port", str(self.settings.mlflow_port), "--workers", "1",
                                   "--artifacts-destination", str(self.run_dir / "mlartifacts")],
                        dict(os.environ, MLFLOW_BACKEND_STORE_URI=self._mlflow_db()))
            airflow = str(BIN / "airflow")
            for name, command in commands(airflow, HOST, self.settings.airflow_port).items():
                self._spawn(name, command, env)
            # Log serving is off here too: every process of this machine writes and reads the same logs/ folder.
            for number in range(1, self.settings.workers + 1):
                self._spawn(f"worker-{number}", [airflow, "celery", "worker", "--celery-hostname",
                                                 f"worker-{number}@%h", "--concurrency",
                                                 str(self.settings.worker_concurrency), "--skip-serve-logs"], env)
            self._wait_for(f"{self.settings.mlflow_url}/health", "mlflow", 180)
            if self.settings.spark_connect:
                try:
                    spark_connect.wait_until_serving(self.settings.spark_connect_port, None,
                                                     self.run_dir / "spark-connect.log", 180)
                except spark_connect.ServiceError as exc:
                    raise StackError(f"Spark Connect: {exc}") from None
            self._wait_for(f"{self.settings.airflow_url}/api/v2/monitor/health", "api-server", 300)
        except BaseException:
            self.stop(quiet=True)
            raise

    def _start_databases(self) -> None:
        if self.settings.postgres_url or self._running("postgres"):
            self._postgres = self._server_postgres()
        else:
            self._postgres = self._record(services.start_postgres(run_dir=self.run_dir / "postgres",
                                                                  port=self.settings.postgres_port), "postgres")
        for database in ("airflow", "mlflow"):
            self._postgres.create_database(database)
        if self.settings.redis_url or self._running("redis"):
            self._redis = self._server_redis()
        else:
            self._redis = self._record(services.start_redis(run_dir=self.run_dir / "redis",
                                                            port=self.settings.redis_port), "redis")

    def _example_data(self) -> None:
        data = self.settings.data
        if self.settings.data_prefix is None and not (data / "train").is_dir():
            if generate_example_data(["--output-dir", str(data)]) != 0:
                raise StackError(f"could not write the example clients' files into {data}")

    def _running(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and alive(pid)

    def _record(self, server: Any, name: str) -> Any:
        (self.run_dir / f"{name}.pid").write_text(str(server.process.pid), encoding="utf-8")
        return server

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
        mlflow_db = self._mlflow_db()
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
        dag_files = len(list(settings.dags_folder.glob("*.py"))) if settings.dags_folder.is_dir() else 0
        # The same scaling as the standalone profile: responsive for a demo, cheap for a fleet.
        env.update(parsing_settings(dag_files, os.cpu_count() or 1))
        if settings.spark_connect:
            env["SPARK_REMOTE"] = settings.spark_remote
        env.update(
            AIRFLOW_HOME=str(settings.airflow_home),
            AIRFLOW__CORE__DAGS_FOLDER=str(settings.dags_folder),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow_db,
            # No async engine: Airflow would derive a postgresql+asyncpg one, and asyncpg is not in the
            # environment; the API routes and task calls this project uses are synchronous.
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC="",
            AIRFLOW__CELERY__BROKER_URL=self._server_redis().url,
            AIRFLOW__CELERY__RESULT_BACKEND=f"db+{airflow_db}",
            AIRFLOW__CELERY__WORKER_CONCURRENCY=str(settings.worker_concurrency),
            # Workers' tasks report to the API server's execution API (the default is localhost:8080).
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{settings.airflow_url}/execution/",
            AIRFLOW__API__HOST=HOST,
            AIRFLOW__API__PORT=str(settings.airflow_port),
            AIRFLOW__API__BASE_URL=settings.airflow_url,
            # The scheduler signs the tasks' tokens, the API server checks them: one secret for all.
            AIRFLOW__API_AUTH__JWT_SECRET=self._secret("jwt_secret"),
            AIRFLOW__API__SECRET_KEY=self._secret("api_secret_key"),
            DATA_PREFIX=str(settings.data),
            MLFLOW_TRACKING_URI=settings.mlflow_url,
            CATEGORIES_LOCK_URL=mlflow_db,
            CATEGORIES_PROJECT_DIR=str(ROOT),
        )
        env.update(settings.extra_env)
        return env

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
        result = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
                                timeout=600, check=False)
        if result.returncode != 0:
            raise StackError(f"`airflow db migrate` on {self._server_postgres().display} failed: "
                             f"{services.mask(result.stderr.strip().splitlines()[-1]) if result.stderr.strip() else ''}")

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        pid_file = self.run_dir / f"{name}.pid"
        if pid_file.exists() and alive(int(pid_file.read_text(encoding="utf-8"))):
            print(f"{name} already running (pid {pid_file.read_text(encoding='utf-8')})")
            return
        process = spawn_detached(command, self.run_dir / f"{name}.log", env, ROOT)
        pid_file.write_text(str(process.pid), encoding="utf-8")

    def _wait_for(self, url: str, name: str, timeout: float) -> None:
        if not wait_for_http(url, timeout, check=self._all_alive):
            raise StackError(f"{name} did not answer at {url} within {timeout:.0f}s: see {self.run_dir / f'{name}.log'}")

    def _all_alive(self) -> None:
        for process in self.process_names():
            pid = self.pid(process)
            if pid is not None and not alive(pid):
                raise StackError(f"{process} exited during start-up: see {self.run_dir / f'{process}.log'}")

    # -- stop --------------------------------------------------------------------------------

    def stop_order(self) -> list[tuple[str, ...]]:
        """Every process this profile starts, in the steps :meth:`stop` ends them (each step's at once):
        the workers first, Airflow's other processes, the MLflow and Spark servers, the databases last."""
        return [tuple(f"worker-{n}" for n in range(1, self.settings.workers + 1)), *STOP_STEPS,
                ("spark-connect", "mlflow"), ("redis", "postgres")]

    def process_names(self) -> list[str]:
        """Every process this profile starts, in stopping order."""
        return [name for step in self.stop_order() for name in step]

    def pid(self, name: str) -> Optional[int]:
        """The recorded pid (process-group leader) of ``name``, or None."""
        pid_file = self.run_dir / f"{name}.pid"
        return int(pid_file.read_text(encoding="utf-8")) if pid_file.exists() else None

    def stop(self, quiet: bool = False) -> list[str]:
        """Stop the process groups recorded in the run folder (workers first, databases last), nothing else;
        the names SIGTERM did not end (SIGKILL did)."""
        killed = []
        for step in self.stop_order():
            pids = {name: pid for name in step if (pid := self.pid(name)) is not None}
            # A worker finishes its running tasks on SIGTERM (warm shutdown): give it time.
            survivors = stop_groups(list(pids.values()), 60.0 if step[0].startswith("worker") else 30.0,
                                    leaders_first=LEADERS_FIRST if set(step) <= set(AIRFLOW_PROCESSES) else 0.0)
            for name, pid in pids.items():
                if not quiet:
                    print(f"{'killed' if pid in survivors else 'stopped'} {name} (pid {pid})")
                (self.run_dir / f"{name}.pid").unlink()
            killed += [name for name, pid in pids.items() if pid in survivors]
        return killed

    # -- use ---------------------------------------------------------------------------------

    def workers_of(self, dag_id: str, run_id: str) -> dict[int, str]:
        """Which Celery worker ran each attempt of the run's tasks (``{attempt: "worker-N"}``), from their logs."""
        found = {}
        for number in range(1, self.settings.workers + 1):
            log = self.run_dir / f"worker-{number}.log"
            text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            for line in text.splitlines():
                marker = f"log_path='dag_id={dag_id}/run_id={run_id}/"
                if "Executing workload in Celery" in line and marker in line:
                    attempt = int(line.split(marker, 1)[1].split("attempt=", 1)[1].split(".log", 1)[0])
                    found[attempt] = f"worker-{number}"
        return found

    def client(self) -> "AirflowClient":
        """A REST client of this stack's API server, logged in as the admin user."""
        return AirflowClient(self.settings.airflow_url, self.settings.airflow_home)

    def describe(self) -> str:
        """Where everything is (credentials masked)."""
        settings = self.settings
        return (f"MLflow UI:  {settings.mlflow_url}  (backend store {services.mask(self._mlflow_db())})\n"
                f"Airflow UI: {settings.airflow_url}  (user admin, password in "
                f"{settings.airflow_home / 'simple_auth_manager_passwords.json.generated'})\n"
                f"Executor:   CeleryExecutor, {settings.workers} workers x {settings.worker_concurrency} slots, "
                f"broker {self._server_redis().display}, "
                f"metadata {services.mask(self._server_postgres().database_url('airflow'))}\n"
                + (f"Spark:      {settings.spark_remote} (Spark Connect, shared by the prediction tasks)\n"
                   if settings.spark_connect else "")
                + f"Data:       {settings.data} (DATA_PREFIX of the tasks)\n"
                f"Logs:       {self.run_dir}/*.log")


class AirflowClient:
    """The few REST calls a user makes: log in, switch a DAG on, trigger a run, watch it."""

    def __init__(self, url: str, airflow_home: Path) -> None:
        self.url = url
        self.airflow_home = airflow_home
        self._token = ""

    def request(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        """One JSON call (logged in on first use)."""
        if not self._token and path != "/auth/token":
            self._token = self._login()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self._token}"}
                                                          if self._token else {})}
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(request, timeout=30) as response:  # nosec: loopback only
            return json.loads(response.read() or b"null")

    def _login(self) -> str:
        passwords = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        deadline = time.monotonic() + 60
        while not passwords.exists() and time.monotonic() < deadline:
            time.sleep(1)
        username, password = next(iter(json.loads(passwords.read_text(encoding="utf-8")).items()))
        return self.request("POST", "/auth/token", {"username": username, "password": password})["access_token"]

    def wait_parsed(self, dag_id: str, timeout: float = 300) -> None:
        """Wait until the DAG processor has parsed the DAG (a few seconds after start)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request("GET", f"/api/v2/dags/{dag_id}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def trigger(self, dag_id: str, timeout: float = 300) -> str:
        """Wait until the DAG is parsed, switch it on, start a run of our own; return its run id."""
        self.wait_parsed(dag_id, timeout)
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        # Our own run, not the one switching the DAG on may schedule: an old success never passes for it.
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})["dag_run_id"]

    def state(self, dag_id: str, run_id: str) -> str:
        """A run's state (queued, running, success, failed)."""
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """The run's task instances (state, try number, hostname, ...)."""
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 900) -> str:
        """Wait until the run is finished; its final state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise StackError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")


def manual_runs_only(dags_folder: Path, retry_delay: Optional[str] = None) -> None:
    """Rewrite generated DAGs for a measured or tested run: no schedule (switching a DAG on would also
    schedule a run of its own), and optionally another retry delay (a ``timedelta(...)`` expression)."""
    for dag in dags_folder.glob("*.py"):
        text = re.sub(r"schedule=.*,\n", "schedule=None,\n", dag.read_text(encoding="utf-8"))
        if retry_delay is not None:
            text = text.replace("timedelta(minutes=5)", retry_delay)
        dag.write_text(text, encoding="utf-8")


# The command-line actions, called by scripts/local_stack.py for `--profile celery`.

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
