"""How big a client's forest may grow: a size budget and a leaf count chosen on the training split.

:func:`choose_max_leaf_nodes` finds the smallest ``max_leaf_nodes`` that loses nothing against
fully grown trees (and little against the best leaf count the budget allows), from one
best-first fit on a validation split carved out of the training split. Pure: numpy and
scikit-learn only. The method, step by step, is in docs/model_size.md.
"""
import math
import pickle
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.tree._tree import NODE_DTYPE  # pylint: disable=no-name-in-module  # a Cython module

from categories_classification.topk import TOP_K, top_k_indices

# Bytes of one node record in sklearn's Tree (children, feature, threshold, impurity, counts).
NODE_BYTES = NODE_DTYPE.itemsize
VALUE_BYTES = 8  # float64 per class and node
MB = 1_000_000  # the unit of budgets and of the figures
# RandomForestClassifier parameters that bound a tree's size: any explicit one switches the
# automatic choice off (the user's value wins).
SIZE_PARAMS = frozenset({"max_depth", "min_samples_split", "min_samples_leaf", "min_weight_fraction_leaf",
                         "max_leaf_nodes", "min_impurity_decrease", "ccp_alpha"})
VALIDATION_SIZE = 0.2
# A candidate must beat the fully grown forest by this many standard errors of the paired
# difference on the validation rows: validation sets of a thousand rows are noisy, and the
# smallest merely "equal" candidate is, half of the time, a little worse on other rows
# (the trade-off is measured in benchmarks/results.md).
MARGIN_STANDARD_ERRORS = 0.5
# ... and be within this much top-5 accuracy of the best candidate the budget allows: where fully
# grown trees are a weak baseline (heavily overlapping categories), matching them alone would
# stop at leaf counts whose accuracy is still rising steeply.
MAX_LOSS_FROM_BEST = 0.02
LEAF_GRID_START = 4
LEAF_GRID_STEPS_PER_DOUBLING = 4  # candidates 19% apart
SEARCH_CHUNK_TREES = 50  # fully grown trees held in memory at once during the search
MAX_VALIDATION_ROWS = 5_000  # bounds the search's memory (rows x candidates x classes)


def estimate_forest_bytes(n_trees: int, n_leaves: int, n_classes: int) -> int:
    """In-memory (and pickled) size of ``n_trees`` binary trees of ``n_leaves`` leaves each."""
    return int(n_trees) * (2 * int(n_leaves) - 1) * (NODE_BYTES + VALUE_BYTES * int(n_classes))


