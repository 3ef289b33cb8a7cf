"""fleet-status on a real store: clients made to fail, go stale, lose accuracy, drift, or have no model;
the JSON, the terminal table and the HTML page as a person sees it in a real headless browser."""
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import sync_playwright

from categories_classification.records import DRIFT_MAX_METRIC, experiment_name
from categories_classification.fleet import FLAG_LABELS
from categories_classification.prediction.predictor import predict_categories
from categories_classification.training.trainer import train_model
from scripts.generate_example_data import ClientSpec, write_client
from tests.helpers import (FEATURES, client_entry, kill_mid_run, run_cli, shift_prediction_feature, start_cli, train_args,
                           write_config)

pytestmark = pytest.mark.slow

TODAY = datetime.now(timezone.utc).date().isoformat()
CHROMIUM = Path("/usr/bin/chromium")
EXPECTED_FLAGS = {
    "drifting": ["drift"],
    "failing": ["training_failed"],
    "fine": [],
    "nomodel": ["no_model", "no_output"],
    "stale": ["stale"],
    "weaker": ["accuracy_dropped"],
}


@pytest.fixture(scope="module")
def fleet(module_tracking_store, spark, tmp_path_factory):  # pylint: disable=unused-argument
    """A store and config where each client has one thing for a person to see (or none); the config path."""
    root = tmp_path_factory.mktemp("fleet")
    prefix = root / "data"
    for seed, client_id in enumerate(("fine", "failing", "weaker", "stale", "drifting")):
        # Many categories: top-5 is hard enough for a weak forest to lose clearly.
        write_client(ClientSpec(client_id, 300 + seed, n_train=600, n_predict=200, n_categories=40), prefix)
    data = str(prefix)
    for client_id in ("fine", "failing", "weaker", "drifting"):
        train_model(client_id, FEATURES, {"n_estimators": 30}, TODAY, data_prefix=data)
    train_model("stale", FEATURES, {"n_estimators": 30}, "2025-06-01", data_prefix=data)
    # A weak retraining let through by a large tolerance on the command line (the config keeps 0.01).
    weak = train_model("weaker", FEATURES, {"n_estimators": 1, "max_depth": 1}, TODAY, data_prefix=data,
                       promotion_tolerance=1.0)
    assert weak.decision.promote and weak.decision.champion_score - weak.decision.challenger_score > 0.03
    _kill_a_training_mid_run("failing", dict(os.environ, DATA_PREFIX=data))
    # A real drift: one feature of today's input moved by 2 standard deviations of its training values.
    shift_prediction_feature(prefix, "drifting", "f1", 2.0)
    for client_id in ("fine", "failing", "weaker", "stale", "drifting"):  # failing's closes the killed run
        predict_categories(client_id, TODAY, data_prefix=data, spark=spark)
    return write_config(root / "clients.yaml", {
        "fine": client_entry(), "failing": client_entry(), "weaker": client_entry(),
        "stale": client_entry(max_model_age_days=60), "drifting": client_entry(drift_threshold=0.3),
        "nomodel": client_entry()})


def _runs(client_id: str, stage: str) -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name(client_id))
    return client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'",
                              order_by=["attributes.start_time DESC"])


def _kill_a_training_mid_run(client_id: str, env: dict[str, str]) -> None:
    victim = start_cli(train_args(client_id, params='{"n_estimators": 200}', date=TODAY), env)
    kill_mid_run(victim, lambda: any(run.info.status == "RUNNING" for run in _runs(client_id, "training")),
                 f"{client_id}'s training RUNNING")


def _env() -> dict[str, str]:
    return dict(os.environ)  # MLFLOW_TRACKING_URI: the module's store


