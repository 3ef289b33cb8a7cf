"""The checks over what the Spark job counted: pure functions, no Spark, no MLflow."""
import math
import re

import pytest

from categories_classification.config import DEFAULT_DRIFT_THRESHOLD
from categories_classification.drift import FORMAT_VERSION
from categories_classification.errors import ConfigError, InputDataError
from categories_classification.prediction import checks
from categories_classification.prediction.checks import DriftCheck, DriftError

SOURCE = "/data/prediction/client_id=c1/data_predict.csv.gz"
FEATURES = ("f0", "f1")


def _stats(**counts):
    entry = {"rows": 0, "written": 0, "skipped": 0, "malformed": 0, "malformed_example": "", "repeated": 0,
             "drift_counts": []}
    return {**entry, **counts}


def _reference():
    """Four bins per feature: edges 0.25, 0.5, 0.75, each bin a quarter of the training rows."""
    feature = {"edges": [0.25, 0.5, 0.75], "expected": [0.25] * 4}
    return {"format": FORMAT_VERSION, "metric": "psi", "bins": 4, "rows": 400, "features": {"f0": feature, "f1": feature}}


def test_threshold_defaults_and_refuses_what_is_not_a_positive_number():
    assert checks.threshold("c1", None) == DEFAULT_DRIFT_THRESHOLD
    assert checks.threshold("c1", 1) == 1.0 and isinstance(checks.threshold("c1", 1), float)
    for bad in (0, -0.1, math.inf, math.nan, True, "0.2"):
        with pytest.raises(ConfigError, match=r"client 'c1': drift_threshold: expected a positive number \(a PSI\), found"):
            checks.threshold("c1", bad)


def test_counts_are_summed_over_the_partitions_that_saw_the_client():
    stats = [_stats(written=10, skipped=1, drift_counts=[[1, 2], [3]]), _stats(written=5, drift_counts=[[4, 0], [1]])]
    assert (checks.count(stats, "written"), checks.count(stats, "skipped"), checks.count([], "written")) == (15, 1, 0)
    assert checks.bin_counts(stats, FEATURES) == {"f0": [5, 2], "f1": [4]}
    assert not checks.bin_counts([_stats()], FEATURES)  # no reference: nothing counted


def test_a_malformed_row_is_the_clients_problem_with_the_first_example():
    assert checks.malformed_problem("c1", SOURCE, [_stats(rows=5)]) is None
    stats = [_stats(), _stats(malformed=2, malformed_example="p3,x,0.0"), _stats(malformed=1, malformed_example="p9,y")]
    problem = checks.malformed_problem("c1", SOURCE, stats)
    assert isinstance(problem, InputDataError) and problem.client_id == "c1"
    assert str(problem) == (
        f"client 'c1': file {SOURCE}: a feature value is not a number, or a row has the wrong number of fields "
        "(3 row(s), e.g. 'p3,x,0.0'): expected product_id and numbers in every feature column; "
        "nothing written, the output of this date is left as it was")


@pytest.mark.parametrize("stats, exact", [
    ([], False),  # no row at all
    ([_stats(repeated=0)], False),  # one partition hashed every row: no repeat, no duplicate
    ([_stats(repeated=1)], True),  # a duplicate, or a 64-bit collision
    ([_stats(), _stats()], True),  # rows spread over partitions: only an exact count tells
])
def test_the_exact_duplicate_count_runs_only_when_the_workers_cannot_rule_duplicates_out(stats, exact):
    assert checks.may_have_duplicates(stats) is exact


def test_duplicates_are_told_with_at_most_three_examples():
    assert checks.duplicates_problem("c1", SOURCE, 0, 0, []) is None  # a hash collision, not a duplicate
    problem = checks.duplicates_problem("c1", SOURCE, 4, 9, ["a", None, "c", "d"])
    assert str(problem) == (f"client 'c1': file {SOURCE}: 4 product_id value(s) appear more than once (9 rows, "
                            "e.g. 'a', '', 'c'): expected one row per product_id; "
                            "nothing written, the output of this date is left as it was")


def test_without_a_reference_drift_is_not_checked_and_the_record_says_why():
    check = DriftCheck(0.2, missing="version 1 was trained before drift references were stored")
    assert not check.edges(FEATURES)
    verdict = checks.drift_verdict("c1", SOURCE, "m version 1", check, [_stats()], FEATURES)
    assert verdict == checks.DriftVerdict()
    assert checks.drift_record(check, None) == {
        "reference": False, "status": "no reference: version 1 was trained before drift references were stored"}


def test_an_input_like_the_reference_passes_and_its_scores_are_recorded():
    check = DriftCheck(0.2, reference=_reference())
    assert check.edges(FEATURES) == ((0.25, 0.5, 0.75), (0.25, 0.5, 0.75))
    verdict = checks.drift_verdict("c1", SOURCE, "m version 1", check,
                                   [_stats(drift_counts=[[25, 25, 25, 25], [20, 30, 25, 25]])], FEATURES)
    assert (verdict.problem, verdict.warning) == (None, "")
    assert not verdict.report.drifted and verdict.report.rows == 100
    record = checks.drift_record(check, verdict.report)
    assert record["reference"] is True and record["over_threshold"] is False and set(record["scores"]) == set(FEATURES)


@pytest.mark.parametrize("fail", [False, True])
def test_a_drifted_input_is_a_warning_or_with_fail_on_drift_the_clients_problem(fail):
    check = DriftCheck(0.2, fail=fail, reference=_reference())
    stats = [_stats(drift_counts=[[90, 5, 3, 2], [25, 25, 25, 25]])]  # f0 shifted to its first bin
    verdict = checks.drift_verdict("c1", SOURCE, "m version 3", check, stats, FEATURES)
    assert verdict.report.over == ("f0",)
    what = rf"file {SOURCE}: the input drifted from m version 3's training data: f0 PSI \d+\.\d{{3}} over the threshold 0.2"
    assert verdict.report.max == verdict.report.scores["f0"] > 0.2
    if fail:
        assert isinstance(verdict.problem, DriftError) and verdict.warning == ""
        assert re.fullmatch(rf"client 'c1': {what} \(fail_on_drift\); nothing written, the output of this date is "
                            "left as it was", str(verdict.problem)), verdict.problem
    else:
        assert verdict.problem is None
        assert re.fullmatch(what, verdict.warning), verdict.warning


def test_a_record_without_a_report_says_not_computed():
    assert checks.drift_record(DriftCheck(0.2, reference=_reference()), None) == {
        "reference": False, "status": "no reference: not computed"}
