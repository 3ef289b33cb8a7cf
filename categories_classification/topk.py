"""Top-k categories per product: pure numpy/pandas, no Spark and no MLflow.

Ranking rule (deterministic): categories are ordered by score, highest first; equal scores are
ordered by the category's position in the model's ``classes_`` (which sklearn keeps sorted), so
the same input always gives the same ranks. With fewer than ``k`` categories, every category is
returned (``min(k, n_classes)`` rows per product).
"""
import numpy as np
import pandas as pd

TOP_K = 5
OUTPUT_COLUMNS = ("product_id", "pred_label", "pred_score", "rank")


def top_k(product_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = TOP_K) -> pd.DataFrame:
    """Long table of the ``k`` best labels per product.

    ``scores`` is ``(n_products, n_labels)`` (e.g. ``predict_proba``), ``labels`` the label of
    each column. Returns columns ``product_id, pred_label, pred_score, rank`` with, per product
    and in input order, ranks ``0..k-1`` (0 = best) and non-increasing scores.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    product_ids = np.asarray(product_ids)
    if scores.ndim != 2 or scores.shape != (len(product_ids), len(labels)):
        raise ValueError(
            f"scores must have shape (n_products, n_labels) = ({len(product_ids)}, {len(labels)}), "
            f"found {scores.shape}"
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, found {k}")
    n_rows, n_labels = scores.shape
    kept = min(k, n_labels)
    # A stable sort of the negated scores: highest first, ties in column order. Cheap for the
    # tens of categories a client has, and unlike argpartition it is deterministic on ties.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :kept]
    best = np.take_along_axis(scores, order, axis=1)
    return pd.DataFrame(
        {
            "product_id": np.repeat(product_ids, kept),
            "pred_label": labels[order].ravel(),
            "pred_score": best.ravel(),
            "rank": np.tile(np.arange(kept, dtype=np.int32), n_rows),
        },
        columns=list(OUTPUT_COLUMNS),
    )
