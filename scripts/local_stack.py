"""The local stack without Docker: Airflow on SQLite (its API server on :8080, a scheduler with
LocalExecutor, a DAG processor, a triggerer), an MLflow server (:5000) and a shared Spark Connect
service (:15002) that the prediction tasks use instead of starting a JVM each.

    python -m scripts.local_stack init     # AIRFLOW_HOME: airflow.cfg as the stack runs Airflow, db migrated
    python -m scripts.local_stack start    # everything in the background, waits until the servers answer
    python -m scripts.local_stack stop     # stops exactly the processes `start` started (SIGTERM)
    python -m scripts.local_stack e2e      # start, run client_0's DAGs through the REST API, stop

Servers bind to 127.0.0.1 only; Airflow's log servers are not started (``scripts/airflow_processes.py``).
Each process has its own process group, pid file and log in ``.run/``; the Airflow admin password
stays in ``$AIRFLOW_HOME`` (git-ignored). Where things are and which ports are used comes from
the environment (defaults in brackets): ``AIRFLOW_HOME`` [airflow_home/], ``AIRFLOW_PORT``
[8080], ``MLFLOW_PORT`` [5000], ``SPARK_CONNECT_PORT`` [15002], ``DAGS_FOLDER`` [dags/], ``STACK_RUN_DIR`` [.run/],
``MLFLOW_STORE_DIR`` [the project: mlflow.db and mlartifacts/], so that a second stack (tests,
benchmarks) never touches the first. The DAG processor's settings follow the number of DAG
files found at start (:func:`parsing_settings`); any ``AIRFLOW__DAG_PROCESSOR__*`` variable set
by the caller wins.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

from categories_classification.paths import manifest_of
from categories_classification.records import DAG_RUN_ID_TAG
from scripts import airflow_cfg, spark_connect
from scripts.airflow_parsing import parsing_settings
from scripts.airflow_processes import AIRFLOW_PROCESSES, LEADERS_FIRST, STOP_STEPS, commands
from scripts._endpoints import Endpoints
from scripts._processes import alive, spawn_detached, stop_groups, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent  # the pipenv environment's bin/ (airflow, mlflow)
# What `start` runs, in the steps `stop` ends them (each step's processes at once): Airflow's
# processes (which use the others) first. "airflow" is the `airflow standalone` group that stacks
# started before this layout ran: `stop` still ends it.
STOP_ORDER = (("airflow", *STOP_STEPS[0]), *STOP_STEPS[1:], ("spark-connect", "mlflow"))
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

    def pid(self, name: str) -> Optional[int]:
        """The recorded pid of one of :data:`PROCESSES` (a process group leader), if any."""
        pid_file = self.run_dir / f"{name}.pid"
        return int(pid_file.read_text(encoding="utf-8")) if pid_file.exists() else None


def airflow_env(stack: Stack, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment of the stack's Airflow processes (and so of their tasks)."""
    env = dict(os.environ if base is None else base)
    dag_files = len(list(stack.dags_folder.glob("*.py"))) if stack.dags_folder.is_dir() else 0
    for key, value in parsing_settings(dag_files, os.cpu_count() or 1).items():
        env.setdefault(key, value)
    env.update(
        AIRFLOW_HOME=str(stack.airflow_home),
        AIRFLOW__CORE__DAGS_FOLDER=str(stack.dags_folder),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__API__HOST=HOST,
        AIRFLOW__API__PORT=str(stack.airflow_port),
        # The task runner reports to the API server: without this it calls :8080 whatever the port.
        AIRFLOW__API__BASE_URL=f"{stack.airflow_url}/",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{stack.airflow_url}/execution/",
        # Tasks (the CLI) log and register in the stack's MLflow server, and predict on its Spark service.
        MLFLOW_TRACKING_URI=stack.mlflow_url,
        SPARK_REMOTE=stack.spark_remote,
        CATEGORIES_PROJECT_DIR=str(ROOT),
        # This environment's executables first, for Airflow's processes and the commands their tasks run.
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
    )
    return env


