"""Classification metrics of a probabilistic classifier (pure: arrays in, numbers out)."""
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from categories_classification.topk import TOP_K, top_k_indices


def classification_metrics(y_true: Sequence[str], proba: np.ndarray, classes: np.ndarray, prefix: str) -> dict[str, float]:
    """Accuracy, top-5 accuracy, log loss and macro F1 of ``proba`` (columns in ``classes`` order).

    Keys are ``<prefix>_accuracy``, ``<prefix>_top_5_accuracy``, ``<prefix>_log_loss`` and
    ``<prefix>_f1_macro``.
    """
    y_true = np.asarray(y_true)
    classes = np.asarray(classes)
    predicted = classes[np.argmax(proba, axis=1)]
    # With at most k classes every class is in the top k, which sklearn refuses to score.
    top_k = (
        float(top_k_accuracy_score(y_true, proba, k=TOP_K, labels=classes)) if len(classes) > TOP_K else 1.0
    )
    return {
        f"{prefix}_accuracy": float(accuracy_score(y_true, predicted)),
        f"{prefix}_top_{TOP_K}_accuracy": top_k,
        f"{prefix}_log_loss": float(log_loss(y_true, proba, labels=classes)),
        f"{prefix}_f1_macro": float(f1_score(y_true, predicted, labels=classes, average="macro", zero_division=0)),
    }


def top_k_accuracy(y_true: Sequence[str], proba: np.ndarray, classes: np.ndarray, k: int = TOP_K) -> float:
    """Share of rows whose true label is among the ``k`` best-scored ``classes``.

    Unlike sklearn's scorer, labels the model never saw simply count as misses, so two models
    trained on different category sets can be compared on the same rows.
    """
    hits = top_k_hits(y_true, proba, classes, k)
    return float(hits.mean()) if len(hits) else 0.0


def top_k_hits(y_true: Sequence[str], proba: np.ndarray, classes: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """One bool per row: is its true label among the ``k`` best-scored ``classes`` (the serving ranking)?"""
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return np.zeros(0, dtype=bool)
    order = top_k_indices(proba, k)  # the ranking rule of prediction, ties included
    return (np.asarray(classes)[order] == y_true[:, None]).any(axis=1)


def top_k_curve(y_true: Sequence[str], proba: np.ndarray, classes: np.ndarray, max_k: int = TOP_K) -> list[float]:
    """Top-k accuracy for k = 1..max_k (how often the true category is in the first k)."""
    return [top_k_accuracy(y_true, proba, classes, k) for k in range(1, max_k + 1)]


def per_class_report(y_true: Sequence[str], proba: np.ndarray, classes: np.ndarray) -> pd.DataFrame:
    """One row per category: support, precision, recall, F1 (top-1) and top-5 recall."""
    y_true = np.asarray(y_true)
    classes = np.asarray(classes)
    predicted = classes[np.argmax(proba, axis=1)]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=classes, zero_division=0
    )
    order = top_k_indices(proba, TOP_K)
    in_top = (classes[order] == y_true[:, None]).any(axis=1)
    top_recall = [float(in_top[y_true == label].mean()) if (y_true == label).any() else 0.0 for label in classes]
    return pd.DataFrame({
        "category": classes, "support": support, "precision": precision, "recall": recall, "f1": f1,
        f"top_{TOP_K}_recall": top_recall,
    }).sort_values(["support", "category"], ascending=[False, True], ignore_index=True)
