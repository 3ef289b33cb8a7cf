"""Every model family, and an ensemble, trained and predicted the way users run them: the CLI, then one Spark job.

A fleet of clients, each pinning one family in the config, goes through ``train-all`` and then
``predict-all`` (one fleet job with mixed families), and one client through ``trainer`` and
``predictor``: each output holds the registered model's own top 5 of every product.
"""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from categories_classification.tracking.artifacts import load_model
from categories_classification.tracking.registry import resolve_model
from scripts.generate_example_data import ClientSpec, write_client
from tests.helpers import FEATURES, client_entry, read_output, reference_top_k, run_cli, train_args, write_config

pytestmark = pytest.mark.slow
DATE = "2026-11-23"
FAMILIES = {"fam_mlp": "mlp", "fam_knn": "knn", "fam_qda": "qda", "fam_logistic": "logistic",
            "fam_hgb": "hist_gradient_boosting", "fam_forest": "random_forest", "fam_ensemble": ["mlp", "qda"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, module_tracking_store: Path) -> tuple[Path, dict[str, str]]:
    """Generated clients, one per family (pinned in the config), and the CLI's environment on the module's store."""
    root = tmp_path_factory.mktemp("families")
    for index, client_id in enumerate(FAMILIES):
        write_client(ClientSpec(client_id, 300 + index, n_train=700, n_predict=400, n_categories=9), root / "data")
    params = {"fam_forest": {"n_estimators": 10}, "fam_hgb": {"max_iter": 20}}
    config = write_config(root / "clients.yaml", {
        client_id: {**client_entry(), "family": family, **({"params": params[client_id]} if client_id in params else {})}
        for client_id, family in FAMILIES.items()})
    env = {**os.environ, "DATA_PREFIX": str(root / "data"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{module_tracking_store / 'mlflow.db'}", "SPARK_MASTER": "local[2]",
           "CONFIG_FILE": str(config)}
    return root / "data", env


def _assert_own_top5(prefix: Path, client_id: str) -> None:
    """The output is the champion's own top 5 for every product of the prediction file."""
    model, features = load_model(resolve_model(client_id))
    rows = pd.read_csv(prefix / "prediction" / f"client_id={client_id}" / "data_predict.csv.gz")
    expected = reference_top_k(rows["product_id"], model.predict_proba(rows[features]), model.classes_)
    output = read_output(prefix, client_id, DATE)
    expected = expected.sort_values(["product_id", "rank"]).reset_index(drop=True)
    assert (output["product_id"].tolist(), output["pred_label"].tolist()) == (
        expected["product_id"].tolist(), expected["pred_label"].tolist())
    assert np.allclose(output["pred_score"], expected["pred_score"], rtol=0, atol=1e-12)


def test_every_family_trains_and_scores_in_one_fleet_job(fleet):
    prefix, env = fleet
    trained = run_cli(["train-all", f"--training_date={DATE}"], env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient()
    for client_id, family in FAMILIES.items():
        run = client.get_run(resolve_model(client_id).run_id)
        expected = family if isinstance(family, str) else "+".join(family)
        assert run.data.params["model_family"] == expected and run.data.params["family_rule"] == "pinned"
        assert run.data.metrics["test_top_5_accuracy"] > 0.5, client_id
    predicted = run_cli(["predict-all", f"--inference_date={DATE}"], env, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    for client_id in FAMILIES:
        _assert_own_top5(prefix, client_id)


def test_the_chosen_family_goes_through_trainer_and_predictor(fleet):
    prefix, env = fleet
    env = {**env, "CONFIG_FILE": ""}  # the DAG's path: the CLI's own options
    trained = run_cli([*train_args("fam_mlp", FEATURES, "{}", DATE), "--model_family=mlp+logistic"], env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "(mlp+logistic)" in trained.stdout
    predicted = run_cli(["predictor", "--client_id=fam_mlp", f"--inference_date={DATE}"], env)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    _assert_own_top5(prefix, "fam_mlp")


def test_a_bad_pinned_family_is_a_usage_error_naming_what_is_accepted(fleet):
    _, env = fleet
    result = run_cli([*train_args("fam_mlp", FEATURES, "{}", DATE), "--model_family=mlp+svm"], env)
    assert result.returncode == 2 and "--model_family" in result.stderr
    assert "expected one of random_forest" in result.stderr and "found 'mlp+svm'" in result.stderr
