"""Where the tracking store is, and the same address told without credentials (no MLflow import)."""
import os
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the project's own SQLite store (``mlflow.db``)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def masked(url: str) -> str:
    """``url`` without its credentials (for messages and lineage): never print a password."""
    parsed = urlparse(url)
    if parsed.password or parsed.username:
        host = f"{parsed.hostname}:{parsed.port}" if parsed.port else f"{parsed.hostname}"
        return parsed._replace(netloc=f"***@{host}").geturl()
    return url


def display_tracking_uri() -> str:
    """:func:`tracking_uri` without any credentials in it."""
    return masked(tracking_uri())


def sqlite_file(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:`` URI, else None."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or parsed.path in ("", "/", "/:memory:"):
        return None
    # sqlite:////abs/mlflow.db -> /abs/mlflow.db ; sqlite:///mlflow.db -> mlflow.db (relative)
    return Path(unquote(parsed.path[1:]))


def is_postgres(url: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``, ``postgresql+driver://``) URL."""
    return urlparse(url).scheme.split("+", 1)[0] in ("postgresql", "postgres")


def local_artifact_location(name: str) -> Optional[str]:
    """Where experiment ``name`` keeps its artifacts: beside a SQLite store (not the current folder), else None.

    A tracking server decides on its own (the local stack's records local paths as well).
    """
    database = sqlite_file(tracking_uri())
    if database is not None:
        return (database.parent / "mlartifacts" / name).resolve().as_uri()
    return None
