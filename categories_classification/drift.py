"""Input drift, pure numpy: a compact reference of the training data and the Population Stability Index.

At training, each feature's training split is summarised by :func:`build_reference`: the inner
edges of about :data:`DEFAULT_BINS` quantile bins and the share of training rows in each bin (the
first and last bins are open, so any value has a bin). At prediction, the scoring workers count
each client's rows per bin (:func:`bin_counts`, summed over partitions by the driver) and
:func:`drift_report` turns the counts into one PSI per feature::

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

with both shares floored at :data:`EPSILON`, so that an empty bin gives a large but finite
score. Usual reading: below 0.1 stable, 0.1-0.2 a moderate shift, above 0.2 a real one (the
project's default threshold, ``config.DEFAULT_DRIFT_THRESHOLD``).

Imported by the Spark workers too: numpy, the standard library and the record names only.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from categories_classification.records import DRIFT_MAX_METRIC, DRIFT_METRIC_PREFIX

DEFAULT_BINS = 10
EPSILON = 1e-4  # floor of a bin's share: an empty bin must not make the score infinite
REFERENCE_FILE = "drift_reference.json"  # beside the model file, in the model version's artifacts
FORMAT_VERSION = 1


def bin_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The inner edges of ``bins`` quantile bins of ``values`` (NaN ignored), duplicates removed.

    Tied quantiles (a feature with few distinct values) collapse into one edge, so a bin may
    hold more than its share; the expected shares are counted, not assumed.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0 or bins < 2:
        return np.empty(0)
    # Edges are sample values ("lower"), not interpolations between two of them: a feature with
    # a few distinct values gets edges on those values, so each value keeps a bin of its own.
    return np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="lower"))


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Rows per bin (``len(edges) + 1`` bins; a value equal to an edge goes to the bin above; NaN ignored)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return np.bincount(np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right"),
                       minlength=len(edges) + 1)


def build_reference(columns: Mapping[str, np.ndarray], bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The JSON-ready reference of a training split: per feature, its bin edges and expected shares."""
    features: dict[str, Any] = {}
    rows = 0
    for name, values in columns.items():
        edges = bin_edges(values, bins)
        counts = bin_counts(values, edges)
        rows = max(rows, int(counts.sum()))
        total = max(1, int(counts.sum()))
        features[name] = {"edges": [float(edge) for edge in edges],
                          "expected": [float(count) / total for count in counts]}
    return {"format": FORMAT_VERSION, "metric": "psi", "bins": bins, "rows": rows, "features": features}


def reference_problem(reference: Any, features: Sequence[str]) -> Optional[str]:
    """What makes ``reference`` unusable for a model with ``features``, or None."""
    if not isinstance(reference, dict) or reference.get("format") != FORMAT_VERSION:
        return f"expected a drift reference of format {FORMAT_VERSION}"
    stored = reference.get("features")
    if not isinstance(stored, dict):
        return "expected a 'features' object"
    for name in features:
        entry = stored.get(name)
        if not isinstance(entry, dict):
            return f"no entry for feature {name!r}"
        edges, expected = entry.get("edges"), entry.get("expected")
        if not isinstance(edges, list) or not isinstance(expected, list) or len(expected) != len(edges) + 1:
            return f"feature {name!r}: expected 'edges' and one more 'expected' share"
        if any(not isinstance(value, (int, float)) for value in (*edges, *expected)) or edges != sorted(edges):
            return f"feature {name!r}: expected numbers, edges in increasing order"
    return None


def psi(expected: Sequence[float], counts: Sequence[int], epsilon: float = EPSILON) -> Optional[float]:
    """Population Stability Index of ``counts`` (rows per bin) against ``expected`` shares; None without rows."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    actual = np.maximum(counts / total, epsilon)
    reference = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    return float(np.sum((actual - reference) * np.log(actual / reference)))


@dataclass(frozen=True)
class DriftReport:
    """Each feature's PSI against the reference, the largest, and which are over ``threshold``."""

    scores: Mapping[str, float]
    threshold: float
    rows: int = 0
    over: tuple[str, ...] = field(default=())

    @property
    def max(self) -> Optional[float]:
        """The largest feature score (None when no row was counted)."""
        return max(self.scores.values()) if self.scores else None

    @property
    def drifted(self) -> bool:
        """True when a feature's score is over the threshold."""
        return bool(self.over)

    def metrics(self) -> dict[str, float]:
        """``drift_psi_<feature>`` and ``drift_max`` (what the prediction run logs)."""
        if not self.scores:
            return {}
        return {**{f"{DRIFT_METRIC_PREFIX}{name}": score for name, score in self.scores.items()}, DRIFT_MAX_METRIC: self.max}

    def describe_over(self) -> str:
        """``f0 PSI 1.234, f2 PSI 0.456``: the features over the threshold, worst first."""
        return ", ".join(f"{name} PSI {self.scores[name]:.3f}" for name in self.over)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``drift`` object."""
        return {"reference": True, "metric": "psi", "scores": dict(self.scores), "max": self.max,
                "threshold": self.threshold, "over_threshold": self.drifted, "features_over": list(self.over),
                "rows": self.rows}


def drift_report(reference: Mapping[str, Any], counts: Mapping[str, Sequence[int]], threshold: float) -> DriftReport:
    """Score each feature of ``counts`` (rows per reference bin) against ``reference`` (see :func:`build_reference`)."""
    scores: dict[str, float] = {}
    rows = 0
    for name, feature_counts in counts.items():
        score = psi(reference["features"][name]["expected"], feature_counts)
        if score is not None and math.isfinite(score):
            scores[name] = score
            rows = max(rows, int(np.sum(feature_counts)))
    over = tuple(sorted((name for name, score in scores.items() if score > threshold), key=lambda n: -scores[n]))
    return DriftReport(scores, threshold, rows, over)


def no_reference(reason: str) -> dict[str, Any]:
    """The manifest's ``drift`` object when the version has no usable reference."""
    return {"reference": False, "status": f"no reference: {reason}"}