def mlflow_server_command(stack: Stack) -> list[str]:
    """The MLflow server over the project's store, recording artifacts as local paths.

    Without artifact serving, a run's artifacts go where its experiment says, a folder under
    ``mlartifacts/``, so the CLI on the SQLite store (no server) reads what the DAGs logged
    through the server, and the other way round; with serving, they would be recorded as
    ``mlflow-artifacts:`` URIs that only a client of this server can resolve.
    """
    return [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(stack.mlflow_port),
            "--backend-store-uri", f"sqlite:///{stack.store_dir / 'mlflow.db'}",
            "--no-serve-artifacts", "--default-artifact-root", (stack.store_dir / "mlartifacts").as_uri(),
            "--workers", "1"]


def init(stack: Optional[Stack] = None) -> None:
    """Prepare AIRFLOW_HOME: its airflow.cfg says what the stack runs Airflow with; migrate the database.

    A plain ``airflow ...`` with only ``AIRFLOW_HOME`` set then sees the stack's DAGs folder, no
    examples and the stack's ports. Both steps are idempotent: `start` runs them every time.
    """
    stack = stack or Stack.from_env()
    stack.airflow_home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(stack)
    try:
        config = airflow_cfg.write(env)
    except airflow_cfg.ConfigWriteError as exc:
        raise SystemExit(f"init: {exc}") from None
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, timeout=600)
    print(f"Airflow home: {stack.airflow_home} ({config.name}: DAGs folder {stack.dags_folder}, examples off)")


def start_mlflow(stack: Optional[Stack] = None) -> None:
    """Start only the stack's MLflow server (as `start` does) and wait until it answers; `stop` ends it."""
    stack = stack or Stack.from_env()
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    _spawn(stack, "mlflow", mlflow_server_command(stack), dict(os.environ))
    _wait_for(stack, f"{stack.mlflow_url}/health", "MLflow", 120)


def start(stack: Optional[Stack] = None) -> None:
    """Start MLflow, Spark Connect and Airflow's processes in the background and wait until they answer."""
    stack = stack or Stack.from_env()
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    init(stack)  # settings are read at start: airflow.cfg follows them (ports, DAGs folder)
    _spawn(stack, "mlflow", mlflow_server_command(stack), dict(os.environ))
    _spawn(stack, "spark-connect", spark_connect.server_command(stack.spark_connect_port, spark_connect.MASTER),
           spark_connect.server_env(stack.run_dir / "spark-connect"))
    env = airflow_env(stack)
    # Each in a process group of its own: its SIGTERM reaches it and its children only, and its log
    # is its own (`airflow standalone` relayed theirs through pipes that broke when it died first).
    for name, command in commands(str(BIN / "airflow"), HOST, stack.airflow_port).items():
        _spawn(stack, name, command, env)
    _wait_for(stack, f"{stack.mlflow_url}/health", "MLflow", 120)
    try:
        spark_connect.wait_until_serving(stack.spark_connect_port, None, stack.run_dir / "spark-connect.log", 180)
    except spark_connect.ServiceError as exc:
        stop(stack)
        raise SystemExit(f"Spark Connect: {exc}") from None
    _wait_for(stack, f"{stack.airflow_url}/api/v2/monitor/health", "Airflow", 300)
    print(f"MLflow UI:  {stack.mlflow_url}\nAirflow UI: {stack.airflow_url}  (user admin, password in "
          f"{stack.airflow_home / 'simple_auth_manager_passwords.json.generated'})\n"
          f"Spark:      {stack.spark_remote} (Spark Connect, shared by the prediction tasks)\nLogs: {stack.run_dir}/*.log")


