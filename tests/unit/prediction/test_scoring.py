"""The worker-side scorer without Spark: the background pipeline, the batch scorer, the hash check."""
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.ensemble import RandomForestClassifier
from threadpoolctl import threadpool_limits

from categories_classification.prediction.scoring import (
    CLIENT, FEATURES as FEATURES_COLUMN, HASH, MALFORMED, MIN_ROWS_PER_THREAD, MODELS_KEPT, STATS, ClientModel, Scorer,
    _MODELS, _in_background, predict_proba, read_stats, repeated_values, score_batch)
from categories_classification.serialization import dump_model
from categories_classification.training.fitting import fit_model
from tests.helpers import reference_top_k

FEATURES = ("f0", "f1")
FIVE = [f"f{i}" for i in range(5)]


def _model(seed: int = 0) -> RandomForestClassifier:
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(rng.random((200, 2)), columns=list(FEATURES))
    labels = np.array([f"c{i}" for i in rng.integers(0, 7, 200)])
    return RandomForestClassifier(n_estimators=5, random_state=0).fit(features, labels)


def _batch(ids, f0, f1) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"product_id": pa.array(ids, pa.string()), "f0": pa.array(f0, pa.float64()),
                                       "f1": pa.array(f1, pa.float64())})


def _input(client_ids, ids, rows, malformed=None) -> pa.RecordBatch:
    """A batch as the driver builds it: client, id, feature list, unparsed text, id hash."""
    return pa.RecordBatch.from_pydict({
        CLIENT: pa.array(client_ids, pa.string()), "product_id": pa.array(ids, pa.string()),
        FEATURES_COLUMN: pa.array(rows, pa.list_(pa.float64())),
        MALFORMED: pa.array(malformed or [None] * len(ids), pa.string()),
        HASH: pa.array([hash(value) for value in ids], pa.int64())})


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


def test_scorer_scores_each_client_with_its_own_model_and_reports_per_client():
    first, second = _model(0), _model(1)
    files = {"first.skops": dump_model(first), "second.skops": dump_model(second)}
    scorer = Scorer({"a": ClientModel("first.skops", FEATURES), "b": ClientModel("second.skops", FEATURES)}, k=5,
                    hash_ids=True, load=files.__getitem__)
    batches = [_input(["a", "a", "b"], ["p1", "p2", "p1"], [[0.1, 0.2], [0.3, None], [0.5, 0.5]]),
               _input(["b", "b", "a"], ["p2", "p1", "p3"], [[0.2, 0.9], [0.1, 0.1], [0.0, 0.0]],
                      malformed=[None, None, "p3,x,0.0"])]
    out = pa.Table.from_batches(list(scorer(iter(batches)))).to_pandas()
    rows, stats = out[out[STATS].isna()], read_stats(out[STATS].dropna().tolist())
    # a: p1 scored, p2 skipped (missing feature), p3 malformed; b: p1 twice (a duplicate), p2.
    assert sorted(rows.groupby(CLIENT)["product_id"].unique().map(sorted).to_dict().items()) == [
        ("a", ["p1"]), ("b", ["p1", "p2"])]
    (a,), (b,) = stats["a"], stats["b"]
    assert (a["rows"], a["written"], a["skipped"], a["malformed"], a["repeated"]) == (3, 5, 1, 1, 0)
    assert a["malformed_example"] == "p3,x,0.0"
    assert (b["rows"], b["written"], b["skipped"], b["repeated"]) == (3, 15, 0, 1)
    # Each client's rows are ranked by its own model.
    expected = reference_top_k(["p2"], second.predict_proba(pd.DataFrame([[0.2, 0.9]], columns=list(FEATURES))),
                               second.classes_)
    got = rows[(rows[CLIENT] == "b") & (rows["product_id"] == "p2")][["product_id", "pred_label", "pred_score", "rank"]]
    assert got.reset_index(drop=True).equals(expected.astype(got.dtypes.to_dict()))


def test_a_worker_keeps_a_bounded_number_of_models():
    model = dump_model(_model(0))
    loads = []

    def load(name):
        loads.append(name)
        return model

    _MODELS.clear()  # what earlier tests left in this worker's cache
    clients = MODELS_KEPT + 2
    scorer = Scorer({f"c{i}": ClientModel(f"m{i}.skops", FEATURES) for i in range(clients)}, k=5, load=load)
    batches = [_input([f"c{i}"], ["p"], [[0.5, 0.5]]) for i in range(clients)]
    list(scorer(iter(batches + batches[-1:] + batches[:1])))
    # The last client, seen again at once, is still loaded; the first, least recently used, was
    # evicted and is loaded again; the worker never holds more than MODELS_KEPT models.
    assert loads == [f"m{i}.skops" for i in range(clients)] + ["m0.skops"]
    assert len(_MODELS) == MODELS_KEPT and list(_MODELS)[-2:] == [f"m{clients - 1}.skops", "m0.skops"]


def test_scorer_counts_each_clients_rows_per_drift_bin_in_the_same_pass():
    files = {"first.skops": dump_model(_model(0)), "second.skops": dump_model(_model(1))}
    edges = ((0.25, 0.5), (0.5,))  # f0: 3 bins, f1: 2 bins
    scorer = Scorer({"a": ClientModel("first.skops", FEATURES, edges), "b": ClientModel("second.skops", FEATURES)},
                    k=5, load=files.__getitem__)
    batches = [_input(["a", "a", "b"], ["p1", "p2", "p1"], [[0.1, 0.2], [0.3, None], [0.5, 0.5]]),
               _input(["a", "a"], ["p3", "p4"], [[0.5, 0.9], [0.0, 0.0]], malformed=[None, "p4,x,0.0"])]
    out = pa.Table.from_batches(list(scorer(iter(batches)))).to_pandas()
    stats = read_stats(out[STATS].dropna().tolist())
    # a: f0 0.1, 0.3, 0.5 (the malformed row is not counted); f1 0.2, 0.9 (a missing value is not counted).
    assert stats["a"][0]["drift_counts"] == [[1, 1, 1], [1, 1]]
    assert stats["b"][0]["drift_counts"] == []  # no reference: nothing counted


@pytest.mark.parametrize("family", ["mlp", "knn", "qda", "logistic", "hist_gradient_boosting", "mlp+qda+random_forest"])
def test_every_family_scores_the_same_to_the_last_bit_whatever_the_threads(family):
    rng = np.random.default_rng(3)
    labels = rng.choice([f"c{i}" for i in range(12)], 1500)
    features = rng.normal(size=(1500, 5)) + np.array([int(label[1:]) for label in labels])[:, None] % 7
    params = {"max_iter": 20} if family == "hist_gradient_boosting" else {}
    if "+" in family:
        params = {"random_forest": {"n_estimators": 10}}
    model = fit_model(pd.DataFrame(features, columns=FIVE), labels, params, family=family).model
    rows = pd.DataFrame(rng.normal(size=(4 * MIN_ROWS_PER_THREAD, 5)) * 3, columns=FIVE)
    alone = predict_proba(model, rows, threads=1)
    with threadpool_limits(limits=1):  # the BLAS's own threads do not change a score either
        assert np.array_equal(predict_proba(model, rows, threads=1), alone)
    for threads in (2, 3):
        assert np.array_equal(predict_proba(model, rows, threads=threads), alone)
