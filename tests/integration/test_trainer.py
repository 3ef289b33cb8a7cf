"""train_model against a real SQLite MLflow store."""
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import skops.io
import pytest
from mlflow.tracking import MlflowClient

from categories_classification import drift
from categories_classification.errors import InputDataError
from categories_classification.records import (
    CHALLENGER_SCORE,
    CLIENT_ID_TAG,
    COMPANION_DIGEST_SUFFIX,
    FAILURE_REASON_TAG,
    MODEL_FAMILY_PARAM,
    MODEL_SIZE_METRIC,
    PROMOTION_DECISION_TAG,
    STAGE_TAG,
    TEST_TOP_5_METRIC,
    TRAINING_DATE_TAG,
    experiment_name,
    model_name,
)
from categories_classification.tracking.artifacts import download_model_file, load_model
from categories_classification.tracking.registry import ModelRef, resolve_model
from categories_classification.prediction.scoring import predict_proba
from categories_classification.serialization import DIGEST_TAG, SKOPS_TRUSTED_TYPES
from categories_classification.training.fitting import FAMILY_ORDER
from categories_classification.training.fitting import DEFAULT_MAX_MODEL_MB
from categories_classification.training.trainer import train_model
from tests.helpers import FEATURES

pytestmark = pytest.mark.slow