def stop(stack: Optional[Stack] = None, grace: float = 30.0) -> list[str]:
    """Stop the process groups recorded in the run dir's *.pid (and nothing else), SIGTERM first, SIGKILL
    after ``grace`` s; the names SIGTERM did not end."""
    stack = stack or Stack.from_env()
    killed = []
    for step in STOP_ORDER:
        pids = {name: pid for name in step if (pid := stack.pid(name)) is not None}
        airflow = set(step) <= {"airflow", *AIRFLOW_PROCESSES}
        survivors = stop_groups(list(pids.values()), grace, leaders_first=LEADERS_FIRST if airflow else 0.0)
        for name, pid in pids.items():
            print(f"killed {name} (pid {pid}) after {grace:.0f}s" if pid in survivors else f"stopped {name} (pid {pid})")
            (stack.run_dir / f"{name}.pid").unlink()
        killed += [name for name, pid in pids.items() if pid in survivors]
    return killed


def e2e(stack: Optional[Stack] = None) -> None:
    """What a user does: start, run client_0's DAGs through the REST API, check, stop.

    The prediction runs because a training promoted a new champion (:func:`prove_prediction_follows_promotion`).
    """
    stack = stack or Stack.from_env()
    start(stack)
    try:
        proof = prove_prediction_follows_promotion(stack, api_token(stack), "client_0",
                                                   Path(os.environ.get("DATA_PREFIX") or ROOT / "data"))
        _expect_shared_spark(stack, Path(proof["output"]))
        print(f"e2e ok: output in {proof['output']}, scored on the shared Spark service {stack.spark_remote}")
    finally:
        stop(stack)


def e2e_celery() -> None:
    """The same proof on the Celery profile (scripts/celery_stack.py): every task run by a Celery worker."""
    from scripts import celery_stack  # pylint: disable=import-outside-toplevel  # the standalone profile needs none of it

    celery = celery_stack.CeleryStack()
    try:
        celery_stack.start()
        settings = celery.settings
        stack = Stack(settings.airflow_home, settings.dags_folder, celery.run_dir, celery.run_dir,
                      settings.airflow_port, settings.mlflow_port, settings.spark_connect_port)
        proof = prove_prediction_follows_promotion(stack, api_token(stack), "client_0", settings.data)
        for dag_id, run_id in (("client_0-training", proof["promoted"]), ("client_0-prediction", proof["predicted"])):
            workers = celery.workers_of(dag_id, run_id)
            if not workers:
                raise SystemExit(f"e2e (celery): {dag_id} run {run_id} succeeded, but no Celery worker's log shows "
                                 f"it: see {celery.run_dir}/worker-*.log")
            print(f"{dag_id} run {run_id} ran on Celery {', '.join(sorted(set(workers.values())))}")
        _expect_shared_spark(stack, Path(proof["output"]))
        print(f"e2e (celery) ok: output in {proof['output']}, scored on {stack.spark_remote}")
    finally:
        celery.stop()


def _expect_shared_spark(stack: Stack, output: Path) -> None:
    manifest = json.loads(Path(manifest_of(str(output))).read_text(encoding="utf-8"))
    if manifest.get("spark") != stack.spark_remote:
        raise SystemExit(f"e2e: the prediction ran on {manifest.get('spark')!r}, not on the stack's shared "
                         f"Spark service {stack.spark_remote}")


# A retraining that must lose the promotion gate whatever the data: one stump instead of a forest.
WEAK_MODEL_PARAMS = {"n_estimators": 1, "max_depth": 1}
# How long a training that emitted no asset event is watched for a prediction run all the same.
# The scheduler turns an event into a run within one loop (seconds); this is several loops.
NO_RUN_GRACE_SECONDS = 30.0


