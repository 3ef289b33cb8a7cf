"""Metrics of a probabilistic classifier."""
import numpy as np
import pytest

from categories_classification.training.evaluation import classification_metrics, per_class_report, top_k_curve


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


def test_top_k_curve_is_non_decreasing_and_reaches_one():
    rng = np.random.default_rng(3)
    classes = np.array([f"c{i}" for i in range(5)])
    proba = rng.random((50, 5))
    curve = top_k_curve(rng.choice(classes, 50), proba, classes)
    assert len(curve) == 5 and all(a <= b for a, b in zip(curve, curve[1:])) and curve[-1] == 1.0


def test_per_class_report():
    classes = np.array(["a", "b", "c"])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    report = per_class_report(np.array(["a", "b", "b"]), proba, classes).set_index("category")
    assert report.loc["b", "support"] == 2 and report.loc["b", "recall"] == 0.5
    assert report.loc["a", "precision"] == 0.5 and report.loc["c", "support"] == 0
    assert report.loc["b", "top_5_recall"] == 1.0
