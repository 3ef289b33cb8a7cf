"""What both Airflow profiles share: the components, their stop steps, their environment, the parsing settings.

Airflow's scheduler (for LocalExecutor), triggerer and Celery workers start a log server for an
API server on another machine, on all interfaces (8793, 8794) whatever the settings say:
``airflow/utils/serve_logs/core.py`` binds ``host=""``, and ``airflow standalone`` has no way to
skip it. A stack's processes share one machine and one ``logs/`` folder, which the API server
reads itself, so both profiles run the components with ``--skip-serve-logs``: the API server, on
127.0.0.1, is Airflow's only listening socket.
"""
import os
import sys
from pathlib import Path
from typing import Mapping

from scripts.supervisor import HOST, ProcessSpec, http_ok

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the pipenv environment's bin/ (airflow, mlflow)
AIRFLOW = str(BIN / "airflow")
# Stopped in two steps, each step's processes at once: the scheduler (its executor's workers run
# the tasks), the DAG processor and the triggerer; then the API server (a stopping task still
# reports its state to it).
STOP_STEPS = (("scheduler", "dag-processor", "triggerer"), ("api-server",))
AIRFLOW_PROCESSES = tuple(name for step in STOP_STEPS for name in step)
# Seconds SIGTERM goes to each component alone before its whole process group gets it: a component
# stops its children itself (the triggerer its trigger runner, in about a second; it waited 10 s
# when the runner had the group's SIGTERM too), and the scheduler, which would wait for its
# executor's running tasks, hands them the group's SIGTERM after this.
LEADERS_FIRST = 5.0
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


class Endpoints:
    """URLs of a stack (a dataclass with ``airflow_port``, ``mlflow_port`` and ``spark_connect_port``)."""

    airflow_port: int
    mlflow_port: int
    spark_connect_port: int

    @property
    def airflow_url(self) -> str:
        """The Airflow API server: UI, REST API, and the execution API the tasks call."""
        return f"http://{HOST}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        """The MLflow server."""
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def spark_remote(self) -> str:
        """The Spark Connect service the prediction tasks share instead of a JVM each."""
        return f"sc://{HOST}:{self.spark_connect_port}"


def parsing_settings(dag_files: int, cores: int) -> dict[str, str]:
    """The DAG processor's settings for a folder of ``dag_files`` files on ``cores`` cores.

    Every parse is a fresh process that also writes to the metadata database, so the cost of
    re-parsing grows with the folder; what stays cheap whatever its size is noticing change:
    a changed file (newer mtime than its last parse) goes to the front of the queue, a new file
    is found at the next folder listing. Hence: list often, re-parse unchanged files rarely.
    """
    cores = max(1, cores)
    return {
        # One parse process per core: the first pass over a fleet is parse-bound.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": str(cores),
        # New files: a listing compares the folder with the database, cheap but not free; a
        # demo sees a new file within seconds, a fleet within a minute.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(min(60, max(10, dag_files // 20))),
        # Unchanged files: generated DAGs depend on nothing but their file, whose changes the
        # mtime order catches; re-parse the whole folder in about 3 s per file and core-second
        # budget (30 s for a demo, about an hour for 2,000 files on 2 cores).
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(max(30, 3 * dag_files // cores)),
        # What makes a changed file jump the queue (Airflow's default, relied upon above).
        "AIRFLOW__DAG_PROCESSOR__FILE_PARSING_SORT_MODE": "modified_time",
        # The stats table lists every file: once per re-parse cycle is enough for a fleet.
        "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": str(max(30, 3 * dag_files // cores)),
        # Airflow's modules are imported once in the processor, not by every parse process.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PRE_IMPORT_MODULES": "True",
    }


def airflow_env(base: Mapping[str, str], dags_folder: Path, profile: Mapping[str, str],
                extra: Mapping[str, str] = ()) -> dict[str, str]:
    """The environment of a profile's Airflow processes (and so of their tasks); may hold credentials.

    From ``base`` (the caller's environment): the DAG processor's settings for the folder unless
    the caller set them (any ``AIRFLOW__*`` the caller sets wins over the profile's tuning), then
    ``profile``'s settings (where the stack is: home, folders, executor, ports, databases), then
    ``extra`` (tests, benchmarks).
    """
    env = dict(base)
    dag_files = len(list(dags_folder.glob("*.py"))) if dags_folder.is_dir() else 0
    for key, value in parsing_settings(dag_files, os.cpu_count() or 1).items():
        env.setdefault(key, value)
    env.update(profile, AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               CATEGORIES_PROJECT_DIR=str(ROOT),
               # This environment's executables first, for Airflow's processes and the commands their tasks run.
               PATH=os.pathsep.join([str(BIN), base.get("PATH", "")]))
    env.update(extra)
    return env


def component_specs(env: Mapping[str, str], port: int, health_timeout: float = 300.0) -> list[ProcessSpec]:
    """Airflow's components in starting order (the API server on 127.0.0.1:``port`` first: the others' tasks
    report to it), each on its own (its SIGTERM reaches it and its children only, its log is its own)."""
    commands = {
        "api-server": [AIRFLOW, "api-server", "--host", HOST, "--port", str(port)],
        "scheduler": [AIRFLOW, "scheduler", "--skip-serve-logs"],
        "dag-processor": [AIRFLOW, "dag-processor"],
        "triggerer": [AIRFLOW, "triggerer", "--skip-serve-logs"],
    }
    health = f"http://{HOST}:{port}/api/v2/monitor/health"
    return [ProcessSpec(name, command, env, leaders_first=LEADERS_FIRST,
                        **({"health": lambda: http_ok(health), "timeout": health_timeout} if name == "api-server" else {}))
            for name, command in commands.items()]