def test_fleet_status_json_has_every_client_and_its_flags(fleet):
    result = run_cli(["fleet-status", "--config", str(fleet), "--json"], _env(), timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {row["client_id"]: row for row in data["rows"]}
    assert {client_id: [flag["code"] for flag in row["flags"]] for client_id, row in rows.items()} == EXPECTED_FLAGS
    assert data["inference_date"] == TODAY and data["needing_attention"] == 5
    fine = rows["fine"]
    assert fine["champion_version"] == 1 and fine["trained_on"] == TODAY and fine["model_age_days"] == 0
    assert fine["prediction_date"] == TODAY and fine["rows_written"] == 5 * 200 and fine["rows_skipped"] == 0
    assert fine["training_status"] == "FINISHED" and fine["training_decision"] == "promoted"
    assert 0 < fine["drift"] < fine["drift_threshold"] == 0.2  # another sample of its training data
    failing = rows["failing"]
    assert failing["training_status"] == "FAILED" and "is gone" in failing["flags"][0]["detail"]
    assert failing["champion_version"] == 1  # the killed training changed nothing that is served
    weaker = rows["weaker"]
    assert (weaker["champion_version"], weaker["previous_version"]) == (2, 1) and weaker["top_5_change"] < -0.03
    assert rows["stale"]["trained_on"] == "2025-06-01" and rows["stale"]["model_age_days"] > 60
    assert rows["drifting"]["drift"] > 1 and rows["drifting"]["drift_threshold"] == 0.3
    assert rows["drifting"]["drift"] == _runs("drifting", "prediction")[0].data.metrics[DRIFT_MAX_METRIC]


def test_an_asked_date_without_outputs_flags_every_client(fleet):
    result = run_cli(["fleet-status", "--config", str(fleet), "--json", "--date=2030-01-01"], _env(), timeout=120)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert all("no_output" in [flag["code"] for flag in row["flags"]] for row in rows)


def test_fleet_status_table_shows_each_client_with_its_flags(fleet):
    result = run_cli(["fleet-status", "--config", str(fleet)], _env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "6 clients, 5 needing attention" in result.stdout
    lines = result.stdout.splitlines()
    for client_id, label in (("failing", "training failed"), ("weaker", "accuracy dropped"), ("stale", "model stale"),
                             ("drifting", "drift"), ("nomodel", "no model")):
        assert any(line.startswith(f"│ {client_id} ") and label in line for line in lines), result.stdout


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
def test_the_report_shows_every_client_its_flags_and_sorts_by_a_clicked_column(fleet, tmp_path):

    page_file = tmp_path / "reports" / "fleet_status.html"
    result = run_cli(["fleet-status", "--config", str(fleet), "--html", str(page_file)], _env(), timeout=120)
    assert result.returncode == 0, result.stderr
    requests = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"], timeout=60_000)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_file.as_uri())
            assert "6 clients, 5 needing attention" in page.inner_text("#summary")
            assert "Generated at" in page.inner_text("#generated") and "sqlite:///" in page.inner_text("#generated")
            shown = {row.get_attribute("id")[len("client-"):]: row for row in page.query_selector_all("tbody tr")}
            assert sorted(shown) == sorted(EXPECTED_FLAGS)
            for client_id, codes in EXPECTED_FLAGS.items():
                flags = shown[client_id].query_selector_all(".flag")
                assert [flag.inner_text() for flag in flags] == [_label(code) for code in codes]
                assert all(flag.is_visible() for flag in flags)
                if not codes:
                    assert shown[client_id].query_selector(".ok").inner_text() == "ok"
            colours = {flag.evaluate("e => getComputedStyle(e).backgroundColor") for flag in page.query_selector_all(".flag")}
            assert len(colours) > 1 and "rgba(0, 0, 0, 0)" not in colours

            assert _column(page, "client") == sorted(EXPECTED_FLAGS)  # as generated
            page.click("th:has-text('test top-5')")
            scores = _column(page, "test top-5")
            assert scores[-1] == "-" and scores[:-1] == sorted(scores[:-1], key=float)  # no model last
            page.click("th:has-text('test top-5')")
            assert _column(page, "test top-5")[:-1] == sorted(scores[:-1], key=float, reverse=True)
            page.click("th:has-text('client')")
            page.click("th:has-text('client')")
            assert _column(page, "client") == sorted(EXPECTED_FLAGS, reverse=True)
        finally:
            browser.close()
    assert requests == [page_file.as_uri()]  # nothing fetched: the page works offline


def _label(code: str) -> str:

    return FLAG_LABELS[code]


def _column(page, name: str) -> list[str]:
    headers = [header.inner_text().strip(" ▲▼") for header in page.query_selector_all("th")]
    index = headers.index(name)
    return [row.query_selector_all("td")[index].inner_text() for row in page.query_selector_all("tbody tr")]
