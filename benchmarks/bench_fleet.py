"""Fleet scale: a client should cost its rows, not a fixed overhead.

For N generated clients of 5,000 prediction rows each (N = 10, 100, 1,000), side by side in one run:

- `predict-all` (a small fleet in the command's own process, else one Spark job; run twice: champions
  downloaded, then from its model cache; then with Spark forced, its own JVM) against a single-process
  fleet limit: for every
  client, fetch its champion from the registry, load it, read its CSV with pyarrow, score,
  top-5, write parquet (:func:`limit_side`, run as its own command like the CLI);
- `train-all` for the fleet (each size in a fresh store) against fitting the same clients' models
  alone (the same choice and fit, no MLflow);
- one client's `predictor` command in a fresh process, against a running Spark Connect service
  (MLflow a server, as a DAG task has it, and a SQLite file), with no service (in its own process)
  and with Spark forced (its own JVM),
  against that client's work inside the limit; the CLI's `--help` and a DAG task's start
  (`pipenv run ... --help`, what the BashOperator runs).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from benchmarks._common import BenchContext, Row, Section, ratio, run_command, seconds, write_config
from benchmarks.bench_many_clients import fit_with_pool
from categories_classification.config import load_config
from categories_classification.paths import manifest_path, predict_path
from categories_classification.prediction.engine import IN_PROCESS
from categories_classification.prediction.scoring import labels_of, score_batch
from categories_classification.topk import TOP_K
from scripts.generate_example_data import ClientSpec, write_client

FEATURES = ["f0", "f1", "f2", "f3", "f4"]
DATE = "2026-11-23"
ROWS = 5_000
RESULT_PREFIX = "RESULT "
PREDICT_TARGET, OVERHEAD_TARGET, TRAIN_TARGET = 1.5, 3.0, 2.5
SAMPLES = 3  # per-client commands timed (each the same work): the median is reported (1 in a quick run)


def run(ctx: BenchContext) -> Section:
    """Train the fleet at every size, then predict it three ways at every size."""
    # BENCH_FLEET_CLIENTS lowers the largest fleet when a run must fit in less time (say so in the notes).
    sizes = (3, 6) if ctx.quick else (10, 100, int(os.environ.get("BENCH_FLEET_CLIENTS", "1000")))
    largest = sizes[-1]
    section = Section(
        f"Fleet scale: {largest} clients x {ROWS:,} products",
        f"`predict-all` <= {PREDICT_TARGET:g}x a single-process fleet limit at 100 and {largest} clients; one "
        f"client's `predictor` task on the shared Spark service pays <= {OVERHEAD_TARGET:g} s over its work; "
        f"`train-all` at {largest} clients <= {TRAIN_TARGET:g}x fitting the same models alone.",
    )
    data = ctx.scratch("data")
    specs = [ClientSpec(f"fleet_{i:04d}", 5000 + i, n_train=1000, n_predict=ROWS, n_categories=10) for i in range(largest)]
    for spec in specs:
        write_client(spec, data)
    env = {"DATA_PREFIX": str(data), "SPARK_MASTER": "local[2]", "PYTHONWARNINGS": "ignore"}
    cli = [ctx.python, "categories_classification_cli.py"]
    configs = {size: write_config(ctx.workdir / f"clients_{size}.yaml",
                                  {spec.client_id: {"features": FEATURES} for spec in specs[:size]}) for size in sizes}

    # Each size trains in a fresh store (a first training, no champion to compare with); the
    # largest one's store is the one every prediction below reads.
    trained, fit_alone = {}, {}
    for size in sizes:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ctx.scratch(f'mlflow_{size}') / 'mlflow.db'}"
        trained[size] = run_command([*cli, "train-all", f"--config={configs[size]}", f"--training_date={DATE}"], env=env)
        _check_all(trained[size].result, size, "train-all")
        fit_alone[size] = fit_with_pool(data, [spec.client_id for spec in specs[:size]])

    where: dict[int, str] = {}  # where predict-all scored, per size (its first client's manifest)
    fleet, cold, limits = _predict(ctx, cli, sizes, configs, env, where)
    alone = _per_client(ctx, cli, specs[0].client_id, env, {size: configs[size] for size in sizes})
    _rows(section, sizes, (fleet, cold), limits, alone, specs[0].client_id)
    for size in sizes:
        section.rows.append(Row(
            f"`train-all`, {size} clients (2 workers: fit, evaluate, log, register, gate)", seconds(trained[size].seconds),
            f"{seconds(fit_alone[size])}: fitting the same models alone (2 processes)",
            ratio(trained[size].seconds, fit_alone[size]), f"<= {TRAIN_TARGET:g}x" if size == largest else "",
            trained[size].seconds / fit_alone[size] <= TRAIN_TARGET if size == largest else None))
    section.rows += [
        Row("`categories_classification_cli.py --help` (Python start, click, the CLI module)", seconds(alone["help"]),
            "", "", ""),
        Row("a DAG task's start: `pipenv run python categories_classification_cli.py --help`",
            seconds(alone["pipenv_help"]), f"{seconds(alone['help'])} without pipenv", "", ""),
    ]
    section.notes += [
        f"Clients: {specs[0].n_train} training rows, {specs[0].n_categories} categories, {ROWS:,} prediction rows each "
        "(the project's generator); a fresh SQLite MLflow store per training size; Spark local[2].",
        "Limit: one Python process, for every client in turn: resolve the champion in the registry, download and "
        "load it, read the CSV with pyarrow, score with the predictor's own batch code on 2 threads, write parquet. "
        "It logs no MLflow run, writes no manifest and swaps nothing in.",
        "predict-all runs twice per size with a model cache of its own: the first run downloads every champion "
        "(the first prediction after a retraining that changed it), the second finds them in the cache (checked "
        "against the registered digest: a champion unchanged since the last prediction); the target is judged on "
        "the second, the first is shown beside it. The limit downloads every champion each time.",
        "Where predict-all scored (each client's manifest): its first client's, per size: " + "; ".join(
            f"{size}: {where[size]}" for size in sizes) + " (in its own process up to 32 MiB of "
        "input, CATEGORIES_SCORING=auto; else one Spark job).",
        "predict-all, when it uses Spark, starts the JVM in a thread while it loads the prediction code and reads the registry, with "
        "the machine's class-data archive (built before the run, as after a machine's first command). On the shared "
        "Spark Connect service (local[2], as `make spark-connect` runs it) there is no JVM to start: the rows 'on the "
        "shared service' run the same command with SPARK_REMOTE set, after the one-client samples' service started.",
        "Fit alone: the same `fit_model` calls (candidates, choice, final fit) in a pool of 2 warm processes, "
        "clock started once the workers are up; `train-all` is timed as a whole command (start-up included).",
        "Per-client time per fleet size: " + "; ".join(
            f"{size}: fleet {seconds(fleet[size].seconds / size)}, limit {seconds(limits[size]['seconds'] / size)}"
            for size in sizes) + f"; per-client command {seconds(alone['here'])} (its own process), {seconds(alone['local'])} (own JVM), "
        f"{seconds(alone['connect'])} (shared service, MLflow server).",
        "One client's task: a DAG task reaches MLflow through the stack's MLflow server (the target's row); the "
        "SQLite row is the same command on the store file (each process pays SQLAlchemy's start on it).",
        "Every `predictor` sample: " + ", ".join(seconds(s) for s in alone["connect_samples"]) + " (service, server); "
        + ", ".join(seconds(s) for s in alone["sqlite_samples"]) + " (service, SQLite); "
        + ", ".join(seconds(s) for s in alone["here_samples"]) + " (its own process); "
        + ", ".join(seconds(s) for s in alone["local_samples"]) + " (own JVM).",
    ]
    section.plots.append(_plot(ctx, sizes, (fleet, cold), limits, alone))
    return section


def _predict(ctx: BenchContext, cli: list[str], sizes: tuple[int, ...], configs: dict[int, Path],
             env: dict[str, str], where: dict[int, str]) -> tuple[dict, dict, dict]:
    """predict-all twice (its model cache empty, then filled by the first run), then with Spark forced, and the
    limit, at every size; where the second run scored goes into ``where``."""
    fleet, cold, limits = {}, {}, {}
    for size in sizes:
        # A model cache of this size's own: its first run downloads every champion (the day after a retraining).
        fleet_env = {**env, "CATEGORIES_MODEL_CACHE": str(ctx.scratch(f"model_cache_{size}"))}
        command = [*cli, "predict-all", f"--config={configs[size]}", f"--inference_date={DATE}"]
        # Alternate which side goes first, so that neither always runs on the other's warm page cache.
        order = ["fleet", "limit"] if size % 2 else ["limit", "fleet"]
        for side in order:
            if side == "fleet":
                cold[size] = run_command(command, env=fleet_env)
                _check_all(cold[size].result, size, "predict-all")
                fleet[size] = run_command(command, env=fleet_env)
                _check_all(fleet[size].result, size, "predict-all")
                first = next(iter(load_config(configs[size]))).client_id
                where[size] = json.loads(Path(manifest_path(first, DATE, env["DATA_PREFIX"])).read_text(encoding="utf-8"))["spark"]
                if where[size] == IN_PROCESS:  # else the run above was Spark's already
                    fleet[(size, "spark")] = run_command(command, env={**fleet_env, "CATEGORIES_SCORING": "spark"})
                    _check_all(fleet[(size, "spark")].result, size, "predict-all with Spark")
                else:
                    fleet[(size, "spark")] = fleet[size]
            else:
                limits[size] = _limit(ctx, configs[size], env)
    return fleet, cold, limits


def _rows(section: Section, sizes: tuple[int, ...], runs: tuple[dict, dict], limits: dict, alone: dict[str, Any],
          client_id: str) -> None:
    fleet, cold = runs
    for size in sizes:
        value = fleet[size].seconds / limits[size]["seconds"]
        judged = size >= 100 or size == sizes[-1]
        section.rows += [
            Row(f"`predict-all`, {size} clients (one command: start-up, scoring, {size} MLflow runs; "
                "champions in the model cache)",
                seconds(fleet[size].seconds), f"{seconds(limits[size]['seconds'])} limit",
                ratio(fleet[size].seconds, limits[size]["seconds"]),
                f"<= {PREDICT_TARGET:g}x" if judged else "", value <= PREDICT_TARGET if judged else None),
            Row(f"the same, {size} clients, with Spark forced (`CATEGORIES_SCORING=spark`: its own JVM)",
                seconds(fleet[(size, "spark")].seconds), f"{seconds(limits[size]['seconds'])} limit",
                ratio(fleet[(size, "spark")].seconds, limits[size]["seconds"])),
            Row(f"the same, {size} clients, first run of these versions (every champion downloaded)",
                seconds(cold[size].seconds), f"{seconds(limits[size]['seconds'])} limit",
                ratio(cold[size].seconds, limits[size]["seconds"])),
            Row(f"the same, {size} clients, on the shared Spark Connect service (no JVM to start; its session "
                f"had the champions; its first run: {seconds(alone['on_service'][size][0])})",
                seconds(alone["on_service"][size][1]), f"{seconds(limits[size]['seconds'])} limit",
                ratio(alone["on_service"][size][1], limits[size]["seconds"])),
        ]
    one_client = limits[sizes[-1]]["per_client"][client_id]
    overhead = alone["connect"] - one_client
    samples = len(alone["connect_samples"])
    section.rows += [
        Row(f"one client's `predictor` task, shared Spark Connect service, MLflow server (median of {samples})",
            seconds(alone["connect"]), f"{seconds(one_client)}: its work inside the limit",
            f"{seconds(overhead)} over its work", f"<= {OVERHEAD_TARGET:g} s", overhead <= OVERHEAD_TARGET),
        Row("the same command, shared service, MLflow on the SQLite file", seconds(alone["sqlite"]),
            f"{seconds(one_client)}: its work inside the limit", f"{seconds(alone['sqlite'] - one_client)} over its work"),
        Row("the same command, no service (scored in its own process), SQLite", seconds(alone["here"]),
            f"{seconds(one_client)}: its work inside the limit", f"{seconds(alone['here'] - one_client)} over its work"),
        Row("the same command, Spark forced (its own JVM), SQLite", seconds(alone["local"]),
            f"{seconds(one_client)}: its work inside the limit", f"{seconds(alone['local'] - one_client)} over its work"),
    ]


def _check_all(output: str, count: int, what: str) -> None:
    if f"{count}/{count}" not in output:
        raise RuntimeError(f"{what} did not succeed for all {count} clients:\n{output[-2000:]}")


def _limit(ctx: BenchContext, config: Path, env: dict[str, str]) -> dict[str, Any]:
    out = run_command([ctx.python, "-m", "benchmarks.bench_fleet", "limit", "--config", str(config),
                       "--output", str(ctx.scratch("limit_output"))], env=env)
    line = next(line for line in out.result.splitlines() if line.startswith(RESULT_PREFIX))
    measured = json.loads(line[len(RESULT_PREFIX):])
    measured["seconds"] = out.seconds  # the whole command, as the CLI's are timed
    return measured


def _per_client(ctx: BenchContext, cli: list[str], client_id: str, env: dict[str, str],
                configs: dict[int, Path]) -> dict[str, Any]:
    """The `predictor` command for one client (SAMPLES each): shared service with an MLflow server and with
    the SQLite file, and no service; `predict-all` on the service at every size (twice: its session gets
    the champions, then has them); the CLI's ``--help`` with and without ``pipenv run``."""
    # pylint: disable=import-outside-toplevel
    from scripts.profiles.test_servers import MlflowServer
    from scripts.spark_connect import start_service
    from scripts.supervisor import free_ports

    command = [*cli, "predictor", f"--client_id={client_id}", f"--inference_date={DATE}"]
    samples = 1 if ctx.quick else SAMPLES

    def timed(extra: dict[str, str]) -> list[float]:
        return [run_command(command, env={**env, **extra}).seconds for _ in range(samples)]

    runs = {"here": timed({}), "local": timed({"CATEGORIES_SCORING": "spark"})}
    with start_service(port=free_ports(1)[0], master="local[2]", run_dir=ctx.scratch("connect")) as service:
        on_service = _fleet_on_service(ctx, cli, configs, {**env, "SPARK_REMOTE": service.url})
        runs["sqlite"] = timed({"SPARK_REMOTE": service.url})
        with MlflowServer(ctx.scratch("mlflow_server"), backend_uri=env["MLFLOW_TRACKING_URI"]) as server:
            server.start()
            runs["connect"] = timed({"SPARK_REMOTE": service.url, "MLFLOW_TRACKING_URI": server.url})
    # The DAG's command: pipenv of the system's Python (as the Makefile installs it), the project's venv.
    pipenv = [_system_python(), "-m", "pipenv", "run", "python", "categories_classification_cli.py", "--help"]
    helps = [run_command([*cli, "--help"]).seconds for _ in range(samples)]
    pipenv_helps = [run_command(pipenv, env={"PIPENV_VENV_IN_PROJECT": "1", "PIPENV_VERBOSITY": "-1"}).seconds
                    for _ in range(samples)]
    return {"on_service": on_service, **{name: statistics.median(values) for name, values in runs.items()},
            **{f"{name}_samples": values for name, values in runs.items()},
            "help": statistics.median(helps), "pipenv_help": statistics.median(pipenv_helps)}


