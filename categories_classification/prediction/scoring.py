"""Worker-side scoring for ``DataFrame.mapInArrow``: light imports (numpy, pandas, pyarrow; skops lazily).

Spark pickles a :class:`Scorer` (its class by reference), so each Python worker imports this module
(not MLflow, not Spark's driver code) and keeps the deserialized model in :data:`_MODELS` for
as long as the worker lives: a model is loaded once per worker, not once per batch or task.

Batches stay in Arrow end to end: features go straight to one numpy matrix (wrapped in a
DataFrame only to carry the column names the forest was fitted with), product ids are never
turned into Python strings (Arrow's ``take`` repeats them), and the output batch is built in
Arrow, so the work per batch is essentially ``predict_proba`` and the vectorised top-k.
"""
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from categories_classification.topk import top_k_arrow

PREFETCH = 2  # batches a stage may run ahead of the next (bounded memory: a few 10k-row batches)
# key -> (model, its labels as an Arrow string array)
_MODELS: dict[str, tuple[Any, pa.Array]] = {}


@dataclass(frozen=True)
class Scorer:
    """The function given to ``mapInArrow``: yields the top-``k`` rows of every product of every batch.

    ``model_bytes`` returns the skops bytes (a broadcast's ``.value``), read only on the first
    batch a worker sees; the forest predicts with ``n_jobs`` threads. Rows with a missing
    feature are skipped and counted with ``skipped.add``. If ``hash_column`` is given (a 64-bit
    hash of ``product_id`` on every input row), the number of hash values seen more than once
    in the partition is given to ``repeated.add`` once the partition is done (8 bytes per row
    held until then). ``skipped`` and ``repeated`` are Spark accumulators on a cluster.
    """

    model_key: str
    model_bytes: Callable[[], bytes]
    features: tuple[str, ...]
    k: int
    skipped: Any
    repeated: Any
    n_jobs: int = 1
    hash_column: Optional[str] = None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # Three stages that overlap: a thread reads input batches off Spark's socket, another
        # scores them, and this (Spark's) thread writes the results back. Run in sequence, the
        # JVM would wait for each batch to be scored and the scorer for each batch to be parsed
        # and written, and the one task would keep barely more than one core busy.
        return _in_background(self._score(_in_background(batches)))

    def _score(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model, labels = _model(self.model_key, self.model_bytes)
        if hasattr(model, "n_jobs"):
            # Never more threads than this machine has (the driver sized n_jobs from the cluster).
            model.n_jobs = max(1, min(self.n_jobs, os.cpu_count() or 1))
        columns = list(self.features)
        hashes: list[np.ndarray] = []
        for batch in batches:
            if self.hash_column is not None:
                hashes.append(np.array(batch.column(self.hash_column).to_numpy(zero_copy_only=False), dtype=np.int64))
            scored, skipped = score_batch(model, labels, columns, batch, self.k)
            if skipped:
                self.skipped.add(skipped)
            if scored is not None:
                yield scored
        if self.hash_column is not None:
            self.repeated.add(repeated_values(hashes))


def score_batch(model: Any, labels: pa.Array, features: list[str], batch: pa.RecordBatch,
                k: int) -> tuple[Optional[pa.RecordBatch], int]:
    """The top-``k`` rows of every complete product of ``batch``, and how many were skipped.

    A product with a missing feature (an Arrow null arrives as NaN) is skipped; the result is
    None when no product of the batch is complete.
    """
    values = np.column_stack([batch.column(name).to_numpy(zero_copy_only=False) for name in features])
    product_ids = batch.column("product_id")
    complete = ~np.isnan(values).any(axis=1)
    skipped = int(len(complete) - np.count_nonzero(complete))
    if skipped:
        product_ids, values = product_ids.filter(pa.array(complete)), values[complete]
    if values.shape[0] == 0:
        return None, skipped
    # A DataFrame with the training column names: what the forest was fitted on (no warning).
    proba = model.predict_proba(pd.DataFrame(values, columns=features, copy=False))
    return top_k_arrow(product_ids, proba, labels, k), skipped


def labels_of(model: Any) -> pa.Array:
    """The model's categories as the Arrow strings the output rows carry."""
    return pa.array([str(label) for label in model.classes_], type=pa.string())


def _in_background(items: Iterator[Any], depth: int = PREFETCH) -> Iterator[Any]:
    """Iterate ``items`` in a daemon thread, at most ``depth`` ahead of the consumer.

    Exceptions are re-raised in the consumer; if the consumer stops early, the thread stops too
    (a reused worker must not keep a stuck thread).
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # pylint: disable=broad-except  # handed over to the consumer
            put((False, exc))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            more, item = ready.get()
            if not more:
                if item is not None:
                    raise item
                break
            yield item
    finally:
        stop.set()  # normally the thread has ended already; otherwise it ends at its next put


def repeated_values(chunks: list[np.ndarray]) -> int:
    """How many distinct values occur more than once across ``chunks`` (sorted in place, O(n log n))."""
    if not chunks:
        return 0
    values = np.concatenate(chunks)
    chunks.clear()  # the concatenated copy is the only one kept
    values.sort()
    same = values[1:] == values[:-1]
    # A value repeated r times gives r-1 consecutive "same" flags: count the runs.
    return int(np.count_nonzero(same[1:] & ~same[:-1]) + (1 if len(same) and same[0] else 0))


def _model(model_key: str, model_bytes: Callable[[], bytes]) -> tuple[Any, pa.Array]:
    cached = _MODELS.get(model_key)
    if cached is None:
        # Imported lazily so that a worker which never scores does not pay for sklearn.
        from categories_classification.serialization import load_model_bytes  # pylint: disable=import-outside-toplevel

        model = load_model_bytes(model_bytes())
        labels = labels_of(model)
        _MODELS.clear()  # one model per worker at a time: a long-lived worker must not hoard them
        cached = _MODELS[model_key] = (model, labels)
    return cached
