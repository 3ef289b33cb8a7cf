"""Worker-side scoring for ``DataFrame.mapInArrow``: light imports (numpy, pandas, pyarrow; skops lazily).

Spark pickles a :class:`Scorer` (its class by reference), so each Python worker imports this
module (not MLflow, not Spark's driver code). Rows of several clients may share a partition
(the fleet path): each client's rows are scored by that client's model, read from the file the
driver shipped (``SparkFiles``) and kept in :data:`_MODELS` while the worker lives, so a model is
loaded once per worker, not once per batch or task. Nothing here needs a SparkContext, a
broadcast or an accumulator, so it runs the same behind Spark Connect: what the driver must
learn (rows, skipped and malformed rows, repeated ids, rows per drift-reference bin) comes back
as one ``_stats`` row per client and partition, which the driver collects with an observed metric.

Batches stay in Arrow end to end: features go straight to one numpy matrix, product ids are
never turned into Python strings (Arrow's ``take`` repeats them), and the output batch is built
in Arrow, so the work per batch is essentially ``predict_proba`` and the vectorised top-k.
"""
import json
import os
import queue
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from categories_classification.drift import bin_counts
from categories_classification.topk import ARROW_SCHEMA, top_k_arrow

PREFETCH = 2  # batches a stage may run ahead of the next (bounded memory: a few 10k-row batches)
MODELS_KEPT = 8  # models a worker keeps loaded (a fleet partition goes through many clients)
# Input columns the driver builds; ``features`` holds the model's features, in its order.
CLIENT, PRODUCT, FEATURES, MALFORMED, HASH, STATS = "client_id", "product_id", "features", "_corrupt", "_hash", "_stats"
OUTPUT_SCHEMA = pa.schema([pa.field(CLIENT, pa.string()), *ARROW_SCHEMA, pa.field(STATS, pa.string())])
EXAMPLE_CHARS = 80
MIN_ROWS_PER_THREAD = 500  # below this, splitting the rows between threads costs more than it saves
# file name -> (model, its labels as an Arrow string array), least recently used first
_MODELS: "OrderedDict[str, tuple[Any, pa.Array]]" = OrderedDict()
_POOLS: dict[int, ThreadPoolExecutor] = {}


@dataclass(frozen=True)
class ClientModel:
    """What a worker needs to score one client: the shipped model file and the feature names.

    ``drift_edges`` holds, per feature in the same order, the inner edges of the version's drift
    reference bins (empty when the version has no reference): the rows are counted per bin.
    """

    file_name: str
    features: tuple[str, ...]
    drift_edges: tuple[tuple[float, ...], ...] = ()


@dataclass
class ClientStats:
    """What one partition saw of one client, sent back to the driver as JSON."""

    rows: int = 0
    written: int = 0
    skipped: int = 0
    malformed: int = 0
    malformed_example: str = ""
    repeated: int = 0
    partition: int = -1
    hashes: list = field(default_factory=list, repr=False)
    drift_counts: list = field(default_factory=list)  # per feature: rows per reference bin (NaN not counted)

    def count_bins(self, values: np.ndarray, edges: tuple[tuple[float, ...], ...]) -> None:
        """Add the rows of ``values`` (one column per feature) to each feature's bin counts."""
        for index, feature_edges in enumerate(edges):
            counts = bin_counts(values[:, index], feature_edges)
            if index < len(self.drift_counts):
                self.drift_counts[index] += counts
            else:
                self.drift_counts.append(counts)

    def to_json(self, client_id: str) -> str:
        """The record the driver reads back (hashes stay here: only their verdict travels)."""
        return json.dumps({"client_id": client_id, "rows": self.rows, "written": self.written,
                           "skipped": self.skipped, "malformed": self.malformed,
                           "malformed_example": self.malformed_example, "repeated": self.repeated,
                           "partition": self.partition,
                           "drift_counts": [[int(count) for count in counts] for counts in self.drift_counts]})


