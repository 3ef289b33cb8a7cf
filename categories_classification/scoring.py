"""Worker-side scoring for ``DataFrame.mapInPandas``: light imports only (numpy, pandas, skops).

Spark pickles :func:`score_batches` by reference, so each Python worker imports this module
(not MLflow, not Spark's driver code) and keeps the deserialized model in :data:`_MODELS` for
as long as the worker lives: a model is loaded once per worker, not once per batch or task.
"""
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from categories_classification.topk import top_k

_MODELS: dict[str, Any] = {}


def score_batches(batches: Iterator[pd.DataFrame], *, model_key: str, model_bytes: Callable[[], bytes],
                  features: Sequence[str], k: int, skipped: Any = None) -> Iterator[pd.DataFrame]:
    """Yield the top-``k`` rows of every product of every batch.

    ``model_bytes`` returns the skops bytes (a broadcast's ``.value``), read only on the first
    batch a worker sees. Rows with a missing feature are skipped and counted in ``skipped``.
    """
    model = _model(model_key, model_bytes)
    columns = list(features)
    for batch in batches:
        values = batch[columns]
        complete = values.notna().all(axis=1).to_numpy()
        if not complete.all():
            if skipped is not None:
                skipped.add(int((~complete).sum()))
            batch, values = batch[complete], values[complete]
        if batch.empty:
            continue
        proba = model.predict_proba(values.astype(np.float64))
        yield top_k(batch["product_id"].to_numpy(), proba, model.classes_, k)


def _model(model_key: str, model_bytes: Callable[[], bytes]) -> Any:
    model = _MODELS.get(model_key)
    if model is None:
        # Imported lazily so that a worker which never scores does not pay for sklearn.
        from categories_classification.serialization import load_model_bytes  # pylint: disable=import-outside-toplevel

        model = load_model_bytes(model_bytes())
        # Spark already runs one task per core: a forest that also threads would oversubscribe.
        if hasattr(model, "n_jobs"):
            model.n_jobs = 1
        _MODELS.clear()  # one model per worker at a time: a long-lived worker must not hoard them
        _MODELS[model_key] = model
    return model
