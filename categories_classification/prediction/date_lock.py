"""One prediction per client and date at a time: an exclusive ``flock`` on
``_staging/client_id=<id>/date=<date>.lock`` held for the job and the swap.

A second run waits for it (``CATEGORIES_PREDICTION_LOCK_WAIT`` seconds, default 600; 0 fails at
once), then replaces the output whole, or fails on one line naming the holder. On a prefix that is
not local (``s3a:``, ``hdfs:``) the lock file is in this machine's temporary folder: it keeps runs
of one machine apart, not runs of two machines.
"""
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol, Sequence, TypeVar

from py4j.protocol import Py4JError

from categories_classification.config import seconds_setting
from categories_classification.errors import CategoriesError, one_line
from categories_classification.paths import is_local
from categories_classification.prediction.files import Files, LocalFiles
from categories_classification.prediction.output import LOCK_SUFFIX, Placement, discard_own_staging, owner_record

LOGGER = logging.getLogger(__name__)
LOCK_WAIT_VARIABLE = "CATEGORIES_PREDICTION_LOCK_WAIT"
DEFAULT_LOCK_WAIT = 600.0  # seconds a run waits for another run of the same client and date
LOCK_POLL = 0.2


class ConcurrentRunError(CategoriesError):
    """Another run of the same client and date held the lock for longer than this run would wait."""


class _Planned(Protocol):  # what :func:`date_locks` needs of a plan (prediction.plan.ClientPlan)
    @property
    def client_id(self) -> str:
        """The plan's client."""

    @property
    def place(self) -> Placement:
        """Where the plan's output goes."""


PlanT = TypeVar("PlanT", bound=_Planned)


def lock_wait() -> float:
    """Seconds a run waits for another run of the same client and date (``CATEGORIES_PREDICTION_LOCK_WAIT``)."""
    return seconds_setting(LOCK_WAIT_VARIABLE, DEFAULT_LOCK_WAIT, zero_means="fail at once if another run holds the date")


@contextmanager
def date_locks(files: Files, plans: Sequence[PlanT], refused: dict[str, Exception],
               wait: Optional[float] = None) -> Iterator[list[PlanT]]:
    """Hold the lock of each plan's client and date for the block; yield the plans whose lock is held.

    Locks are taken in one order (by path), all within one deadline of ``wait`` seconds (default
    :func:`lock_wait`). A plan whose lock another run holds past it gets a one-line
    :class:`ConcurrentRunError` in ``refused`` (by client id) and is left out: that client's failure
    only. On leaving, whatever this process staged for a held date and did not swap in is removed,
    then the lock is released (and its file removed).
    """
    seconds = lock_wait() if wait is None else wait
    deadline = time.monotonic() + seconds
    held: dict[int, tuple[PlanT, int]] = {}
    try:
        for plan in sorted(plans, key=lambda plan: plan.place.lock):
            taken = _acquire(plan, deadline, seconds)
            if isinstance(taken, Exception):
                refused[plan.client_id] = taken
            else:
                held[id(plan)] = (plan, taken)
        yield [plan for plan in plans if id(plan) in held]
    finally:
        for plan, descriptor in held.values():
            try:
                discard_own_staging(files, plan.place)
            except (OSError, CategoriesError, Py4JError) as exc:
                LOGGER.warning("client %s: could not remove this run's staging of %s (%s): the next run will",
                               plan.client_id, plan.place.date, one_line(exc))
            finally:
                _release(_lock_path(plan.place), descriptor)


def _lock_path(place: Placement) -> Path:
    """The lock file: beside the staging folders on a local prefix; else in this machine's temp folder."""
    if is_local(place.lock):
        return LocalFiles.local(place.lock)
    digest = hashlib.sha256(place.lock.encode("utf-8")).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / "categories_locks" / f"{digest}{LOCK_SUFFIX}"


def _acquire(plan: _Planned, deadline: float, wait: float) -> Any:
    """A descriptor holding the plan's lock, or the :class:`ConcurrentRunError` saying who held it."""
    path = _lock_path(plan.place)
    path.parent.mkdir(parents=True, exist_ok=True)
    waiting, holder = 0.0, ""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            os.close(descriptor)
            if not waiting and time.monotonic() < deadline:
                waiting = time.monotonic()
                LOGGER.info("client %s: another prediction of %s is running (%s): waiting for it, up to %g s (%s)",
                            plan.client_id, plan.place.date, holder, wait, LOCK_WAIT_VARIABLE)
            if time.monotonic() >= deadline:
                return ConcurrentRunError(
                    f"another prediction of {plan.place.date} is running ({holder}); waited {wait:g} s for it "
                    f"({LOCK_WAIT_VARIABLE}); nothing written, the output of {plan.place.date} is left to that run",
                    plan.client_id)
            time.sleep(LOCK_POLL)
            continue
        try:
            current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            current = False
        if not current:  # the holder removed it while releasing: lock the file now at that path
            os.close(descriptor)
            continue
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps(owner_record()).encode("utf-8"))
        if waiting:  # why this run took longer than usual (a failed wait is its one error line instead)
            LOGGER.warning("client %s: waited %.0f s for another prediction of %s (%s) to end; its output is replaced",
                           plan.client_id, time.monotonic() - waiting, plan.place.date, holder)
        return descriptor


def _holder(path: Path) -> str:
    """``pid N on host H since <time>`` from a lock file's record."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        since = datetime.fromtimestamp(float(record["created"]), timezone.utc).isoformat(timespec="seconds")
        return f"pid {record['pid']} on host {record['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its holder is starting"


def _release(path: Path, descriptor: int) -> None:
    """Remove the lock file if it is still this lock's, then unlock (waiters on the old file try again)."""
    try:
        if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
            path.unlink()
    except FileNotFoundError:
        pass
    finally:
        os.close(descriptor)
