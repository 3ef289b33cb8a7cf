"""Target 1: the 10 design clients' models, project defaults against the design's configuration.

For every client of ``../shared/seed-data`` (the design's data and config), on the split every
training uses (:func:`trainer.split_training_data`):

- **design**: sklearn's defaults plus the seed config's params (fully grown trees), with the
  project's ``random_state`` so that the run is reproducible;
- **project defaults**: :func:`fitting.fit_forest`, the code path of ``train_model``: the seed
  config's params stay authoritative, the rest (the automatic ``max_leaf_nodes`` within the
  default size budget) is the project's;
- **previous default** (informative): ``min_samples_leaf=10``, the default before this choice.

Sizes: the pickled forest (what the issue's 3.66 GB measures, and what a scoring process holds
in memory), the skops file as the registry stores it today, and the same skops file deflated.
Accuracy: top-5 on the held-out test split. Forests are measured and dropped one at a time.

    python -m benchmarks.run --only model_size [--quick]
"""
import pickle
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from skops.io import dumps as plain_skops_bytes
from sklearn.ensemble import RandomForestClassifier

from benchmarks._common import BenchContext, Row, Section, megabytes, ratio, seconds
from categories_classification.config import ClientConfig, ClientsConfig, load_config
from categories_classification.training.data import load_training_data
from categories_classification.training.evaluation import top_k_accuracy
from categories_classification.paths import train_path
from categories_classification.serialization import dump_model
from categories_classification.training.sizing import (
    MARGIN_STANDARD_ERRORS,
    MAX_LOSS_FROM_BEST,
    estimate_forest_bytes,
    leaf_curve,
    model_memory_bytes,
)
from categories_classification.training.fitting import DEFAULT_MAX_MODEL_MB, SEED, fit_forest
from categories_classification.training.trainer import split_training_data
from scripts.generate_example_data import ClientSpec, write_client

TARGET_SIZE_SHARE = 0.03  # of the design's pickled size
TARGET_MEAN_GAIN = 0.0  # mean top-5 difference, project defaults - design
TARGET_WORST_DROP = -0.01  # no client more than one point lower
PLOT = "model_size_vs_top5.png"
QUICK_SPECS = (ClientSpec("quick_0", 201, n_train=3000, n_predict=100, n_categories=30),
               ClientSpec("quick_1", 202, n_train=2000, n_predict=100, n_categories=15),
               ClientSpec("quick_2", 203, n_train=1500, n_predict=100, n_categories=40))
QUICK_TREES = {"quick_0": 30, "quick_1": 20, "quick_2": 10}


@dataclass(frozen=True)
class Measured:
    """One fitted forest's sizes (bytes), held-out top-5 accuracy and time to train."""

    pickle_bytes: int
    skops_bytes: Optional[int]
    deflated_bytes: Optional[int]
    top5: float
    seconds: float
    max_leaf_nodes: Any = None


def run(ctx: BenchContext) -> Section:
    """Fit and measure both configurations per client; rows, notes and the size/accuracy plot."""
    section = Section(
        "Model size without losing accuracy",
        f"With the project's defaults, the 10 design clients' models together take at most "
        f"{TARGET_SIZE_SHARE:.0%} of what the design's configuration takes (fully grown forests, pickled), and "
        "held-out top-5 accuracy is no worse: on average over the clients at least equal, no client more than "
        "1 point lower.",
    )
    clients = design_clients(ctx, section, "3 small generated clients with 10-30 trees")
    if clients is None:
        return section
    config, prefix = clients
    results = {client.client_id: _measure_client(client, prefix, with_second_seed=not ctx.quick) for client in config}
    _rows(section, results)
    _notes(section, results, ctx.quick)
    section.plots.append(_plot(ctx.outdir, results))
    return section


