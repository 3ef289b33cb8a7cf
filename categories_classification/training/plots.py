"""Figures for the MLflow UI and the inspection notebook (matplotlib, headless)."""
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd


def _pyplot():
    # Imported on first use with a non-interactive backend: training runs on servers without a
    # display, and importing pyplot at module level would cost every CLI call.
    # pylint: disable=import-outside-toplevel
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def top_k_figure(curves: dict[str, Sequence[float]], title: str):
    """Top-k accuracy for k = 1..n, one line per named curve (e.g. train and test)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ks = np.arange(1, len(values) + 1)
        axes.plot(ks, values, marker="o", label=name)
    axes.set(title=title, xlabel="k (categories proposed)", ylabel="share of products with the true category in the top k",
             ylim=(0, 1.02), xticks=list(range(1, max(len(v) for v in curves.values()) + 1)))
    axes.grid(alpha=0.3)
    axes.legend()
    return _laid_out(figure)


def per_class_figure(report: pd.DataFrame, title: str, top: int = 30):
    """Top-1 recall and top-5 recall of the ``top`` most frequent categories."""
    plt = _pyplot()
    shown = report.head(top)
    figure, axes = plt.subplots(figsize=(max(6, 0.3 * len(shown) + 2), 4))
    positions = np.arange(len(shown))
    axes.bar(positions - 0.2, shown["recall"], width=0.4, label="recall (top-1)")
    axes.bar(positions + 0.2, shown.filter(like="top_").iloc[:, 0], width=0.4, label="recall (top-5)")
    axes.set_xticks(positions, shown["category"], rotation=90, fontsize=7)
    axes.set(title=title, xlabel=f"category ({len(shown)} most frequent in the test split)", ylabel="recall", ylim=(0, 1.02))
    axes.legend()
    return _laid_out(figure)


def reliability_figure(bins: Mapping[str, Any], title: str):
    """Reliability diagram: share of correct top-1 categories against the mean top-1 score, per score bin.

    ``bins`` maps a name (e.g. before / after calibration) to a
    :class:`~categories_classification.training.calibration.Reliability`.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for name, value in bins.items():
        used = value.counts > 0
        axes.plot(value.confidence[used], value.accuracy[used], marker="o", label=f"{name} (ECE {value.ece:.3f})")
    axes.set(title=title, xlabel="mean top-1 score in the bin", ylabel="share whose top-1 category is right",
             xlim=(0, 1), ylim=(0, 1))
    axes.grid(alpha=0.3)
    axes.legend()
    return _laid_out(figure)


def _laid_out(figure):
    """``figure`` with its subplots fitted to it once (``tight_layout``), and no layout engine left on it.

    ``tight_layout`` leaves a placeholder engine behind, for which ``savefig`` lays every text out
    once more (drawing nothing) before it renders: the same pixels, without that pass.
    """
    figure.tight_layout()
    figure.set_layout_engine(None)
    return figure


def close_figure(figure) -> None:
    """Free a figure once it is saved (pyplot keeps every open figure alive otherwise)."""
    _pyplot().close(figure)
