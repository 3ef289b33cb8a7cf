"""The fleet view rendered: the table's columns and cells, JSON for scripts, one static HTML page.

Pure: from a :class:`~categories_classification.fleet.FleetView`, nothing read.
"""
import html
import json
from typing import Any

from categories_classification.fleet import FleetRow, FleetView

COLUMNS = ("client", "champion", "trained on", "age (days)", "test top-5", "vs previous", "last training (UTC)",
           "gate", "last prediction", "rows", "skipped", "drift", "flags")


def cells(row: FleetRow) -> list[tuple[str, Any]]:
    """The row's cells as (text shown, value sorted on) in :data:`COLUMNS` order."""
    training = f"{row.training_status} {row.training_started}" if row.training_status else None
    return [
        (row.client_id, row.client_id),
        (_text(row.champion_version, "v{}"), row.champion_version),
        (_text(row.trained_on), row.trained_on),
        (_text(row.model_age_days), row.model_age_days),
        (_text(row.test_top_5_accuracy, "{:.3f}"), row.test_top_5_accuracy),
        (_text(row.top_5_change, "{:+.3f}") + (f" (v{row.previous_version})" if row.top_5_change is not None else ""),
         row.top_5_change),
        (_text(training), row.training_started),
        (_text(row.training_decision), row.training_decision),
        (_text(row.prediction_date), row.prediction_date),
        (_text(row.rows_written, "{:,}"), row.rows_written),
        (_text(row.rows_skipped, "{:,}"), row.rows_skipped),
        (_text(row.drift, "{:.3f}") + (f" / {row.drift_threshold:g}" if row.drift is not None else ""), row.drift),
        (", ".join(flag.label for flag in row.flags) or "ok", len(row.flags)),
    ]


def _text(value: Any, pattern: str = "{}") -> str:
    return "-" if value is None else pattern.format(value)


def to_json(view: FleetView) -> str:
    """The view as JSON (for scripts)."""
    return json.dumps(view.to_dict(), indent=2)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; white-space: nowrap; }
th { background: #eee; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; }
tr.attention td:first-child { border-left: 4px solid #c0392b; }
.flag { display: inline-block; margin: 0 0.2em 0.1em 0; padding: 0 0.4em; border-radius: 0.3em; color: #fff;
        background: #c0392b; font-weight: bold; }
.flag-stale, .flag-no_output { background: #d35400; }
.flag-drift { background: #8e44ad; }
.flag-accuracy_dropped { background: #b9770e; }
.flag-no_model { background: #555; }
.ok { color: #1e8449; font-weight: bold; }
"""
# Sorts on each cell's data-sort value: numbers as numbers, text as text, missing values last.
_SCRIPT = """
document.querySelectorAll("th").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    document.querySelectorAll("th").forEach(function (other) { other.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = document.querySelector("tbody");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].getAttribute("data-sort"), y = b.cells[column].getAttribute("data-sort");
      if (x === "") { return y === "" ? 0 : 1; }
      if (y === "") { return -1; }
      var order = (!isNaN(x) && !isNaN(y)) ? Number(x) - Number(y) : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def render_html(view: FleetView) -> str:
    """One self-contained page (inline CSS and JS, nothing fetched): the table, sortable by any column."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    body = []
    for row in view.rows:
        tds = []
        for index, (text, value) in enumerate(cells(row)):
            sort = "" if value is None else str(value)
            if index == len(COLUMNS) - 1:
                shown = "".join(f'<span class="flag flag-{flag.code}" title="{html.escape(flag.detail)}">'
                                f"{html.escape(flag.label)}</span>" for flag in row.flags) or '<span class="ok">ok</span>'
            else:
                shown = html.escape(text)
            numeric = isinstance(value, (int, float)) and index not in (0, len(COLUMNS) - 1)
            css = ' class="num"' if numeric else ""
            tds.append(f'<td{css} data-sort="{html.escape(sort)}">{shown}</td>')
        css = ' class="attention"' if row.flags else ""
        codes = " ".join(flag.code for flag in row.flags)
        body.append(f'<tr id="client-{html.escape(row.client_id)}" data-flags="{codes}"{css}>{"".join(tds)}</tr>')
    attention = sum(1 for row in view.rows if row.flags)
    checked = f"outputs checked for {html.escape(view.inference_date)}" if view.inference_date else "no prediction recorded yet"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Fleet status</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Fleet status</h1>
<p id="summary">{len(view.rows)} clients, {attention} needing attention; {checked}.</p>
<p id="generated">Generated at {view.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")} from MLflow at
<code>{html.escape(view.tracking_uri)}</code> and config <code>{html.escape(view.config_path)}</code>.
Click a column header to sort; hover over a flag for its facts.</p>
<table>
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
<script>{_SCRIPT}</script>
</body>
</html>
"""
