"""The predictor on a real Spark standalone cluster on loopback (1 master, 2 workers), and a worker lost mid-job.

The cluster comes from ``scripts.spark_cluster`` (the same code as ``make spark-cluster``); the
predictor runs as a user runs it, the CLI in a subprocess with ``SPARK_MASTER=spark://...``.
Its output must equal what the local-mode predictor writes for the same model version.
"""
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pandas as pd
import pytest

from categories_classification.prediction.predictor import predict_categories
from scripts.generate_example_data import ClientSpec
from scripts.spark_cluster import Cluster, start_cluster
from scripts.supervisor import free_ports
from tests.helpers import (caught_mid_run, client_entry, non_parquet_in_dataset, output_folder, read_manifest, read_output,
                           run_cli, staging_leftovers, start_cli, wait_until, write_config,
                           write_and_train)

pytestmark = pytest.mark.slow
LOCAL_DATE, CLUSTER_DATE, FLEET_DATE = "2026-11-22", "2026-11-23", "2026-11-24"
SMALL = ClientSpec("cluster_small", 111, n_train=900, n_predict=400, n_categories=12)
SMALL_TOO = ClientSpec("cluster_small_too", 113, n_train=700, n_predict=300, n_categories=5)
# Enough rows that scoring lasts seconds (one gzip file: one task, or a few if the input is split).
BIG = ClientSpec("cluster_big", 112, n_train=800, n_predict=150_000, n_categories=10)
# An executor's log lines for a task it starts and one it ends ("task 0.1 in stage 1.0").
_TASK_RUNNING = re.compile(r"Executor: Running task (\S+ in stage \S+)")
_TASK_FINISHED = re.compile(r"Executor: Finished task (\S+ in stage \S+)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """1 master + 2 workers (1 core, 1 GiB each) on free loopback ports; stopped at teardown."""
    port, webui_port = free_ports(2)
    with start_cluster(workers=2, cores=1, memory="1g", port=port, webui_port=webui_port,
                       run_dir=tmp_path_factory.mktemp("spark_cluster"), timeout=180) as running:
        yield running


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory, module_tracking_store: Path) -> Path:  # pylint: disable=unused-argument
    """A data prefix with SMALL, SMALL_TOO and BIG, each trained once (version 1, champion)."""
    return write_and_train((SMALL, SMALL_TOO, BIG), tmp_path_factory.mktemp("data"), n_estimators=20, date=LOCAL_DATE)


@pytest.fixture()
def predict_on(cluster: Cluster, prefix: Path, tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen]]:
    """Start the CLI predictor against the cluster (own process group, Spark event log in ``logs/``).

    Whatever is still running at teardown is killed (SIGKILL to its group).
    """
    started: list[subprocess.Popen] = []

    def start(client_id: str) -> subprocess.Popen:
        events = tmp_path / "logs" / "events"
        events.mkdir(parents=True)
        env = dict(os.environ, SPARK_MASTER=cluster.master_url, SPARK_LOCAL_IP="127.0.0.1", DATA_PREFIX=str(prefix),
                   SPARK_JVM_LOG=str(tmp_path / "logs" / "jvm.log"),  # the JVM's own output (quiet CLI)
                   # The event log (JSON lines) tells which executors ran which tasks, and how they ended.
                   PYSPARK_SUBMIT_ARGS=f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir={events.as_uri()} "
                                       "--conf spark.eventLog.compress=false --conf spark.eventLog.rolling.enabled=false "
                                       "pyspark-shell")
        with (tmp_path / "logs" / "stdout").open("wb") as out, (tmp_path / "logs" / "stderr").open("wb") as err:
            started.append(start_cli(["predictor", f"--client_id={client_id}", f"--inference_date={CLUSTER_DATE}"], env,
                                     stdout=out, stderr=err))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _finish(process: subprocess.Popen, logs: Path, timeout: float = 600) -> tuple[str, str]:
    """Wait for the predictor (killing its group if it overruns); return its stdout and stderr."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        pytest.fail(f"the predictor did not finish within {timeout:.0f}s: {(logs / 'stderr').read_text()[-3000:]}")
    return (logs / "stdout").read_text(), (logs / "stderr").read_text()


def _events(logs: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((logs / "events").iterdir())
            for line in path.read_text(encoding="utf-8").splitlines()]


def _assert_same_output(prefix: Path, client_id: str) -> None:
    cluster_output, local_output = read_output(prefix, client_id, CLUSTER_DATE), read_output(prefix, client_id, LOCAL_DATE)
    pd.testing.assert_frame_equal(cluster_output, local_output, check_exact=False, rtol=1e-9, atol=1e-12)
    folder = output_folder(prefix, client_id).parent
    manifests = [read_manifest(prefix, client_id, date) for date in (CLUSTER_DATE, LOCAL_DATE)]
    assert {(m["model_version"], m["training_run_id"], m["rows_written"]) for m in manifests} == {
        (1, manifests[1]["training_run_id"], len(local_output))}
    assert sorted(path.name for path in folder.iterdir()) == [f"date={LOCAL_DATE}", f"date={CLUSTER_DATE}"]
    assert not staging_leftovers(prefix, client_id) and not non_parquet_in_dataset(prefix)


def _scoring_worker(cluster: Cluster, staging: Path, before: set[str]) -> Optional[tuple[subprocess.Popen, list[int]]]:
    """The worker whose executor is running a write task right now, with its Python daemons' process groups.

    A write task is in progress while its attempt folder exists (it goes at commit). Which executor
    runs it, its own log says (``Running task`` without its ``Finished task``, in the worker's
    ``work/<app>/<executor>/stderr``): both executors have Python daemons, started by the session's
    warm-up job, so a daemon alone does not tell. The executor JVM is in its worker's process group;
    each ``pyspark.daemon``, its child, leads a process group of its own.
    """
    if not list(staging.glob("date=*/_temporary/0/_temporary/attempt_*")):
        return None
    busy = set()  # (application, executor id) running a task
    for log in cluster.run_dir.glob("work/app-*/*/stderr"):
        if log.parent.parent.name not in before:
            text = log.read_text(encoding="utf-8", errors="replace")
            if set(_TASK_RUNNING.findall(text)) - set(_TASK_FINISHED.findall(text)):
                busy.add((log.parent.parent.name, log.parent.name))
    processes = {}  # pid -> (parent pid, process group, command line)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            processes[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), (stat.parent / "cmdline").read_bytes())
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    executors = {pid: group for pid, (_, group, command) in processes.items()
                 if any(f"\0--app-id\0{app}\0".encode() in command and f"\0--executor-id\0{executor}\0".encode()
                        in command for app, executor in busy)}
    daemons: dict[int, list[int]] = {}  # worker's process group -> its busy executor's Python daemon groups
    for pid, (parent, group, command) in processes.items():
        if b"pyspark.daemon" in command and pid == group and parent in executors:
            daemons.setdefault(executors[parent], []).append(group)
    return next(((worker, daemons[worker.pid]) for worker in cluster.workers if worker.pid in daemons), None)


def _once_completed(cluster: Cluster, before: set[str]) -> dict[str, Any]:
    """The master's state once it lists an application not in ``before`` as completed.

    The master moves an application there on its own time, after the driver's JVM is gone
    (which can be a moment after the CLI's own exit).
    """
    def completed() -> Optional[dict[str, Any]]:
        state = cluster.state()
        return state if any(app["id"] not in before for app in state["completedapps"]) else None
    return wait_until(completed, timeout=60, what="the predictor's application among the master's completed ones")


def test_cluster_output_equals_local_mode_output(cluster, prefix, spark, predict_on, tmp_path):
    predict_categories(SMALL.client_id, LOCAL_DATE, data_prefix=str(prefix), spark=spark)
    before = {app["id"] for app in cluster.state()["completedapps"]}

    run = predict_on(SMALL.client_id)
    stdout, stderr = _finish(run, tmp_path / "logs")

    assert run.returncode == 0, stderr[-3000:]
    assert f"wrote {5 * SMALL.n_predict} rows" in stdout
    # It really ran on the cluster (not in a local fallback), with an executor on each worker.
    apps = [app for app in _once_completed(cluster, before)["completedapps"] if app["id"] not in before]
    assert [(app["name"], app["state"]) for app in apps] == [("categories_classification", "FINISHED")]
    executors = [event for event in _events(tmp_path / "logs") if event["Event"] == "SparkListenerExecutorAdded"]
    assert len(executors) == 2
    _assert_same_output(prefix, SMALL.client_id)


def test_fleet_job_on_the_cluster_writes_what_each_client_alone_writes_locally(cluster, prefix, spark, tmp_path):
    clients = (SMALL, SMALL_TOO)
    for spec in clients:
        predict_categories(spec.client_id, LOCAL_DATE, data_prefix=str(prefix), spark=spark)
    config = write_config(tmp_path / "clients.yaml", {spec.client_id: client_entry() for spec in clients})
    env = dict(os.environ, SPARK_MASTER=cluster.master_url, SPARK_LOCAL_IP="127.0.0.1", DATA_PREFIX=str(prefix),
               CONFIG_FILE=str(config), SPARK_JVM_LOG=str(tmp_path / "jvm.log"))
    result = run_cli(["predict-all", f"--inference_date={FLEET_DATE}"], env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for spec in clients:
        assert read_output(prefix, spec.client_id, FLEET_DATE).equals(read_output(prefix, spec.client_id, LOCAL_DATE))


def test_worker_lost_mid_scoring_is_retried_on_the_other_worker(cluster, prefix, spark, predict_on, tmp_path):
    # Runs last in this module: it leaves the cluster with one worker.
    predict_categories(BIG.client_id, LOCAL_DATE, data_prefix=str(prefix), spark=spark)
    state = cluster.state()
    assert state["aliveworkers"] == 2
    before = {app["id"] for app in state["completedapps"]}
    staging = prefix / "_staging" / f"client_id={BIG.client_id}"

    run = predict_on(BIG.client_id)
    # Not a fixed sleep: wait until a worker's executor is scoring, however many tasks the job has.
    scoring = caught_mid_run(run, lambda: _scoring_worker(cluster, staging, before), "a worker's executor scoring")
    # A lost machine: the Worker daemon, its executor JVM and their Python workers, all at once.
    for group in (scoring[0].pid, *scoring[1]):
        os.killpg(group, signal.SIGKILL)
    stdout, stderr = _finish(run, tmp_path / "logs")

    # Spark retries the lost task on the surviving worker: the job succeeds, and the output is
    # exactly the local-mode one. The driver's JVM logs the loss in one line (its log file), and
    # the CLI's stderr has nothing of it.
    assert run.returncode == 0, stderr[-3000:]
    assert f"wrote {5 * BIG.n_predict} rows" in stdout
    assert "Lost executor" in (tmp_path / "logs" / "jvm.log").read_text() and "Lost executor" not in stderr
    _assert_same_output(prefix, BIG.client_id)
    ends = [event for event in _events(tmp_path / "logs") if event["Event"] == "SparkListenerTaskEnd"]
    lost = [event for event in ends if event["Task End Reason"]["Reason"] == "ExecutorLostFailure"]
    assert lost, "the kill hit no running task"
    state = _once_completed(cluster, before)
    assert state["aliveworkers"] == 1
    assert sorted(worker["state"] for worker in state["workers"]) == ["ALIVE", "DEAD"]
    assert [app["state"] for app in state["completedapps"] if app["id"] not in before] == ["FINISHED"]
