"""Two real runs of one client and date at once (``predict-all`` and the client's ``predictor``, through the CLI),
at three offsets: started together, the second started during the first's job, the first's swap made while the
second waits. One run at a time per client and date: the second waits (or, told not to wait long, fails on one
line naming the holder, never blaming Spark); the output is always one whole run's; nothing stays RUNNING or
staged; the next run succeeds."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from categories_classification.records import ROWS_OUT_METRIC
from categories_classification.training.trainer import train_model
from tests.helpers import (
    DATE,
    FEATURES,
    SMALL_CLIENTS,
    client_entry,
    opened_after,
    prediction_runs,
    read_manifest,
    read_output,
    run_cli,
    staging_leftovers,
    start_cli,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow
PREDICTED = {spec.client_id: spec.n_predict for spec in SMALL_CLIENTS}
CATEGORIES = {spec.client_id: spec.n_categories for spec in SMALL_CLIENTS}
WAITING = "another prediction of 2026-11-23 is running"
# The first run is caught and stopped mid-job: in process, three small clients are scored in milliseconds, too short
# a window to catch; Spark's job lasts seconds. The second run and the first test keep the default engine.
IN_SPARK = {"CATEGORIES_SCORING": "spark"}


@pytest.fixture(scope="module", name="stack")
def _stack(small_data, module_tracking_store, tmp_path_factory):
    """A private copy of the small clients, trained once (8 trees); the CLI's environment and config."""
    root = tmp_path_factory.mktemp("overlap")
    data = root / "data"
    shutil.copytree(small_data, data, ignore=shutil.ignore_patterns("products_categories", "_*"))
    for client_id in PREDICTED:
        train_model(client_id, FEATURES, {"n_estimators": 8}, DATE, data_prefix=str(data))
    config = write_config(root / "clients.yaml", {client_id: client_entry() for client_id in PREDICTED})
    env = dict(os.environ, DATA_PREFIX=str(data), SPARK_MASTER="local[1]",
               MLFLOW_TRACKING_URI=f"sqlite:///{module_tracking_store / 'mlflow.db'}")
    return data, env, config


def _predict_all(stack, stderr, **extra):
    _, env, config = stack
    return start_cli(["predict-all", f"--config={config}", f"--inference_date={DATE}"], {**env, **extra},
                     stderr=stderr)


def _predictor(stack, stderr, **extra):
    return start_cli(["predictor", "--client_id=small_a", f"--inference_date={DATE}"], {**stack[1], **extra},
                     stderr=stderr)


def _finish(process: subprocess.Popen, log: Path, bound: float) -> tuple[int, str]:
    code = process.wait(timeout=bound)
    process.stdout.close()
    return code, log.read_text(encoding="utf-8")


def _owner_record(data: Path, client_id: str) -> bool:
    return any(name.endswith(".owner") for name in staging_leftovers(data, client_id))


def _date_lock(data: Path, client_id: str) -> Path:
    return data / "_staging" / f"client_id={client_id}" / f"date={DATE}.lock"


def _one_whole_run_each(data: Path) -> None:
    """Each client's output is the whole output of its manifest's FINISHED run; no run RUNNING, nothing staged;
    the runs of one client and date never overlapped in time."""
    for client_id, products in PREDICTED.items():
        manifest = read_manifest(data, client_id)
        run = MlflowClient().get_run(manifest["prediction_run_id"])
        assert run.info.status == "FINISHED"
        output = read_output(data, client_id)
        assert len(output) == manifest["rows_written"] == run.data.metrics[ROWS_OUT_METRIC]
        assert output["product_id"].nunique() == products
        assert (output.groupby("product_id").size() == min(5, CATEGORIES[client_id])).all()
        assert not staging_leftovers(data, client_id)
        runs = prediction_runs(client_id)
        assert all(run.info.status in ("FINISHED", "FAILED") for run in runs)
        for first, second in zip(runs, runs[1:]):
            assert first.info.end_time <= second.info.start_time, "two runs of one client and date overlapped"


def _clean(stderr: str) -> None:
    for blame in ("Traceback", "Spark failed", "FileNotFoundException", "Py4J", "unexpected"):
        assert blame not in stderr, stderr


