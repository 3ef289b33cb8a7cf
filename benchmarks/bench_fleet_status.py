"""Issue #13: `fleet-status --json` over a store of 1,000 clients stays a few seconds.

The store is built the fastest honest way: one client is trained and predicted for real (the
trainer, the predictor's Spark job), then every other client gets copies of those runs (same
params, metrics and tags, through MLflow's client API), two registered versions pointing at the
real model's files and the champion alias: the same tables, rows and searches fleet-status reads,
without fitting 2,000 forests.
"""
import json

from benchmarks._common import BenchContext, Row, Section, run_command, seconds, write_config

FEATURES = ["f0", "f1", "f2", "f3", "f4"]
TARGET_SECONDS = 5.0


def run(ctx: BenchContext) -> Section:
    """Build the store, then time the command (best of 3, a fresh process each time)."""
    clients = 30 if ctx.quick else 1000
    section = Section(
        "Fleet status at 1,000 clients",
        f"`fleet-status --json` over 1,000 clients (2 trainings, 2 versions and 1 prediction each) in "
        f"< {TARGET_SECONDS:g} s, start-up included.",
    )
    store = ctx.scratch("store")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "DATA_PREFIX": str(ctx.scratch("data")),
           "SPARK_MASTER": "local[2]"}
    built = run_command([ctx.python, "-c", _BUILD, str(clients), env["DATA_PREFIX"]], env=env, timeout=3600)
    config = write_config(ctx.workdir / "clients.yaml", {
        f"client_{i:04d}": {"features": FEATURES} for i in range(clients)})
    command = [ctx.python, "categories_classification_cli.py", "fleet-status", "--config", str(config), "--json"]
    runs = [run_command(command, env=env) for _ in range(3)]
    best = min(runs, key=lambda timed: timed.seconds)
    view = json.loads(best.result[best.result.index("{"):])
    if view["clients"] != clients:
        raise RuntimeError(f"fleet-status listed {view['clients']} clients, expected {clients}")
    startup = min(run_command([ctx.python, "categories_classification_cli.py", "--help"], env=env).seconds
                  for _ in range(2))
    inside = min(float(run_command([ctx.python, "-c", _READ, str(config)], env=env).result.strip().splitlines()[-1])
                 for _ in range(2))
    flagged = view["needing_attention"]
    section.rows += [
        Row(f"`fleet-status --json`, {clients} clients (best of 3, incl. start-up)", seconds(best.seconds),
            target=f"< {TARGET_SECONDS:g} s", met=best.seconds < TARGET_SECONDS if not ctx.quick else None),
        Row("the same, other runs", ", ".join(seconds(timed.seconds) for timed in runs)),
        Row("of which reading MLflow and building the rows (`fleet.read_fleet`, in-process, best of 2)", seconds(inside)),
        Row("CLI start-up before MLflow is imported (`--help`)", seconds(startup)),
        Row("peak memory of the command", f"{best.peak_rss_bytes / 1e6:,.0f} MB"),
        Row("clients flagged", f"{flagged} of {clients}"),
    ]
    section.notes += [
        f"Store: {built.result.strip().splitlines()[-1]}",
        "One client (`client_0000`) is trained and predicted for real; the others' runs copy its params, metrics "
        "and tags (MlflowClient.create_run + log_batch), their versions point at its model files, so every table "
        "fleet-status reads holds what real trainings and predictions would put there.",
        "About 1 client in 10 is given a reason to be flagged (a failed last training, an old training date, "
        "a weaker champion, no prediction for the latest date, a drift score); their flags are in the JSON.",
    ]
    return section


# The reading alone, once the modules are imported: what grows with the number of clients.
_READ = """
import sys, time
from categories_classification import fleet
from categories_classification.config import load_config
config = load_config(sys.argv[1])
started = time.perf_counter()
fleet.read_fleet(config)
print(time.perf_counter() - started)
"""

