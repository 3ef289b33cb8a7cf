"""Command line of Better Categories 4All: train and predict per client, or for all clients.

    python categories_classification_cli.py trainer --client_id=client_0 --features='["f0","f1"]' \\
        --model_params='{"n_estimators": 100}' --training_date=2026-11-23
    python categories_classification_cli.py predictor --client_id=client_0 --inference_date=2026-11-23
    python categories_classification_cli.py train-all      # every client of conf/clients_config.yaml
    python categories_classification_cli.py predict-all --inference_date=2026-11-23
    python categories_classification_cli.py list-models --client_id=client_0
    python categories_classification_cli.py set-champion --client_id=client_0 --version=3   # rollback
    python categories_classification_cli.py fleet-status [--json | --html reports/fleet_status.html]
    python categories_classification_cli.py champion-from-run --client_id=client_0   # in a training DAG's task

Errors are printed on one line (``Error: ...``); exit code 2 for bad options or config, 1 for
bad data or an unavailable model or tracking server; `champion-from-run` exits 99 for "no".
"""
# Commands import what they need when they run: `--help` and a bad option stay instant, and no
# command pays for another's imports (MLflow, Spark, sklearn take seconds).
# pylint: disable=import-outside-toplevel
import atexit
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import click

from categories_classification.config import (
    DEFAULT_DRIFT_THRESHOLD,
    ENSEMBLE,
    MODEL_FAMILIES,
    load_config,
    validate_client_id,
    validate_family,
)
from categories_classification.errors import CategoriesError, infrastructure_error, unexpected
from categories_classification.records import (
    CHAMPION,
    MODEL_MEMORY_METRIC,
    NOT_CHAMPION_EXIT_CODE,
    TEST_ACCURACY_METRIC,
    TEST_TOP_5_METRIC,
    model_name,
)

CONFIG_HELP = "Clients config file (default: $CONFIG_FILE or conf/clients_config.yaml)."
FAIL_ON_DRIFT_HELP = ("Fail a client whose input drifted over its threshold (a feature's PSI against the training "
                      "data): nothing written, its previous output kept. Default: warn and write.")


class _Json(click.ParamType):
    """A JSON option value of an expected type (list or object)."""

    def __init__(self, expected: type) -> None:
        self.expected = expected
        self.name = f"JSON {'list' if expected is list else 'object'}"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if isinstance(value, self.expected):
            return value
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            self.fail(f"expected a {self.name}, found malformed JSON {value!r} ({exc.msg} at char {exc.pos})", param, ctx)
        if not isinstance(parsed, self.expected):
            self.fail(f"expected a {self.name}, found {type(parsed).__name__} {value!r}", param, ctx)
        return parsed


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Show info logs (MLflow, Spark stay at warnings).")
def cli(verbose: bool) -> None:
    """Train per-client categorisers (the best model family per client) in MLflow and predict top-5 categories with Spark."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # MLflow sets its own level when imported (later, lazily): tell it through its variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    if verbose:
        os.environ.setdefault("SPARK_LOG_LEVEL", "WARN")
    for noisy in ("py4j", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Each of MLflow's HTTP retries is a urllib3 warning: the error after the last one is the one line.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.WARNING if verbose else logging.ERROR)


def _family_option(value: Optional[str]) -> Optional[str]:
    """``--model_family`` checked as the config's ``family`` is (a usage error otherwise)."""
    try:
        return validate_family(value)
    except CategoriesError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None


@cli.command()
@click.option("--client_id", required=True, help="Client id, as in the config (letters, digits, _).")
@click.option("--features", required=True, type=_Json(list), help='Feature columns, a JSON list: \'["f0","f1"]\'.')
@click.option("--model_params", required=True, type=_Json(dict),
              help='Parameters of the model family (RandomForestClassifier\'s unless --model_family pins another), '
                   'a JSON object: \'{"n_estimators": 100}\'.')
@click.option("--training_date", required=True, help="Date of the training run (ISO date or timestamp).")
@click.option("--promotion_tolerance", type=click.FloatRange(0.0, 1.0), default=None,
              help="How much lower (0-1) the new version's top-5 accuracy may be than the champion's "
                   "and still become champion (default 0.01).")
@click.option("--max_model_mb", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Size budget of the model in memory, in MB (default 64): bounds every candidate family and "
                   "the max_leaf_nodes chosen on the training split; explicit size params in --model_params win.")
@click.option("--model_family", default=None, callback=lambda _ctx, _param, value: _family_option(value),
              help=f"Pin the model family: one of {', '.join(MODEL_FAMILIES)}; {ENSEMBLE!r} (the best ensemble of "
                   "the candidates); or an ensemble's members joined by '+' (mlp+qda). Default: chosen per client "
                   "on the training split.")
