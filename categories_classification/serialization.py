"""Safe model (de)serialization with skops: a fixed list of trusted types, never pickle.

Kept free of MLflow and Spark imports because Spark's Python workers import it to load models.
"""
import hashlib
import io
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
    """Types that ``data`` needs beyond skops' defaults and :data:`SKOPS_TRUSTED_TYPES`."""
    return sorted(set(_skops().get_untrusted_types(data=data)) - set(SKOPS_TRUSTED_TYPES))


def _skops() -> Any:
    # skops (and the sklearn it imports) takes seconds to import: only what writes or reads a
    # model pays for it, not the registry lookups of fleet-status or the CLI's start.
    import skops.io  # pylint: disable=import-outside-toplevel

    return skops.io