def design_clients(ctx: BenchContext, section: Section, quick: str) -> Optional[tuple[ClientsConfig, str]]:
    """The design's 10 clients (config, data prefix); a quick run's small generated ones (``quick`` says
    what they are, in a note); None, with a note, when the seed data is not on this machine."""
    if ctx.quick:
        section.notes.append(f"Quick run: {quick}; the targets are about the design's 10 clients (full run).")
        return _quick_clients(ctx)
    if ctx.seed_data is None:
        section.notes.append("Skipped: the design's seed data (../shared/seed-data) is not on this machine.")
        return None
    return load_config(ctx.seed_data / "clients_config.yaml"), str(ctx.seed_data)


def _quick_clients(ctx: BenchContext) -> tuple[ClientsConfig, str]:
    root = ctx.scratch("data")
    clients = {}
    for spec in QUICK_SPECS:
        write_client(spec, root)
        clients[spec.client_id] = ClientConfig(spec.client_id, tuple(f"f{i}" for i in range(5)),
                                               {"n_estimators": QUICK_TREES[spec.client_id]})
    return ClientsConfig(root / "clients_config.yaml", clients), str(root)


def _measure_client(client: ClientConfig, prefix: str, with_second_seed: bool) -> dict[str, Any]:
    data = load_training_data(client.client_id, client.features, train_path(client.client_id, prefix))
    x_train, x_test, y_train, _ = split = split_training_data(data.features, data.labels)
    explicit = dict(client.params)

    design_params = {"random_state": SEED, "n_jobs": -1, **explicit}  # sklearn's defaults + the config
    design = _measure(RandomForestClassifier(**design_params), split, skops=False)
    ours = fit_forest(x_train, y_train, explicit, client.max_model_mb)
    project = _scored(ours.model, split, ours.search_seconds + ours.fit_seconds, skops=True,
                      max_leaf_nodes=ours.params.get("max_leaf_nodes"))
    previous = _measure(RandomForestClassifier(**{**design_params, "min_samples_leaf": 10, **explicit}), split,
                        skops=False, deflated=False)  # only its pickled size is reported
    result = {"client": client, "n_trees": ours.params["n_estimators"], "n_classes": len(ours.model.classes_),
              "rows": len(x_train), "design": design, "project": project, "previous": previous,
              "search_seconds": ours.search_seconds, "fit_seconds": ours.fit_seconds,
              "reason": ours.size.reason if ours.size else "explicit size params"}
    del ours
    if with_second_seed:
        result["hindsight_bytes"] = _hindsight_bytes(design_params, split, design.top5, result["n_classes"])
        # How much the design's own top-5 moves with the seed: the scale of "one point".
        other = RandomForestClassifier(**{**design_params, "random_state": SEED + 1}).fit(x_train, y_train)
        result["design_other_seed_top5"] = top_k_accuracy(split[3], other.predict_proba(x_test), other.classes_)
        del other
    return result


def _hindsight_bytes(design_params: Mapping[str, Any], split, design_top5: float, n_classes: int) -> int:
    """The smallest forest (best-first, same trees) whose *test* top-5 reaches the design's: a bound no
    training-split rule can beat, computed with hindsight on the test split (never a way to train)."""
    x_train, x_test, y_train, y_test = split
    grown = RandomForestClassifier(**{**design_params, "max_leaf_nodes": len(y_train)}).fit(x_train, y_train)
    curve = leaf_curve([grown], x_test, y_test)
    del grown
    leaves = next((value for value in sorted(curve.candidates) if curve.accuracy(value) >= design_top5),
                  max(curve.candidates))
    return estimate_forest_bytes(design_params.get("n_estimators", 100), leaves, n_classes)


def _measure(model: RandomForestClassifier, split, skops: bool, deflated: bool = True) -> Measured:
    x_train, _, y_train, _ = split
    started = time.perf_counter()
    model.fit(x_train, y_train)
    return _scored(model, split, time.perf_counter() - started, skops=skops, deflated=deflated)