def test_training_is_one_tracked_run_and_a_new_registered_version(small_data, tracking_store, tmp_path):
    first = train_model("small_a", FEATURES, {"n_estimators": 20}, "2026-11-23T00:00:00+00:00",
                        data_prefix=str(small_data), family="random_forest")
    second = train_model("small_a", FEATURES, {"n_estimators": 10}, "2026-11-24", data_prefix=str(small_data))
    assert (first.model_name, first.version, second.version) == ("small_a_model", 1, 2)

    client = MlflowClient()
    run = client.get_run(first.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == experiment_name("small_a")
    assert run.info.run_name == "training_2026-11-23"
    assert run.data.tags[CLIENT_ID_TAG] == "small_a" and run.data.tags[TRAINING_DATE_TAG] == "2026-11-23"
    assert run.data.params["n_estimators"] == "20"
    # No explicit size parameter: max_leaf_nodes was chosen on the training split, within the default budget.
    assert run.data.params["min_samples_leaf"] == "1" and int(run.data.params["max_leaf_nodes"]) >= 2
    assert run.data.params["size_rule"].startswith("auto:")
    assert run.data.params["max_model_mb"] == f"{DEFAULT_MAX_MODEL_MB:g}"
    assert run.data.metrics["size_budget_bytes"] == DEFAULT_MAX_MODEL_MB * 1e6
    # In memory = the pickled model: the trees' arrays (the estimate) plus a few kB of Python objects per tree.
    assert run.data.metrics["size_estimated_bytes"] <= run.data.metrics["model_memory_bytes"]
    assert run.data.metrics["model_memory_bytes"] <= run.data.metrics["size_estimated_bytes"] + 20 * 2000
    assert run.data.metrics["size_search_seconds"] > 0
    assert 0 < run.data.metrics["size_search_val_top_5_accuracy"] <= 1
    assert "smallest max_leaf_nodes" in run.data.tags["size_choice"]
    assert run.data.tags["size_over_budget"] == "false"
    assert first.params["max_leaf_nodes"] == int(run.data.params["max_leaf_nodes"])
    assert run.data.params["features"] == ",".join(FEATURES)
    for split in ("train", "test"):
        for metric in ("accuracy", "top_5_accuracy", "log_loss", "f1_macro"):
            assert f"{split}_{metric}" in run.data.metrics
    assert run.data.metrics[MODEL_SIZE_METRIC] > 0 and run.data.metrics["fit_time_seconds"] > 0
    assert 0.3 < run.data.metrics[TEST_TOP_5_METRIC] <= 1.0
    # Artifacts live beside the temp store, not in the working directory.
    assert str(tracking_store) in experiment.artifact_location

    artifacts = {Path(item.path).name for item in client.list_artifacts(first.run_id, "evaluation")}
    assert artifacts == {"per_class_report.csv", "per_class_report.json", "top_k_accuracy.json",
                         "top_k_accuracy.png", "per_class_recall.png", "reliability.json", "reliability.png",
                         "model_choice.json"}
    report = mlflow.artifacts.load_dict(f"runs:/{first.run_id}/evaluation/per_class_report.json")
    assert len(report["categories"]) == 12 and {"precision", "recall", "f1", "top_5_recall"} <= set(report["categories"][0])

    versions = client.search_model_versions(f"name = '{model_name('small_a')}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    registered = client.get_registered_model("small_a_model")
    assert "small_a" in registered.description and registered.tags[CLIENT_ID_TAG] == "small_a"

    flavor = mlflow.models.get_model_info(f"models:/small_a_model/{first.version}")
    assert flavor.flavors["sklearn"]["serialization_format"] == "skops"
    assert flavor.flavors["sklearn"]["skops_trusted_types"] == list(SKOPS_TRUSTED_TYPES)
    assert flavor.signature.inputs.required_input_names() == FEATURES
    assert flavor.saved_input_example_info is not None

    # The registry holds the skops file deflated (forests are mostly zeros); the run records its size,
    # and both MLflow's loader and ours read it.
    model_file, _ = download_model_file(ModelRef("small_a", "small_a_model", first.version, first.run_id),
                                        str(tmp_path))
    with zipfile.ZipFile(model_file) as stored:
        assert {entry.compress_type for entry in stored.infolist()} == {zipfile.ZIP_DEFLATED}
    assert run.data.metrics[MODEL_SIZE_METRIC] == model_file.stat().st_size
    reloaded = mlflow.sklearn.load_model(f"models:/small_a_model/{first.version}")
    assert reloaded.estimator.get_params()["n_estimators"] == 20
    assert model_file.stat().st_size < len(skops.io.dumps(reloaded)) / 2


@pytest.mark.usefixtures("tracking_store")
def test_the_version_and_its_logged_model_carry_the_training_record(small_data):
    result = train_model("small_a", FEATURES, {"n_estimators": 10}, "2026-11-23", data_prefix=str(small_data),
                         family="random_forest")
    client = MlflowClient()
    run = client.get_run(result.run_id)
    version = client.get_model_version(result.model_name, str(result.version))
    assert {key: version.tags[key] for key in (CLIENT_ID_TAG, TRAINING_DATE_TAG, PROMOTION_DECISION_TAG)} == {
        CLIENT_ID_TAG: "small_a", TRAINING_DATE_TAG: "2026-11-23", PROMOTION_DECISION_TAG: result.decision.label}
    assert version.tags[DIGEST_TAG] and version.tags[drift.REFERENCE_FILE + COMPANION_DIGEST_SUFFIX]
    assert "Trained 2026-11-23" in version.description
    # The logged model has the run's parameters and metrics (the training's, its size, the gate's scores).
    model_id = version.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == result.run_id
    assert logged.params[MODEL_FAMILY_PARAM] == run.data.params[MODEL_FAMILY_PARAM] == "random_forest"
    logged_metrics = {metric.key: metric.value for metric in logged.metrics}
    assert logged_metrics[TEST_TOP_5_METRIC] == run.data.metrics[TEST_TOP_5_METRIC]
    assert logged_metrics[MODEL_SIZE_METRIC] == run.data.metrics[MODEL_SIZE_METRIC] > 0
    assert logged_metrics[CHALLENGER_SCORE] == run.data.metrics[CHALLENGER_SCORE]
    assert set(logged_metrics) == set(run.data.metrics)
    # Each metric of the run was logged once.
    assert [metric.value for metric in client.get_metric_history(result.run_id, TEST_TOP_5_METRIC)] == [
        run.data.metrics[TEST_TOP_5_METRIC]]


@pytest.mark.usefixtures("tracking_store")
def test_bad_training_data_registers_nothing_and_leaves_a_failed_run_saying_why(small_data):
    with pytest.raises(InputDataError, match=r"client 'small_a': .*missing column\(s\) 'f9'") as missing:
        train_model("small_a", ["f0", "f9"], {}, "2026-11-23", data_prefix=str(small_data))
    with pytest.raises(InputDataError, match=r"client 'nobody': file .*client_id=nobody/data_train.csv.gz: not found"):
        train_model("nobody", FEATURES, {}, "2026-11-23", data_prefix=str(small_data))
    client = MlflowClient()
    assert not client.search_registered_models()
    (run,) = client.search_runs([client.get_experiment_by_name("categories_small_a").experiment_id])
    # What the fleet view shows as "training failed", with the reason.
    assert run.info.status == "FAILED" and run.data.tags[STAGE_TAG] == "training"
    assert run.data.tags[FAILURE_REASON_TAG] == str(missing.value)


@pytest.mark.usefixtures("tracking_store")
def test_explicit_size_params_win_over_the_automatic_choice_and_the_budget(small_data):
    result = train_model("small_a", FEATURES, {"n_estimators": 10, "min_samples_leaf": 3}, "2026-11-23",
                         data_prefix=str(small_data), max_model_mb=0.001, family="random_forest")
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["min_samples_leaf"] == "3" and run.data.params["max_leaf_nodes"] == "None"
    assert run.data.params["size_rule"] == "explicit: min_samples_leaf"
    assert run.data.params["max_model_mb"] == "0.001"
    assert run.data.metrics["size_search_seconds"] == 0 and "size_search_val_top_5_accuracy" not in run.data.metrics
    # Over its budget, and said so: the user's value is kept, not silently changed.
    assert run.data.metrics["model_memory_bytes"] > 1000 and run.data.tags["size_over_budget"] == "true"


@pytest.mark.usefixtures("tracking_store")
def test_a_small_budget_bounds_the_automatic_choice(small_data):
    budget_mb = 0.02  # 10 trees of 12 categories at 160 bytes a node: 6 leaves per tree
    result = train_model("small_a", FEATURES, {"n_estimators": 10}, "2026-11-23", data_prefix=str(small_data),
                         max_model_mb=budget_mb, family="random_forest")
    run = MlflowClient().get_run(result.run_id)
    assert run.data.metrics["size_estimated_bytes"] <= budget_mb * 1e6
    assert int(run.data.params["max_leaf_nodes"]) == run.data.metrics["size_budget_max_leaf_nodes"]
    assert run.data.tags["size_budget_bound"] == "true"


@pytest.mark.usefixtures("tracking_store")
def test_the_run_logs_the_choice_every_candidate_and_the_calibration(small_data):
    result = train_model("small_a", FEATURES, {"n_estimators": 10}, "2026-11-23", data_prefix=str(small_data))
    run = MlflowClient().get_run(result.run_id)
    family = run.data.params[MODEL_FAMILY_PARAM]
    assert set(family.split("+")) <= set(FAMILY_ORDER) and run.data.params["family_rule"].startswith("auto:")
    assert run.data.tags["model_family"] == family and family in run.data.tags["family_choice"]
    for candidate in (*FAMILY_ORDER, "ensemble_of_2", "ensemble_of_3"):
        assert 0 < run.data.metrics[f"candidate_{candidate}_val_top_5_accuracy"] <= 1
        assert run.data.metrics[f"candidate_{candidate}_size_bytes"] > 0
        assert run.data.metrics[f"candidate_{candidate}_fit_seconds"] > 0
    choice = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/evaluation/model_choice.json")
    names = [entry["family"] for entry in choice["candidates"]]
    assert names[:len(FAMILY_ORDER)] == list(FAMILY_ORDER) and [len(name.split("+")) for name in names[-2:]] == [2, 3]
    assert choice["model_family"] == family and choice["left_out"] == []
    # Calibration: ECE before and after, on the validation rows it was fitted on and on the test split.
    assert run.data.metrics["calibration_temperature"] > 0
    assert run.data.metrics["val_ece"] <= run.data.metrics["val_ece_before_calibration"] + 1e-9
    assert {"test_ece", "test_ece_before_calibration"} <= set(run.data.metrics)
    bins = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/evaluation/reliability.json")
    assert bins["after"]["ece"] == pytest.approx(run.data.metrics["test_ece"])

    # The registered model loads back through the trusted list and scores through the prediction path.
    model, features = load_model(resolve_model("small_a"))
    rows = pd.read_csv(small_data / "prediction" / "client_id=small_a" / "data_predict.csv.gz")[features].head(50)
    proba = predict_proba(model, rows, threads=2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    top5 = np.sort(proba, axis=1)[:, -5:].sum(axis=1)
    assert (top5 <= 1.0 + 1e-9).all()
    assert np.array_equal(np.argsort(-proba, axis=1, kind="stable")[:, :5],
                          np.argsort(-model.estimator.predict_proba(rows), axis=1, kind="stable")[:, :5])


@pytest.mark.usefixtures("tracking_store")
@pytest.mark.parametrize("family, params, check", [
    ("extra_trees", {"n_estimators": 7}, ("n_estimators", "7")),
    ("hist_gradient_boosting", {"max_iter": 5, "early_stopping": False}, ("max_iter", "5")),
    ("mlp", {"hidden_layer_sizes": [32]}, ("hidden_layer_sizes", "[32]")),
    ("knn", {"n_neighbors": 9}, ("n_neighbors", "9")),
    ("qda", {"reg_param": 0.2}, ("reg_param", "0.2")),
    ("logistic", {"C": 0.5}, ("C", "0.5")),
    ("mlp+qda", {"qda": {"reg_param": 0.3}}, ("qda.reg_param", "0.3")),
])
def test_a_pinned_family_in_the_config_wins(small_data, family, params, check):
    result = train_model("small_a", FEATURES, params, "2026-11-23", data_prefix=str(small_data), family=family)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params[MODEL_FAMILY_PARAM] == family and run.data.params["family_rule"] == "pinned"
    assert run.data.params[check[0]] == check[1]
    assert not any(key.startswith("candidate_") for key in run.data.metrics)
    model, _ = load_model(resolve_model("small_a"))
    inner = [member.estimator for member in model.estimator.estimators] if "+" in family else [model.estimator]
    assert [type(getattr(estimator, "steps", [[None, estimator]])[-1][1]).__name__ for estimator in inner] == {
        "extra_trees": ["ExtraTreesClassifier"], "hist_gradient_boosting": ["HistGradientBoostingClassifier"],
        "mlp": ["MLPClassifier"], "knn": ["KNeighborsClassifier"], "qda": ["QuadraticDiscriminantAnalysis"],
        "logistic": ["LogisticRegression"], "mlp+qda": ["MLPClassifier", "QuadraticDiscriminantAnalysis"]}[family]


@pytest.mark.usefixtures("tracking_store")
def test_random_forest_params_beyond_the_shared_ones_keep_the_clients_forest(small_data):
    result = train_model("small_a", FEATURES, {"n_estimators": 3, "max_depth": 2}, "2026-11-23",
                         data_prefix=str(small_data))
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params[MODEL_FAMILY_PARAM] == "random_forest" and run.data.params["family_rule"] == "pinned"
    assert run.data.tags["family_choice"] == "the config's params set RandomForest parameter(s) max_depth"
    assert run.data.params["max_depth"] == "2"  # the config's forest, exactly: no other family can take its place
