"""Faults injected for real: the predictor killed mid-write, the MLflow server stopped mid-training,
two trainings of one client at once (SQLite store, and an MLflow server on PostgreSQL)."""
import os
import signal

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.pipeline import Pipeline

from categories_classification.records import CHAMPION_BEFORE_TAG, MODEL_FAMILY_PARAM, PROMOTION_DECISION_TAG, experiment_name
from categories_classification.tracking.artifacts import load_model
from categories_classification.tracking.registry import champion_version
from categories_classification.tracking.store import configure_tracking
from categories_classification.config import FOREST_FAMILIES, estimator_class
from categories_classification.training.trainer import train_model
from scripts.generate_example_data import ClientSpec, write_client
from tests.helpers import (DATE, FEATURES, caught_mid_run, kill_mid_run, output_folder, read_manifest, staging_leftovers,
                           start_cli, train_args)

pytestmark = pytest.mark.slow


def _predictor(env):
    return start_cli(["predictor", "--client_id=big", f"--inference_date={DATE}"], env)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["product_id", "rank"]).reset_index(drop=True)


@pytest.mark.usefixtures("tracking_store")
def test_predictor_killed_mid_write_keeps_previous_output_and_next_run_replaces_it(tmp_path):
    prefix = tmp_path / "data"
    write_client(ClientSpec("big", 5, n_train=800, n_predict=150_000, n_categories=10), prefix)
    train_model("big", FEATURES, {"n_estimators": 30}, DATE, data_prefix=str(prefix))
    env = dict(os.environ, DATA_PREFIX=str(prefix), SPARK_MASTER="local[2]")
    folder = output_folder(prefix, "big").parent
    first = _predictor(env)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    previous = _sorted(pd.read_parquet(folder / f"date={DATE}"))
    manifest = read_manifest(prefix, "big")

    victim = _predictor(env)
    # SIGKILL to the driver and its JVM and Python workers, once it writes its staging folder.
    kill_mid_run(victim, lambda: staging_leftovers(prefix, "big"), "the predictor writing its staged output")

    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(folder / f"date={DATE}")), previous)
    assert read_manifest(prefix, "big") == manifest

    retry = _predictor(env)
    assert retry.wait(timeout=600) == 0, retry.stderr.read()[-2000:]
    assert sorted(path.name for path in folder.iterdir()) == [f"date={DATE}"] and not staging_leftovers(prefix, "big")
    output = pd.read_parquet(folder / f"date={DATE}")
    assert len(output) == 5 * 150_000 and (output.groupby("product_id").size() == 5).all()
    assert read_manifest(prefix, "big")["prediction_run_id"] != manifest["prediction_run_id"]  # replaced whole


def _trainer(env, client_id="small_a", date=DATE, n_estimators=60):
    return start_cli(train_args(client_id, params=f'{{"n_estimators": {n_estimators}}}', date=date), env)


def test_mlflow_server_stopped_during_training_fails_clearly_and_a_retry_succeeds(mlflow_server_control,
                                                                                   small_data):
    server = mlflow_server_control
    # No HTTP retries: the outage must surface now, not after MLflow's two-minute backoff.
    env = dict(os.environ, DATA_PREFIX=str(small_data), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
               MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    client = MlflowClient(server.url)
    victim = _trainer(env)
    caught_mid_run(victim, lambda: _runs(client, "small_a"), "the training's MLflow run")
    server.stop(signal.SIGKILL)  # the run exists: the server dies while the run is being logged

    _, stderr = victim.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert victim.returncode == 1
    assert lines[-1].startswith(f"Error: client 'small_a': MLflow at {server.url} failed"), stderr[-2000:]
    assert "Traceback" not in stderr

    server.start()  # the server is back (same store); what the outage left must not be served
    champion = champion_version("small_a")
    if champion is not None:  # the outage hit after the alias moved: that version is whole
        assert load_model(champion)[1] == FEATURES

    retry = _trainer(env)  # what Airflow's task retry runs
    stdout, stderr = retry.communicate(timeout=300)
    assert retry.returncode == 0, stderr[-2000:]
    assert "now champion" in stdout
    champion = champion_version("small_a")
    assert champion is not None and f"version {champion.version} " in stdout
    model, features = load_model(champion)
    # Loaded against its digest: whole, and the model the retry's run recorded, trained with the CLI's params.
    assert features == FEATURES
    assert_is_the_recorded_model(model, MlflowClient(server.url).get_run(champion.run_id).data.params, n_estimators=60)


def assert_is_the_recorded_model(model, params, n_estimators):
    """``model`` (a loaded champion) is of the family its run's ``model_family`` param names (an ensemble:
    ``a+b``, each member), and each forest member has the ``n_estimators`` it was given, every tree fitted."""
    members = params[MODEL_FAMILY_PARAM].split("+")
    inner = model.estimator
    steps = [inner] if len(members) == 1 else [member.estimator for member in inner.estimators]
    assert len(steps) == len(members), (members, inner)
    for family, step in zip(members, steps):
        final = step.steps[-1][1] if isinstance(step, Pipeline) else step
        assert isinstance(final, estimator_class(family)), (family, type(final))
        if family in FOREST_FAMILIES:
            assert final.n_estimators == len(final.estimators_) == n_estimators
            assert params.get("n_estimators" if len(members) == 1 else f"{family}.n_estimators") == str(n_estimators)


@pytest.fixture(params=["sqlite", "postgresql"])
def gate_store(request):
    """The store two trainings share: the embedded SQLite store (a file lock), or an MLflow server on
    PostgreSQL whose commands lock with PostgreSQL's advisory lock (``CATEGORIES_LOCK_URL``)."""
    return request.getfixturevalue("tracking_store" if request.param == "sqlite" else "mlflow_server_on_postgres")


@pytest.mark.usefixtures("gate_store")
def test_two_trainings_of_one_client_at_once_are_both_recorded_and_the_champion_is_consistent(small_data):
    env = dict(os.environ, DATA_PREFIX=str(small_data))
    configure_tracking()  # the store exists: this test is about the gate, not store creation
    runs = [_trainer(env, date=date) for date in ("2026-11-23", "2026-11-24")]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-2000:]

    client = MlflowClient()
    versions = client.search_model_versions("name = 'small_a_model'")
    assert sorted(int(version.version) for version in versions) == [1, 2]
    trainings = _runs(client, "small_a")
    assert len(trainings) == 2 and all(run.info.status == "FINISHED" for run in trainings)
    assert {version.run_id for version in versions} == {run.info.run_id for run in trainings}
    # The gates ran one after the other: one saw no champion, the other compared with the first.
    before = sorted(run.data.tags[CHAMPION_BEFORE_TAG] for run in trainings)
    first = next(run for run in trainings if run.data.tags[CHAMPION_BEFORE_TAG] == "")
    first_version = next(int(v.version) for v in versions if v.run_id == first.info.run_id)
    assert before == ["", str(first_version)]
    champion = champion_version("small_a")
    champion_run = client.get_run(champion.run_id)
    assert champion_run.data.tags[PROMOTION_DECISION_TAG] == "promoted"


def _runs(client: MlflowClient, client_id: str) -> list:
    experiment = client.get_experiment_by_name(experiment_name(client_id))
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.stage = 'training'")