def _scored(model: RandomForestClassifier, split, fit_seconds: float, skops: bool, deflated: bool = True,
            max_leaf_nodes: Any = None) -> Measured:
    _, x_test, _, y_test = split
    top5 = top_k_accuracy(y_test, model.predict_proba(x_test), model.classes_)
    return Measured(model_memory_bytes(model), len(plain_skops_bytes(model)) if skops else None,
                    len(dump_model(model)) if deflated else None, top5, fit_seconds, max_leaf_nodes)


def _rows(section: Section, results: Mapping[str, dict[str, Any]]) -> None:
    design = sum(r["design"].pickle_bytes for r in results.values())
    ours = sum(r["project"].pickle_bytes for r in results.values())
    stored = sum(r["project"].skops_bytes for r in results.values())
    deflated = sum(r["project"].deflated_bytes for r in results.values())
    design_deflated = sum(r["design"].deflated_bytes for r in results.values())
    previous = sum(r["previous"].pickle_bytes for r in results.values())
    gains = {client: r["project"].top5 - r["design"].top5 for client, r in results.items()}
    worst = min(gains, key=gains.get)
    share = f"target <= {TARGET_SIZE_SHARE:.0%}"
    section.rows += [
        Row("total size stored in the registry (deflated skops) vs design pickled", megabytes(deflated),
            megabytes(design), _share(deflated, design), share, deflated <= TARGET_SIZE_SHARE * design),
        Row("total size in memory (pickled): project defaults vs design", megabytes(ours), megabytes(design),
            _share(ours, design), share, ours <= TARGET_SIZE_SHARE * design),
        Row("total size, skops file uncompressed (as the registry stored it before) vs design pickled",
            megabytes(stored), megabytes(design), _share(stored, design)),
        Row("total size, deflated skops both sides: project defaults vs design", megabytes(deflated),
            megabytes(design_deflated), _share(deflated, design_deflated)),
        Row("total size, pickled: previous default (min_samples_leaf=10) vs design", megabytes(previous),
            megabytes(design), _share(previous, design)),
        *([Row("total size with hindsight (each client's smallest leaf count matching the design's TEST top-5; "
               "a bound, not a method) vs design", megabytes(sum(r["hindsight_bytes"] for r in results.values())),
               megabytes(design), _share(sum(r["hindsight_bytes"] for r in results.values()), design))]
          if all("hindsight_bytes" in r for r in results.values()) else []),
        Row("mean held-out top-5 accuracy, project defaults - design",
            f"{statistics.mean(gains.values()) * 100:+.2f} points",
            f"design mean {statistics.mean(r['design'].top5 for r in results.values()):.4f}", "",
            "target >= 0", statistics.mean(gains.values()) >= TARGET_MEAN_GAIN),
        Row("worst client's held-out top-5 accuracy, project defaults - design", f"{gains[worst] * 100:+.2f} points",
            worst, "", "target >= -1 point", gains[worst] >= TARGET_WORST_DROP - 1e-12),
        Row("training time, all clients: project defaults (size search + fit) vs design fit",
            seconds(sum(r["project"].seconds for r in results.values())),
            seconds(sum(r["design"].seconds for r in results.values())),
            ratio(sum(r["project"].seconds for r in results.values()), sum(r["design"].seconds for r in results.values()))),
        Row("training time, all clients: size search alone / previous default's fit",
            seconds(sum(r["search_seconds"] for r in results.values())),
            seconds(sum(r["previous"].seconds for r in results.values()))),
    ]
    for client, r in results.items():
        design_r, ours_r = r["design"], r["project"]
        section.rows.append(Row(
            f"{client} ({r['rows']:,} rows, {r['n_classes']} categories, {r['n_trees']} trees): "
            f"max_leaf_nodes {ours_r.max_leaf_nodes}",
            f"{megabytes(ours_r.pickle_bytes)} pickled, {megabytes(ours_r.skops_bytes)} skops "
            f"({megabytes(ours_r.deflated_bytes)} deflated); top-5 {ours_r.top5:.4f}; "
            f"{seconds(r['search_seconds'])} search + {seconds(r['fit_seconds'])} fit",
            f"design {megabytes(design_r.pickle_bytes)} pickled ({megabytes(design_r.deflated_bytes)} deflated skops); "
            f"top-5 {design_r.top5:.4f}; {seconds(design_r.seconds)} fit",
            _share(ours_r.pickle_bytes, design_r.pickle_bytes),
            f"top-5 {gains[client] * 100:+.2f} pt (>= -1)", gains[client] >= TARGET_WORST_DROP - 1e-12))