def prove_prediction_follows_promotion(stack: Stack, token: str, client_id: str, data: Path,
                                       timeout: float = 900) -> dict[str, str]:
    """Issue #13, through the REST API: a promotion starts the client's prediction, a lost gate does not.

    1. The prediction DAG off, a training gives the client a champion. 2. The prediction DAG on;
    its daily run, if one is due, ends. 3. A training that promotes: its ``publish_champion``
    emits the champion asset, whose event creates an ``asset_triggered`` prediction run that
    writes with the new version (the output's manifest and MLflow's tags say so). 4. A weak
    retraining (conf ``model_params``) loses the gate: ``publish_champion`` is skipped, no event,
    no new prediction run. Raises SystemExit on any failure; returns what it saw.
    """
    training, prediction = f"{client_id}-training", f"{client_id}-prediction"
    for dag_id in (training, prediction):
        wait_for_dag(stack, dag_id, token, timeout)
    _set_paused(stack, prediction, token, True)
    first = run_dag(stack, training, token, timeout)
    print(f"{training} run {first} succeeded: {client_id} has a champion")
    _wait_until_idle(stack, training, token, timeout)  # switched on, it may owe a scheduled run
    _set_paused(stack, prediction, token, False)
    _wait_until_idle(stack, prediction, token, timeout)
    proof = _promotion_starts_prediction(stack, token, client_id, data, timeout)
    proof["weak"] = _lost_gate_starts_nothing(stack, token, client_id, proof, timeout)
    return proof


def _promotion_starts_prediction(stack: Stack, token: str, client_id: str, data: Path, timeout: float) -> dict[str, str]:
    """A promoting training's asset event creates a prediction run, which writes with the new version."""
    training, prediction = f"{client_id}-training", f"{client_id}-prediction"
    promoted = run_dag(stack, training, token, timeout)
    _expect_task(stack, training, promoted, "publish_champion", "success", token)
    champion = _champion(stack, client_id)
    if champion["tags"].get(DAG_RUN_ID_TAG) != promoted:
        raise SystemExit(f"e2e: the champion (version {champion['version']}) is not the model of {training} run {promoted}")
    predicted = _run_created_by_event(stack, token, training, promoted, timeout)
    wait_for_run(stack, prediction, predicted, token, timeout)
    run = api_request(stack, "GET", f"/api/v2/dags/{prediction}/dagRuns/{predicted}", token)
    output = data / f"products_categories/client_id={client_id}/date={run['run_after'][:10]}"
    manifest = json.loads(Path(manifest_of(str(output))).read_text(encoding="utf-8"))
    # The MLflow run that wrote the output started during this DAG run's task (one run at a time per client).
    task = api_request(stack, "GET", f"/api/v2/dags/{prediction}/dagRuns/{predicted}/taskInstances/predict_categories",
                       token)
    started = _mlflow_request(stack, "/api/2.0/mlflow/runs/get",
                              run_id=manifest["prediction_run_id"])["run"]["info"]["start_time"] / 1000
    during = (datetime.fromisoformat(task["start_date"]).timestamp() <= started
              <= datetime.fromisoformat(task["end_date"]).timestamp())
    if not during or str(manifest["model_version"]) != champion["version"]:
        raise SystemExit(f"e2e: {output} was written with version {manifest['model_version']} by MLflow run "
                         f"{manifest['prediction_run_id']}, expected version {champion['version']} by {predicted}")
    print(f"{training} run {promoted} promoted version {champion['version']}: {prediction} run {predicted} "
          f"({run['run_type']}) wrote {output} with it")
    return {"promoted": promoted, "version": champion["version"], "predicted": predicted, "output": str(output),
            "predicted_after": run["run_after"]}


def _lost_gate_starts_nothing(stack: Stack, token: str, client_id: str, proof: dict[str, str], timeout: float) -> str:
    """A weak retraining loses the gate: publish_champion skipped, no event, no new prediction run; its run id."""
    training, prediction = f"{client_id}-training", f"{client_id}-prediction"
    weak = run_dag(stack, training, token, timeout, conf={"model_params": WEAK_MODEL_PARAMS})
    _expect_task(stack, training, weak, "publish_champion", "skipped", token)
    if _champion(stack, client_id)["version"] != proof["version"]:
        raise SystemExit(f"e2e: the weak retraining {weak} moved the champion")
    if _asset_events(stack, token, training, weak):
        raise SystemExit(f"e2e: the weak retraining {weak} emitted an asset event")
    time.sleep(NO_RUN_GRACE_SECONDS)
    # Since the promotion's prediction run (an AIRFLOW_HOME that is kept holds older ones).
    query = urllib.parse.urlencode({"run_type": "asset_triggered", "run_after_gte": proof["predicted_after"]})
    triggered = [item["dag_run_id"] for item in api_request(
        stack, "GET", f"/api/v2/dags/{prediction}/dagRuns?{query}", token)["dag_runs"]]
    if triggered != [proof["predicted"]]:
        raise SystemExit(f"e2e: asset-triggered runs of {prediction}: {triggered}, expected only {proof['predicted']}")
    print(f"{training} run {weak} lost the gate: publish_champion skipped, no asset event, no prediction run "
          f"within {NO_RUN_GRACE_SECONDS:.0f}s")
    return weak