@dataclass(frozen=True)
class Scorer:
    """The function given to ``mapInArrow``: the top-``k`` rows of every product, per client.

    ``models`` maps each client id to its :class:`ClientModel`; ``load`` turns a shipped file
    name into skops bytes (``SparkFiles`` by default). The forest predicts with ``n_jobs``
    threads (never more than the worker's cores). With ``hash_ids``, the input carries a 64-bit
    hash of ``product_id`` and each client's repeated hash values are counted at the end of the
    partition (8 bytes per row held until then).
    """

    models: Mapping[str, ClientModel]
    k: int
    n_jobs: int = 1
    hash_ids: bool = False
    load: Optional[Callable[[str], bytes]] = None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # Three stages that overlap: a thread reads input batches off Spark's socket, another
        # scores them, and this (Spark's) thread writes the results back. Run in sequence, the
        # JVM would wait for each batch to be scored and the scorer for each batch to be parsed
        # and written, and the one task would keep barely more than one core busy.
        return _in_background(self._score(_in_background(batches)))

    def _score(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        stats: dict[str, ClientStats] = {}
        threads = max(1, min(self.n_jobs, os.cpu_count() or 1))
        for batch in batches:
            for client_id, rows in split_by_client(batch):
                seen = stats.setdefault(client_id, ClientStats(partition=_partition_id()))
                spec = self.models[client_id]
                model, labels = _model(spec.file_name, self.load or _spark_file)
                scored = self._client_rows(model, labels, spec, rows, seen, threads)
                if scored is not None:
                    seen.written += scored.num_rows
                    yield _with_client(scored, client_id)
        if stats:
            yield _stats_batch(stats)

    def _client_rows(self, model: Any, labels: pa.Array, spec: ClientModel, rows: pa.RecordBatch,
                     seen: ClientStats, threads: int) -> Optional[pa.RecordBatch]:
        seen.rows += rows.num_rows
        if self.hash_ids:
            seen.hashes.append(np.asarray(rows.column(HASH).to_numpy(zero_copy_only=False), dtype=np.int64))
        if MALFORMED in rows.schema.names:
            broken = np.asarray(rows.column(MALFORMED).is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            count = int(np.count_nonzero(broken))
            if count:
                if not seen.malformed:
                    seen.malformed_example = rows.column(MALFORMED)[int(np.argmax(broken))].as_py()[:EXAMPLE_CHARS]
                seen.malformed += count
                rows = rows.filter(pa.array(~broken))
        values = feature_matrix(rows.column(FEATURES), len(spec.features))
        return score_client((model, labels), spec, values, rows.column(PRODUCT), seen, self.k, threads=threads)


def score_client(loaded: tuple[Any, pa.Array], spec: ClientModel, values: np.ndarray, product_ids: pa.Array,
                 seen: ClientStats, k: int, *, threads: int = 1) -> Optional[pa.RecordBatch]:
    """One client's rows (``values``, one column per feature) scored by its model and labels (``loaded``): its
    top-``k`` rows, counted in ``seen``.

    The rows are added to the drift reference's bins in the same pass (drift costs no second read).
    """
    if spec.drift_edges:
        seen.count_bins(values, spec.drift_edges)
    model, labels = loaded
    scored, skipped = score_matrix(model, labels, list(spec.features), values, product_ids, k, threads=threads)
    seen.skipped += skipped
    return scored


def split_by_client(batch: pa.RecordBatch) -> Iterator[tuple[str, pa.RecordBatch]]:
    """The rows of ``batch`` per client id, in order of first appearance (usually one client)."""
    encoded = batch.column(CLIENT).dictionary_encode()
    values = encoded.dictionary.to_pylist()
    if len(values) == 1:
        yield values[0], batch
        return
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    for index, value in enumerate(values):
        yield value, batch.filter(pa.array(indices == index))


def feature_matrix(features: pa.Array, width: int) -> np.ndarray:
    """``(rows, width)`` float matrix of a list<double> column (a null value becomes NaN)."""
    if len(features) == 0:
        return np.empty((0, width))
    flat = features.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float64).reshape(len(features), width)


def score_matrix(model: Any, labels: pa.Array, features: list[str], values: np.ndarray, product_ids: pa.Array,
                 k: int, *, threads: int = 1) -> tuple[Optional[pa.RecordBatch], int]:
    """The top-``k`` rows of every complete product, and how many products were skipped.

    A product with a missing feature (NaN) is skipped; the result is None when no product is
    complete. ``threads`` share the rows (see :func:`predict_proba`).
    """
    complete = ~np.isnan(values).any(axis=1)
    skipped = int(len(complete) - np.count_nonzero(complete))
    if skipped:
        product_ids, values = product_ids.filter(pa.array(complete)), values[complete]
    if values.shape[0] == 0:
        return None, skipped
    # A DataFrame with the training column names: what the forest was fitted on (no warning).
    proba = predict_proba(model, pd.DataFrame(values, columns=features, copy=False), threads)
    return top_k_arrow(product_ids, proba, labels, k), skipped


def predict_proba(model: Any, rows: pd.DataFrame, threads: int = 1) -> np.ndarray:
    """Class probabilities, the same to the last bit however many threads compute them.

    A forest's own ``n_jobs`` sums its trees' votes in whatever order its threads finish, so the
    last bit of a score (and a tie between two categories) could change from run to run; here
    each thread takes a share of the rows and sums every tree in the same order.
    """
    if hasattr(model, "n_jobs"):
        model.n_jobs = 1
    if threads <= 1 or len(rows) < threads * MIN_ROWS_PER_THREAD:
        return model.predict_proba(rows)
    bounds = np.linspace(0, len(rows), threads + 1).astype(int)
    parts = _pool(threads).map(lambda span: model.predict_proba(rows.iloc[span[0]:span[1]]), zip(bounds, bounds[1:]))
    return np.vstack(list(parts))


def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per worker process and size: tree traversal releases the GIL, so threads run in parallel."""
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
    return pool


def score_batch(model: Any, labels: pa.Array, features: list[str], batch: pa.RecordBatch, k: int, *,
                threads: int = 1) -> tuple[Optional[pa.RecordBatch], int]:
    """:func:`score_matrix` of a batch that holds ``product_id`` and one column per feature."""
    values = np.column_stack([batch.column(name).to_numpy(zero_copy_only=False) for name in features])
    return score_matrix(model, labels, features, values.astype(np.float64, copy=False), batch.column(PRODUCT), k,
                        threads=threads)


def labels_of(model: Any) -> pa.Array:
    """The model's categories as the Arrow strings the output rows carry."""
    return pa.array([str(label) for label in model.classes_], type=pa.string())


def read_stats(records: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The driver's side of ``_stats``: each client's records, one per partition that saw it."""
    found: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        entry = json.loads(record)
        found.setdefault(entry["client_id"], []).append(entry)
    return found


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


def _with_client(scored: pa.RecordBatch, client_id: str) -> pa.RecordBatch:
    rows = scored.num_rows
    return pa.RecordBatch.from_arrays(
        [pa.array([client_id] * rows, pa.string()), *scored.columns, pa.nulls(rows, pa.string())],
        schema=OUTPUT_SCHEMA)


def _stats_batch(stats: dict[str, ClientStats]) -> pa.RecordBatch:
    for seen in stats.values():
        seen.repeated = repeated_values(seen.hashes)
    clients = list(stats)
    empty = pa.nulls(len(clients))
    return pa.RecordBatch.from_arrays(
        [pa.array(clients, pa.string()), empty.cast(pa.string()), empty.cast(pa.string()),
         empty.cast(pa.float64()), empty.cast(pa.int32()),
         pa.array([stats[client].to_json(client) for client in clients], pa.string())],
        schema=OUTPUT_SCHEMA)


def warm_up(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A ``mapInArrow`` function that imports what loading and scoring a model imports (skops, sklearn)."""
    # pylint: disable-next=import-outside-toplevel  # the import is the point
    import skops.io  # noqa: F401  # pylint: disable=unused-import

    yield from batches


def _partition_id() -> int:
    from pyspark import TaskContext  # pylint: disable=import-outside-toplevel  # light, and absent outside Spark

    context = TaskContext.get()
    return context.partitionId() if context is not None else -1


def _spark_file(file_name: str) -> bytes:
    """A model file the driver shipped (its name), or one on this machine's disk (an absolute path)."""
    from pyspark import SparkFiles  # pylint: disable=import-outside-toplevel

    with open(file_name if os.path.isabs(file_name) else SparkFiles.get(file_name), "rb") as handle:
        return handle.read()


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


def _model(file_name: str, load: Callable[[str], bytes]) -> tuple[Any, pa.Array]:
    cached = _MODELS.get(file_name)
    if cached is not None:
        _MODELS.move_to_end(file_name)
        return cached
    # Imported lazily so that a worker which never scores does not pay for sklearn.
    from categories_classification.serialization import load_model_bytes  # pylint: disable=import-outside-toplevel

    model = load_model_bytes(load(file_name))
    cached = _MODELS[file_name] = (model, labels_of(model))
    while len(_MODELS) > MODELS_KEPT:  # a long-lived worker must not hoard every client's model
        _MODELS.popitem(last=False)
    return cached