def trainer(client_id: str, features: list, model_params: dict, training_date: str,  # pylint: disable=too-many-positional-arguments
            promotion_tolerance: Optional[float], max_model_mb: Optional[float], model_family: Optional[str]) -> None:
    """Train one client's model, register it as a new version, promote it if it passes the gate."""
    from categories_classification.training.trainer import train_model

    result = train_model(client_id, features, model_params, training_date, promotion_tolerance=promotion_tolerance,
                         max_model_mb=max_model_mb, family=model_family)
    verdict = "now champion" if result.decision.promote else "NOT promoted, champion unchanged"
    click.echo(
        f"{client_id}: registered {result.model_name} version {result.version} (run {result.run_id}); "
        f"test top-5 accuracy {result.metrics[TEST_TOP_5_METRIC]:.3f}, "
        f"accuracy {result.metrics[TEST_ACCURACY_METRIC]:.3f}, model {result.metrics[MODEL_MEMORY_METRIC] / 1e6:.1f} MB "
        f"({result.params.get('family')}"
        + (f", max_leaf_nodes {result.params['max_leaf_nodes']}" if "max_leaf_nodes" in result.params else "")
        + f"); "
        f"{verdict}: {result.decision.reason}"
    )


@cli.command()
@click.option("--client_id", required=True, help="Client id, as in the config (letters, digits, _).")
@click.option("--inference_date", required=True, help="Date of the prediction (ISO date or timestamp); names the output folder.")
@click.option("--model_version", type=click.IntRange(min=1), default=None,
              help="Serve this registered version instead of the champion (pin or roll back).")
@click.option("--drift_threshold", type=click.FloatRange(min=0.0, min_open=True), default=DEFAULT_DRIFT_THRESHOLD,
              show_default=True, help="Population stability index of a feature above which the input has drifted "
                                      "from the training data (warned about, or an error with --fail_on_drift).")
@click.option("--fail_on_drift", is_flag=True, help=FAIL_ON_DRIFT_HELP)
def predictor(client_id: str, inference_date: str, model_version: Optional[int], drift_threshold: float,
              fail_on_drift: bool) -> None:
    """Predict the top-5 categories of one client's products with its champion model."""
    from categories_classification.paths import data_prefix
    from categories_classification.prediction.engine import prepare

    prepare([validate_client_id(client_id)], data_prefix())  # before the prediction code and MLflow load
    from categories_classification.prediction.predictor import predict_categories

    result = predict_categories(client_id, inference_date, model_version=model_version,
                                drift_threshold=drift_threshold, fail_on_drift=fail_on_drift)
    click.echo(
        f"{client_id}: wrote {result.rows_written} rows to {result.output_path} with "
        f"{result.model_name} version {result.model_version}"
        + (f"; skipped {result.rows_skipped} product(s) with missing features" if result.rows_skipped else "")
        + _drift_note(result.drift)
    )


def _drift_note(drift: dict) -> str:
    """``; drift max PSI 0.012 (threshold 0.2)``, or why there is no score."""
    if not drift.get("reference"):
        return f"; drift: {drift['status']}" if drift.get("status") else ""
    if drift.get("max") is None:
        return ""
    verdict = f"DRIFTED: {', '.join(drift['features_over'])}" if drift["over_threshold"] else "ok"
    return f"; drift max PSI {drift['max']:.3f} (threshold {drift['threshold']:g}, {verdict})"


@cli.command("set-champion")
@click.option("--client_id", required=True, help="Client id, as in the config (letters, digits, _).")
@click.option("--version", "version", required=True, type=click.IntRange(min=1),
              help="Registered version that prediction should serve from now on (e.g. a rollback).")
def set_champion_command(client_id: str, version: int) -> None:
    """Give the champion alias to a version by hand (rollback or forced promotion)."""
    from categories_classification.tracking.registry import champion_version, set_champion
    from categories_classification.tracking.store import configure_tracking

    validate_client_id(client_id)
    configure_tracking()
    before = champion_version(client_id)
    ref = set_champion(client_id, version)
    click.echo(f"{client_id}: champion is now {ref.name} version {ref.version}"
               + (f" (was version {before.version})" if before else ""))


@cli.command("champion-from-run")
@click.option("--client_id", required=True, help="Client id, as in the config (letters, digits, _).")
@click.option("--dag_id", envvar="AIRFLOW_CTX_DAG_ID", required=True,
              help="The Airflow DAG of the training (default: $AIRFLOW_CTX_DAG_ID, set in Airflow's tasks).")
@click.option("--dag_run_id", envvar="AIRFLOW_CTX_DAG_RUN_ID", required=True,
              help="The Airflow DAG run of the training (default: $AIRFLOW_CTX_DAG_RUN_ID, set in Airflow's tasks).")
