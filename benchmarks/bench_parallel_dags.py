"""Issue #14: every example client's training DAG triggered at once, on the standalone profile (LocalExecutor,
SQLite) and on the Celery profile (two Celery workers, PostgreSQL, Redis), side by side."""
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import yaml
from mlflow.tracking import MlflowClient

from benchmarks._common import PROJECT_ROOT, BenchContext, Row, Section, ratio, seconds, write_config
from scripts.airflow_api import AirflowClient
from scripts.generate_dags import main as generate_dags
from scripts.generate_example_data import example_specs, write_client
from scripts.profiles import standalone
from scripts.profiles.celery import CeleryStack, Settings, manual_runs_only
from scripts.supervisor import free_ports, wait_for


def run(ctx: BenchContext) -> Section:
    """Start each profile on fresh stores, trigger all training DAGs at once, wait, check the registry."""
    n_clients = 3 if ctx.quick else 10
    section = Section(
        "Parallel DAG runs: standalone vs Celery profile",
        f"The {n_clients} example clients' training DAGs triggered at once all succeed on both profiles, each "
        "client with one registered version, promoted and champion; the Celery profile finishes them faster.",
    )
    data = ctx.scratch("data")
    specs = example_specs(n_clients, train_rows=2000 if ctx.quick else None, predict_rows=100 if ctx.quick else None)
    for spec in specs:
        write_client(spec, data)
    committed = yaml.safe_load((PROJECT_ROOT / "conf" / "clients_config.yaml").read_text(encoding="utf-8"))
    config = write_config(ctx.workdir / "clients.yaml", {
        spec.client_id: ({"features": committed[spec.client_id]["features"], "params": {"n_estimators": 20}}
                         if ctx.quick else committed[spec.client_id]) for spec in specs})
    dags = ctx.scratch("dags")
    if generate_dags(["--config", str(config), "--output-dir", str(dags)]) != 0:
        raise RuntimeError("DAG generation failed")
    manual_runs_only(dags)
    dag_ids = [f"{spec.client_id}-training" for spec in specs]
    env = {"DATA_PREFIX": str(data), "SPARK_MASTER": "local[2]"}

    standalone = _measure(lambda root: _Standalone(root, dags, env), dag_ids, ctx)
    celery = _measure(lambda root: _Celery(root, dags, env), dag_ids, ctx)
    full = not ctx.quick
    section.rows += [
        Row(f"{n_clients} training DAGs at once, standalone profile (LocalExecutor, SQLite)",
            seconds(standalone["wall"]), target="all succeed, registry consistent", met=True if full else None),
        Row(f"{n_clients} training DAGs at once, Celery profile (2 workers x 2 slots, PostgreSQL, Redis)",
            seconds(celery["wall"]), f"{seconds(standalone['wall'])} standalone",
            ratio(standalone["wall"], celery["wall"]) + " speed-up", "faster than standalone",
            celery["wall"] < standalone["wall"] if full else None),
        Row("task-seconds per wall second (effective parallelism)",
            f"{celery['task_seconds'] / celery['wall']:.2f} (Celery)",
            f"{standalone['task_seconds'] / standalone['wall']:.2f} (standalone)"),
        Row("median task duration", seconds(celery["median_task"]) + " (Celery)",
            seconds(standalone["median_task"]) + " (standalone)"),
        Row("start-up until the API answers and the DAGs are parsed", seconds(celery["startup"]) + " (Celery)",
            seconds(standalone["startup"]) + " (standalone)"),
    ]
    section.notes += [
        f"Wall time: from the first trigger (every DAG already parsed; all triggered back to back through the "
        f"REST API) to the last run's success; {os.cpu_count()} "
        "cores, shared with whatever else runs on the machine. Each profile ran once, standalone first.",
        "Both profiles: every client has exactly one version, aliased champion, its run tagged `promoted` "
        "(checked after the runs; a mismatch fails the section).",
        "The Celery profile's tasks take the promotion lock in PostgreSQL (`CATEGORIES_LOCK_URL`); the "
        "standalone profile's tasks use an MLflow server on SQLite (no lock needed: one run per client).",
    ]
    return section


