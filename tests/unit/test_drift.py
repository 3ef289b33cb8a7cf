"""The drift statistics (pure numpy): reference bins from a sample, counts per bin, PSI, the report."""
import json
import math

import numpy as np
import pytest

from categories_classification.config import DEFAULT_DRIFT_THRESHOLD
from categories_classification.drift import (
    DEFAULT_BINS,
    EPSILON,
    bin_counts,
    bin_edges,
    build_reference,
    drift_report,
    no_reference,
    psi,
    reference_problem,
)
from tests.helpers import drift_sample


def test_quantile_bins_hold_about_a_tenth_of_the_training_rows_each():
    reference = build_reference({"f0": drift_sample(4000, seed=1)[:, 0]})
    entry = reference["features"]["f0"]
    assert len(entry["edges"]) == DEFAULT_BINS - 1 and entry["edges"] == sorted(entry["edges"])
    assert len(entry["expected"]) == DEFAULT_BINS and math.isclose(sum(entry["expected"]), 1.0)
    assert all(abs(share - 0.1) < 0.002 for share in entry["expected"])
    assert reference["rows"] == 4000
    assert json.loads(json.dumps(reference)) == reference  # stored as JSON, read back the same


def test_counts_put_edges_above_outliers_at_the_ends_and_ignore_nan():
    edges = [0.0, 1.0, 2.0]
    counts = bin_counts(np.array([-50.0, 0.0, 0.5, 1.0, 1.5, 2.0, 99.0, np.nan, np.inf]), edges)
    assert counts.tolist() == [1, 2, 2, 3]  # -50 | 0, 0.5 | 1, 1.5 | 2, 99, inf


def test_a_feature_with_few_distinct_values_gets_fewer_bins_and_counted_shares():
    values = np.array([1.0] * 700 + [2.0] * 300)
    edges = bin_edges(values)
    assert edges.tolist() == [1.0, 2.0]
    entry = build_reference({"flag": values})["features"]["flag"]
    assert math.isclose(sum(entry["expected"]), 1.0)
    assert psi(entry["expected"], bin_counts(values, entry["edges"])) == pytest.approx(0.0)


def test_psi_is_zero_for_the_same_shares_and_finite_with_empty_bins():
    assert psi([0.25] * 4, [10, 10, 10, 10]) == pytest.approx(0.0)
    everything_in_one_bin = psi([0.25] * 4, [0, 0, 0, 40])
    assert math.isfinite(everything_in_one_bin) and everything_in_one_bin > 3
    # The epsilon floor: an empty bin contributes (eps - e) * ln(eps / e), not infinity.
    expected = 3 * (EPSILON - 0.25) * math.log(EPSILON / 0.25) + (1 - 0.25) * math.log(1 / 0.25)
    assert everything_in_one_bin == pytest.approx(expected)
    assert psi([0.5, 0.5], [0, 0]) is None  # no rows, no score


def _report(train: np.ndarray, current: np.ndarray, threshold: float = DEFAULT_DRIFT_THRESHOLD):
    names = [f"f{index}" for index in range(train.shape[1])]
    reference = build_reference({name: train[:, index] for index, name in enumerate(names)})
    counts = {name: bin_counts(current[:, index], reference["features"][name]["edges"]).tolist()
              for index, name in enumerate(names)}
    return drift_report(reference, counts, threshold)


def test_another_sample_of_the_same_data_does_not_drift():
    report = _report(drift_sample(3000, seed=1), drift_sample(800, seed=2))
    assert not report.drifted and report.max < 0.05 and report.rows == 800
    assert set(report.metrics()) == {"drift_psi_f0", "drift_psi_f1", "drift_psi_f2", "drift_max"}


@pytest.mark.parametrize("change", ["shift by 2 standard deviations", "scale by 3"])
def test_a_shifted_or_scaled_feature_drifts_and_only_that_one(change):
    train, current = drift_sample(3000, seed=1), drift_sample(800, seed=2)
    if change.startswith("shift"):
        current[:, 1] += 2 * train[:, 1].std()
    else:
        current[:, 1] = train[:, 1].mean() + 3 * (current[:, 1] - train[:, 1].mean())
    report = _report(train, current)
    assert report.over == ("f1",) and report.drifted and report.max == report.scores["f1"] > 0.5
    assert report.scores["f0"] < 0.05 and report.scores["f2"] < 0.05
    assert report.describe_over() == f"f1 PSI {report.scores['f1']:.3f}"
    record = report.to_dict()
    assert record["over_threshold"] and record["features_over"] == ["f1"] and record["threshold"] == 0.2


def test_the_threshold_decides_what_is_over():
    train, current = drift_sample(3000, seed=1), drift_sample(800, seed=2)
    current[:, 0] += 0.3 * train[:, 0].std()
    score = _report(train, current).scores["f0"]
    assert 0.01 < score < 1
    assert _report(train, current, threshold=score * 0.9).over == ("f0",)
    assert not _report(train, current, threshold=score * 1.1).drifted


def test_no_rows_means_no_scores_and_no_metrics():
    train = drift_sample(500, seed=1)
    report = _report(train, train[:0])
    assert report.scores == {} and report.max is None and report.metrics() == {} and not report.drifted


def test_reference_problems_are_named():
    good = build_reference({"f0": drift_sample(100, seed=1)[:, 0]})
    assert reference_problem(good, ["f0"]) is None
    assert "no entry for feature 'f9'" in reference_problem(good, ["f0", "f9"])
    assert "format" in reference_problem({"features": {}}, ["f0"])
    broken = json.loads(json.dumps(good))
    broken["features"]["f0"]["expected"].pop()
    assert "one more 'expected' share" in reference_problem(broken, ["f0"])
    assert no_reference("version 1 was trained before drift references were stored") == {
        "reference": False, "status": "no reference: version 1 was trained before drift references were stored"}
