"""The ``$DATA_PREFIX`` layout: pure functions of (prefix, client_id, date), no I/O.

``products_categories/`` holds parquet files only (a hive-partitioned dataset any reader can scan);
what describes or prepares it lives beside it, under ``_manifests/`` and ``_staging/``.
``DATA_PREFIX`` defaults to ``./data``; it may also be a URI that Spark understands
(``file:``, ``s3a:``, ``hdfs:``), which the prediction side reads and writes through Hadoop.
"""
import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Optional

from categories_classification.errors import ConfigError

DEFAULT_DATA_PREFIX = "./data"
OUTPUT_DIR = "products_categories"
MANIFESTS_DIR = "_manifests"  # '_': Spark and pyarrow skip it when reading the whole prefix
STAGING_DIR = "_staging"
TRAIN_FILE = "data_train.csv.gz"
PREDICT_FILE = "data_predict.csv.gz"

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def data_prefix(prefix: Optional[str] = None) -> str:
    """The data root: ``prefix`` if given, else ``$DATA_PREFIX``, else ``./data`` (no trailing /)."""
    value = prefix if prefix is not None else os.environ.get("DATA_PREFIX") or DEFAULT_DATA_PREFIX
    return value.rstrip("/") or "/"


def is_uri(path: str) -> bool:
    """True for ``scheme:...`` paths (``file:``, ``s3a:``, ``hdfs:``), False for plain local paths."""
    return bool(_URI.match(path))


def is_local(path: str) -> bool:
    """True for a path on this machine's disk: a plain path or a ``file:`` URI."""
    return not is_uri(path) or path.startswith("file:")


def local_path(path: str) -> Path:
    """``path`` (a plain path or a ``file:`` URI) as a path on this machine."""
    return Path(path[len("file:"):] if path.startswith("file:") else path)


def absolute(path: str) -> str:
    """``path`` as an absolute local path, or unchanged if it is a URI (lineage means the same from anywhere)."""
    return path if is_uri(path) else os.path.abspath(path)


def _join(*parts: str) -> str:
    # Plain "/" joining on purpose: os.path.join would mangle URIs on other platforms.
    return "/".join(part.strip("/") if i else part.rstrip("/") for i, part in enumerate(parts))


def train_path(client_id: str, prefix: Optional[str] = None) -> str:
    """Training CSV of a client: ``<prefix>/train/client_id=<id>/data_train.csv.gz``."""
    return _join(data_prefix(prefix), "train", f"client_id={client_id}", TRAIN_FILE)


def predict_path(client_id: str, prefix: Optional[str] = None) -> str:
    """Prediction input of a client: ``<prefix>/prediction/client_id=<id>/data_predict.csv.gz``."""
    return _join(data_prefix(prefix), "prediction", f"client_id={client_id}", PREDICT_FILE)


def output_path(client_id: str, inference_date: str, prefix: Optional[str] = None) -> str:
    """Parquet output folder: ``<prefix>/products_categories/client_id=<id>/date=<date>``."""
    return _join(data_prefix(prefix), OUTPUT_DIR, f"client_id={client_id}", f"date={inference_date}")


def manifest_path(client_id: str, inference_date: str, prefix: Optional[str] = None) -> str:
    """Lineage of an output folder: ``<prefix>/_manifests/client_id=<id>/date=<date>.json``."""
    return manifest_of(output_path(client_id, inference_date, prefix))


def manifest_of(output_folder: str) -> str:
    """The manifest of an output folder given by its path (``<prefix>/products_categories/client_id=<id>/date=<d>``)."""
    prefix, _, client, name = output_folder.rstrip("/").rsplit("/", 3)
    return _join(prefix, MANIFESTS_DIR, client, f"{name}.json")


def staging_root(prefix: Optional[str] = None) -> str:
    """Where outputs are written before they are swapped in: ``<prefix>/_staging`` (same file system)."""
    return _join(data_prefix(prefix), STAGING_DIR)


def normalize_date(value: str, option: str = "inference_date", client_id: Optional[str] = None) -> str:
    """``YYYY-MM-DD`` from an ISO date or timestamp (Airflow's ``{{ ds }}`` or ``{{ ts }}``).

    Output folders use the date only, so they never contain ``:`` or ``+`` (unsafe on some
    filesystems and object stores) and an Airflow retry of the same run writes the same folder.
    """
    text = str(value).strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date().isoformat()
    except ValueError:
        raise ConfigError(
            f"--{option}: expected an ISO date like 2026-11-23 or timestamp like 2026-11-23T00:00:00+00:00, "
            f"found {value!r}",
            client_id,
        ) from None
