"""The job without Spark, for a small fleet on this machine: each input read by pyarrow and scored by the
workers' own code (:mod:`.scoring`) in this process, into the same staging folders as the Spark job.

Spark's JVM costs seconds before its first row (its start, its first job, its Python workers): most
of a small fleet's time. When no Spark service or cluster is asked for (a local master, the
default), the prefix is on this disk and the fleet's inputs are small (:func:`.engine.in_this_process`),
each client is scored here, clients side by side on threads (pyarrow and the models release the
GIL).

The Spark job stays the reference for any input that is not plainly clean: a row pyarrow cannot
read strictly (a field count that differs from the header, a value that is not a plain number),
a quote or a backslash anywhere, an empty ``product_id``, a value that is not finite, a repeated
``product_id``, no rows; so is a client whose scoring or writing fails here (a model that cannot
score its rows, a full disk). Such a client is left to the Spark job, which tells exactly what is
wrong (or scores it) as it always did.
"""
import gzip
import json
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from categories_classification.errors import one_line
from categories_classification.prediction import output
from categories_classification.prediction.files import Files, LocalFiles
from categories_classification.prediction.job import Scored
from categories_classification.prediction.plan import ClientPlan
from categories_classification.prediction.scoring import PRODUCT, ClientStats, labels_of, score_client
from categories_classification.serialization import load_model_bytes
from categories_classification.topk import ARROW_SCHEMA, TOP_K

LOGGER = logging.getLogger(__name__)
CHUNK_ROWS = 10_000  # rows scored at once (Spark's Arrow batch size): bounded memory for the scores


def score(files: Files, plans: Sequence[ClientPlan]) -> list[Optional[Scored]]:
    """Each plan scored in this process (its :class:`~.job.Scored`, in order), or None: left to the Spark job."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(plans), os.cpu_count() or 1)),
                            thread_name_prefix="score") as pool:
        return list(pool.map(lambda plan: _score_client(files, plan), plans))


def _score_client(files: Files, plan: ClientPlan) -> Optional[Scored]:
    staging = ""
    try:
        output.recover_interrupted_swap(files, plan.place)
        table = clean_input(plan)
        if table is None:
            return None
        model = load_model_bytes(Path(plan.model_file).read_bytes())
        token = output.claim_staging(files, [plan.place])
        staging = plan.place.staging(token)
        files.mkdirs(staging)
        seen = _write_scores(model, plan, table, f"{staging}/part-00000-{token}.snappy.parquet")
    except Exception as exc:  # pylint: disable=broad-except  # a model that does not load or score, a full disk
        output.drop_staging(files, staging)
        LOGGER.info("client %s: left to Spark after %s", plan.client_id, one_line(exc))
        return None  # Spark's job scores it, or names the fault as it always did
    return Scored(token, staging, (seen,))


def _write_scores(model: object, plan: ClientPlan, table: pa.Table, path: str) -> dict:
    """Score ``table`` in chunks into one parquet file at ``path``; the statistics record Spark's workers send."""
    loaded, spec, seen = (model, labels_of(model)), plan.model, ClientStats(rows=table.num_rows)
    with pq.ParquetWriter(LocalFiles.local(path), ARROW_SCHEMA, compression="snappy") as writer:
        for chunk in table.to_batches(max_chunksize=CHUNK_ROWS):
            values = np.column_stack([chunk.column(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                                      for name in plan.features])
            scored = score_client(loaded, spec, values, chunk.column(PRODUCT), seen, TOP_K)
            if scored is not None:
                seen.written += scored.num_rows
                writer.write_batch(scored)
    return json.loads(seen.to_json(plan.client_id))  # the record exactly as the driver reads Spark's back


def clean_input(plan: ClientPlan) -> Optional[pa.Table]:
    """The plan's ``product_id`` and feature columns if the file is plainly clean (see the module), else None."""
    types = {PRODUCT: pa.string(), **{name: pa.float64() for name in plan.features}}
    try:
        text = gzip.decompress(LocalFiles.local(plan.source).read_bytes())
        # Quoting and escaping are read by Spark's own rules (its CSV reader is the reference).
        reason = "a quote or a backslash" if b'"' in text or b"\\" in text else ""
        table = None if reason else pacsv.read_csv(
            pa.py_buffer(text),
            read_options=pacsv.ReadOptions(column_names=list(plan.header), skip_rows=1),
            parse_options=pacsv.ParseOptions(quote_char=False, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types), null_values=[""],
                                                 strings_can_be_null=True))
    except (pa.ArrowException, OSError, EOFError, zlib.error, ValueError) as exc:
        table, reason = None, one_line(exc)
    reason = reason or unusual(table, plan.features)
    if reason:
        LOGGER.info("client %s: %s left to Spark (%s)", plan.client_id, plan.source, reason)
        return None
    return table


def unusual(table: pa.Table, features: Sequence[str]) -> str:
    """Why Spark's job, not this process, should read ``table`` (empty when nothing is unusual)."""
    ids = table.column(PRODUCT)
    if table.num_rows == 0:
        return "no rows"
    if ids.null_count:
        return "an empty product_id"
    for name in features:
        # NaN and infinities are read by Spark's spellings of them ("NaN", "Inf"), not pyarrow's.
        if not np.isfinite(table.column(name).fill_null(0.0).to_numpy()).all():
            return f"a value of {name} that is not finite"
    if len(ids.unique()) < table.num_rows:
        return "a repeated product_id"
    return ""
