"""MLflow's ``python_function`` flavour of a registered model: the top-k categories of each product.

Shipped inside every registered model (MLflow's ``code_paths``) with :data:`SHIPPED_MODULES`, so
that stock MLflow (``mlflow models serve``, ``mlflow.pyfunc.load_model``, ``spark_udf``) loads it
from any folder with the model's own requirements: no project checkout. Light imports only
(numpy, pandas and the shipped modules; MLflow, always there when MLflow loads this, lazily).

The rows are the batch output's (``product_id``, ``pred_label``, ``pred_score``, ``rank``), one
row per input product whose three last values are lists, best first: same scores (one thread,
as the batch scores them), same tie order (:mod:`categories_classification.topk`).
"""
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from categories_classification.serialization import DIGEST_TAG, digest_problem, load_model_bytes
from categories_classification.topk import ARROW_SCHEMA, TOP_K, top_k_indices

# The package files a registered model carries: this loader and what it imports (nothing heavy).
# No ``__init__.py``: the copy is a namespace portion, so wherever the project's package is importable
# too (a Spark worker reused by the project's own job after a ``spark_udf``, whose loading puts the
# copy first on ``sys.path``), Python takes the whole package and the copy shadows none of it.
SHIPPED_MODULES = ("calibrated.py", "serialization.py", "serving.py", "topk.py")
# The request parameter setting how many categories come back per product (MLflow's params schema).
K_PARAM = "k"
# Keys of the model's python_function flavour (MLmodel) this loader reads besides MLflow's own.
CLIENT_KEY = "client_id"
PRODUCT, LABEL, SCORE, RANK = ARROW_SCHEMA.names


class TopKCategories:
    """A loaded model: ``predict`` gives each product's top-k categories."""

    def __init__(self, model: Any, features: list[str]) -> None:
        if hasattr(model, "n_jobs"):
            model.n_jobs = 1  # as the batch: a forest's threads could change the last bit of a score
        self.model = model
        self.features = list(features)
        self.labels = np.asarray([str(label) for label in model.classes_], dtype=object)

    def predict(self, model_input: pd.DataFrame, params: Optional[Mapping[str, Any]] = None) -> pd.DataFrame:
        """One row per input row: ``product_id`` (None if not given) and its top-k lists, best first.

        A product with a missing feature gets empty lists (the batch skips it).
        """
        k = top_k_param(params)
        frame = pd.DataFrame(model_input)
        values = frame[self.features].to_numpy(dtype=np.float64)
        complete = ~np.isnan(values).any(axis=1)
        n_rows = len(frame)
        labels: list[list[str]] = [[] for _ in range(n_rows)]
        scores: list[list[float]] = [[] for _ in range(n_rows)]
        ranks: list[list[int]] = [[] for _ in range(n_rows)]
        if complete.any():
            # A DataFrame with the training column names, as the batch passes it (no sklearn warning).
            proba = np.asarray(self.model.predict_proba(
                pd.DataFrame(values[complete], columns=self.features, copy=False)), dtype=np.float64)
            order = top_k_indices(proba, k)
            top_labels = self.labels[order].tolist()
            top_scores = np.take_along_axis(proba, order, axis=1).tolist()
            for row, position in enumerate(np.flatnonzero(complete)):
                labels[position], scores[position] = top_labels[row], top_scores[row]
                ranks[position] = list(range(order.shape[1]))
        ids = (frame[PRODUCT].map(lambda value: None if pd.isna(value) else str(value)).tolist()
               if PRODUCT in frame.columns else [None] * n_rows)
        return pd.DataFrame({PRODUCT: pd.Series(ids, dtype=object), LABEL: labels, SCORE: scores, RANK: ranks})


def top_k_param(params: Optional[Mapping[str, Any]]) -> int:
    """The request's ``k`` (default :data:`~categories_classification.topk.TOP_K`), at least 1."""
    raw = (params or {}).get(K_PARAM)
    k = TOP_K if raw is None else int(raw)
    if k < 1:
        raise ValueError(f"parameter {K_PARAM!r}: expected a whole number of categories of at least 1, found {raw!r}")
    return k


def _load_pyfunc(data_path: str) -> TopKCategories:
    """MLflow's entry point: the model file at ``data_path``, checked against its digest, then loaded.

    The digest and the client are in the model's MLmodel (python_function flavour), the feature
    names in its input signature (the required columns). Deserialized with the trusted types only.
    """
    # pylint: disable-next=import-outside-toplevel  # MLflow is the caller: it is there, and already imported
    from mlflow.models import Model
    from mlflow.pyfunc import FLAVOR_NAME  # pylint: disable=import-outside-toplevel

    model_file = Path(data_path)
    meta = Model.load(str(model_file.parent))
    conf = meta.flavors[FLAVOR_NAME]
    data = model_file.read_bytes()
    problem = digest_problem(conf.get(DIGEST_TAG, ""), data)
    if problem is not None:
        raise ValueError(f"client {conf.get(CLIENT_KEY, '?')!r}: model file {model_file} {problem}; refusing to load it")
    inputs = meta.get_input_schema()
    return TopKCategories(load_model_bytes(data), [str(name) for name in inputs.required_input_names()])