def max_leaves_for_budget(budget_bytes: float, n_trees: int, n_classes: int) -> int:
    """The largest ``max_leaf_nodes`` whose forest fits in ``budget_bytes`` (at least 2)."""
    per_node = int(n_trees) * (NODE_BYTES + VALUE_BYTES * int(n_classes))
    nodes = int(budget_bytes // per_node)
    return max(2, (nodes + 1) // 2)


def forest_memory_bytes(model: Any) -> int:
    """Bytes of a fitted forest's tree arrays (node records + values): what pickling it costs."""
    return int(sum(tree.tree_.node_count * NODE_BYTES + tree.tree_.value.nbytes for tree in model.estimators_))


def model_memory_bytes(model: Any) -> int:
    """Bytes of any fitted model once pickled (counted, not held): what a process holds to score with it.

    The size measure every family shares; for a forest it is :func:`forest_memory_bytes` plus a
    few kilobytes of Python objects.
    """
    counter = _ByteCounter()
    pickle.dump(model, counter, protocol=pickle.HIGHEST_PROTOCOL)
    return counter.size


class _ByteCounter:
    """A write-only file that counts bytes."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        """Count ``data`` (bytes, or a PickleBuffer of a large array)."""
        size = memoryview(data).nbytes
        self.size += size
        return size


def leaf_grid(largest: int, start: int = LEAF_GRID_START, steps_per_doubling: int = LEAF_GRID_STEPS_PER_DOUBLING) -> list[int]:
    """Candidate leaf counts from ``start`` up to ``largest`` (included), geometrically spaced."""
    if largest < 2:
        return []
    values, step = set(), 0
    while True:
        value = int(round(start * 2 ** (step / steps_per_doubling)))
        if value >= largest:
            break
        values.add(max(2, value))
        step += 1
    values.add(int(largest))
    return sorted(values)


@dataclass(frozen=True)
class LeafCurve:
    """Validation top-5 hits (one bool per row) of the fully grown forest and of each truncation."""

    reference: np.ndarray
    candidates: Mapping[int, np.ndarray]
    # Each candidate's mean tree probabilities on the validation rows (what the calibration is fitted on).
    proba: Mapping[int, np.ndarray] = field(default_factory=dict)

    def accuracy(self, leaves: int) -> float:
        """Top-5 accuracy of the forest truncated to ``leaves`` leaves per tree."""
        return float(self.candidates[leaves].mean())

    @property
    def reference_accuracy(self) -> float:
        """Top-5 accuracy of the fully grown forest."""
        return float(self.reference.mean()) if len(self.reference) else 0.0

    def paired(self, leaves: int) -> tuple[float, float]:
        """Mean and standard error of (candidate hit - reference hit) over the rows."""
        difference = self.candidates[leaves].astype(np.float64) - self.reference
        if len(difference) < 2:
            return (float(difference.mean()) if len(difference) else 0.0), 0.0
        return float(difference.mean()), float(difference.std(ddof=1) / math.sqrt(len(difference)))


def leaf_curve(forests: Iterable[RandomForestClassifier], x_val: Any, y_val: Sequence[Any],
               leaves: Optional[Sequence[int]] = None, max_leaves: Optional[int] = None) -> LeafCurve:
    """Validation top-5 hits of fully grown forests and of their truncations to each leaf count.

    Every forest must be grown best-first (``max_leaf_nodes`` set): the tree it would have grown
    with ``max_leaf_nodes=L`` is then its prefix of nodes with id < 2L - 1 (ids are handed out
    two by two, in expansion order), and a row's leaf in it is the deepest node of the row's
    path with such an id. ``forests`` may be several chunks of one forest (consumed one at a
    time, so only one chunk needs to be in memory); their trees are averaged together. Without
    ``leaves``, the candidates are :func:`leaf_grid` up to the first chunk's largest tree (or
    ``max_leaves`` if smaller).
    """
    x_val = np.ascontiguousarray(x_val, dtype=np.float32)
    labels = np.asarray(y_val)
    sums: Optional[_Sums] = None
    for forest in forests:
        if sums is None:
            grown = max(estimator.tree_.n_leaves for estimator in forest.estimators_)
            if leaves is None:
                leaves = leaf_grid(min(grown, max_leaves) if max_leaves else grown)
            sums = _Sums(forest.classes_, labels, leaves)
        sums.add(forest, x_val)
    if sums is None:
        raise ValueError("leaf_curve needs at least one fitted forest")
    return sums.hits()


class _Sums:
    """Running sums of tree probabilities on the validation rows: fully grown, and per leaf count."""

    def __init__(self, classes: np.ndarray, labels: np.ndarray, leaves: Sequence[int]) -> None:
        self.classes = np.asarray(classes)
        self.leaves = sorted(int(value) for value in leaves)
        index = np.searchsorted(self.classes, labels).clip(0, len(self.classes) - 1)
        # Labels the forest never saw count as misses for every candidate alike.
        self.truth = np.where(self.classes[index] == labels, index, -1)
        shape = (len(labels), len(self.classes))
        self.reference = np.zeros(shape, dtype=np.float64)
        self.sums = [np.zeros(shape, dtype=np.float64) for _ in self.leaves]
        self.trees = 0

    def add(self, forest: RandomForestClassifier, x_val: np.ndarray) -> None:
        """Add every tree of ``forest`` (same classes) to the sums."""
        if not np.array_equal(forest.classes_, self.classes):
            raise ValueError("every chunk of the search forest must see the same classes")
        limits = 2 * np.asarray(self.leaves, dtype=np.int64) - 1
        rows = np.arange(len(x_val), dtype=np.int64)
        for estimator in forest.estimators_:
            self.trees += 1
            tree = estimator.tree_
            path = tree.decision_path(x_val)
            nodes = path.indices.astype(np.int64)  # ascending along each path: children get larger ids
            indptr = path.indptr.astype(np.int64)
            span = max(int(tree.node_count), int(limits.max(initial=0))) + 1
            keys = np.repeat(rows, np.diff(indptr)) * span + nodes  # sorted: by row, then by node id
            values = tree.value[:, 0, :]
            values = values / values.sum(axis=1, keepdims=True)
            self.reference += values[nodes[indptr[1:] - 1]]
            # Per row and limit: the first path entry with id >= limit, minus one (the root, id 0, always fits).
            ends = np.searchsorted(keys, (rows[:, None] * span + limits[None, :]).ravel()).reshape(len(rows), len(limits))
            deepest = nodes[np.maximum(ends - 1, indptr[:-1, None])]
            for index, total in enumerate(self.sums):
                total += values[deepest[:, index]]

    def hits(self) -> LeafCurve:
        """Top-5 hits per row of the fully grown forest and of every candidate."""
        return LeafCurve(_top_k_hits(self.reference, self.truth),
                         {leaves: _top_k_hits(total, self.truth) for leaves, total in zip(self.leaves, self.sums)},
                         {leaves: total / max(self.trees, 1) for leaves, total in zip(self.leaves, self.sums)})


def _top_k_hits(scores: np.ndarray, truth: np.ndarray, k: int = TOP_K) -> np.ndarray:
    # The serving ranking: by score, ties by class order.
    order = top_k_indices(scores, k)
    return (order == truth[:, None]).any(axis=1)


@dataclass(frozen=True)
class LeafChoice:
    """The leaf count chosen on the search split, and the validation figures behind it."""

    leaves: Optional[int]  # None: no candidate matched the fully grown forest
    accuracy: float  # validation top-5 of the chosen candidate (of the largest one if none matched)
    reference_accuracy: float  # validation top-5 of the fully grown forest
    margin: float  # what the candidate had to beat the reference by (z standard errors)
    best_accuracy: float = 0.0  # validation top-5 of the best candidate


def pick_leaves(curve: LeafCurve, z: float = MARGIN_STANDARD_ERRORS, max_loss: float = MAX_LOSS_FROM_BEST) -> LeafChoice:
    """The smallest candidate whose top-5 hits beat the fully grown forest's by ``z`` standard
    errors and whose top-5 accuracy is within ``max_loss`` of the best candidate's."""
    best = max((curve.accuracy(leaves) for leaves in curve.candidates), default=curve.reference_accuracy)
    for leaves in sorted(curve.candidates):
        mean, error = curve.paired(leaves)
        if mean >= max(0.0, z * error) and curve.accuracy(leaves) >= best - max_loss:
            return LeafChoice(leaves, curve.accuracy(leaves), curve.reference_accuracy, z * error, best)
    largest = max(curve.candidates, default=None)
    return LeafChoice(None, curve.accuracy(largest) if largest is not None else curve.reference_accuracy,
                      curve.reference_accuracy, 0.0, best)


@dataclass(frozen=True)
class SizeChoice:
    """What the automatic choice decided, for the fit and for MLflow."""

    max_leaf_nodes: int
    budget_leaves: int  # the largest max_leaf_nodes the budget allows
    budget_bound: bool  # True when the budget, not accuracy, set max_leaf_nodes
    estimated_bytes: int  # the size formula at max_leaf_nodes
    search: LeafChoice
    search_rows: int  # rows the search forest was fitted on
    validation_rows: int
    reason: str
    # The search forest truncated to the chosen leaf count (the largest candidate when none matched), on the
    # validation rows: top-5 hits per row and probabilities, to compare it with other families and calibrate it.
    validation_hits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), compare=False)
    validation_proba: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), compare=False)


