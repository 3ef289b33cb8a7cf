"""The fleet view's pure part: rows and flags from already-read records, JSON and the HTML page."""
import json
import re
from datetime import date, datetime, timezone
from pathlib import Path

from categories_classification.records import (
    CHALLENGER_SCORE,
    CHAMPION_BEFORE_TAG,
    INFERENCE_DATE_TAG,
    PREDICTION,
    PREVIOUS_SCORE,
    PROMOTION_DECISION_TAG,
    ROWS_OUT_METRIC,
    ROWS_SKIPPED_METRIC,
    STAGE_TAG,
    TEST_TOP_5_METRIC,
    TRAINING,
    TRAINING_DATE_TAG,
)
from categories_classification.config import ClientConfig, ClientsConfig
from categories_classification.fleet import (
    FleetRecords,
    FleetView,
    RunRecord,
    VersionRecord,
    fleet_rows,
)
from categories_classification.fleet_report import render_html, to_json

TODAY = date(2026, 12, 1)
STARTED = datetime(2026, 11, 30, 3, 0, tzinfo=timezone.utc)


def _config(*clients: ClientConfig) -> ClientsConfig:
    return ClientsConfig(Path("clients.yaml"), {client.client_id: client for client in clients})


def _client(client_id: str, **settings) -> ClientConfig:
    return ClientConfig(client_id, ("f0",), {}, **settings)


def _training(run_id: str, top5: float, before: str = "", status: str = "FINISHED", trained: str = "2026-11-30",
              decision: str = "promoted") -> RunRecord:
    return RunRecord(run_id, status, STARTED, {STAGE_TAG: TRAINING, TRAINING_DATE_TAG: trained,
                                               CHAMPION_BEFORE_TAG: before, PROMOTION_DECISION_TAG: decision},
                     {TEST_TOP_5_METRIC: top5})


def _prediction(run_id: str, day: str = "2026-11-30", **metrics: float) -> RunRecord:
    return RunRecord(run_id, "FINISHED", STARTED, {STAGE_TAG: PREDICTION, INFERENCE_DATE_TAG: day},
                     {ROWS_OUT_METRIC: 500.0, ROWS_SKIPPED_METRIC: 2.0, **metrics})


def _fleet(trained: str = "2026-11-30"):
    """Seven clients, each with one reason to look at it (or none)."""
    config = _config(_client("ok"), _client("nomodel"), _client("failing"), _client("stale", max_model_age_days=10),
                     _client("weaker", promotion_tolerance=0.05), _client("drifting", drift_threshold=0.3),
                     _client("late"))
    runs = {
        "ok1": _training("ok1", 0.90, trained=trained), "fail1": _training("fail1", 0.80),
        "stale1": _training("stale1", 0.85, trained="2026-11-01"),
        "weak1": _training("weak1", 0.90), "weak2": _training("weak2", 0.80, before="1"),
        "drift1": _training("drift1", 0.70), "late1": _training("late1", 0.75),
    }
    versions = {("ok", 1): VersionRecord(1, "ok1", {TRAINING_DATE_TAG: trained}), ("failing", 1): VersionRecord(1, "fail1"),
                ("stale", 1): VersionRecord(1, "stale1", {TRAINING_DATE_TAG: "2026-11-01"}),
                ("weaker", 1): VersionRecord(1, "weak1"), ("weaker", 2): VersionRecord(2, "weak2"),
                ("drifting", 1): VersionRecord(1, "drift1"), ("late", 1): VersionRecord(1, "late1")}
    champions = {"ok": 1, "failing": 1, "stale": 1, "weaker": 2, "drifting": 1, "late": 1}
    last_training = {cid: runs[run_id] for cid, run_id in (("ok", "ok1"), ("stale", "stale1"), ("weaker", "weak2"),
                                                           ("drifting", "drift1"), ("late", "late1"))}
    last_training["failing"] = _training("fail2", 0.0, status="FAILED", decision="")
    predictions = {cid: _prediction(f"p_{cid}") for cid in ("ok", "failing", "stale", "weaker")}
    predictions["drifting"] = _prediction("p_drifting", drift_max=0.45)
    predictions["late"] = _prediction("p_late", day="2026-11-28")
    return config, FleetRecords(champions, versions, runs, last_training, predictions)


def _flags(rows) -> dict[str, list[str]]:
    return {row.client_id: [flag.code for flag in row.flags] for row in rows}


def test_each_client_gets_the_flags_of_what_needs_a_person():
    config, records = _fleet()
    rows, checked = fleet_rows(config, records, TODAY)
    assert checked == "2026-11-30"  # the fleet's latest inference date
    assert _flags(rows) == {
        "drifting": ["drift"], "failing": ["training_failed"], "late": ["no_output"], "nomodel": ["no_model", "no_output"],
        "ok": [], "stale": ["stale"], "weaker": ["accuracy_dropped"],
    }
    by_id = {row.client_id: row for row in rows}
    assert [row.client_id for row in rows] == sorted(by_id)
    weaker = by_id["weaker"]
    assert (weaker.champion_version, weaker.previous_version) == (2, 1)
    assert abs(weaker.top_5_change + 0.10) < 1e-9 and "tolerance 0.05" in weaker.flags[0].detail
    ok = by_id["ok"]
    assert (ok.trained_on, ok.model_age_days, ok.test_top_5_accuracy) == ("2026-11-30", 1, 0.90)
    assert (ok.prediction_date, ok.rows_written, ok.rows_skipped, ok.drift) == ("2026-11-30", 500, 2, None)
    assert (ok.training_status, ok.training_decision) == ("FINISHED", "promoted")
    assert by_id["drifting"].drift == 0.45 and "threshold 0.3" in by_id["drifting"].flags[0].detail
    assert "fail2 ended FAILED" in by_id["failing"].flags[0].detail
    assert by_id["stale"].model_age_days == 30 and "limit 10" in by_id["stale"].flags[0].detail
    assert "(last: 2026-11-28)" in by_id["late"].flags[0].detail


