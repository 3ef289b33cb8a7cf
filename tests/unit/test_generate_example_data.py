"""The example data generator: the design's layout and scale, deterministic."""
import hashlib

import pandas as pd

from scripts.generate_example_data import ClientSpec, client_frames, example_specs, main


def test_ten_clients_at_the_design_scale():
    specs = example_specs()
    assert [spec.client_id for spec in specs] == [f"client_{i}" for i in range(10)]
    for spec in specs:
        assert 5_000 <= spec.n_train <= 20_000
        assert 5_000 <= spec.n_predict <= 19_000
        assert 15 <= spec.n_categories <= 62


def test_schema_and_every_category_present():
    train, predict = client_frames(ClientSpec("c", 3, 400, 200, 20))
    assert list(train.columns) == ["product_id", "category_id", "f0", "f1", "f2", "f3", "f4"]
    assert list(predict.columns) == ["product_id", "f0", "f1", "f2", "f3", "f4"]
    assert train["category_id"].nunique() == 20
    assert train["product_id"].str.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$").all()
    assert train["product_id"].is_unique and predict["product_id"].is_unique


def test_files_are_byte_for_byte_reproducible(tmp_path):
    for run in ("one", "two"):
        assert main(["--output-dir", str(tmp_path / run), "--clients", "2", "--train-rows", "300",
                     "--predict-rows", "100", "--categories", "5"]) == 0
    digest = {run: hashlib.sha256((tmp_path / run / "train/client_id=client_1/data_train.csv.gz").read_bytes()).hexdigest()
              for run in ("one", "two")}
    assert digest["one"] == digest["two"]
    frame = pd.read_csv(tmp_path / "one/prediction/client_id=client_0/data_predict.csv.gz")
    assert len(frame) == 100
