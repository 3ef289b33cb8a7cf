"""What several tests need: the project root, the CLI as a subprocess, configs, output paths, a top-k reference."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from categories_classification.paths import output_path
from categories_classification.topk import top_k_arrow

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "categories_classification_cli.py"
DATE = "2026-11-23"
FEATURES = ["f0", "f1", "f2", "f3", "f4"]


def run_cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI as users and Airflow do (a subprocess from the project root); never raises on failure."""
    return subprocess.run([sys.executable, str(CLI), *args], cwd=ROOT, env=dict(env), capture_output=True,
                          text=True, timeout=timeout, check=False)


def start_cli(args: Sequence[str], env: Mapping[str, str], stdout: Any = subprocess.PIPE,
              stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    """Start the CLI in its own process group (so a test can kill it with its JVM and workers)."""
    return subprocess.Popen([sys.executable, str(CLI), *args], cwd=ROOT, env=dict(env),  # pylint: disable=consider-using-with
                            stdout=stdout, stderr=stderr, text=True, start_new_session=True)


def train_args(client_id: str, features: Sequence[str] = tuple(FEATURES), params: str = "{}",
               date: str = DATE) -> list[str]:
    """The ``trainer`` command's arguments as the training DAG passes them."""
    return ["trainer", f"--client_id={client_id}", f"--features={json.dumps(list(features))}",
            f"--model_params={params}", f"--training_date={date}"]


def write_config(path: Path, clients: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a clients config (``{client_id: {features: [...], params: {...}, ...}}``) as YAML; return its path."""
    path.write_text(yaml.safe_dump({client: dict(entry) for client, entry in clients.items()}, sort_keys=False),
                    encoding="utf-8")
    return path


def client_entry(n_estimators: Optional[int] = None, **extra: Any) -> dict[str, Any]:
    """One client's config entry on the generated features (``params`` only when ``n_estimators`` is given)."""
    entry: dict[str, Any] = {"features": list(FEATURES)}
    if n_estimators is not None:
        entry["params"] = {"n_estimators": n_estimators}
    return {**entry, **extra}


def output_folder(prefix: Union[str, Path], client_id: str, date: str = DATE) -> Path:
    """The output folder of a client and date under a local data prefix (the package's own layout)."""
    return Path(output_path(client_id, date, str(prefix)))


def read_output(prefix: Union[str, Path], client_id: str, date: str = DATE) -> pd.DataFrame:
    """The parquet rows a prediction wrote, sorted by product and rank."""
    frame = pd.read_parquet(output_folder(prefix, client_id, date))
    return frame.sort_values(["product_id", "rank"]).reset_index(drop=True)


def ranked(product_ids: Sequence[Any], scores: np.ndarray, labels: Sequence[Any], k: int = 5) -> pd.DataFrame:
    """The package's top-k rows (:func:`~categories_classification.topk.top_k_arrow`) as a DataFrame."""
    ids = pa.array([None if value is None else str(value) for value in product_ids], type=pa.string())
    return top_k_arrow(ids, scores, pa.array([str(label) for label in labels], type=pa.string()), k).to_pandas()


def reference_top_k(product_ids: Sequence[Any], scores: np.ndarray, labels: Sequence[Any], k: int = 5) -> pd.DataFrame:
    """The ranking rule written the obvious way (a stable sort of every row), to check the fast one against."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray([str(label) for label in labels])
    kept = min(k, len(labels))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :kept]
    return pd.DataFrame({
        "product_id": np.repeat(np.asarray([str(value) for value in product_ids], dtype=object), kept),
        "pred_label": labels[order].ravel() if len(order) else np.array([], dtype=object),
        "pred_score": np.take_along_axis(scores, order, axis=1).ravel(),
        "rank": np.tile(np.arange(kept, dtype=np.int32), len(scores)),
    })
