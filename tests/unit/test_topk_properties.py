"""Property-based tests of the top-k rows: for any scores, the ranking invariants hold."""
import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from categories_classification.topk import top_k_arrow, top_k_indices
from tests.helpers import ranked, reference_top_k


@st.composite
def _score_tables(draw):
    n_products = draw(st.integers(min_value=0, max_value=30))
    n_labels = draw(st.integers(min_value=1, max_value=12))
    # Few distinct values on purpose: ties are the interesting case.
    scores = draw(arrays(np.float64, (n_products, n_labels), elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0])))
    k = draw(st.integers(min_value=1, max_value=7))
    return scores, k


@settings(max_examples=200, deadline=None)
@given(_score_tables())
def test_ranking_invariants(table):
    scores, k = table
    labels = np.array([f"c{i}" for i in range(scores.shape[1])])
    products = np.array([f"p{i}" for i in range(scores.shape[0])])
    result = ranked(products, scores, labels, k)
    kept = min(k, len(labels))
    assert len(result) == kept * len(products)
    for index, (product, group) in enumerate(result.groupby("product_id", sort=False)):
        assert product == products[index]  # input order kept
        assert group["rank"].tolist() == list(range(kept))
        assert group["pred_label"].is_unique
        assert group["pred_score"].is_monotonic_decreasing
        row = scores[index]
        # No unranked label scores higher than a ranked one.
        unranked = [row[i] for i, label in enumerate(labels) if label not in set(group["pred_label"])]
        assert not unranked or max(unranked) <= group["pred_score"].min()
        # Ties: equal scores keep the label order.
        for (score_a, label_a), (score_b, label_b) in zip(group[["pred_score", "pred_label"]].values,
                                                          group[["pred_score", "pred_label"]].values[1:]):
            if score_a == score_b:
                assert int(label_a[1:]) < int(label_b[1:])


@settings(max_examples=50, deadline=None)
@given(_score_tables())
def test_deterministic(table):
    scores, k = table
    labels = np.array([f"c{i}" for i in range(scores.shape[1])])
    products = np.arange(scores.shape[0])
    first = ranked(products, scores, labels, k)
    assert first.equals(ranked(products, scores.copy(), labels, k))


@settings(max_examples=200, deadline=None)
@given(_score_tables())
def test_vectorised_indices_equal_a_stable_sort(table):
    scores, k = table
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, scores.shape[1])]
    assert np.array_equal(top_k_indices(scores, k), expected)


@settings(max_examples=100, deadline=None)
@given(_score_tables())
def test_arrow_rows_equal_the_reference_sort(table):
    scores, k = table
    labels = np.array([f"c{i}" for i in range(scores.shape[1])])
    products = np.array([f"p{i}" for i in range(scores.shape[0])], dtype=object)
    expected = reference_top_k(products, scores, labels, k)
    actual = top_k_arrow(pa.array(products, type=pa.string()), scores, pa.array(labels), k).to_pandas()
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False)
