"""Target 3: training many clients at once (`train-all`) against one `trainer` command per client.

It also measures the two ways of running many fits in parallel that the issue names, on the fit
alone (no MLflow): a process pool (what `train-all` uses) and Spark's `groupBy().applyInPandas`.
"""
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from benchmarks._common import BenchContext, Row, Section, run_command, seconds, write_config
from categories_classification.paths import train_path
from categories_classification.training.fitting import fit_model
from scripts.generate_example_data import ClientSpec, write_client

FEATURES = ["f0", "f1", "f2", "f3", "f4"]
DATE = "2026-11-23"


def run(ctx: BenchContext) -> Section:
    """Train N small generated clients three ways, each into its own fresh MLflow store."""
    n_clients = 4 if ctx.quick else 200
    section = Section(
        "Many clients: train-all in parallel",
        "`train-all` uses both cores (parallel across clients) and, for 200 generated small clients, is at "
        "least 1.7x faster than running the `trainer` command once per client in sequence.",
    )
    data = ctx.scratch("data")
    specs = [ClientSpec(f"bench_{i:03d}", 1000 + i, n_train=600, n_predict=50, n_categories=10)
             for i in range(n_clients)]
    for spec in specs:
        write_client(spec, data)
    config = write_config(ctx.workdir / "clients.yaml", {spec.client_id: {"features": FEATURES} for spec in specs})
    cli = [ctx.python, "categories_classification_cli.py"]

    def env(store: str) -> dict[str, str]:
        return {"DATA_PREFIX": str(data), "MLFLOW_TRACKING_URI": f"sqlite:///{ctx.scratch(store) / 'mlflow.db'}"}

    # One `trainer` process costs the same for every one of these equal-sized clients (start-up
    # dominates): the full run times every 4th client and scales up, to keep the run under an hour.
    step = 1 if ctx.quick else 4
    sampled = 0.0
    for spec in specs[::step]:
        sampled += run_command([*cli, "trainer", f"--client_id={spec.client_id}", f"--features={json.dumps(FEATURES)}",
                                 "--model_params={}", f"--training_date={DATE}"], env=env("sequence")).seconds
    sequence = sampled * n_clients / len(specs[::step])
    one_worker = run_command([*cli, "train-all", f"--config={config}", f"--training_date={DATE}", "--workers=1"],
                             env=env("one_worker"))
    parallel = run_command([*cli, "train-all", f"--config={config}", f"--training_date={DATE}"],
                           env=env("parallel"))
    for timed_run in (one_worker, parallel):
        if f"{n_clients}/{n_clients}" not in timed_run.result:
            raise RuntimeError(f"train-all did not train all {n_clients} clients:\n{timed_run.result[-2000:]}")
    pool_seconds = fit_with_pool(data, [spec.client_id for spec in specs])
    spark_seconds = _fit_with_spark(data)
    speedup = sequence / parallel.seconds
    section.rows += [
        Row(f"`train-all` ({n_clients} clients, one worker per core)", seconds(parallel.seconds),
            f"{seconds(sequence)}: `trainer` x {n_clients} in sequence"
            + (f" (timed on {len(specs[::step])} of them, scaled)" if step > 1 else ""), f"{speedup:.2f}x faster", ">= 1.7x faster",
            speedup >= 1.7 if not ctx.quick else None),
        Row("`train-all --workers 1` (same process, one client at a time)", seconds(one_worker.seconds),
            seconds(parallel.seconds) + " with one worker per core",
            f"{one_worker.seconds / parallel.seconds:.2f}x (2 cores: 2x is ideal)"),
        Row(f"fit only, {n_clients} clients: process pool (2 workers)", seconds(pool_seconds),
            f"{seconds(spark_seconds)}: Spark `groupBy(client).applyInPandas`, local[2] (session start excluded)",
            f"{spark_seconds / pool_seconds:.2f}x faster"),
        Row("peak memory of `train-all` (process tree)", f"{parallel.peak_rss_bytes / 2**20:,.0f} MiB",
            f"{one_worker.peak_rss_bytes / 2**20:,.0f} MiB with --workers 1"),
    ]
    section.notes += [
        f"Each client: {specs[0].n_train} training rows, {specs[0].n_categories} categories, project default "
        "parameters; every run logs, registers and passes the promotion gate in a fresh SQLite MLflow store.",
        "The sequence pays Python + MLflow start-up once per client; `train-all` pays it once per worker "
        "(a fork server preloads the trainer) and trains clients side by side, each fit with cores/workers threads.",
        "Chosen: a process pool rather than Spark's `groupBy().applyInPandas` (compared on the fit alone above): "
        "every client's training must also log and register in MLflow and pass its own promotion gate, which a "
        "pool worker does next to its fit; with Spark that work would run inside tasks or go back to the driver "
        "one client at a time, and a training would need a Spark session (10 s start, a JVM) for nothing else.",
    ]
    return section


def _fit_one(path: str) -> int:
    """Fit one client's model as training does (candidates, choice, final fit; project defaults), one thread, no MLflow."""
    frame = pd.read_csv(path)
    fit_model(frame[FEATURES], frame["category_id"], {"n_jobs": 1})
    return len(frame)


def fit_with_pool(data: Path, client_ids: list[str]) -> float:
    """Seconds to fit every client's model (the choice and the final fit, no MLflow) in a pool of one process per core."""
    paths = [train_path(client_id, str(data)) for client_id in client_ids]
    workers = os.cpu_count() or 1
    # Forked from this process, which has the trainer imported: warm workers, as Spark's are after its first job.
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(time.sleep, [0.5] * workers))  # the workers are started before the clock
        started = time.perf_counter()
        rows = sum(pool.map(_fit_one, paths))
        seconds_taken = time.perf_counter() - started
    if rows == 0:
        raise RuntimeError("no training rows")
    return seconds_taken


def _fit_with_spark(data: Path) -> float:
    # pylint: disable=import-outside-toplevel
    from categories_classification.prediction.spark import get_spark

    spark = get_spark("bench_many_models")
    try:
        frame = spark.read.csv(str(data / "train"), header=True, inferSchema=True)  # client_id from the folders

        # Pickled by value (the workers need no benchmarks/); fit_model goes by reference to its module.
        def fit(group: pd.DataFrame) -> pd.DataFrame:
            fit_model(group[FEATURES], group["category_id"], {"n_jobs": 1})  # as _fit_one
            return pd.DataFrame({"client_id": [group["client_id"].iloc[0]], "rows": [len(group)]})

        frame = frame.cache()
        frame.count()  # reading the CSVs is not what is compared
        # Python workers started and warm: one small fit per core before the clock starts.
        frame.limit(400).groupBy("client_id").applyInPandas(fit, schema="client_id string, rows long").collect()
        started = time.perf_counter()
        fitted = frame.groupBy("client_id").applyInPandas(fit, schema="client_id string, rows long").collect()
        seconds_taken = time.perf_counter() - started
        if not fitted:
            raise RuntimeError("Spark fitted no client")
        return seconds_taken
    finally:
        spark.stop()