def champion_from_run_command(client_id: str, dag_id: str, dag_run_id: str) -> None:
    """Exit 0 if this Airflow DAG run's training promoted the client's champion, else 99.

    The training DAG's publish_champion task runs it: 99 skips the task, so a model that lost the
    gate (or was replaced since) emits no asset event and starts no prediction.
    """
    from categories_classification.tracking.registry import champion_from_run
    from categories_classification.tracking.store import configure_tracking

    validate_client_id(client_id)
    configure_tracking()
    found = champion_from_run(client_id, dag_id, dag_run_id)
    champion = found.champion
    if champion is None:
        click.echo(f"{client_id}: no champion: nothing to publish")
        raise SystemExit(NOT_CHAMPION_EXIT_CODE)
    if not found.promoted_by_dag_run:
        click.echo(f"{client_id}: champion is {champion.name} version {champion.version}, from {found.source}, not promoted "
                   f"by {dag_id} run {dag_run_id}: nothing to publish")
        raise SystemExit(NOT_CHAMPION_EXIT_CODE)
    click.echo(f"{client_id}: {champion.name} version {champion.version} was promoted by {found.source}: publishing it")


@cli.command("list-models")
@click.option("--client_id", required=True, help="Client id, as in the config (letters, digits, _).")
def list_models_command(client_id: str) -> None:
    """List a client's model versions with their metrics; mark the champion."""
    from rich.console import Console
    from rich.table import Table

    from categories_classification.tracking.registry import list_versions
    from categories_classification.tracking.store import configure_tracking

    validate_client_id(client_id)
    configure_tracking()
    table = Table(title=f"{model_name(client_id)} versions")
    for name in ("version", "champion", "training date", "test top-5 acc", "test acc", "gate", "run"):
        table.add_column(name)
    for row in list_versions(client_id):
        metrics = row["metrics"]
        table.add_row(str(row["version"]), "yes" if CHAMPION in row["aliases"] else "",
                      row["training_date"], _number(metrics.get(TEST_TOP_5_METRIC)),
                      _number(metrics.get(TEST_ACCURACY_METRIC)), row["decision"], row["run_id"])
    Console(width=140).print(table)


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


ONLY_HELP = "Only this client of the config (repeatable); default: every client."


@cli.command("train-all")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--client_id", "client_ids", multiple=True, help=ONLY_HELP)
@click.option("--training_date", default=lambda: datetime.now(timezone.utc).date().isoformat(),
              show_default="today (UTC)", help="Date of the training runs (ISO date or timestamp).")
@click.option("--workers", type=click.IntRange(min=1), default=None, show_default="one per core",
              help="Clients trained side by side, each in its own process.")
def train_all_command(config_path: Optional[str], client_ids: tuple[str, ...], training_date: str,
                      workers: Optional[int]) -> None:
    """Train every client of the config, in parallel across cores; print a summary table."""
    from categories_classification.batch import train_all

    config = load_config(config_path).select(client_ids)
    outcomes = _with_progress("Training", len(config), lambda done: train_all(config, training_date, on_done=done, workers=workers))
    _summary("Training", outcomes, ("rows", "version", "champion?", "test top-5 acc"), lambda r: (
        str(r.n_rows), str(r.version), "yes" if r.decision.promote else f"no (stays v{r.decision.champion_version})",
        f"{r.metrics[TEST_TOP_5_METRIC]:.3f}"))


@cli.command("predict-all")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--client_id", "client_ids", multiple=True, help=ONLY_HELP)
@click.option("--inference_date", required=True, help="Date of the predictions (ISO date or timestamp).")
@click.option("--fail_on_drift", is_flag=True, help=FAIL_ON_DRIFT_HELP + " Thresholds: each client's drift_threshold.")
def predict_all_command(config_path: Optional[str], client_ids: tuple[str, ...], inference_date: str,
                        fail_on_drift: bool) -> None:
    """Predict every client of the config in one Spark session; print a summary table."""
    from categories_classification.batch import predict_all

    config = load_config(config_path).select(client_ids)
    outcomes = _with_progress("Prediction", len(config), lambda done: predict_all(
        config, inference_date, on_done=done, fail_on_drift=fail_on_drift))
    _summary("Prediction", outcomes, ("rows written", "skipped", "version", "drift"), lambda r: (
        str(r.rows_written), str(r.rows_skipped), str(r.model_version), _drift_cell(r.drift)))


def _drift_cell(drift: dict) -> str:
    """The summary's drift column: the max PSI (``!`` when over the threshold), or ``-`` without a reference."""
    if not drift.get("reference") or drift.get("max") is None:
        return "-"
    return f"{drift['max']:.3f}" + (" !" if drift["over_threshold"] else "")