def _set_paused(stack: Stack, dag_id: str, token: str, paused: bool) -> None:
    api_request(stack, "PATCH", f"/api/v2/dags/{dag_id}", token, {"is_paused": paused})


def _wait_until_idle(stack: Stack, dag_id: str, token: str, timeout: float) -> None:
    """Wait until the run a DAG switched on owes (its latest daily time, if none ran) is created and over."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        due = api_request(stack, "GET", f"/api/v2/dags/{dag_id}", token)["next_dagrun_run_after"]
        active = api_request(stack, "GET", f"/api/v2/dags/{dag_id}/dagRuns?state=queued&state=running", token)
        if due and datetime.fromisoformat(due) > datetime.now(timezone.utc) and not active["total_entries"]:
            return
        time.sleep(2)
    raise SystemExit(f"e2e: {dag_id} still had a run due or active after {timeout:.0f}s")


def _expect_task(stack: Stack, dag_id: str, run_id: str, task_id: str, state: str, token: str) -> None:
    found = api_request(stack, "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", token)["state"]
    if found != state:
        raise SystemExit(f"e2e: {dag_id} run {run_id}: {task_id} is {found}, expected {state}")


def _asset_events(stack: Stack, token: str, dag_id: str, run_id: str) -> list[dict]:
    query = urllib.parse.urlencode({"source_dag_id": dag_id, "source_run_id": run_id})
    return api_request(stack, "GET", f"/api/v2/assets/events?{query}", token)["asset_events"]


def _run_created_by_event(stack: Stack, token: str, dag_id: str, run_id: str, timeout: float) -> str:
    """The run that the asset event of ``dag_id``'s run ``run_id`` created (the scheduler's next loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        created = [run["run_id"] for event in _asset_events(stack, token, dag_id, run_id)
                   for run in event["created_dagruns"]]
        if len(created) > 1:
            raise SystemExit(f"e2e: the asset event of {dag_id} run {run_id} created {created}, expected one run")
        if created:
            return created[0]
        time.sleep(2)
    raise SystemExit(f"e2e: no run created by an asset event of {dag_id} run {run_id} within {timeout:.0f}s")


def _mlflow_request(stack: Stack, path: str, **query: str) -> Any:
    """One GET to the stack's MLflow REST API."""
    url = f"{stack.mlflow_url}{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:  # nosec: loopback only
        return json.loads(response.read())