def choose_max_leaf_nodes(x_train: Any, y_train: Sequence[Any], params: Mapping[str, Any], budget_bytes: float,
                          *, seed: int = 42, estimator: type = RandomForestClassifier) -> SizeChoice:
    """The automatic ``max_leaf_nodes`` for a forest of ``params`` trained on ``(x_train, y_train)``.

    ``estimator`` is the forest's class (any sklearn forest of best-first trees: RandomForest,
    ExtraTrees). Uses the training split only: a validation split is carved out of it with
    ``seed`` (:func:`validation_split`). Costs
    one fit of ``n_estimators`` fully grown trees on 80% of the rows (in chunks of
    :data:`SEARCH_CHUNK_TREES` trees) plus reading their paths on the validation rows.
    """
    x_train, y_train = np.asarray(x_train, dtype=np.float32), np.asarray(y_train)
    n_classes = len(np.unique(y_train))
    n_trees = int(params.get("n_estimators", 100))
    budget_leaves = max_leaves_for_budget(budget_bytes, n_trees, n_classes)
    x_fit, x_val, y_fit, y_val = validation_split(x_train, y_train, seed)
    # Candidates above what the budget allows (at the search split's rows per leaf) are not evaluated.
    search_cap = max(2, int(budget_leaves * len(y_fit) / len(y_train)))
    curve = leaf_curve(_search_chunks(x_fit, y_fit, params, n_trees, seed, estimator), x_val, y_val, max_leaves=search_cap)
    search = pick_leaves(curve)
    chosen, bound, reason = _carry_over(search, budget_leaves, search_cap, len(y_fit), len(y_train))
    kept = search.leaves if search.leaves is not None else max(curve.candidates)
    return SizeChoice(chosen, budget_leaves, bound, estimate_forest_bytes(n_trees, chosen, n_classes),
                      search, len(y_fit), len(y_val), reason, curve.candidates[kept], curve.proba[kept])


