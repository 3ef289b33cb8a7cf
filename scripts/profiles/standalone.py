"""The standalone profile: Airflow on SQLite (its API server on :8080, a scheduler with LocalExecutor, a DAG
processor, a triggerer), an MLflow server (:5000) and a shared Spark Connect service (:15002) that the
prediction tasks use instead of starting a JVM each.

Servers bind to 127.0.0.1 only; Airflow's log servers are not started (``scripts/profiles/airflow.py``).
Each process has its own process group, pid file and log in the run folder; the Airflow admin
password stays in ``$AIRFLOW_HOME`` (git-ignored). Where things are and which ports are used comes
from the environment (defaults in brackets): ``AIRFLOW_HOME`` [airflow_home/], ``AIRFLOW_PORT``
[8080], ``MLFLOW_PORT`` [5000], ``SPARK_CONNECT_PORT`` [15002], ``DAGS_FOLDER`` [dags/],
``STACK_RUN_DIR`` [.run/], ``MLFLOW_STORE_DIR`` [the project: mlflow.db and mlartifacts/], so that a
second stack (tests, benchmarks) never touches the first. The DAG processor's settings follow the
number of DAG files found at start; any ``AIRFLOW__*`` variable set by the caller wins.
"""
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from scripts import airflow_cfg, spark_connect
from scripts.airflow_api import AirflowClient
from scripts.profiles import airflow, mlflow
from scripts.profiles.airflow import AIRFLOW, PASSWORDS_FILE, ROOT, Endpoints
from scripts.supervisor import HOST, ProcessSpec, StartError, Supervisor

# What `start` runs, in the steps `stop` ends them (each step's processes at once): Airflow's
# processes (which use the others) first. "airflow" is the `airflow standalone` group that stacks
# started before this layout ran: `stop` still ends it.
STOP_ORDER = (("airflow", *airflow.STOP_STEPS[0]), *airflow.STOP_STEPS[1:], ("spark-connect", "mlflow"))
PROCESSES = tuple(name for step in STOP_ORDER for name in step)


@dataclass(frozen=True)
class Stack(Endpoints):
    """Where one local stack keeps its files and which loopback ports it listens on."""

    airflow_home: Path
    dags_folder: Path
    run_dir: Path
    store_dir: Path  # mlflow.db and mlartifacts/, shared with the CLI's default store
    airflow_port: int = 8080
    mlflow_port: int = 5000
    spark_connect_port: int = 15002

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Stack":
        """The stack the environment describes (the project's defaults for what it does not set)."""
        env = os.environ if env is None else env
        return cls(
            airflow_home=Path(env.get("AIRFLOW_HOME") or ROOT / "airflow_home").resolve(),
            dags_folder=Path(env.get("DAGS_FOLDER") or ROOT / "dags").resolve(),
            run_dir=Path(env.get("STACK_RUN_DIR") or ROOT / ".run").resolve(),
            store_dir=Path(env.get("MLFLOW_STORE_DIR") or ROOT).resolve(),
            airflow_port=int(env.get("AIRFLOW_PORT") or 8080),
            mlflow_port=int(env.get("MLFLOW_PORT") or 5000),
            spark_connect_port=int(env.get("SPARK_CONNECT_PORT") or 15002),
        )

    def supervisor(self) -> Supervisor:
        """The supervisor of the stack's run folder (which knows how to stop each process)."""
        return Supervisor(self.run_dir, STOP_ORDER, specs=specs(self))

    def pid(self, name: str) -> Optional[int]:
        """The recorded pid of one of :data:`PROCESSES` (a process group leader), if any."""
        return self.supervisor().pid(name)

    def client(self) -> AirflowClient:
        """A REST client of the stack's API server, logged in as its admin user."""
        return AirflowClient(self.airflow_url, self.airflow_home)


