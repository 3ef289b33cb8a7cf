"""Better Categories 4All: per-client product categorisation (top-5 categories per product).

Public entry points: :func:`train_model` and :func:`predict_categories`. They are imported lazily
so that ``import categories_classification`` stays cheap (no MLflow, Spark or sklearn import).
"""
from typing import Any

__all__ = ["train_model", "predict_categories"]  # pylint: disable=undefined-all-variable  # lazy, see __getattr__


def __getattr__(name: str) -> Any:
    # Lazy re-export: the CLI's --help and the DAG generator must not pay for MLflow/Spark imports.
    if name == "train_model":
        from categories_classification.training.trainer import train_model  # pylint: disable=import-outside-toplevel

        return train_model
    if name == "predict_categories":
        from categories_classification.prediction.predictor import predict_categories  # pylint: disable=import-outside-toplevel

        return predict_categories
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
