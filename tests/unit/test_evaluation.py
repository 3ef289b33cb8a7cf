"""Metrics of a probabilistic classifier."""
import numpy as np
import pytest

from categories_classification.evaluation import classification_metrics


def test_perfect_scores():
    classes = np.array([f"c{i}" for i in range(7)])
    proba = np.eye(7)
    metrics = classification_metrics(classes, proba, classes, "test")
    assert metrics["test_accuracy"] == 1.0
    assert metrics["test_top_5_accuracy"] == 1.0
    assert metrics["test_f1_macro"] == 1.0
    assert metrics["test_log_loss"] == pytest.approx(0.0, abs=1e-9)


def test_top_5_counts_a_true_label_ranked_fifth():
    classes = np.array(list("abcdefg"))
    proba = np.array([[0.3, 0.2, 0.15, 0.14, 0.11, 0.06, 0.04]])
    metrics = classification_metrics(np.array(["e"]), proba, classes, "x")
    assert metrics["x_accuracy"] == 0.0
    assert metrics["x_top_5_accuracy"] == 1.0
    assert classification_metrics(np.array(["f"]), proba, classes, "x")["x_top_5_accuracy"] == 0.0


def test_top_5_is_one_with_five_classes_or_fewer():
    classes = np.array(["a", "b", "c"])
    proba = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert classification_metrics(np.array(["a", "b"]), proba, classes, "t")["t_top_5_accuracy"] == 1.0
