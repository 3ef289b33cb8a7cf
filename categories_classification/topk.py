"""Top-k categories per product: pure numpy and pyarrow, no Spark and no MLflow.

Ranking rule (deterministic): categories are ordered by score, highest first; equal scores are
ordered by the category's position in the model's ``classes_`` (which sklearn keeps sorted), so
the same input always gives the same ranks. With fewer than ``k`` categories, every category is
returned (``min(k, n_classes)`` rows per product).
"""
import numpy as np
import pyarrow as pa

TOP_K = 5
_MAX_PASSES = 16  # up to this k, top_k_indices uses one argmax pass per rank instead of a sort
# The output rows: product_id, pred_label, pred_score, rank (0 = best).
ARROW_SCHEMA = pa.schema([("product_id", pa.string()), ("pred_label", pa.string()), ("pred_score", pa.float64()),
                          ("rank", pa.int32())])


def top_k_arrow(product_ids: pa.Array, scores: np.ndarray, labels: pa.Array, k: int = TOP_K) -> pa.RecordBatch:
    """The ``k`` best labels of every product as an Arrow record batch (:data:`ARROW_SCHEMA`).

    ``scores`` is ``(n_products, n_labels)`` (e.g. ``predict_proba``), ``labels`` an Arrow string
    array naming each column. Per product and in input order: ranks ``0..k-1`` (0 = best) and
    non-increasing scores. Ids are copied by Arrow's ``take``, never turned into Python objects.
    """
    scores = np.asarray(scores, dtype=np.float64)
    _check(scores, len(product_ids), len(labels), k)
    n_rows = scores.shape[0]
    order = top_k_indices(scores, k)
    kept = order.shape[1]
    return pa.RecordBatch.from_arrays([
        product_ids.take(pa.array(np.repeat(np.arange(n_rows, dtype=np.int64), kept))),
        labels.take(pa.array(order.ravel())),
        pa.array(np.take_along_axis(scores, order, axis=1).ravel()),
        pa.array(np.tile(np.arange(kept, dtype=np.int32), n_rows)),
    ], schema=ARROW_SCHEMA)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``min(k, n_labels)`` best scores of each row, best first.

    Ties are ordered by column position (the documented rule). ``scores`` is a 2-D float array.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_rows, n_labels = scores.shape
    kept = min(k, n_labels)
    if kept > _MAX_PASSES or n_rows == 0 or not np.isfinite(scores).all():
        # A stable sort of the negated scores: highest first, ties in column order (NaN last).
        return np.argsort(-scores, axis=1, kind="stable")[:, :kept]
    # One vectorised argmax per rank: argmax returns the first of equal maxima, i.e. the lowest
    # column among ties, which is exactly the rule; the winner is then masked out. For a small k
    # this beats sorting every row, and unlike a plain argpartition it needs no repair of ties
    # at the k-th place. Finite scores only: -inf is the
    # mask (non-finite input takes the sort above).
    work = scores.copy()
    rows = np.arange(n_rows)
    order = np.empty((n_rows, kept), dtype=np.intp)
    for rank in range(kept):
        best = work.argmax(axis=1)
        order[:, rank] = best
        work[rows, best] = -np.inf
    return order


def _check(scores: np.ndarray, n_products: int, n_labels: int, k: int) -> None:
    if scores.ndim != 2 or scores.shape != (n_products, n_labels):
        raise ValueError(
            f"scores must have shape (n_products, n_labels) = ({n_products}, {n_labels}), found {scores.shape}"
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, found {k}")