def _fleet_on_service(ctx: BenchContext, cli: list[str], configs: dict[int, Path],
                      env: dict[str, str]) -> dict[int, tuple[float, float]]:
    """predict-all on the service (``env``'s SPARK_REMOTE) at every size, twice: (first, second) seconds."""
    on_service = {}
    for size, config in configs.items():
        fleet_env = {**env, "CATEGORIES_MODEL_CACHE": str(ctx.scratch(f"model_cache_{size}"))}
        runs = [run_command([*cli, "predict-all", f"--config={config}", f"--inference_date={DATE}"], env=fleet_env)
                for _ in range(2)]
        for run in runs:
            _check_all(run.result, size, "predict-all on the service")
        on_service[size] = (runs[0].seconds, runs[1].seconds)
    return on_service


def _plot(ctx: BenchContext, sizes: tuple[int, ...], runs: tuple[dict, dict], limits: dict, alone: dict[str, Any]) -> str:
    # pylint: disable=import-outside-toplevel  # matplotlib only where a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleet, cold = runs
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(sizes, [fleet[size].seconds / size for size in sizes], marker="o", label="predict-all, models cached")
    axes.plot(sizes, [cold[size].seconds / size for size in sizes], marker="o", label="predict-all, models downloaded")
    axes.plot(sizes, [alone["on_service"][size][1] / size for size in sizes], marker="o",
              label="predict-all on the shared service")
    axes.plot(sizes, [limits[size]["seconds"] / size for size in sizes], marker="o", label="single-process limit")
    axes.plot(sizes, [alone["local"]] * len(sizes), linestyle="--", label="predictor per client, own JVM")
    axes.plot(sizes, [alone["connect"]] * len(sizes), linestyle=":", label="predictor per client, shared service")
    axes.set(xscale="log", yscale="log", xlabel="clients", ylabel="seconds per client",
             title=f"Prediction time per client ({ROWS:,} products each)")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    name = "fleet_time_per_client.png"
    figure.savefig(ctx.outdir / name, dpi=110)
    plt.close(figure)
    return name


