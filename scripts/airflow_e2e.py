"""The proof of the Airflow flow, one function for both profiles: what `make e2e-airflow [PROFILE=celery]` and the
e2e tests run.

Issue #13, through the REST API: a promotion starts the client's prediction, a lost gate does not,
and the prediction scores on the stack's shared Spark service. On the Celery profile, a Celery
worker's log shows each run.
"""
import contextlib
import json
import os
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from categories_classification.paths import manifest_of
from categories_classification.records import DAG_RUN_ID_TAG
from scripts.airflow_api import AirflowClient, RunError
from scripts.profiles import celery, standalone
from scripts.profiles.airflow import ROOT, Endpoints
from scripts.supervisor import wait_for

# A retraining that must lose the promotion gate whatever the data: one stump instead of a forest.
WEAK_MODEL_PARAMS = {"n_estimators": 1, "max_depth": 1}
# How long a training that emitted no asset event is watched for a prediction run all the same.
# The scheduler turns an event into a run within one loop (seconds); this is several loops.
NO_RUN_GRACE_SECONDS = 30.0


class ProofError(SystemExit):
    """The flow did not do what it must (one line: what was expected, what was seen)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"e2e: {message}")


@contextlib.contextmanager
def standalone_stack(env: Optional[Mapping[str, str]] = None) -> Iterator[standalone.Stack]:
    """The standalone profile started in ``env`` (default: this process's); always stopped after."""
    stack = standalone.Stack.from_env(env)
    try:
        standalone.start(stack, env)
        yield stack
    finally:
        standalone.stop(stack)


def e2e(env: Optional[Mapping[str, str]] = None, client_id: str = "client_0") -> dict[str, str]:
    """`make e2e-airflow`: start the standalone profile, prove the flow on ``client_id``, stop."""
    env = os.environ if env is None else env
    with standalone_stack(env) as stack:
        proof = prove(stack, stack.client(), client_id, Path(env.get("DATA_PREFIX") or ROOT / "data"))
    print(f"e2e ok: output in {proof['output']}, scored on the shared Spark service {stack.spark_remote}")
    return proof


def e2e_celery(client_id: str = "client_0") -> dict[str, str]:
    """`make e2e-airflow PROFILE=celery`: the same proof with every task run by a Celery worker."""
    stack = celery.CeleryStack()
    try:
        stack.start()
        proof = prove_on_celery(stack, client_id)
        print(f"e2e (celery) ok: output in {proof['output']}, scored on {stack.settings.spark_remote}")
        return proof
    finally:
        stack.stop()


def prove_on_celery(stack: celery.CeleryStack, client_id: str) -> dict[str, str]:
    """:func:`prove` on a running Celery profile, then a Celery worker's log shows the training and the prediction."""
    proof = prove(stack.settings, stack.client(), client_id, stack.settings.data)
    for dag_id, run_id in ((f"{client_id}-training", proof["promoted"]), (f"{client_id}-prediction", proof["predicted"])):
        workers = stack.workers_of(dag_id, run_id)
        if not workers:
            raise ProofError(f"(celery) {dag_id} run {run_id} succeeded, but no Celery worker's log shows "
                             f"it: see {stack.run_dir}/worker-*.log")
        print(f"{dag_id} run {run_id} ran on Celery {', '.join(sorted(set(workers.values())))}")
    return proof


def prove(stack: Endpoints, client: AirflowClient, client_id: str, data: Path, timeout: float = 900) -> dict[str, str]:
    """The whole proof on a running stack: :func:`prove_prediction_follows_promotion`, then the prediction ran on
    the stack's Spark service and wrote parquet files. Raises :class:`ProofError`; returns what it saw."""
    try:
        proof = prove_prediction_follows_promotion(stack, client, client_id, data, timeout)
    except RunError as exc:
        raise ProofError(str(exc)) from None
    output = Path(proof["output"])
    manifest = json.loads(Path(manifest_of(str(output))).read_text(encoding="utf-8"))
    if manifest.get("spark") != stack.spark_remote:
        raise ProofError(f"the prediction ran on {manifest.get('spark')!r}, not on the stack's shared "
                         f"Spark service {stack.spark_remote}")
    if not list(output.glob("*.parquet")):
        raise ProofError(f"{output} holds no parquet file")
    return proof


def prove_prediction_follows_promotion(stack: Endpoints, client: AirflowClient, client_id: str, data: Path,
                                       timeout: float = 900) -> dict[str, str]:
    """Issue #13, through the REST API: a promotion starts the client's prediction, a lost gate does not.

    1. The prediction DAG off, a training gives the client a champion. 2. The prediction DAG on;
    its daily run, if one is due, ends. 3. A training that promotes: its ``publish_champion``
    emits the champion asset, whose event creates an ``asset_triggered`` prediction run that
    writes with the new version (the output's manifest and MLflow's tags say so). 4. A weak
    retraining (conf ``model_params``) loses the gate: ``publish_champion`` is skipped, no event,
    no new prediction run. Raises :class:`ProofError` on any failure; returns what it saw.
    """
    training, prediction = f"{client_id}-training", f"{client_id}-prediction"
    for dag_id in (training, prediction):
        client.wait_for_dag(dag_id, timeout)
    client.set_paused(prediction, True)
    first = client.run_dag(training, timeout)
    print(f"{training} run {first} succeeded: {client_id} has a champion")
    _wait_until_idle(client, training, timeout)  # switched on, it may owe a scheduled run
    client.set_paused(prediction, False)
    _wait_until_idle(client, prediction, timeout)
    proof = _promotion_starts_prediction(stack, client, client_id, data, timeout)
    proof["weak"] = _lost_gate_starts_nothing(stack, client, client_id, proof, timeout)
    return proof


def _promotion_starts_prediction(stack: Endpoints, client: AirflowClient, client_id: str, data: Path,
                                 timeout: float) -> dict[str, str]:
    """A promoting training's asset event creates a prediction run, which writes with the new version."""
    training, prediction = f"{client_id}-training", f"{client_id}-prediction"
    promoted = client.run_dag(training, timeout)
    _expect_task(client, training, promoted, "publish_champion", "success")
    champion = _champion(stack, client_id)
    if champion["tags"].get(DAG_RUN_ID_TAG) != promoted:
        raise ProofError(f"the champion (version {champion['version']}) is not the model of {training} run {promoted}")
    predicted = _run_created_by_event(client, training, promoted, timeout)
    if not predicted.startswith("asset_triggered__"):
        raise ProofError(f"{prediction} run {predicted} is not an asset-triggered run")
    client.expect_success(prediction, predicted, timeout)
    run = client.run(prediction, predicted)
    output = data / f"products_categories/client_id={client_id}/date={run['run_after'][:10]}"
    manifest = json.loads(Path(manifest_of(str(output))).read_text(encoding="utf-8"))
    # The MLflow run that wrote the output started during this DAG run's task (one run at a time per client).
    task = client.task_instance(prediction, predicted, "predict_categories")
    started = _mlflow_request(stack, "/api/2.0/mlflow/runs/get",
                              run_id=manifest["prediction_run_id"])["run"]["info"]["start_time"] / 1000
    during = (datetime.fromisoformat(task["start_date"]).timestamp() <= started
              <= datetime.fromisoformat(task["end_date"]).timestamp())
    if not during or str(manifest["model_version"]) != champion["version"]:
        raise ProofError(f"{output} was written with version {manifest['model_version']} by MLflow run "
                         f"{manifest['prediction_run_id']}, expected version {champion['version']} by {predicted}")
    if int(champion["version"]) < 2:  # after the first training's (and a scheduled one's, if the DAG owed one)
        raise ProofError(f"the promoting training registered version {champion['version']}, expected 2 or more")
    print(f"{training} run {promoted} promoted version {champion['version']}: {prediction} run {predicted} "
          f"({run['run_type']}) wrote {output} with it")
    return {"promoted": promoted, "version": champion["version"], "predicted": predicted, "output": str(output),
            "predicted_after": run["run_after"]}


def _lost_gate_starts_nothing(stack: Endpoints, client: AirflowClient, client_id: str, proof: dict[str, str],
                              timeout: float) -> str:
    """A weak retraining loses the gate: publish_champion skipped, no event, no new prediction run; its run id."""
    training, prediction = f"{client_id}-training", f"{client_id}-prediction"
    weak = client.run_dag(training, timeout, conf={"model_params": WEAK_MODEL_PARAMS})
    _expect_task(client, training, weak, "publish_champion", "skipped")
    if _champion(stack, client_id)["version"] != proof["version"]:
        raise ProofError(f"the weak retraining {weak} moved the champion")
    if _asset_events(client, training, weak):
        raise ProofError(f"the weak retraining {weak} emitted an asset event")
    time.sleep(NO_RUN_GRACE_SECONDS)
    # Since the promotion's prediction run (an AIRFLOW_HOME that is kept holds older ones).
    query = urllib.parse.urlencode({"run_type": "asset_triggered", "run_after_gte": proof["predicted_after"]})
    triggered = [item["dag_run_id"] for item in client.request(
        "GET", f"/api/v2/dags/{prediction}/dagRuns?{query}")["dag_runs"]]
    if triggered != [proof["predicted"]]:
        raise ProofError(f"asset-triggered runs of {prediction}: {triggered}, expected only {proof['predicted']}")
    print(f"{training} run {weak} lost the gate: publish_champion skipped, no asset event, no prediction run "
          f"within {NO_RUN_GRACE_SECONDS:.0f}s")
    return weak


def _wait_until_idle(client: AirflowClient, dag_id: str, timeout: float) -> None:
    """Wait until the run a DAG switched on owes (its latest daily time, if none ran) is created and over."""
    def idle() -> bool:
        due = client.request("GET", f"/api/v2/dags/{dag_id}")["next_dagrun_run_after"]
        active = client.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?state=queued&state=running")
        return bool(due) and datetime.fromisoformat(due) > datetime.now(timezone.utc) and not active["total_entries"]

    if not wait_for(idle, timeout, interval=2.0):
        raise ProofError(f"{dag_id} still had a run due or active after {timeout:.0f}s")


def _expect_task(client: AirflowClient, dag_id: str, run_id: str, task_id: str, state: str) -> None:
    found = client.task_instance(dag_id, run_id, task_id)["state"]
    if found != state:
        raise ProofError(f"{dag_id} run {run_id}: {task_id} is {found}, expected {state}")


def _asset_events(client: AirflowClient, dag_id: str, run_id: str) -> list[dict]:
    query = urllib.parse.urlencode({"source_dag_id": dag_id, "source_run_id": run_id})
    return client.request("GET", f"/api/v2/assets/events?{query}")["asset_events"]


def _run_created_by_event(client: AirflowClient, dag_id: str, run_id: str, timeout: float) -> str:
    """The run that the asset event of ``dag_id``'s run ``run_id`` created (the scheduler's next loop)."""
    def created() -> list[str]:
        runs = [run["run_id"] for event in _asset_events(client, dag_id, run_id) for run in event["created_dagruns"]]
        if len(runs) > 1:
            raise ProofError(f"the asset event of {dag_id} run {run_id} created {runs}, expected one run")
        return runs

    found = wait_for(created, timeout, interval=2.0)
    if not found:
        raise ProofError(f"no run created by an asset event of {dag_id} run {run_id} within {timeout:.0f}s")
    return found[0]


def _mlflow_request(stack: Endpoints, path: str, **query: str) -> Any:
    """One GET to the stack's MLflow REST API."""
    url = f"{stack.mlflow_url}{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:  # nosec: loopback only
        return json.loads(response.read())


def _champion(stack: Endpoints, client_id: str) -> dict[str, Any]:
    """The client's champion version and the tags of the run that trained it."""
    found = _mlflow_request(stack, "/api/2.0/mlflow/registered-models/alias", name=f"{client_id}_model",
                            alias="champion")["model_version"]
    run = _mlflow_request(stack, "/api/2.0/mlflow/runs/get", run_id=found["run_id"])["run"]
    return {"version": str(found["version"]), "tags": {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}}
