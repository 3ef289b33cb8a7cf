"""Calibration of scores (pure: numpy and scipy): expected calibration error, reliability bins, temperature.

A score is calibrated when, among the products it scores about ``p``, a share ``p`` really are of
that category. Measured on the top-1 score (what users threshold): rows are binned by it, and
the expected calibration error (ECE) is the row-weighted mean gap between each bin's mean score
and its share of correct top-1 categories.
"""
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from categories_classification.calibrated import temper

N_BINS = 15  # equal-width bins of the top-1 score, the usual choice for ECE
# log(temperature) is searched in [-LOG_T_BOUND, LOG_T_BOUND]: temperatures from 1/20 to 20.
LOG_T_BOUND = 3.0
# A true category scored 0 stays 0 at any temperature: its log loss is capped so that such rows
# neither dominate the fit nor make it infinite.
PROBA_FLOOR = 1e-6


@dataclass(frozen=True)
class Reliability:
    """Per bin of the top-1 score: rows, mean score, share correct (empty bins: 0 rows, nan)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the row-weighted mean |share correct - mean score|."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        used = self.counts > 0
        return float((self.counts[used] * np.abs(self.accuracy[used] - self.confidence[used])).sum() / total)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready bins."""
        return {"ece": self.ece, "bins": [
            {"low": float(low), "high": float(high), "rows": int(count),
             "mean_score": None if count == 0 else float(conf), "share_correct": None if count == 0 else float(acc)}
            for low, high, count, conf, acc in zip(self.edges[:-1], self.edges[1:], self.counts, self.confidence,
                                                   self.accuracy)]}


def reliability(y_true: Sequence[Any], proba: np.ndarray, classes: np.ndarray, n_bins: int = N_BINS) -> Reliability:
    """Reliability bins of the top-1 score of ``proba`` (columns in ``classes`` order) against ``y_true``."""
    proba = np.asarray(proba, dtype=np.float64)
    classes = np.asarray(classes)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    if len(proba) == 0:
        empty = np.full(n_bins, np.nan)
        return Reliability(edges, np.zeros(n_bins, dtype=np.int64), empty, empty)
    top = np.argmax(proba, axis=1)  # the first of equal scores, as the ranking does
    confidence = proba[np.arange(len(proba)), top]
    correct = classes[top] == np.asarray(y_true)
    # Bin i holds scores in (edges[i], edges[i+1]]; a score of 0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / counts
        share = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins) / counts
    return Reliability(edges, counts, mean_confidence, share)


def expected_calibration_error(y_true: Sequence[Any], proba: np.ndarray, classes: np.ndarray,
                               n_bins: int = N_BINS) -> float:
    """ECE of the top-1 score (see :func:`reliability`)."""
    return reliability(y_true, proba, classes, n_bins).ece


def fit_temperature(y_true: Sequence[Any], proba: np.ndarray, classes: np.ndarray) -> float:
    """The temperature minimising the log loss of the tempered ``proba`` on these (held-out) rows."""
    proba = np.asarray(proba, dtype=np.float64)
    classes = np.asarray(classes)
    labels = np.asarray(y_true)
    index = np.searchsorted(classes, labels).clip(0, max(len(classes) - 1, 0))
    known = (classes[index] == labels) if len(classes) else np.zeros(len(labels), dtype=bool)
    if not known.any():
        return 1.0
    rows, truth = proba[known], index[known]

    def loss(log_t: float) -> float:
        tempered = temper(rows, float(np.exp(log_t)))
        return float(-np.log(np.maximum(tempered[np.arange(len(rows)), truth], PROBA_FLOOR)).mean())

    found = minimize_scalar(loss, bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded", options={"xatol": 1e-4})
    # Keep 1 when tempering does not measurably help (a flat loss, or an optimiser's wobble).
    return float(np.exp(found.x)) if found.fun < loss(0.0) - 1e-9 else 1.0
