"""Top-k rows: ranks, order, ties and shapes, without Spark."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from categories_classification.topk import ARROW_SCHEMA, top_k_arrow, top_k_indices
from tests.helpers import ROOT, ranked, reference_top_k

COLUMNS = ARROW_SCHEMA.names


def test_five_rows_per_product_best_first():
    scores = np.array([[0.1, 0.3, 0.05, 0.2, 0.15, 0.2], [0.6, 0.0, 0.1, 0.1, 0.1, 0.1]])
    labels = np.array(["a", "b", "c", "d", "e", "f"])
    result = ranked(np.array(["p1", "p2"]), scores, labels)
    assert list(result.columns) == COLUMNS
    assert result.groupby("product_id").size().to_dict() == {"p1": 5, "p2": 5}
    first = result[result["product_id"] == "p1"]
    assert first["pred_label"].tolist() == ["b", "d", "f", "e", "a"]
    assert first["rank"].tolist() == [0, 1, 2, 3, 4]
    assert first["pred_score"].tolist() == [0.3, 0.2, 0.2, 0.15, 0.1]


def test_the_docs_say_rank_counts_from_0_as_it_does():
    ranks = ranked(np.array(["p"]), np.array([[0.5, 0.3, 0.2]]), np.array(["a", "b", "c"]))["rank"].tolist()
    assert ranks == [0, 1, 2]
    # Where the docs describe the output (the data layout, the ranking rule), the README and data/README.md.
    output, prediction = ((ROOT / "docs" / page).read_text(encoding="utf-8") for page in ("output.md", "prediction.md"))
    assert "pred_score, rank (0-4)" in output and "`rank` counts from 0" in output
    assert "`rank` counting from 0" in prediction and "rank (0-4)" in (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    assert "rank 0 is the best" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_ties_are_broken_by_label_position():
    scores = np.full((1, 7), 1 / 7)
    result = ranked(np.array(["p"]), scores, np.array(list("gfedcba")))
    assert result["pred_label"].tolist() == list("gfedc")


def test_fewer_labels_than_k_returns_every_label():
    result = ranked(np.array(["p1", "p2"]), np.array([[0.2, 0.8], [0.5, 0.5]]), np.array(["x", "y"]))
    assert result["pred_label"].tolist() == ["y", "x", "x", "y"]
    assert result["rank"].tolist() == [0, 1, 0, 1]


def test_empty_batch_gives_empty_frame_with_columns():
    result = ranked(np.array([], dtype=object), np.zeros((0, 6)), np.array(list("abcdef")))
    assert result.empty and list(result.columns) == COLUMNS


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        ranked(np.array(["p1"]), np.zeros((2, 3)), np.array(list("abc")))


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        ranked(np.array(["p1"]), np.zeros((1, 3)), np.array(list("abc")), k=0)


def test_matches_a_reference_sort_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.random((200, 30))
    labels = np.array([f"c{i}" for i in range(30)])
    result = ranked(np.arange(200), scores, labels, k=5)
    expected = labels[np.argsort(-scores, axis=1)[:, :5]].ravel()
    assert (result["pred_label"].to_numpy() == expected).all()
    assert (result.groupby("product_id")["pred_score"].apply(lambda s: s.is_monotonic_decreasing)).all()


def test_vectorised_top_k_matches_the_stable_sort_with_many_ties():
    rng = np.random.default_rng(1)
    scores = rng.choice([0.0, 0.02, 0.1, 0.5], size=(500, 50))  # mostly zeros, like a forest's probabilities
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert (top_k_indices(scores, 5) == expected).all()


def test_non_finite_scores_take_the_sorting_path():
    scores = np.array([[-np.inf, -np.inf, 1.0, -np.inf], [np.nan, 0.5, 0.5, 0.1]])
    order = top_k_indices(scores, 3)
    assert order.tolist() == [[2, 0, 1], [1, 2, 3]]  # -inf ties in column order; NaN last


def test_arrow_batch_has_the_same_rows_as_the_reference_sort():
    rng = np.random.default_rng(2)
    scores = rng.choice([0.0, 0.25, 0.5], size=(40, 9))
    labels = np.array([f"c{i}" for i in range(9)])
    ids = np.array([f"p{i}" for i in range(40)], dtype=object)
    batch = top_k_arrow(pa.array(ids), scores, pa.array(labels), k=5)
    assert batch.schema == ARROW_SCHEMA
    pd.testing.assert_frame_equal(batch.to_pandas(), reference_top_k(ids, scores, labels, k=5), check_dtype=False)


def test_arrow_batch_checks_shapes_and_keeps_null_ids():
    with pytest.raises(ValueError, match="shape"):
        top_k_arrow(pa.array(["p1"]), np.zeros((2, 3)), pa.array(list("abc")))
    batch = top_k_arrow(pa.array(["p1", None]), np.array([[0.2, 0.8], [0.5, 0.5]]), pa.array(["x", "y"]), k=5)
    assert batch.column("product_id").to_pylist() == ["p1", "p1", None, None]
    assert batch.column("pred_label").to_pylist() == ["y", "x", "x", "y"]
