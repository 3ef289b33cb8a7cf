"""The inspection notebook, executed for real (Jupyter kernel, Spark, MLflow) on a prediction output."""

import nbformat
import pytest
from nbclient import NotebookClient

from categories_classification.prediction.predictor import predict_categories
from categories_classification.training.trainer import train_model
from tests.helpers import FEATURES, ROOT

NOTEBOOK = ROOT / "notebooks" / "inspect_inference_result.ipynb"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])


@pytest.mark.slow
@pytest.mark.usefixtures("tracking_store")
def test_notebook_runs_and_draws_its_plots(small_data, spark, monkeypatch):
    train_model("small_a", FEATURES, {"n_estimators": 10}, "2026-11-29", data_prefix=str(small_data))
    predict_categories("small_a", "2026-11-30", data_prefix=str(small_data), spark=spark)
    monkeypatch.setenv("CLIENT_ID", "small_a")
    monkeypatch.setenv("DATA_PREFIX", str(small_data))
    monkeypatch.setenv("SPARK_MASTER", "local[2]")
    monkeypatch.delenv("INFERENCE_DATE", raising=False)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # A failing cell raises CellExecutionError, which fails the test.
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    text = "".join(output.get("text", "") for output in outputs if output.get("output_type") == "stream")
    assert len(images) == 4  # top-1 score histogram, frequent categories, top-k curve, reliability diagram
    assert "no reliability diagram" not in text
    assert "client small_a, inference date 2026-11-30" in text
    assert "rows per product: [5]" in text
    assert "of products have a top-1 score below 0.3" in text
    assert "drift (PSI, max over features): 0." in text and "threshold 0.2: no drift" in text
    html = "".join(output.get("data", {}).get("text/html", "") for output in outputs)
    assert "PSI" in html and all(feature in html for feature in FEATURES)  # the per-feature scores
    # Which family, why, and the validation table of every candidate (the chosen one marked).
    assert "model family: " in text and "why: " in text and "no model choice recorded" not in text
    assert all(family in html for family in ("mlp", "knn", "qda", "logistic", "random_forest"))
    assert "val_top_5_accuracy" in html