def _measure(start: Callable[[Path], "_Profile"], dag_ids: list[str], ctx: BenchContext) -> dict[str, float]:
    # PostgreSQL runs as its own user: its folder must be reachable (the bench's scratch space is private).
    root = Path(tempfile.mkdtemp(prefix="categories_bench_profile_"))
    root.chmod(0o755)
    profile = start(root)
    try:
        started = time.perf_counter()
        profile.start()
        client = profile.client()
        for dag_id in dag_ids:
            client.wait_for_dag(dag_id)
        startup = time.perf_counter() - started
        began = time.perf_counter()
        # Back to back (a fraction of a second for all): concurrent API writes would test SQLite's locking.
        runs = {dag_id: client.trigger(dag_id) for dag_id in dag_ids}
        states = _wait_all(client, runs, timeout=600 if ctx.quick else 1800)
        wall = time.perf_counter() - began
        failed = {dag_id: state for dag_id, state in states.items() if state != "success"}
        if failed:
            raise RuntimeError(f"{type(profile).__name__[1:]} profile: runs not successful: {failed}")
        durations = [task["duration"] for dag_id, run_id in runs.items()
                     for task in client.task_instances(dag_id, run_id) if task["task_id"] == "train_model"]
        _check_registry(profile.mlflow_url, [dag_id.rsplit("-", 1)[0] for dag_id in dag_ids])
        return {"wall": wall, "startup": startup, "task_seconds": sum(durations),
                "median_task": statistics.median(durations)}
    finally:
        profile.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_all(client: AirflowClient, runs: dict[str, str], timeout: float) -> dict[str, str]:
    states: dict[str, str] = {}

    def all_finished() -> bool:
        for dag_id, run_id in runs.items():
            if dag_id not in states and (state := client.state(dag_id, run_id)) in ("success", "failed"):
                states[dag_id] = state
        return len(states) == len(runs)

    wait_for(all_finished, timeout)
    return {dag_id: states.get(dag_id, "unfinished") for dag_id in runs}


def _check_registry(mlflow_url: str, clients: list[str]) -> None:
    client = MlflowClient(mlflow_url)
    for client_id in clients:
        name = f"{client_id}_model"
        versions = client.search_model_versions(f"name = '{name}'")
        champion = client.get_model_version_by_alias(name, "champion")
        decision = client.get_run(champion.run_id).data.tags.get("promotion_decision")
        if [int(v.version) for v in versions] != [1] or champion.version != "1" or decision != "promoted":
            raise RuntimeError(f"{name}: versions {[v.version for v in versions]}, champion {champion.version}, "
                               f"decision {decision!r}: expected one promoted champion version 1")


class _Profile:
    """A local stack the benchmark starts on free ports in ``root`` and stops."""

    mlflow_url = ""

    def start(self) -> None:
        """Start and wait until it answers."""

    def stop(self) -> None:
        """Stop what ``start`` started."""

    def client(self) -> AirflowClient:
        """The Airflow REST client."""
        raise NotImplementedError


class _Celery(_Profile):
    def __init__(self, root: Path, dags: Path, env: dict[str, str]) -> None:
        ports = free_ports(4)
        self.stack = CeleryStack(Settings(run_dir=root, dags_folder=dags, airflow_port=ports[0], mlflow_port=ports[1],
                                          postgres_port=ports[2], redis_port=ports[3], postgres_url="", redis_url="",
                                          data_prefix=Path(env["DATA_PREFIX"]), spark_connect=False,  # training only
                                          extra_env=env))
        self.mlflow_url = self.stack.settings.mlflow_url

    def start(self) -> None:
        self.stack.start()

    def stop(self) -> None:
        self.stack.stop(quiet=True)

    def client(self) -> AirflowClient:
        return self.stack.client()


class _Standalone(_Profile):
    """The standalone profile (`make start-airflow`: LocalExecutor, an MLflow server on SQLite) in ``root``, without
    its Spark service (training only, as the Celery profile here)."""

    def __init__(self, root: Path, dags: Path, env: dict[str, str]) -> None:
        airflow_port, mlflow_port, spark_connect_port = free_ports(3)
        self.stack = standalone.Stack(airflow_home=root / "airflow_home", dags_folder=dags, run_dir=root / "run",
                                      store_dir=root, airflow_port=airflow_port, mlflow_port=mlflow_port,
                                      spark_connect_port=spark_connect_port)
        self.mlflow_url = self.stack.mlflow_url
        # The tasks' environment: no AIRFLOW__* of the caller's, no lock URL (one run per client: no lock needed).
        self.base = {key: value for key, value in os.environ.items()
                     if not key.startswith("AIRFLOW__") and key != "CATEGORIES_LOCK_URL"}
        self.base.update(env, AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10")

    def start(self) -> None:
        standalone.start(self.stack, self.base, with_spark=False)

    def stop(self) -> None:
        standalone.stop(self.stack)

    def client(self) -> AirflowClient:
        return self.stack.client()
