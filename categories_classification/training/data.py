"""Read and validate a client's training CSV, with one-line errors naming client, file and column."""
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from categories_classification.errors import InputDataError, one_line
from categories_classification.paths import is_uri

ID_COLUMN = "product_id"
LABEL_COLUMN = "category_id"
MIN_ROWS_PER_CATEGORY = 2  # a stratified train/test split needs each category on both sides


@dataclass(frozen=True)
class TrainingData:
    """Validated training rows: the feature matrix (configured column order) and the labels."""

    features: pd.DataFrame
    labels: pd.Series


def load_training_data(client_id: str, features: Sequence[str], path: str) -> TrainingData:
    """Read ``path`` (gzip CSV) and check it can train a model on ``features``.

    Raises :class:`InputDataError` for a missing, empty, corrupt or header-only file, a missing
    column, a non-numeric, NaN or infinite feature value, missing labels, fewer than two
    categories, or a category with fewer rows than a stratified split needs.
    """
    frame = _read_csv(client_id, path, dtype={ID_COLUMN: str, LABEL_COLUMN: str})
    return validate_training_frame(client_id, frame, features, path)


def validate_training_frame(client_id: str, frame: pd.DataFrame, features: Sequence[str], path: str) -> TrainingData:
    """Pure validation of an already-read training table (see :func:`load_training_data`)."""
    features = list(features)
    if frame.empty:
        raise InputDataError(f"training file {path}: has a header but no data rows", client_id)
    _require_columns(client_id, frame, [ID_COLUMN, LABEL_COLUMN, *features], path)
    matrix = numeric_features(client_id, frame, features, path)
    labels = frame[LABEL_COLUMN]
    if labels.isna().any():
        line = _first_line(labels.isna())
        raise InputDataError(
            f"training file {path}: column {LABEL_COLUMN!r} is empty at line {line} "
            f"({int(labels.isna().sum())} row(s)): every training row needs a category",
            client_id,
        )
    counts = labels.value_counts()
    if len(counts) < 2:
        raise InputDataError(
            f"training file {path}: column {LABEL_COLUMN!r} has a single category {counts.index[0]!r}: "
            "expected at least 2 categories to learn from",
            client_id,
        )
    rare = counts[counts < MIN_ROWS_PER_CATEGORY]
    if not rare.empty:
        shown = ", ".join(f"{label!r} ({count} row)" for label, count in rare.sort_index().head(5).items())
        raise InputDataError(
            f"training file {path}: column {LABEL_COLUMN!r}: {len(rare)} categor{'y has' if len(rare) == 1 else 'ies have'} "
            f"fewer than {MIN_ROWS_PER_CATEGORY} rows, which a stratified train/test split needs: {shown}",
            client_id,
        )
    return TrainingData(matrix, labels.astype(str))


def numeric_features(client_id: str, frame: pd.DataFrame, features: Sequence[str], path: str) -> pd.DataFrame:
    """The feature columns as float64; :class:`InputDataError` on a non-numeric, NaN or inf value."""
    columns = {}
    for column in features:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            coerced = pd.to_numeric(values, errors="coerce")
            bad = coerced.isna() & values.notna()
            if bad.any():
                raise InputDataError(
                    f"file {path}: feature column {column!r} must be numeric, found {values[bad].iloc[0]!r} "
                    f"at line {_first_line(bad)} ({int(bad.sum())} non-numeric value(s))",
                    client_id,
                )
            values = coerced
        values = values.astype(np.float64)
        missing = values.isna()
        if missing.any():
            raise InputDataError(
                f"file {path}: feature column {column!r} is empty or NaN at line {_first_line(missing)} "
                f"({int(missing.sum())} row(s)): expected a number in every row",
                client_id,
            )
        infinite = np.isinf(values.to_numpy())
        if infinite.any():
            raise InputDataError(
                f"file {path}: feature column {column!r} is infinite at line "
                f"{_first_line(pd.Series(infinite, index=values.index))}: expected finite numbers",
                client_id,
            )
        columns[column] = values
    return pd.DataFrame(columns, index=frame.index)


def _read_csv(client_id: str, path: str, dtype: dict) -> pd.DataFrame:
    local = _local_path(client_id, path)
    if not local.is_file():
        raise InputDataError(f"file {path}: not found (expected a gzip CSV at this path; is DATA_PREFIX right?)", client_id)
    if local.stat().st_size == 0:
        raise InputDataError(f"file {path}: is empty (0 bytes): expected a gzip CSV with a header row", client_id)
    try:
        return pd.read_csv(local, dtype=dtype, compression="gzip", keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise InputDataError(f"file {path}: contains no CSV header: expected a header row and data", client_id) from None
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise InputDataError(f"file {path}: is not a valid gzip file ({exc}): expected a gzip-compressed CSV", client_id) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputDataError(f"file {path}: is not a readable CSV ({one_line(exc)})", client_id) from None


def _local_path(client_id: str, path: str) -> Path:
    if path.startswith("file://"):
        return Path(path[len("file://"):])
    if path.startswith("file:"):
        return Path(path[len("file:"):])
    if is_uri(path):
        raise InputDataError(
            f"file {path}: training reads local files; expected a local DATA_PREFIX or a file: URI", client_id
        )
    return Path(path)


def _require_columns(client_id: str, frame: pd.DataFrame, required: Sequence[str], path: str) -> None:
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise InputDataError(
            f"file {path}: missing column(s) {', '.join(map(repr, missing))}: "
            f"expected {', '.join(required)}, found {', '.join(map(str, frame.columns))}",
            client_id,
        )


def _first_line(mask: pd.Series) -> int:
    # Line numbers as a user sees them in the file: the header is line 1.
    return int(np.flatnonzero(mask.to_numpy())[0]) + 2