def limit_side(config: Path, output: Path) -> dict[str, Any]:
    """Every client of ``config`` in this process at the hardware limit; per-client seconds."""
    # pylint: disable=import-outside-toplevel
    from categories_classification.tracking.artifacts import fetch_model_bytes
    from categories_classification.tracking.registry import resolve_model
    from categories_classification.tracking.store import configure_tracking
    from categories_classification.serialization import load_model_bytes

    configure_tracking()
    per_client = {}
    for client in load_config(config):
        started = time.perf_counter()
        model_bytes, features = fetch_model_bytes(resolve_model(client.client_id))
        model = load_model_bytes(model_bytes)
        convert = pacsv.ConvertOptions(column_types={"product_id": pa.string(), **{f: pa.float64() for f in features}},
                                       include_columns=["product_id", *features])
        table = pacsv.read_csv(predict_path(client.client_id), convert_options=convert)
        labels = labels_of(model)
        batches = []
        for batch in table.to_batches(max_chunksize=10_000):
            scored, _ = score_batch(model, labels, features, batch, TOP_K, threads=2)
            if scored is not None:
                batches.append(scored)
        pq.write_table(pa.Table.from_batches(batches), output / f"{client.client_id}.parquet")
        per_client[client.client_id] = time.perf_counter() - started
    return {"per_client": per_client}


def _main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fleet limit and print its result.")
    parser.add_argument("side", choices=("limit",))
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    print(RESULT_PREFIX + json.dumps(limit_side(args.config, args.output)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())


def _system_python() -> str:
    """The first ``python3`` on PATH outside this venv: the one the Makefile installed pipenv into.

    Under ``make bench`` (``pipenv run``) the venv's bin/ comes first on PATH, and the venv has no pipenv.
    """
    venv_bin = Path(sys.prefix, "bin").resolve()
    path = os.pathsep.join(folder for folder in os.environ.get("PATH", "").split(os.pathsep)
                           if folder and Path(folder).resolve() != venv_bin)
    return shutil.which("python3", path=path) or "python3"
