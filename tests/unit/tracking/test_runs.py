"""Which RUNNING runs are abandoned: the pure rule, with process start times given (no store, no process)."""
import pytest

from categories_classification.records import HOST_TAG, PID_TAG
from categories_classification.tracking.runs import FOREIGN_RUN_LIMIT_SECONDS, abandoned

HOST = "worker-1"
NOW = 1_800_000_000.0


def _started_at(alive: dict[int, float]):
    return alive.get


def test_a_run_whose_process_is_gone_is_abandoned():
    tags = {HOST_TAG: HOST, PID_TAG: "4242"}
    assert abandoned(tags, NOW - 60, NOW, HOST, _started_at({})) == f"process 4242 on {HOST} is gone"


def test_a_run_whose_process_still_runs_is_left_alone_however_old():
    tags = {HOST_TAG: HOST, PID_TAG: "4242"}
    assert abandoned(tags, NOW - 60, NOW, HOST, _started_at({4242: NOW - 70})) is None
    assert abandoned(tags, NOW - 10 * 86400, NOW, HOST, _started_at({4242: NOW - 10 * 86400 - 5})) is None
    assert abandoned(tags, NOW - 60, NOW, HOST, _started_at({4242: 0.0})) is None  # start unknown


def test_a_reused_pid_does_not_keep_a_dead_run_open():
    tags = {HOST_TAG: HOST, PID_TAG: "4242"}
    reason = abandoned(tags, NOW - 600, NOW, HOST, _started_at({4242: NOW - 30}))
    assert reason is not None and "newer process" in reason


@pytest.mark.parametrize("tags", [{HOST_TAG: "other-host", PID_TAG: "4242"}, {}],
                         ids=["other host", "no tags"])
def test_runs_of_other_hosts_are_closed_only_after_the_limit(tags):
    never_asked = _started_at({})  # another host's pid says nothing here
    limit = FOREIGN_RUN_LIMIT_SECONDS
    assert abandoned(tags, NOW - limit + 60, NOW, HOST, never_asked) is None
    reason = abandoned(tags, NOW - limit - 3600, NOW, HOST, never_asked)
    assert reason is not None and "over the 24 h limit" in reason
