"""Target 4: `make demo` (environment built) trains and predicts the 10 example clients in < 60 s."""
import os
import shutil
import sys

from pathlib import Path

from benchmarks._common import PROJECT_ROOT, BenchContext, Row, Section, run_command, seconds, write_config
from scripts.generate_example_data import example_specs, write_client

FEATURES = ["f0", "f1", "f2", "f3", "f4"]


def run(ctx: BenchContext) -> Section:
    """Time `make demo` on a fresh MLflow store and a fresh copy of the example data."""
    section = Section("The demo", "`make demo` (env already built) trains and predicts all 10 example clients "
                                  "in under 60 s wall time.")
    data = ctx.scratch("data")
    store = f"sqlite:///{ctx.scratch('mlflow') / 'mlflow.db'}"
    specs = example_specs()
    if ctx.quick:
        # The same two CLI commands as `make demo`, on 2 small clients.
        specs = specs[:2]
        config = write_config(ctx.workdir / "clients.yaml",
                              {spec.client_id: {"features": FEATURES, "params": {"n_estimators": 20}} for spec in specs})
    for spec in specs:
        write_client(spec, data)  # the example data, as `make data` writes it (not timed)
    env = {"DATA_PREFIX": str(data), "MLFLOW_TRACKING_URI": store, "DATE": "2026-11-23"}
    if ctx.quick:
        cli = [ctx.python, "categories_classification_cli.py"]
        timed = [run_command([*cli, "train-all", f"--config={config}"], env=env),
                 run_command([*cli, "predict-all", f"--config={config}", "--inference_date=2026-11-23"], env=env)]
        total = sum(step.seconds for step in timed)
        section.rows.append(Row("train-all + predict-all, 2 small clients", seconds(total)))
        return section
    make = [shutil.which("make") or "make", "--no-print-directory", f"PYTHON={_outer_python()}"]
    run_command([*make, "data"], cwd=PROJECT_ROOT)  # a fresh clone's ./data, not timed
    demo = run_command([*make, "demo"], env=env, cwd=PROJECT_ROOT)
    outputs = sorted((data / "products_categories").glob("client_id=*/date=2026-11-23"))
    if len(outputs) != len(specs):
        raise RuntimeError(f"make demo wrote {len(outputs)} outputs, expected {len(specs)}:\n{demo.result[-2000:]}")
    section.rows += [
        Row("`make demo`: train-all + predict-all, 10 example clients", seconds(demo.seconds), "60 s",
            f"{demo.seconds / 60:.2f}x", "< 60 s", demo.seconds < 60),
        Row("peak memory (process tree)", f"{demo.peak_rss_bytes / 2**20:,.0f} MiB"),
    ]
    section.notes.append("Timed from `make demo` to its exit with the pipenv environment and the example data "
                         "already there (`make data` is not timed), on a fresh MLflow store.")
    return section


def _outer_python() -> str:
    """The Python that has pipenv, as a user's `make demo` would find it.

    `make bench` runs this inside `pipenv run`, whose PATH starts with .venv/bin: there,
    ``python3`` is the project's environment, which has no pipenv.
    """
    venv = os.environ.get("VIRTUAL_ENV") or sys.prefix
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and not Path(folder).resolve().is_relative_to(Path(venv).resolve()):
            found = shutil.which("python3", path=folder)
            if found:
                return found
    return "python3"
