"""The worker-side scorer without Spark: the background pipeline, the batch scorer, the hash check."""
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.ensemble import RandomForestClassifier

from categories_classification.prediction.scoring import Scorer, _in_background, repeated_values, score_batch
from categories_classification.serialization import dump_model
from tests.helpers import reference_top_k

FEATURES = ("f0", "f1")


@dataclass
class _Counter:
    """Stands in for a Spark accumulator (only ``add`` is used on the worker side)."""

    value: int = 0
    calls: list = field(default_factory=list)

    def add(self, amount: int) -> None:
        self.calls.append(amount)
        self.value += amount


def _model() -> RandomForestClassifier:
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.random((200, 2)), columns=list(FEATURES))
    labels = np.array([f"c{i}" for i in rng.integers(0, 7, 200)])
    return RandomForestClassifier(n_estimators=5, random_state=0).fit(features, labels)


def _batch(ids, f0, f1, hashes=None) -> pa.RecordBatch:
    columns = {"product_id": pa.array(ids, pa.string()), "f0": pa.array(f0, pa.float64()),
               "f1": pa.array(f1, pa.float64())}
    if hashes is not None:
        columns["_hash"] = pa.array(hashes, pa.int64())
    return pa.RecordBatch.from_pydict(columns)


def test_repeated_hash_values_are_counted_once_each():
    chunks = [np.array([5, 1, 9], dtype=np.int64), np.array([1, 7, 5, 1], dtype=np.int64), np.array([], dtype=np.int64)]
    assert repeated_values(chunks) == 2  # 1 (three times) and 5 (twice)
    assert repeated_values([np.arange(10, dtype=np.int64)]) == 0
    assert repeated_values([]) == 0


def test_background_pipeline_keeps_order_and_bounds_how_far_it_runs_ahead():
    produced = []

    def items():
        for number in range(50):
            produced.append(number)
            yield number

    consumed = []
    for item in _in_background(items(), depth=2):
        time.sleep(0.002)
        # The producer is at most depth queued + one in hand ahead of the consumer.
        assert len(produced) - len(consumed) <= 4
        consumed.append(item)
    assert consumed == list(range(50))


def test_background_pipeline_hands_errors_to_the_consumer():
    def failing():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(_in_background(failing()))


def test_background_thread_stops_when_the_consumer_stops_early():
    before = threading.active_count()
    pipeline = _in_background(iter(range(1_000_000)), depth=2)
    assert next(pipeline) == 0
    pipeline.close()  # what Spark does when a task is cancelled
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_score_batch_skips_incomplete_rows_and_ranks_like_the_reference():
    model = _model()
    labels = pa.array([str(label) for label in model.classes_])
    batch = _batch(["p1", "p2", "p3"], [0.1, None, 0.9], [0.5, 0.5, None])
    scored, skipped = score_batch(model, labels, list(FEATURES), batch, 5)
    assert skipped == 2
    proba = model.predict_proba(pd.DataFrame([[0.1, 0.5]], columns=list(FEATURES)))
    expected = reference_top_k(["p1"], proba, model.classes_, 5)
    assert scored.to_pandas().equals(expected.astype(scored.to_pandas().dtypes.to_dict()))
    assert score_batch(model, labels, list(FEATURES), _batch(["p"], [None], [1.0]), 5) == (None, 1)


def test_scorer_counts_skipped_rows_and_repeated_hashes_over_a_partition():
    model = _model()
    skipped, repeated = _Counter(), _Counter()
    scorer = Scorer(model_key="unit/1", model_bytes=lambda: dump_model(model), features=FEATURES, k=5,
                    skipped=skipped, repeated=repeated, hash_column="_hash")
    batches = [_batch(["a", "b"], [0.1, 0.2], [0.3, None], hashes=[11, 12]),
               _batch(["c", "a"], [0.5, 0.1], [0.5, 0.3], hashes=[13, 11])]
    out = pa.Table.from_batches(list(scorer(iter(batches))))
    assert out.num_rows == 3 * 5  # a, c, a: every complete row, 5 categories each
    assert skipped.value == 1
    assert repeated.calls == [1]  # once, at the end of the partition: hash 11 seen twice