# Runs in a subprocess with the store's environment: the real client, then the copies.
_BUILD = '''
import random, sys, time
from pathlib import Path
from datetime import datetime, timedelta, timezone
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from categories_classification.records import CHAMPION, experiment_name, model_name
from categories_classification.tracking.runs import ensure_experiment
from categories_classification.prediction.predictor import predict_categories
from categories_classification.training.trainer import train_model
from scripts.generate_example_data import ClientSpec, write_client

clients, prefix = int(sys.argv[1]), sys.argv[2]
started = time.perf_counter()
today = datetime.now(timezone.utc).date()
write_client(ClientSpec("client_0000", 7, n_train=600, n_predict=300, n_categories=20), Path(prefix))
features = ["f0", "f1", "f2", "f3", "f4"]
train_model("client_0000", features, {"n_estimators": 10}, today.isoformat(), data_prefix=prefix)
second = train_model("client_0000", features, {"n_estimators": 12}, today.isoformat(), data_prefix=prefix)
predict_categories("client_0000", today.isoformat(), data_prefix=prefix)
client = MlflowClient()
experiment = client.get_experiment_by_name(experiment_name("client_0000"))
training = client.get_run(second.run_id)
prediction = client.search_runs([experiment.experiment_id], "tags.stage = 'prediction'")[0]
source = client.get_model_version("client_0000_model", str(second.version)).source
rng = random.Random(13)

def copy(experiment_id, run, tags, metrics):
    params = [Param(key, value) for key, value in run.data.params.items()]
    new = client.create_run(experiment_id, run_name=run.info.run_name, tags={**run.data.tags, **tags})
    now = int(time.time() * 1000)
    client.log_batch(new.info.run_id, metrics=[Metric(key, value, now, 0) for key, value in
                                                {**run.data.metrics, **metrics}.items()], params=params)
    return new.info.run_id

def train(i, version):
    cid, kind = f"client_{i:04d}", i % 50  # a few clients in each state a person should see
    trained = (today - timedelta(days=90 if kind == 1 else 30 * (2 - version))).isoformat()
    accuracy = 0.80 if version == 1 else (0.70 if kind == 2 else 0.80 + rng.uniform(-0.005, 0.02))
    gate = {} if version == 1 else {"promotion_challenger_top_5_accuracy": accuracy,
                                    "promotion_champion_top_5_accuracy": 0.80}
    run_id = copy(ensure_experiment(cid), training, {
        "client_id": cid, "training_date": trained, "champion_version_before": "1" if version == 2 else ""},
        {"test_top_5_accuracy": accuracy, **gate})
    client.set_terminated(run_id)
    client.create_model_version(model_name(cid), source, run_id, tags={
        "client_id": cid, "training_date": trained, "promotion_decision": "promoted"})
    return run_id

# Every client's first version, then every client's second a month later, as the DAGs train them.
for i in range(1, clients):
    client.create_registered_model(model_name(f"client_{i:04d}"), tags={"client_id": f"client_{i:04d}"})
    train(i, 1)
for i in range(1, clients):
    cid, kind = f"client_{i:04d}", i % 50
    run_id = train(i, 2)
    client.set_registered_model_alias(model_name(cid), CHAMPION, "2")
    experiment_id = ensure_experiment(cid)
    if kind == 3:  # the last training failed
        client.set_terminated(copy(experiment_id, training, {"client_id": cid}, {}), "FAILED")
for i in range(1, clients):
    cid, kind = f"client_{i:04d}", i % 50
    if kind != 4:  # no prediction for the latest date
        client.set_terminated(copy(ensure_experiment(cid), prediction, {"client_id": cid},
                                   {"drift_max": 0.5} if kind == 5 else {}))
print(f"{clients} clients, {2 * clients} training runs, {2 * clients} versions, about {clients} prediction runs, "
      f"built in {time.perf_counter() - started:.0f} s")
'''
