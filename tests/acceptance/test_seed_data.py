"""The design's 10 original clients (../shared/seed-data) through train-all and predict-all."""
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from categories_classification.batch import predict_all, train_all
from categories_classification.config import load_config
from tests.helpers import DATE, read_output

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed-data"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.acceptance,
    pytest.mark.skipif(not (SEED / "clients_config.yaml").is_file(), reason="../shared/seed-data is absent"),
]


@pytest.mark.usefixtures("tracking_store", "spark")
def test_design_clients_train_and_predict_five_rows_per_product(tmp_path, monkeypatch):
    # Read in place; outputs go to a temp prefix that points back at the seed files.
    prefix = tmp_path / "data"
    prefix.mkdir()
    for folder in ("train", "prediction"):
        (prefix / folder).symlink_to(SEED / folder, target_is_directory=True)
    monkeypatch.setenv("DATA_PREFIX", str(prefix))
    config = load_config(SEED / "clients_config.yaml")
    assert len(config) == 10

    trained = train_all(config, DATE)
    assert [outcome.error for outcome in trained] == [None] * 10
    client = MlflowClient()
    assert sorted(model.name for model in client.search_registered_models()) == sorted(
        f"client_{i}_model" for i in range(10))
    for outcome in trained:
        # The seed data is noisy: top-5 must still be far above chance (5 / n_categories).
        metrics = outcome.result.metrics
        assert metrics["test_top_5_accuracy"] > min(0.95, 2.5 * 5 / metrics["n_categories"])

    predicted = predict_all(config, DATE)
    assert [outcome.error for outcome in predicted] == [None] * 10
    for outcome in predicted:
        client_id = outcome.client_id
        source = pd.read_csv(SEED / f"prediction/client_id={client_id}/data_predict.csv.gz", usecols=["product_id"])
        output = read_output(prefix, client_id)
        assert set(output["product_id"]) == set(source["product_id"])
        assert (output.groupby("product_id").size() == 5).all()
        assert sorted(output["rank"].unique()) == [0, 1, 2, 3, 4]
        assert len(output) == 5 * source["product_id"].nunique()