def test_the_project_defaults_apply_without_client_settings():
    config, records = _fleet(trained="2026-10-01")  # 61 days: over the default 45
    rows, _ = fleet_rows(config, records, TODAY)
    assert "stale" in _flags(rows)["ok"]
    dropped = FleetRecords({"a": 2}, {("a", 1): VersionRecord(1, "r1"), ("a", 2): VersionRecord(2, "r2")},
                           {"r1": _training("r1", 0.800), "r2": _training("r2", 0.795, before="1")})
    rows, checked = fleet_rows(_config(_client("a")), dropped, TODAY)
    assert checked is None and _flags(rows) == {"a": []}  # -0.005 is within the default 0.01; nothing predicted yet
    dropped = FleetRecords(dropped.champions, dropped.versions, {**dropped.runs, "r2": _training("r2", 0.78, before="1")})
    assert _flags(fleet_rows(_config(_client("a")), dropped, TODAY)[0]) == {"a": ["accuracy_dropped"]}


def test_the_change_uses_the_gates_scores_on_the_same_rows_when_recorded():
    gated = _training("r2", 0.70, before="1")
    gated = RunRecord("r2", "FINISHED", STARTED, gated.tags, {TEST_TOP_5_METRIC: 0.70,
                                                             CHALLENGER_SCORE: 0.70,
                                                             PREVIOUS_SCORE: 0.74})
    records = FleetRecords({"a": 2}, {("a", 1): VersionRecord(1, "r1"), ("a", 2): VersionRecord(2, "r2")},
                           {"r2": gated})  # the previous champion's own run is not even needed
    (row,), _ = fleet_rows(_config(_client("a")), records, TODAY)
    assert (row.previous_version, round(row.top_5_change, 6)) == (1, -0.04)
    assert [flag.code for flag in row.flags] == ["accuracy_dropped"] and "0.740 for v1" in row.flags[0].detail


def test_a_champion_set_by_hand_or_first_has_no_change():
    records = FleetRecords({"a": 1, "b": 2}, {("a", 1): VersionRecord(1, "r1"), ("b", 2): VersionRecord(2, "r2")},
                           {"r1": _training("r1", 0.8, before=""), "r2": _training("r2", 0.5, before="2")})
    rows, _ = fleet_rows(_config(_client("a"), _client("b")), records, TODAY)
    assert [(row.previous_version, row.top_5_change, row.flags) for row in rows] == [(None, None, ()), (None, None, ())]


def test_an_asked_date_is_checked_against_the_runs_of_that_date():
    config, records = _fleet()
    asked = FleetRecords(records.champions, records.versions, records.runs, records.last_training,
                         records.last_prediction, predicted_on_date=frozenset({"late", "ok"}))
    rows, checked = fleet_rows(config, asked, TODAY, "2026-11-28")
    flags = _flags(rows)
    assert checked == "2026-11-28"
    assert "no_output" not in flags["late"] and "no_output" not in flags["ok"] and "no_output" in flags["weaker"]


def _view(rows, checked) -> FleetView:
    return FleetView(rows, checked, TODAY, STARTED, "http://***@mlflow.example:5000", "clients.yaml")


def test_json_has_every_row_with_flag_codes_labels_and_details():
    config, records = _fleet()
    data = json.loads(to_json(_view(*fleet_rows(config, records, TODAY))))
    assert data["clients"] == 7 and data["needing_attention"] == 6 and data["inference_date"] == "2026-11-30"
    failing = next(row for row in data["rows"] if row["client_id"] == "failing")
    assert failing["flags"][0]["code"] == "training_failed" and failing["flags"][0]["label"] == "training failed"


def test_the_page_is_self_contained_and_shows_every_row_and_flag():
    config, records = _fleet()
    page = render_html(_view(*fleet_rows(config, records, TODAY)))
    assert not re.search(r"<script[^>]+src|<link|@import|url\(|https?://(?!\*\*\*@mlflow)", page)  # works offline
    for client in config:
        assert f'id="client-{client.client_id}"' in page
    for label in ("training failed", "model stale", "no output", "accuracy dropped", "drift", "no model"):
        assert f">{label}</span>" in page
    assert "http://***@mlflow.example:5000" in page and "Generated at 2026-11-30 03:00:00 UTC" in page
    assert page.count("<th>") == 13 and "addEventListener" in page


def test_the_page_escapes_what_it_shows():
    records = FleetRecords({"a": 1}, {("a", 1): VersionRecord(1, "r1", {TRAINING_DATE_TAG: "<b>x</b>"})},
                           {"r1": _training("r1", 0.8)})
    page = render_html(_view(*fleet_rows(_config(_client("a")), records, TODAY)))
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
