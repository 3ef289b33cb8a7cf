"""The driver's cache of model files, keyed by the SHA-256 registered with each version.

A version's skops file is what the workers are shipped; it is downloaded once per machine and
kept, with its input columns and drift reference beside it, under a name made of the digest
registered with it (so one name always means the same bytes, whichever run or process made it).
A later prediction of the same version reads the file back and checks it against that digest;
anything missing, unreadable or different is downloaded again. A version registered without a
digest is downloaded every time. Entries unused for a week are removed (:mod:`categories_classification.scratch`).
"""
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from categories_classification.errors import InfrastructureError, ModelNotFoundError, describe_os_error
from categories_classification.scratch import prune
from categories_classification.serialization import sha256_hex, untrusted_types
from categories_classification.tracking.artifacts import fetch_model_and_companion
from categories_classification.tracking.registry import ModelRef

CACHE_ENV = "CATEGORIES_MODEL_CACHE"  # the cache folder; default <temp folder>/categories_models
MODEL_SUFFIX, META_SUFFIX = ".skops", ".json"


@dataclass(frozen=True)
class CachedModel:
    """A version's file on this machine, its input columns and its drift reference's text (None if it has none)."""

    path: Path
    features: tuple[str, ...]
    reference: Optional[str]


def cache_folder() -> Path:
    """Where model files are kept (``$CATEGORIES_MODEL_CACHE``, else the temporary folder's ``categories_models``)."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "categories_models").absolute()


def cached_model(ref: ModelRef, companion: str) -> CachedModel:
    """The version's checked file on this machine: from the cache when its digest matches, else downloaded.

    ``companion`` is the file stored with the model whose text is kept too (the drift reference).
    A file with untrusted types or no input signature is refused (:class:`ModelNotFoundError`).
    """
    folder = cache_folder()
    stem = f"{ref.name}-v{ref.version}-{(ref.digest or ref.run_id)[:16]}"
    model_path, meta_path = folder / f"{stem}{MODEL_SUFFIX}", folder / f"{stem}{META_SUFFIX}"
    if ref.digest:
        hit = _read(model_path, meta_path, ref.digest)
        if hit is not None:
            return hit
    model_bytes, features, reference = fetch_model_and_companion(ref, companion)
    # Checked on the driver so that an unsafe file fails once, clearly, instead of in every task.
    refused = untrusted_types(model_bytes)
    if refused:
        raise ModelNotFoundError(
            f"model {ref.name} version {ref.version} needs untrusted type(s) {', '.join(refused)}; refusing to load it",
            ref.client_id)
    if not features:
        raise ModelNotFoundError(f"model {ref.name} version {ref.version} has no input signature", ref.client_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write(model_path, model_bytes)
        # The meta file last: an entry without one is never read, whatever stopped this process.
        _write(meta_path, json.dumps({"features": list(features), "reference": reference}).encode("utf-8"))
    except OSError as exc:
        raise InfrastructureError(f"model {ref.name} version {ref.version}: cannot keep its file in the model cache "
                                  f"{folder} ({describe_os_error(exc)}): expected a writable folder "
                                  f"(${CACHE_ENV})", ref.client_id) from None
    prune(folder)
    return CachedModel(model_path, tuple(features), reference)


def _read(model_path: Path, meta_path: Path, digest: str) -> Optional[CachedModel]:
    """The cached entry if it is whole and its file matches ``digest``; else None (downloaded again)."""
    try:
        meta: Any = json.loads(meta_path.read_text(encoding="utf-8"))
        if sha256_hex(model_path.read_bytes()) != digest:
            return None
        features, reference = tuple(str(name) for name in meta["features"]), meta["reference"]
        for path in (model_path, meta_path):
            os.utime(path)  # used: kept by the pruning (a cache that cannot be marked is not read)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not features or not isinstance(reference, (str, type(None))):
        return None
    return CachedModel(model_path, features, reference)


def _write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a unique staging name, then a rename: processes share the cache)."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    staging.write_bytes(data)
    staging.replace(path)