@cli.command("fleet-status")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--date", "inference_date", default=None, show_default="the fleet's latest inference date",
              help="Flag clients without a finished prediction for this date (ISO date or timestamp).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the view as one static, sortable HTML page to this path.")
def fleet_status_command(config_path: Optional[str], inference_date: Optional[str], as_json: bool,
                         html_path: Optional[str]) -> None:
    """One row per client: champion, accuracy, last training and prediction, drift, and what needs a person."""
    from pathlib import Path

    from categories_classification import fleet, fleet_report
    from categories_classification.paths import normalize_date

    config = load_config(config_path)
    date = normalize_date(inference_date, "date") if inference_date else None
    view = fleet.read_fleet(config, inference_date=date)
    if html_path:
        Path(html_path).parent.mkdir(parents=True, exist_ok=True)
        Path(html_path).write_text(fleet_report.render_html(view), encoding="utf-8")
        click.echo(f"fleet report: {html_path}", err=True)
    if as_json:
        click.echo(fleet_report.to_json(view))
        return
    _fleet_table(view, fleet_report.COLUMNS, fleet_report.cells)


def _fleet_table(view, columns: tuple, cells: Callable) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    attention = sum(1 for row in view.rows if row.flags)
    checked = f"outputs checked for {view.inference_date}" if view.inference_date else "no prediction recorded yet"
    table = Table(title=f"Fleet status: {len(view.rows)} clients, {attention} needing attention ({checked})",
                  caption=f"MLflow at {view.tracking_uri}, {view.generated_at:%Y-%m-%d %H:%M UTC}")
    for name in columns:
        table.add_column(name, no_wrap=True)  # one line per client: greppable, and flags stay whole
    for row in view.rows:
        values = [text for text, _ in cells(row)]
        values[-1] = Text(values[-1], style="bold red" if row.flags else "green")
        table.add_row(*values)
    Console(width=max(200, Console().width)).print(table)


def _with_progress(title: str, total: int, run: Callable[[Callable], list]) -> list:
    """Run ``run(on_done)`` under a progress bar (one step per client) on stderr."""
    # rich is imported here so that --help and the single-client commands stay instant.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as progress:
        task = progress.add_task(title, total=total)

        def done(outcome) -> None:
            status = "ok" if outcome.ok else "FAILED"
            progress.console.print(f"{outcome.client_id}: {status} in {outcome.seconds:.1f}s")
            progress.update(task, advance=1, description=f"{title} (last: {outcome.client_id})")

        return run(done)


def _summary(title: str, outcomes: list, columns: tuple, cells) -> None:
    # rich renders the table; imported here so that --help stays instant.
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} summary")
    for name in ("client", "status", *columns, "seconds"):
        table.add_column(name, justify="left" if name in ("client", "status") else "right")
    for outcome in outcomes:
        values = cells(outcome.result) if outcome.ok else ("-",) * len(columns)
        table.add_row(outcome.client_id, "ok" if outcome.ok else "failed", *values, f"{outcome.seconds:.1f}")
    console = Console(width=max(100, Console().width))
    console.print(table)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    for outcome in failed:
        click.echo(f"Error: {outcome.error}", err=True)
    if failed:
        raise SystemExit(1)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI, turning every expected error into one line on stderr and an exit code."""
    try:
        cli.main(args=argv, prog_name="categories_classification_cli.py", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        return exc.exit_code
    except CategoriesError as exc:
        click.echo(f"Error: {exc}", err=True)
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # pylint: disable=broad-except  # the last wall before a bare traceback
        if os.environ.get("CATEGORIES_DEBUG"):
            raise
        # A file system, MLflow or Spark failure that no stage mapped is a fault to report, not a bug.
        fault = infrastructure_error(exc)
        click.echo(f"Error: {fault}" if fault is not None
                   else f"Error: {unexpected(exc)} (set CATEGORIES_DEBUG=1 for the traceback)", err=True)
        return 1
    return 0


def _exit_now(code: list[int]) -> None:
    """End the process with ``code`` once every other exit hook has run, skipping the interpreter's teardown.

    Registered before any command runs, so it runs last (MLflow's and pyspark's hooks, registered
    later, run before it). Tearing down the thousands of modules MLflow, SQLAlchemy and pyspark
    load takes 0.3-1.5 s and does nothing a finished command needs: the streams and logs are
    flushed here and every file was closed by the code that wrote it.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code[0] if code else 1)


if __name__ == "__main__":
    EXIT_CODE: list[int] = []
    atexit.register(_exit_now, EXIT_CODE)
    EXIT_CODE.append(main())
    sys.exit(EXIT_CODE[0])
