"""After `make demo`: 10 registered models and 10 parquet outputs with exactly 5 rows per product."""
import sys
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from categories_classification.config import load_config
from categories_classification.records import model_name
from categories_classification.tracking.store import configure_tracking

configure_tracking()
client = MlflowClient()
config = load_config()
problems = []
for settings in config:
    if not client.search_model_versions(f"name = '{model_name(settings.client_id)}'"):
        problems.append(f"{settings.client_id}: no registered model")
    outputs = sorted(Path("data/products_categories", f"client_id={settings.client_id}").glob("date=*"))
    if not outputs:
        problems.append(f"{settings.client_id}: no parquet output")
        continue
    frame = pd.read_parquet(outputs[-1])
    source = pd.read_csv(f"data/prediction/client_id={settings.client_id}/data_predict.csv.gz", usecols=["product_id"])
    sizes = frame.groupby("product_id").size()
    if set(sizes) != {5} or len(sizes) != source["product_id"].nunique():
        problems.append(f"{settings.client_id}: rows per product {sorted(set(sizes))}, products {len(sizes)}/{len(source)}")
print("\n".join(problems) or f"demo ok: {len(config)} registered models and outputs with 5 rows per product")
sys.exit(1 if problems else 0)
