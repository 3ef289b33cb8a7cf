"""The estimators the registry stores around a fitted model: temperature scaling, and the average of an ensemble.

Shared by training (which fits the temperature) and prediction (which only calls
``predict_proba``); light imports (numpy, sklearn.base) because Spark's workers load it with
the model. Temperature scaling raises every probability to the power ``1 / temperature`` and
renormalises each row: a strictly increasing map of each row, so the ranking of the categories
(top-5 order, ties included) is exactly the underlying model's, and zeros stay zeros.
"""
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


ROW_BLOCK = 32  # rows per block of a BLAS matrix product (16 on AVX-512, 8 on AVX2), with room to spare


def temper(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of ``proba`` raised to ``1 / temperature`` and renormalised (order within a row kept)."""
    proba = np.asarray(proba, dtype=np.float64)
    if temperature == 1.0:
        return proba
    with np.errstate(divide="ignore"):
        logits = np.log(proba) / float(temperature)
    # Shift by each row's largest logit before exp: no overflow, same ratios.
    scaled = np.exp(logits - logits.max(axis=1, keepdims=True))
    return scaled / scaled.sum(axis=1, keepdims=True)


def row_stable_proba(estimator: Any, x: Any) -> np.ndarray:
    """``estimator.predict_proba(x)``, always computed over a whole number of :data:`ROW_BLOCK` rows.

    A BLAS multiplies the rows that do not fill its last block of a matrix product (and numpy a
    lone row: a matrix-vector product) by other routines, whose sums may differ in the last bit
    (seen with logistic, MLP, QDA and gradient boosting; on AMD's CPUs for any count not a multiple
    of 8). Copies of the first row fill the last block and their scores are dropped: a product gets
    the same scores alone (an online request), in any batch, and in any share of a batch.
    """
    rows = len(x)
    missing = -rows % ROW_BLOCK
    if not missing:
        return estimator.predict_proba(x)
    index = np.concatenate([np.arange(rows), np.zeros(missing, dtype=np.intp)])
    padded = x.iloc[index] if hasattr(x, "iloc") else np.asarray(x)[index]
    return estimator.predict_proba(padded)[:rows]


class TemperatureScaledClassifier(ClassifierMixin, BaseEstimator):
    """``estimator`` (fitted) whose probabilities are tempered by ``temperature`` (> 0; 1 leaves them)."""

    def __init__(self, estimator: Any = None, temperature: float = 1.0) -> None:
        self.estimator = estimator
        self.temperature = temperature

    def fit(self, x: Any, y: Any) -> "TemperatureScaledClassifier":
        """Fit the underlying estimator (the temperature is set by whoever calibrated it)."""
        self.estimator.fit(x, y)
        return self

    @property
    def classes_(self) -> np.ndarray:
        """The underlying estimator's categories, in its column order."""
        return self.estimator.classes_

    @property
    def n_jobs(self) -> Any:
        """The underlying estimator's threads (None for estimators without the setting)."""
        return getattr(self.estimator, "n_jobs", None)

    @n_jobs.setter
    def n_jobs(self, value: Any) -> None:
        # Prediction sets n_jobs=1 for reproducible sums: pass it on to a forest.
        if hasattr(self.estimator, "n_jobs"):
            self.estimator.n_jobs = value

    def predict_proba(self, x: Any) -> np.ndarray:
        """Calibrated probabilities, columns in ``classes_`` order (a row's alike alone or among others)."""
        return temper(row_stable_proba(self.estimator, x), self.temperature)

    def predict(self, x: Any) -> np.ndarray:
        """The most probable category (the underlying estimator's, tempering keeps the order)."""
        return self.classes_[np.argmax(self.predict_proba(x), axis=1)]


class AveragedClassifier(ClassifierMixin, BaseEstimator):
    """The mean of fitted ``estimators``' probabilities: an ensemble that is one estimator object.

    Every member must have been fitted on the same rows' categories (same ``classes_``, same
    order); each is usually a :class:`TemperatureScaledClassifier`, so that the members' scores are
    on one scale before they are averaged.
    """

    def __init__(self, estimators: Any = None) -> None:
        self.estimators = estimators

    def fit(self, x: Any, y: Any) -> "AveragedClassifier":
        """Fit every member on the same rows."""
        for estimator in self.estimators:
            estimator.fit(x, y)
        return self

    @property
    def classes_(self) -> np.ndarray:
        """The members' categories (the first member's order, which every member shares)."""
        return self.estimators[0].classes_

    @property
    def n_jobs(self) -> Any:
        """The first member's threads (None when no member has the setting)."""
        return next((getattr(member, "n_jobs") for member in self.estimators if hasattr(member, "n_jobs")), None)

    @n_jobs.setter
    def n_jobs(self, value: Any) -> None:
        for member in self.estimators:
            if hasattr(member, "n_jobs"):
                member.n_jobs = value

    def predict_proba(self, x: Any) -> np.ndarray:
        """The members' probabilities averaged, columns in ``classes_`` order."""
        total = np.asarray(self.estimators[0].predict_proba(x), dtype=np.float64).copy()
        for member in self.estimators[1:]:
            total += member.predict_proba(x)
        return total / len(self.estimators)

    def predict(self, x: Any) -> np.ndarray:
        """The category of highest mean probability."""
        return self.classes_[np.argmax(self.predict_proba(x), axis=1)]
