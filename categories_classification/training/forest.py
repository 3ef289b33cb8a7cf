"""The client's forest (RandomForest or ExtraTrees): its defaults, its automatic size within the budget, its fit.

No MLflow here; :mod:`fitting` uses it for the forest families, :mod:`sizing` holds the size rule.
"""
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from sklearn.ensemble import RandomForestClassifier

from categories_classification.config import DEFAULT_FAMILY
from categories_classification.training.families import DEFAULT_PARAMS, SEED
from categories_classification.training.sizing import (
    MB,
    SIZE_PARAMS,
    SizeChoice,
    choose_max_leaf_nodes,
    forest_memory_bytes,
)

# The RandomForest's defaults (what a client's params are laid over when no family is pinned). The
# trees' size is not a fixed default: unless the params set one of sizing.SIZE_PARAMS, max_leaf_nodes
# is chosen per client on its training split, within the size budget below.
DEFAULT_MODEL_PARAMS: Mapping[str, Any] = DEFAULT_PARAMS[DEFAULT_FAMILY]
# Forest settings of a client's params that the ExtraTrees candidate shares with the RandomForest one:
# the same number of trees, threads and seed, so that the families compete at the same cost.
SHARED_FOREST_PARAMS = ("n_estimators", "n_jobs", "random_state")
# Size budget of one client's model in memory (MB, 10^6 bytes), overridable per client
# (`max_model_mb:` in the config, `--max_model_mb`): a ceiling, well above what the automatic choice
# usually picks (see benchmarks/results.md).
DEFAULT_MAX_MODEL_MB = 64.0


@dataclass(frozen=True)
class FittedForest:
    """A fitted forest with the parameters it was fitted with and how its size was decided."""

    model: Any  # a RandomForestClassifier or an ExtraTreesClassifier
    params: Mapping[str, Any]  # what the estimator got, max_leaf_nodes included
    budget_bytes: float
    explicit_size_params: tuple[str, ...]  # size parameters the user set (then no automatic choice)
    size: Optional[SizeChoice]  # the automatic choice, None when the user's params decided
    fit_seconds: float
    search_seconds: float

    @property
    def memory_bytes(self) -> int:
        """The forest's tree arrays in memory (what pickling it costs)."""
        return forest_memory_bytes(self.model)

    @property
    def over_budget(self) -> bool:
        """True when the forest is larger than the budget (explicit size params, or a budget below 2 leaves)."""
        return self.memory_bytes > self.budget_bytes

    def size_params(self) -> dict[str, str]:
        """MLflow params saying how the size was decided (the chosen value is ``max_leaf_nodes``)."""
        rule = (f"explicit: {', '.join(self.explicit_size_params)}" if self.explicit_size_params
                else "auto: smallest max_leaf_nodes beating fully grown trees on validation top-5 and near the best, "
                     "within the budget")
        return {"size_rule": rule, "max_model_mb": f"{self.budget_bytes / MB:g}"}

    def size_metrics(self) -> dict[str, float]:
        """The budget and, when automatic, the search's figures."""
        metrics = {"size_budget_bytes": self.budget_bytes, "size_search_seconds": self.search_seconds}
        if self.size is not None:
            metrics.update({
                "size_budget_max_leaf_nodes": float(self.size.budget_leaves),
                "size_estimated_bytes": float(self.size.estimated_bytes),
                "size_search_val_top_5_accuracy": self.size.search.accuracy,
                "size_search_fully_grown_val_top_5_accuracy": self.size.search.reference_accuracy,
                "size_search_best_val_top_5_accuracy": self.size.search.best_accuracy,
                "size_search_margin": self.size.search.margin,
            })
        return metrics

    def size_tags(self) -> dict[str, str]:
        """Why this size: the automatic choice's reason, or the explicit parameters."""
        reason = self.size.reason if self.size is not None else f"explicit {', '.join(self.explicit_size_params)}"
        bound = self.size.budget_bound if self.size is not None else False
        return {"size_choice": reason, "size_budget_bound": str(bound).lower()}


def fit_forest(x_train: Any, y_train: Any, model_params: Optional[Mapping[str, Any]] = None,
               max_model_mb: Optional[float] = None, estimator: type = RandomForestClassifier) -> FittedForest:
    """Fit the client's forest of ``estimator``: the explicit ``model_params`` over :data:`DEFAULT_MODEL_PARAMS`.

    When ``model_params`` set none of :data:`~categories_classification.training.sizing.SIZE_PARAMS`,
    ``max_leaf_nodes`` is chosen on ``(x_train, y_train)`` only (a validation split carved out
    of it) within ``max_model_mb`` (default :data:`DEFAULT_MAX_MODEL_MB`); see
    :func:`categories_classification.training.sizing.choose_max_leaf_nodes`. Explicit values always win.
    """
    params = {**DEFAULT_MODEL_PARAMS, **dict(model_params or {})}
    size, search_seconds = forest_size(x_train, y_train, params, max_model_mb, estimator)
    return fit_sized_forest(x_train, y_train, params, max_model_mb, estimator, size=size, search_seconds=search_seconds)


def forest_size(x_train: Any, y_train: Any, params: Mapping[str, Any], max_model_mb: Optional[float],
                 estimator: type) -> tuple[Optional[SizeChoice], float]:
    """The automatic size of a forest of ``params`` (None when the params size it) and the search's seconds."""
    if any(key in SIZE_PARAMS for key in params):
        return None, 0.0
    started = time.perf_counter()
    size = choose_max_leaf_nodes(x_train, y_train, params, budget_bytes(max_model_mb), seed=SEED, estimator=estimator)
    return size, time.perf_counter() - started


def fit_sized_forest(x_train: Any, y_train: Any, params: Mapping[str, Any], max_model_mb: Optional[float],
                      estimator: type, *, size: Optional[SizeChoice], search_seconds: float) -> FittedForest:
    explicit_size = tuple(sorted(key for key in params if key in SIZE_PARAMS))
    params = dict(params) if size is None else {**params, "max_leaf_nodes": size.max_leaf_nodes}
    started = time.perf_counter()
    model = estimator(**params).fit(x_train, y_train)
    return FittedForest(model, params, budget_bytes(max_model_mb), explicit_size, size,
                        time.perf_counter() - started, search_seconds)


def budget_bytes(max_model_mb: Optional[float]) -> float:
    return float(DEFAULT_MAX_MODEL_MB if max_model_mb is None else max_model_mb) * MB