def _share(value: float, reference: float) -> str:
    return f"{value / reference:.2%}" if reference else "n/a"


def _notes(section: Section, results: Mapping[str, dict[str, Any]], quick: bool) -> None:
    design = sum(r["design"].pickle_bytes for r in results.values())
    section.notes += [
        "Project defaults = the config's explicit params (n_estimators) + `random_state`, `n_jobs` and the "
        "automatic `max_leaf_nodes`: the smallest leaf count whose top-5 accuracy on a validation split carved out "
        f"of the training split beats fully grown trees by {MARGIN_STANDARD_ERRORS:g} standard error of the paired "
        f"difference and is within {MAX_LOSS_FROM_BEST:g} of the best candidate's (all read from one forest of fully "
        "grown best-first trees, truncated), at the same rows per leaf on "
        f"the whole training split, capped by the size budget (default {DEFAULT_MAX_MODEL_MB:g} MB in memory per "
        "client).",
        "Design = sklearn's defaults + the config's params, with `random_state` fixed to the project's seed for a "
        "reproducible comparison (the design left it unset).",
        f"Sizes in MB of 10^6 bytes. Pickled = pickle protocol {pickle.HIGHEST_PROTOCOL} of the fitted forest "
        f"(the design's total here: {megabytes(design)}; the issue quotes 3.66 GB). The registry stores the "
        "skops file deflated (tracking.flavor.log_and_register re-zips what MLflow's sklearn flavour writes; loading is "
        "unchanged): that is what disk, upload and download pay. In memory, and in Spark, the forest takes its "
        "pickled size; both are held to the 3% target. Deflating the design's models too would shrink them "
        "about 20x, hence the 'both sides' row.",
    ]
    seeds = [r for r in results.values() if "design_other_seed_top5" in r]
    if seeds:
        moves = [abs(r["design_other_seed_top5"] - r["design"].top5) * 100 for r in seeds]
        section.notes.append(
            f"Noise: the design's own held-out top-5 moves by {statistics.mean(moves):.2f} points on average "
            f"(up to {max(moves):.2f}) when only its random_state changes ({SEED} -> {SEED + 1}).")
    if not quick:
        section.notes.append("Choices: " + "; ".join(f"{client}: {r['reason']}" for client, r in results.items()))


def _plot(outdir: Path, results: Mapping[str, dict[str, Any]]) -> str:
    # pylint: disable=import-outside-toplevel  # matplotlib only where a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    for name, key, marker in (("design (fully grown)", "design", "o"), ("project defaults", "project", "s")):
        axes.scatter([r[key].pickle_bytes / 1e6 for r in results.values()], [r[key].top5 for r in results.values()],
                     marker=marker, label=name, zorder=3)
    for client, r in results.items():
        axes.plot([r["design"].pickle_bytes / 1e6, r["project"].pickle_bytes / 1e6], [r["design"].top5, r["project"].top5],
                  color="grey", linewidth=0.8, zorder=1)
        axes.annotate(client, (r["project"].pickle_bytes / 1e6, r["project"].top5), fontsize=7,
                      xytext=(4, -3), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("model size, pickled (MB, log scale)")
    axes.set_ylabel("held-out top-5 accuracy")
    axes.set_title("Model size vs top-5 accuracy per client")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(outdir / PLOT, dpi=110)
    plt.close(figure)
    return PLOT