def airflow_env(stack: Stack, base: Optional[Mapping[str, str]] = None, extra: Mapping[str, str] = (),
                spark_connect: bool = True) -> dict[str, str]:
    """The environment of the stack's Airflow processes (and so of their tasks; ``spark_connect``: they predict on
    the stack's Spark service)."""
    return airflow.airflow_env(os.environ if base is None else base, stack.dags_folder, {
        "AIRFLOW_HOME": str(stack.airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(stack.airflow_port),
        # The task runner reports to the API server: without this it calls :8080 whatever the port.
        "AIRFLOW__API__BASE_URL": f"{stack.airflow_url}/",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{stack.airflow_url}/execution/",
        # Tasks (the CLI) log and register in the stack's MLflow server, and predict on its Spark service.
        "MLFLOW_TRACKING_URI": stack.mlflow_url,
        **({"SPARK_REMOTE": stack.spark_remote} if spark_connect else {}),
    }, extra)


def mlflow_spec(stack: Stack, base: Optional[Mapping[str, str]] = None) -> ProcessSpec:
    """The MLflow server over the project's store (SQLite), recording artifacts as local paths under ``mlartifacts/``:
    the CLI on the SQLite store (no server) reads what the DAGs logged through the server, and the other way round."""
    return mlflow.server_spec(stack.mlflow_port, f"sqlite:///{stack.store_dir / 'mlflow.db'}",
                              stack.store_dir / "mlartifacts", serve_artifacts=False, env=base)


def specs(stack: Stack, base: Optional[Mapping[str, str]] = None, extra: Mapping[str, str] = (),
          with_spark: bool = True) -> list[ProcessSpec]:
    """The profile: MLflow, Spark Connect (unless ``with_spark`` is off: trainings only), then Airflow's components
    (``base``: the caller's environment, default this process's; ``extra``: more of Airflow's)."""
    connect = spark_connect.server_spec(stack.spark_connect_port, spark_connect.MASTER, stack.run_dir / "spark-connect")
    return [mlflow_spec(stack, base), *([connect] if with_spark else []),
            *airflow.component_specs(airflow_env(stack, base, extra, with_spark), stack.airflow_port)]


def init(stack: Optional[Stack] = None, base: Optional[Mapping[str, str]] = None) -> None:
    """Prepare AIRFLOW_HOME: its airflow.cfg says what the stack runs Airflow with; migrate the database.

    A plain ``airflow ...`` with only ``AIRFLOW_HOME`` set then sees the stack's DAGs folder, no
    examples and the stack's ports. Both steps are idempotent: `start` runs them every time.
    """
    stack = stack or Stack.from_env()
    stack.airflow_home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(stack, base)
    try:
        config = airflow_cfg.write(env)
    except airflow_cfg.ConfigWriteError as exc:
        raise SystemExit(f"init: {exc}") from None
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, timeout=600)
    print(f"Airflow home: {stack.airflow_home} ({config.name}: DAGs folder {stack.dags_folder}, examples off)")


def start_mlflow(stack: Optional[Stack] = None) -> None:
    """Start only the stack's MLflow server (as `start` does) and wait until it answers; `stop` ends it."""
    stack = stack or Stack.from_env()
    _start(stack, [mlflow_spec(stack)])


def start(stack: Optional[Stack] = None, base: Optional[Mapping[str, str]] = None,
          extra: Mapping[str, str] = (), with_spark: bool = True) -> None:
    """Start MLflow, Spark Connect and Airflow's processes in the background and wait until they answer
    (``base``: the environment they inherit, default this process's; see :func:`specs`)."""
    stack = stack or Stack.from_env(base)
    init(stack, base)  # settings are read at start: airflow.cfg follows them (ports, DAGs folder)
    _start(stack, specs(stack, base, extra, with_spark))
    print(f"MLflow UI:  {stack.mlflow_url}\nAirflow UI: {stack.airflow_url}  (user admin, password in "
          f"{stack.airflow_home / PASSWORDS_FILE})\n"
          f"Spark:      {stack.spark_remote} (Spark Connect, shared by the prediction tasks)\nLogs: {stack.run_dir}/*.log")


def _start(stack: Stack, profile: list[ProcessSpec]) -> None:
    supervisor = stack.supervisor()
    try:
        supervisor.start(profile)
    except StartError as exc:
        supervisor.stop()  # what an earlier command started too: the stack is all or nothing
        raise SystemExit(f"{exc}\nsee {stack.run_dir}") from None


def stop(stack: Optional[Stack] = None) -> list[str]:
    """Stop the process groups recorded in the run dir's *.pid (and nothing else), SIGTERM first, SIGKILL
    after 30 s; the names SIGTERM did not end."""
    return (stack or Stack.from_env()).supervisor().stop()