def sized_hits(split: tuple[Any, Any, Any, Any], params: Mapping[str, Any], budget_bytes: float,
               *, seed: int = 42, estimator: type = RandomForestClassifier) -> tuple[np.ndarray, int, np.ndarray]:
    """Validation top-5 hits of a forest of ``params`` at its automatic leaf count on ``split``.

    ``split`` is ``(x_fit, x_val, y_fit, y_val)``: the same search as :func:`choose_max_leaf_nodes`,
    on rows the caller gives (so that other models can be compared on the same validation rows);
    returns the hits, the leaf count and the validation probabilities (columns: the fit rows' classes).
    """
    x_fit, x_val, y_fit, y_val = split
    x_fit, y_fit = np.asarray(x_fit, dtype=np.float32), np.asarray(y_fit)
    n_trees = int(params.get("n_estimators", 100))
    budget_leaves = max_leaves_for_budget(budget_bytes, n_trees, len(np.unique(y_fit)))
    curve = leaf_curve(_search_chunks(x_fit, y_fit, params, n_trees, seed, estimator), x_val, y_val,
                       max_leaves=budget_leaves)
    search = pick_leaves(curve)
    kept = search.leaves if search.leaves is not None else max(curve.candidates)
    return curve.candidates[kept], kept, curve.proba[kept]


def _carry_over(search: LeafChoice, budget_leaves: int, search_cap: int, n_fit: int,
                n_train: int) -> tuple[int, bool, str]:
    """The search split's choice for the whole training split: (max_leaf_nodes, budget bound?, why)."""
    if search.leaves is None:
        return budget_leaves, True, (
            f"no max_leaf_nodes up to {search_cap} on {n_fit} rows matched the fully grown forest's validation "
            f"top-5 ({search.reference_accuracy:.4f}): the largest the size budget allows")
    # The same rows per leaf on the whole training split as on the search split.
    scaled = max(2, int(math.ceil(search.leaves * n_train / n_fit)))
    bound = scaled > budget_leaves
    return min(scaled, budget_leaves), bound, (
        f"smallest max_leaf_nodes whose validation top-5 ({search.accuracy:.4f}) beats the fully grown forest's "
        f"({search.reference_accuracy:.4f}) by {MARGIN_STANDARD_ERRORS:g} SE ({search.margin:.4f}) and is within "
        f"{MAX_LOSS_FROM_BEST:g} of the best candidate's ({search.best_accuracy:.4f}): {search.leaves} on {n_fit} rows, "
        f"{scaled} on {n_train}" + (", capped by the size budget" if bound else ""))


def validation_split(features: np.ndarray, labels: np.ndarray, seed: int):
    """(x_fit, x_val, y_fit, y_val): the validation split every training-split choice is made on."""
    classes, counts = np.unique(labels, return_counts=True)
    # Stratify when every category can be on both sides (the outer split guarantees it on the
    # design's data; tiny categories fall back to a plain random split).
    stratify = labels if counts.min() >= 2 and len(classes) <= VALIDATION_SIZE * len(labels) else None
    x_fit, x_val, y_fit, y_val = train_test_split(features, labels, test_size=VALIDATION_SIZE, stratify=stratify,
                                                  random_state=seed)
    if len(y_val) > MAX_VALIDATION_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(y_val), MAX_VALIDATION_ROWS, replace=False))
        x_val, y_val = x_val[keep], y_val[keep]
    return x_fit, x_val, y_fit, y_val


def _search_chunks(x_fit: np.ndarray, y_fit: np.ndarray, params: Mapping[str, Any], n_trees: int,
                   seed: int, estimator: type) -> Iterator[RandomForestClassifier]:
    """``n_trees`` fully grown best-first trees, yielded as forests of a few dozen trees."""
    search_params = {key: value for key, value in params.items() if key not in SIZE_PARAMS | {"warm_start", "oob_score"}}
    # Best-first with room for a leaf per row grows trees as fully as sklearn's default builder.
    search_params["max_leaf_nodes"] = max(2, len(y_fit))
    base = params.get("random_state", seed)
    # random_state=None (the user asked for it) keeps the search unseeded too.
    rng = np.random.default_rng(base if base is None or isinstance(base, (int, np.integer)) else seed)
    for start in range(0, n_trees, SEARCH_CHUNK_TREES):
        size = min(SEARCH_CHUNK_TREES, n_trees - start)
        chunk_seed = int(rng.integers(0, 2**31 - 1))
        yield estimator(**{**search_params, "n_estimators": size, "random_state": chunk_seed}).fit(x_fit, y_fit)
