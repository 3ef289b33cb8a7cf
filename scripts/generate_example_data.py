"""Deterministic example datasets in the design's layout (no download: the project makes its own).

Each client gets ``train/client_id=<id>/data_train.csv.gz`` (``product_id, category_id, f0..f4``)
and ``prediction/client_id=<id>/data_predict.csv.gz`` (``product_id, f0..f4``) under the data
prefix. Products of a category scatter around that category's centre in feature space, with
enough overlap that a model ranks several plausible categories (top-1 is hard, top-5 is not).

    python scripts/generate_example_data.py                 # the 10 example clients in ./data
    python scripts/generate_example_data.py --clients 200 --train-rows 2000 --output-dir /tmp/d
"""
import argparse
import gzip
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

N_FEATURES = 5
DEFAULT_SEED = 20261123
FLOAT_FORMAT = "%.8g"
CHUNK_ROWS = 100_000  # rows formatted at a time when writing a CSV (bounded text buffers)


@dataclass(frozen=True)
class ClientSpec:
    """Shape of one generated client."""

    client_id: str
    index: int
    n_train: int
    n_predict: int
    n_categories: int


def example_specs(n_clients: int = 10, seed: int = DEFAULT_SEED, train_rows: Optional[int] = None,
                  predict_rows: Optional[int] = None, categories: Optional[int] = None) -> list[ClientSpec]:
    """Client shapes at the design's scale (5k-20k training rows, 5k-19k prediction rows, 15-62
    categories) unless fixed sizes are given."""
    rng = np.random.default_rng(seed)
    specs = []
    for index in range(n_clients):
        specs.append(ClientSpec(
            client_id=f"client_{index}",
            index=index,
            n_train=train_rows or int(rng.integers(5_000, 20_001)),
            n_predict=predict_rows or int(rng.integers(5_000, 19_001)),
            n_categories=categories or int(rng.integers(15, 63)),
        ))
    return specs


def client_frames(spec: ClientSpec, seed: int = DEFAULT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (training, prediction) tables of one client; the same spec and seed give the same data."""
    rng = np.random.default_rng([seed, spec.index])
    labels = np.array([f"c{spec.index}_{code}" for code in rng.choice(20_000, spec.n_categories, replace=False)])
    centres = rng.normal(0.0, 0.1, size=(spec.n_categories, N_FEATURES))
    # Uneven category sizes, as in real catalogues; every category keeps a fair share of rows.
    weights = rng.uniform(0.3, 1.0, spec.n_categories)
    weights /= weights.sum()

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        which = np.concatenate([np.arange(spec.n_categories), rng.choice(spec.n_categories, n - spec.n_categories, p=weights)])
        rng.shuffle(which)
        values = centres[which] + rng.normal(0.0, 0.075, size=(n, N_FEATURES))
        return which, values

    train_which, train_values = rows(spec.n_train)
    train = pd.DataFrame({"product_id": product_ids(rng, spec.n_train), "category_id": labels[train_which]})
    predict_which, predict_values = rows(spec.n_predict)
    del predict_which  # the prediction file is unlabelled
    predict = pd.DataFrame({"product_id": product_ids(rng, spec.n_predict)})
    for column in range(N_FEATURES):
        train[f"f{column}"] = train_values[:, column]
        predict[f"f{column}"] = predict_values[:, column]
    return train, predict


def product_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random version-4 UUID strings drawn from ``rng`` (reproducible, unlike uuid.uuid4)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    # Vectorised hex formatting (a Python loop takes seconds per million ids): two ASCII hex
    # digits per byte, dashes at the UUID positions, then one fixed-width string per row.
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    hexes = np.empty((n, 32), dtype=np.uint8)
    hexes[:, 0::2] = digits[raw >> 4]
    hexes[:, 1::2] = digits[raw & 0x0F]
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    for start, stop, offset in ((0, 8, 0), (8, 12, 1), (12, 16, 2), (16, 20, 3), (20, 32, 4)):
        text[:, start + offset:stop + offset] = hexes[:, start:stop]
    # One UCS-4 code unit per character: the same "<U36" array the old string loop produced.
    return text.astype("<u4").view("<U36").ravel()


def write_client(spec: ClientSpec, output_dir: Path, seed: int = DEFAULT_SEED) -> None:
    """Write one client's two gzip CSV files under ``output_dir`` in the design's layout."""
    train, predict = client_frames(spec, seed)
    for frame, folder, name in ((train, "train", "data_train.csv.gz"), (predict, "prediction", "data_predict.csv.gz")):
        target = output_dir / folder / f"client_id={spec.client_id}" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_csv_gz(frame, target)


def write_csv_gz(frame: pd.DataFrame, target: Path, chunk_rows: int = CHUNK_ROWS) -> None:
    """``frame`` as gzip CSV: the very bytes of ``frame.to_csv(target, compression=gzip level 6,
    mtime 0)``, up to twice as fast on large frames when a second core is free.

    Formatting the text (Python, holds the GIL) and compressing it (zlib, releases the GIL) are
    the two halves of the cost; here one chunk is compressed in a thread while the next is
    formatted. Deflate's output does not depend on how its input is split, and the gzip header
    (file name, mtime=0) and the final sync flush are the ones pandas writes, so the file is
    byte-for-byte the same.
    """
    with gzip.GzipFile(filename=str(target), mode="wb", compresslevel=6, mtime=0) as out, \
            ThreadPoolExecutor(max_workers=1) as compressor:
        pending: Optional[Future] = None
        for start in range(0, max(len(frame), 1), chunk_rows):
            text = frame.iloc[start:start + chunk_rows].to_csv(index=False, header=start == 0,
                                                               float_format=FLOAT_FORMAT)
            if pending is not None:
                pending.result()
            pending = compressor.submit(out.write, text.encode("utf-8"))
        if pending is not None:
            pending.result()
        out.flush()  # pandas flushes once before closing (an empty sync block): same bytes


def write_config(specs: list[ClientSpec], path: Path) -> None:
    """A clients config listing ``specs`` with the example features (default model params)."""
    lines = [f"{spec.client_id}:\n  features: [{', '.join(f'f{i}' for i in range(N_FEATURES))}]\n" for spec in specs]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--output-dir", type=Path, default=Path("data"), help="data prefix to write into (default: data)")
    parser.add_argument("--clients", type=int, default=10, help="number of clients client_0..client_N-1 (default: 10)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: fixed, reproducible)")
    parser.add_argument("--train-rows", type=int, help="training rows per client (default: 5k-20k)")
    parser.add_argument("--predict-rows", type=int, help="prediction rows per client (default: 5k-19k)")
    parser.add_argument("--categories", type=int, help="categories per client (default: 15-62)")
    parser.add_argument("--config", type=Path, help="also write a clients config for these clients here")
    args = parser.parse_args(argv)
    specs = example_specs(args.clients, args.seed, args.train_rows, args.predict_rows, args.categories)
    for spec in specs:
        write_client(spec, args.output_dir, args.seed)
    if args.config:
        write_config(specs, args.config)
    print(f"wrote {len(specs)} client(s) under {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
