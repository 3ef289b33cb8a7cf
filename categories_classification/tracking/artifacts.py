"""Fetching a registered version's files and checking them before anything deserializes them.

Each version carries the SHA-256 of its stored file (the version tag ``model_sha256``) and of its
companion files (``<name>.sha256``): a file damaged or changed in the artifact store is refused.
Models are loaded with the project's list of trusted types only, never with pickle.
"""
import logging
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from categories_classification.errors import InfrastructureError, ModelIntegrityError, ModelNotFoundError, describe_os_error, one_line
from categories_classification.records import COMPANION_DIGEST_SUFFIX
from categories_classification.serialization import DIGEST_TAG, digest_problem, load_model_bytes, sha256_hex, zip_damage
from categories_classification.tracking.registry import ModelRef, looked_up
from categories_classification.tracking.store import tracking_errors

LOGGER = logging.getLogger(__name__)
# What a damaged file's deserialization raises (zip, deflate, skops' JSON schema and types).
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, TypeError)


def fetch_model_bytes(ref: ModelRef) -> tuple[bytes, list[str]]:
    """A version's skops file content, checked against its digest, and its input columns.

    Nothing deserializes the bytes before the check: a file that does not match the digest
    registered with it is refused (:class:`ModelIntegrityError`). A version registered without a
    digest is checked as a zip (every entry's CRC-32) and loaded with a warning.
    """
    data, features, _, _ = _fetch_verified(ref)
    return data, features


def fetch_model_and_companion(ref: ModelRef, companion: str) -> tuple[bytes, list[str], Optional[str]]:
    """:func:`fetch_model_bytes`, plus the text of a companion file stored with the model (None if absent).

    The companion comes with the same download as the model file (versions registered before it
    existed simply lack it).
    """
    data, features, _, text = _fetch_verified(ref, companion)
    return data, features, text


def load_model(ref: ModelRef) -> tuple[Any, list[str]]:
    """Download, verify and deserialize a version (trusted types only); return it with its input columns."""
    data, features, file_name, _ = _fetch_verified(ref)
    try:
        return load_model_bytes(data), features
    except _UNREADABLE as exc:
        # Reached only by a file that passed its checks (no digest, intact zip) but not skops.
        raise _integrity_error(ref, file_name, f"cannot be deserialized ({type(exc).__name__}: {one_line(exc)})") from exc


def _fetch_verified(ref: ModelRef, companion: Optional[str] = None) -> tuple[bytes, list[str], str, Optional[str]]:
    """:func:`fetch_model_bytes`, plus the model file's name (for messages) and the companion's text."""
    ref = looked_up(ref)
    text = None
    try:
        with tempfile.TemporaryDirectory(prefix="categories_model_") as scratch:
            model_file, features = download_model_file(ref, scratch)
            data = model_file.read_bytes()
            if companion is not None and (model_file.parent / companion).is_file():
                text = (model_file.parent / companion).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:  # the local scratch folder, not MLflow (download_model_file maps those)
        raise InfrastructureError(f"model {ref.name} version {ref.version}: cannot download it to a local "
                                  f"temporary folder: {describe_os_error(exc)}", ref.client_id) from exc
    problem = model_file_problem(ref, data)
    if problem is not None:
        raise _integrity_error(ref, model_file.name, problem)
    if not ref.digest:
        LOGGER.warning("client %s: model %s version %s was registered without a %s tag: its file cannot be "
                       "checked against a digest (retrain to get one)", ref.client_id, ref.name, ref.version,
                       DIGEST_TAG)
    return data, features, model_file.name, text


def companion_problem(ref: ModelRef, name: str, text: str) -> Optional[str]:
    """What is wrong with a companion file's text against its registered digest, or None.

    A version registered before companions had digests has nothing to check against: None.
    """
    expected = dict(ref.companion_digests).get(name)
    if not expected:
        return None
    found = sha256_hex(text.encode("utf-8"))
    if found != expected:
        return (f"does not match its digest (expected {name}{COMPANION_DIGEST_SUFFIX} {expected}, found {found}): "
                "it was damaged or changed after registration")
    return None


def model_file_problem(ref: ModelRef, data: bytes) -> Optional[str]:
    """What is wrong with a version's stored file content, or None; never deserializes it.

    With a registered digest, any difference is a problem; without one (a version registered
    before digests were recorded), a zip that does not read back intact.
    """
    if ref.digest:
        return digest_problem(ref.digest, data)
    damage = zip_damage(data)
    if damage is not None:
        return (f"cannot be read ({damage}): expected an intact skops zip file (the version has no "
                f"{DIGEST_TAG} tag to check it against)")
    return None


def _integrity_error(ref: ModelRef, file_name: str, problem: str) -> ModelIntegrityError:
    """The one line refusing a version's stored file: which file, what is wrong, what to do."""
    return ModelIntegrityError(
        f"model {ref.name} version {ref.version}: the stored file {_stored_location(ref, file_name)} {problem}; "
        f"refusing to load it. Retrain the client, or serve another version: "
        f"set-champion --client_id={ref.client_id} --version=<an earlier version>",
        ref.client_id,
    )


def _stored_location(ref: ModelRef, file_name: str) -> str:
    """Where the version's file lives in the artifact store (asked only when it is refused)."""
    try:
        return f"{MlflowClient().get_model_version_download_uri(ref.name, str(ref.version)).rstrip('/')}/{file_name}"
    except (MlflowException, OSError):
        return f"{ref.uri}/{file_name}"


def download_model_file(ref: ModelRef, destination: str) -> tuple[Path, list[str]]:
    """Download a model version; return the path of its skops file and its input column names."""
    with tracking_errors(ref.client_id):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=destination))
        meta = mlflow.models.Model.load(str(local))
    flavor = meta.flavors.get("sklearn", {})
    if flavor.get("serialization_format") != mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS:
        raise ModelNotFoundError(
            f"model {ref.name} version {ref.version}: expected the skops format, found "
            f"{flavor.get('serialization_format')!r}; refusing to load it",
            ref.client_id,
        )
    inputs = meta.get_input_schema()
    # The features are the required inputs (product_id is an optional input of the served model).
    columns = inputs.required_input_names() if inputs is not None else []
    return local / flavor["pickled_model"], [str(column) for column in columns]
