"""Safe model (de)serialization with skops: a fixed list of trusted types, never pickle.

Kept free of MLflow and Spark imports because Spark's Python workers import it to load models.
"""
import hashlib
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional


# skops trusts numpy and the sklearn estimators by default. On top, exactly what the model families
# need: a forest's trees' Cython state, HistGradientBoosting's tree predictors, a kNN's search tree
# and its metric, the calibration wrapper every model is registered in and the ensemble's average. A
# model file that needs any other type is refused at load time, whatever list the artifact itself may
# claim (MLflow would read that list from the artifact).
SKOPS_TRUSTED_TYPES = (
    "categories_classification.calibrated.AveragedClassifier",
    "categories_classification.calibrated.TemperatureScaledClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.tree._tree.Tree",
)
# What skops trusts by default in each kind of node (its ``__loader__``), as far as this project's model files
# use it: a file made of these nodes and types only is checked without importing skops (and the sklearn it
# imports: seconds on a driver that never loads the model). Any other node or type is left to skops' own check.
# tests/unit/test_serialization.py checks that each entry is trusted by skops itself.
_NUMPY_TYPES = ("numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32", "numpy.uint64", "numpy.uint32",
                "numpy.uint8")
_PRIMITIVES = ("builtins.int", "builtins.float", "builtins.str", "builtins.bool")
KNOWN_SAFE_NODES: dict[str, frozenset[str]] = {
    "DictNode": frozenset({"builtins.dict", "collections.OrderedDict"}),
    "ListNode": frozenset({"builtins.list"}),
    "TupleNode": frozenset({"builtins.tuple"}),
    "JsonNode": frozenset(_PRIMITIVES),
    "NdArrayNode": frozenset({"numpy.ndarray", *_NUMPY_TYPES}),
    "TypeNode": frozenset({*_PRIMITIVES, "builtins.list", "builtins.set", "builtins.tuple", *_NUMPY_TYPES}),
    "TreeNode": frozenset({"sklearn.tree._tree.Tree"}),  # in SKOPS_TRUSTED_TYPES; its constructor is always Tree
    "LossNode": frozenset({"sklearn._loss._loss.CyHalfMultinomialLoss"}),  # its constructor is its own type
    "RandomStateNode": frozenset({"numpy.random.mtrand.RandomState"}),
    "ObjectNode": frozenset({
        *SKOPS_TRUSTED_TYPES,
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn.discriminant_analysis.QuadraticDiscriminantAnalysis",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._label.LabelBinarizer",
        "sklearn.preprocessing._label.LabelEncoder",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.ExtraTreeClassifier",
    }),
}
# The model-version tag (and python_function flavour key) holding the SHA-256 of the stored model file.
DIGEST_TAG = "model_sha256"
# Zip settings of a deflated model file: level 6 is nearly as small as level 9, and much faster.
_DEFLATE = {"compression": zipfile.ZIP_DEFLATED, "compresslevel": 6}


def dump_model(model: Any) -> bytes:
    """Serialize ``model`` to skops bytes as the registry stores them (a deflated zip).

    A forest's class-probability arrays are mostly zeros, so deflate shrinks the file several
    times; :func:`load_model_bytes` reads deflated and plain files alike.
    """
    return _skops().dumps(model, **_DEFLATE)


def deflate_file(path: Path) -> int:
    """Rewrite the skops (zip) file at ``path`` deflated, atomically; return its new size in bytes.

    Same entries, same loader: only the zip compression changes.
    """
    staging = path.with_name(path.name + ".deflating")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(staging, "w", **_DEFLATE) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry))
    os.replace(staging, path)
    return path.stat().st_size


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` in hex: the digest recorded with each registered model file."""
    return hashlib.sha256(data).hexdigest()


def digest_problem(expected: str, data: bytes) -> Optional[str]:
    """Why ``data`` is not the file registered with the SHA-256 ``expected`` (also when there is none), or None."""
    found = sha256_hex(data)
    if found != expected:
        return (f"does not match its digest (expected {DIGEST_TAG} {expected or '(none)'}, found {found}): "
                "it was damaged or changed after registration")
    return None


def zip_damage(data: bytes) -> Optional[str]:
    """Why ``data`` is not an intact zip (every entry read back against its CRC-32), or None if it is.

    Catches a truncated file and changed bytes without deserializing anything.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None if bad is None else f"entry {bad!r} fails its CRC-32 check"


def load_model_bytes(data: bytes) -> Any:
    """Deserialize skops bytes, trusting only :data:`SKOPS_TRUSTED_TYPES`.

    Raises ``skops.io.exceptions.UntrustedTypesFoundException`` if the file needs another type.
    """
    return _skops().loads(data, trusted=list(SKOPS_TRUSTED_TYPES))


def untrusted_types(data: bytes) -> list[str]:
    """Types that ``data`` needs beyond skops' defaults and :data:`SKOPS_TRUSTED_TYPES`.

    A file made only of :data:`KNOWN_SAFE_NODES` needs none, and is told so without importing
    skops; any other file gets skops' own answer. (Loading is what refuses a file: the workers
    load with the trusted list whatever this says.)
    """
    if _only_known_safe_nodes(data):
        return []
    return sorted(set(_skops().get_untrusted_types(data=data)) - set(SKOPS_TRUSTED_TYPES))


def _only_known_safe_nodes(data: bytes) -> bool:
    """True if every node of the skops file's schema is of a kind and type in :data:`KNOWN_SAFE_NODES`."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, NotImplementedError):
        return False  # skops says what is wrong
    pending = [schema]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            if "__loader__" in item:
                trusted = KNOWN_SAFE_NODES.get(item["__loader__"])
                if trusted is None or f"{item.get('__module__')}.{item.get('__class__')}" not in trusted:
                    return False
            pending.extend(item.values())
    return True


def preload() -> None:
    """Import skops (and the scikit-learn it loads) now: see :func:`~categories_classification.prediction.engine.prepare`."""
    _skops()


def _skops() -> Any:
    # skops (and the sklearn it imports) takes seconds to import: only what writes or reads a
    # model pays for it, not the registry lookups of fleet-status or the CLI's start.
    import skops.io  # pylint: disable=import-outside-toplevel

    return skops.io