def test_started_together_the_second_waits_and_replaces_the_output_whole(stack, tmp_path):
    data = stack[0]
    logs = [tmp_path / "all.err", tmp_path / "one.err"]
    with logs[0].open("w") as first_err, logs[1].open("w") as second_err:
        started = time.monotonic()
        everyone = _predict_all(stack, first_err, CATEGORIES_PREDICTION_LOCK_WAIT="240")
        one = _predictor(stack, second_err, CATEGORIES_PREDICTION_LOCK_WAIT="240")
        results = [_finish(everyone, logs[0], 300), _finish(one, logs[1], 300)]
    # Two small runs one after the other: about a minute on 2 free cores; the bound leaves room for a busy CI.
    assert time.monotonic() - started < 300
    for code, stderr in results:
        assert code == 0, stderr
        _clean(stderr)
    _one_whole_run_each(data)
    runs = prediction_runs("small_a")
    assert read_manifest(data, "small_a")["prediction_run_id"] == runs[-1].info.run_id  # the later one, whole


def test_told_not_to_wait_a_second_run_during_the_first_s_job_fails_on_one_line(stack, tmp_path):
    data = stack[0]
    runs_before = {run.info.run_id for run in prediction_runs("small_a")}
    log_first, log_second = tmp_path / "all.err", tmp_path / "one.err"
    with log_first.open("w") as first_err, log_second.open("w") as second_err:
        first = _predict_all(stack, first_err, **IN_SPARK)
        try:
            wait_until(lambda: _owner_record(data, "small_a") or first.poll() is not None, 120, "the first run's job")
            assert first.poll() is None, log_first.read_text(encoding="utf-8")
            os.killpg(first.pid, signal.SIGSTOP)  # the first holds small_a's date, mid-job, as long as needed
            started = time.monotonic()
            code, stderr = _finish(_predictor(stack, second_err, CATEGORIES_PREDICTION_LOCK_WAIT="2"), log_second, 120)
            took = time.monotonic() - started
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        first_code, first_stderr = _finish(first, log_first, 240)
    assert code == 1 and took < 60, (code, took, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"Error: client 'small_a': {WAITING} (pid {first.pid} on host "), lines[0]
    assert lines[0].endswith("; waited 2 s for it (CATEGORIES_PREDICTION_LOCK_WAIT); nothing written, the output "
                             f"of {DATE} is left to that run"), lines[0]
    _clean(stderr)
    assert first_code == 0, first_stderr
    _clean(first_stderr)
    new_runs = [run for run in prediction_runs("small_a") if run.info.run_id not in runs_before]
    assert len(new_runs) == 1  # the loser opened no run: nothing to leave RUNNING
    assert read_manifest(data, "small_a")["prediction_run_id"] == new_runs[0].info.run_id
    _one_whole_run_each(data)


def test_the_first_swaps_while_the_second_waits_then_the_second_replaces_it_whole(stack, tmp_path):
    data = stack[0]
    log_first, log_second = tmp_path / "one.err", tmp_path / "all.err"
    with log_first.open("w") as first_err, log_second.open("w") as second_err:
        first = _predictor(stack, first_err, **IN_SPARK)
        try:
            wait_until(lambda: _owner_record(data, "small_a") or first.poll() is not None, 120, "the first run's job")
            assert first.poll() is None, log_first.read_text(encoding="utf-8")
            os.killpg(first.pid, signal.SIGSTOP)
            # The second opens small_a's lock file once it has planned (the first, stopped, opens nothing): it is
            # at the lock; the first then finishes its job and swaps.
            with opened_after(_date_lock(data, "small_a")) as opened:
                second = _predict_all(stack, second_err, CATEGORIES_PREDICTION_LOCK_WAIT="120")
                assert opened(120), "the second run never reached small_a's lock"
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        first_code, first_stderr = _finish(first, log_first, 240)
        first_manifest = read_manifest(data, "small_a")
        code, stderr = _finish(second, log_second, 240)
    assert first_code == 0 and code == 0, (first_stderr, stderr)
    _clean(first_stderr)
    _clean(stderr)
    waited = [line for line in stderr.strip().splitlines() if "waited" in line]
    assert len(waited) == 1 and f"for another prediction of {DATE} (pid {first.pid} on host " in waited[0], stderr
    assert waited[0].endswith("to end; its output is replaced"), waited[0]
    assert read_manifest(data, "small_a")["prediction_run_id"] != first_manifest["prediction_run_id"]
    _one_whole_run_each(data)

    after = run_cli(["predictor", "--client_id=small_a", f"--inference_date={DATE}"], stack[1])  # the next run
    assert after.returncode == 0 and not after.stderr.strip(), after.stderr
    _one_whole_run_each(data)
    assert isinstance(read_output(data, "small_a"), pd.DataFrame)