def _tags(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def _champion(stack: Stack, client_id: str) -> dict[str, Any]:
    """The client's champion version and the tags of the run that trained it."""
    found = _mlflow_request(stack, "/api/2.0/mlflow/registered-models/alias", name=f"{client_id}_model",
                            alias="champion")["model_version"]
    run = _mlflow_request(stack, "/api/2.0/mlflow/runs/get", run_id=found["run_id"])["run"]
    return {"version": str(found["version"]), "tags": _tags(run)}


def _spawn(stack: Stack, name: str, command: list[str], env: dict[str, str]) -> None:
    pid = stack.pid(name)
    if pid is not None and alive(pid):
        print(f"{name} already running (pid {pid})")
        return
    # The server and all its children form one group that stop() can end.
    process = spawn_detached(command, stack.run_dir / f"{name}.log", env, ROOT)
    (stack.run_dir / f"{name}.pid").write_text(str(process.pid), encoding="utf-8")


def _wait_for(stack: Stack, url: str, what: str, timeout: float) -> None:
    if wait_for_http(url, timeout):
        return
    stop(stack)
    raise SystemExit(f"{what} did not answer at {url} within {timeout:.0f}s: see {stack.run_dir}")


# A read answered 5xx is asked again, this many times, a second apart: on SQLite the API server
# can fail a read while the scheduler holds the database (e.g. as it creates an asset-triggered run).
READ_RETRIES = 3


def api_request(stack: Stack, method: str, path: str, token: Optional[str] = None,
                body: Optional[dict] = None) -> Any:
    """One JSON call to the stack's Airflow REST API; HTTP errors raise ``urllib.error.HTTPError``."""
    request = urllib.request.Request(f"{stack.airflow_url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    failed = 0
    while True:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # nosec: loopback only
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            failed += 1
            if method != "GET" or exc.code < 500 or failed > READ_RETRIES:
                raise
            time.sleep(1.0)


def api_token(stack: Stack) -> str:
    """A bearer token for the generated admin user of the stack's Airflow."""
    passwords = stack.airflow_home / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + 60
    while not passwords.exists() and time.monotonic() < deadline:
        time.sleep(1)
    users = json.loads(passwords.read_text(encoding="utf-8"))
    username, password = next(iter(users.items()))
    return api_request(stack, "POST", "/auth/token", body={"username": username, "password": password})["access_token"]


def wait_for_dag(stack: Stack, dag_id: str, token: str, timeout: float) -> None:
    """Wait until the DAG processor has registered ``dag_id`` (TimeoutError after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            api_request(stack, "GET", f"/api/v2/dags/{dag_id}", token)
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dag_id} not registered within {timeout:.0f}s")
        time.sleep(1)


def trigger_dag(stack: Stack, dag_id: str, token: str, conf: Optional[dict] = None) -> str:
    """Switch ``dag_id`` on and start a run of it now (with ``conf``, if given); return the run id."""
    _set_paused(stack, dag_id, token, False)
    # Switching the DAG on may also schedule its latest interval; an explicit run of our own is
    # the one we wait for, so that an old successful run can never pass for this one.
    body = {"logical_date": None, **({"conf": conf} if conf is not None else {})}
    return api_request(stack, "POST", f"/api/v2/dags/{dag_id}/dagRuns", token, body)["dag_run_id"]


def run_dag(stack: Stack, dag_id: str, token: str, timeout: float = 900, conf: Optional[dict] = None) -> str:
    """Wait for ``dag_id``, trigger it (with ``conf``) and wait for its run to succeed; return the run id."""
    wait_for_dag(stack, dag_id, token, timeout)  # parsed a few seconds after start
    run_id = trigger_dag(stack, dag_id, token, conf)
    wait_for_run(stack, dag_id, run_id, token, timeout)
    return run_id


def wait_for_run(stack: Stack, dag_id: str, run_id: str, token: str, timeout: float = 900) -> None:
    """Wait until a run of ``dag_id`` succeeds (SystemExit if it fails or takes over ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api_request(stack, "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", token)["state"]
        if state == "success":
            return
        if state == "failed":
            raise SystemExit(f"e2e: {dag_id} run {run_id} failed: see the task log in {stack.airflow_home / 'logs'}")
        time.sleep(3)
    raise SystemExit(f"e2e: {dag_id} run {run_id} did not finish within {timeout:.0f}s")


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("action", choices=("init", "start", "stop", "e2e"), help="what to do")
    parser.add_argument("--profile", choices=("standalone", "celery"), default=os.environ.get("PROFILE") or "standalone",
                        help="standalone (SQLite, the default) or celery (scripts/celery_stack.py); env PROFILE")
    args = parser.parse_args(argv)
    if args.profile == "celery":
        from scripts import celery_stack  # pylint: disable=import-outside-toplevel
        actions = {"init": celery_stack.start, "start": celery_stack.start, "stop": celery_stack.stop,
                   "e2e": e2e_celery}
    else:
        actions = {"init": init, "start": start, "stop": stop, "e2e": e2e}
    actions[args.action]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
