"""Atomic output: a staging folder outside the dataset, a swap by renames, the manifest in a sibling tree.

``products_categories/`` only ever holds complete parquet files, so DuckDB, Polars, pyarrow,
pandas and Spark can read the whole tree at any time, even during a write. A run writes a client's
date into ``_staging/client_id=<id>/date=<date>-<token>`` (on the same file system, so moving it in
is a rename), strips what is not parquet (checksums, markers), then swaps it in; its lineage goes
to ``_manifests/client_id=<id>/date=<date>.json`` right after. A failed or killed run never leaves
a half-written ``date=`` folder: the previous output of that date stays until the new one is
complete, and the next run cleans up after a killed one (its staging folder, or a swap cut between
its renames).

One run per client and date at a time: :func:`date_locks` takes an exclusive ``flock`` on
``_staging/client_id=<id>/date=<date>.lock`` for the job and the swap; a second run waits for it
(``CATEGORIES_PREDICTION_LOCK_WAIT`` seconds, default 600; 0 fails at once), then replaces the output
whole, or fails on one line naming the holder. Each staging folder has an owner record beside it
(``<staging>.owner``: host, pid, process start); recovery removes only staging whose owner is gone,
and the swap refuses a staging folder that is missing or not its own. On a prefix that is not
local (``s3a:``, ``hdfs:``) the lock file is in this machine's temporary folder: it keeps runs of
one machine apart, not runs of two machines (an Airflow deployment runs a client's prediction
DAG one run at a time; run ``predict-all`` on the same machine as the DAGs, or not at the same time).

With a classic Spark session, paths go through Hadoop's file system, so ``DATA_PREFIX`` may be a
``file:``, ``s3a:`` or ``hdfs:`` URI; behind Spark Connect this process has no JVM, and the output
must be a path it can reach.
"""
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional, Sequence


from categories_classification.errors import InfrastructureError
from categories_classification.paths import manifest_path, output_path, staging_root
from categories_classification.prediction.files import Files
from categories_classification.records import HOST_TAG, PID_TAG
from categories_classification.tracking.runs import abandoned, process_started

LOGGER = logging.getLogger(__name__)
PREVIOUS_PREFIX = "_previous-"
DATA_SUFFIX = ".parquet"  # the only files that go into the dataset
LEGACY_STAGING_PREFIX = "_staging-"  # where versions before the _staging/ tree staged: inside the dataset
OWNER_SUFFIX = ".owner"  # <staging>.owner: which process writes that staging folder
LOCK_SUFFIX = ".lock"  # <work>/date=<date>.lock: held by the one run of that client and date


@dataclass(frozen=True)
class Placement:
    """Where one client's output of one date lives, is staged, and is described."""

    target: str  # <prefix>/products_categories/client_id=<id>/date=<date>
    manifest: str  # <prefix>/_manifests/client_id=<id>/date=<date>.json
    work: str  # <prefix>/_staging/client_id=<id>: staging folders, staged manifests, the output being replaced

    @property
    def staging_root(self) -> str:
        """``<prefix>/_staging``: what a job over many clients writes into, partitioned by client and date."""
        return self.work.rsplit("/", 1)[0]

    @property
    def name(self) -> str:
        """The folder's name, ``date=<date>``."""
        return self.target.rsplit("/", 1)[1]

    def staging(self, token: str) -> str:
        """The folder a run writes the parquet files into."""
        return f"{self.work}/{self.name}-{token}"

    def staged_manifest(self, token: str) -> str:
        """The run's manifest until its data is in place."""
        return f"{self.staging(token)}.json"

    def previous(self, token: str) -> str:
        """Where the output being replaced waits until the new one is in place."""
        return f"{self.work}/{PREVIOUS_PREFIX}{self.name}-{token}"

    def owner(self, token: str) -> str:
        """The staging folder's owner record (host, pid, process start), beside it."""
        return f"{self.staging(token)}{OWNER_SUFFIX}"

    @property
    def lock(self) -> str:
        """``<work>/date=<date>.lock``: the lock of this client and date (see :func:`date_locks`)."""
        return f"{self.work}/{self.name}{LOCK_SUFFIX}"

    @property
    def date(self) -> str:
        """The output's date."""
        return self.name.split("=", 1)[1]

    @property
    def client_id(self) -> str:
        """The output's client."""
        return self.work.rsplit("=", 1)[1]


def placement(client_id: str, inference_date: str, prefix: str) -> Placement:
    """The :class:`Placement` of a client's output for a date under ``prefix``."""
    return Placement(output_path(client_id, inference_date, prefix), manifest_path(client_id, inference_date, prefix),
                     f"{staging_root(prefix)}/client_id={client_id}")


def owner_record() -> dict[str, Any]:
    """Who this process is: host, pid, when it started and when the record was made (epoch seconds)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_started": process_started(os.getpid()),
            "created": time.time()}


def owner_gone(record: Optional[str], now: Optional[float] = None, host: Optional[str] = None,
               started_at: Any = process_started) -> Optional[str]:
    """Why the owner of a staging folder is gone (its record's text), or None if it may still be running.

    Same host: its pid is gone, a zombie, or reused by a newer process. Another host: only after
    ``tracking.runs.FOREIGN_RUN_LIMIT_SECONDS`` (its process cannot be checked from here).
    """
    if record is None:
        return "no owner record"
    try:
        owner = json.loads(record)
        tags, created = {HOST_TAG: str(owner["host"]), PID_TAG: str(owner["pid"])}, float(owner["created"])
    except (ValueError, KeyError, TypeError):
        return "unreadable owner record"
    return abandoned(tags, created, time.time() if now is None else now, host or socket.gethostname(), started_at)


def _is_mine(record: Optional[str]) -> bool:
    if record is None:
        return False
    try:
        owner = json.loads(record)
    except ValueError:
        return False
    return isinstance(owner, dict) and owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid()


def claim_staging(files: Files, places: Sequence[Placement]) -> str:
    """A new token for a job that writes the staging folders of ``places``; this process's owner record goes
    beside each before anything is written."""
    token = uuid.uuid4().hex[:12]
    record = json.dumps(owner_record())
    for place in places:
        files.mkdirs(place.work)
        files.write_text(place.owner(token), record)
    return token


def _token(place: Placement, path: str) -> str:
    """The token of a staging folder, its manifest or owner record, or a ``_previous-`` folder."""
    name = path.rsplit("/", 1)[-1]
    name = name[len(PREVIOUS_PREFIX):] if name.startswith(PREVIOUS_PREFIX) else name
    token = name[len(place.name) + 1:]
    for suffix in (".json", OWNER_SUFFIX):
        if token.endswith(suffix):
            return token[:-len(suffix)]
    return token


def _tokens(files: Files, place: Placement) -> list[str]:
    paths = files.glob(f"{place.work}/{place.name}-*") + files.glob(f"{place.work}/{PREVIOUS_PREFIX}{place.name}-*")
    return sorted({_token(place, path) for path in paths})


def recover_interrupted_swap(files: Files, place: Placement) -> None:
    """Finish or undo what a run that is gone left for ``place``: its staging folder, a half-done swap.

    A staging folder whose owner still runs (see :func:`owner_gone`) is left alone, with its manifest
    and swap; one without an owner record (a version before records) counts as gone.
    """
    for token in _tokens(files, place):
        if owner_gone(files.read_text(place.owner(token))) is not None:
            _clean_token(files, place, token)
    parent = place.target.rsplit("/", 1)[0]
    # A run of an earlier version, killed, left these inside the dataset.
    for leftover in files.glob(f"{parent}/{LEGACY_STAGING_PREFIX}{place.name}-*"):
        files.delete(leftover)
    previous = files.glob(f"{parent}/{PREVIOUS_PREFIX}{place.name}-*")
    if previous and not files.exists(place.target):
        files.rename(previous[0], place.target)
    for leftover in files.glob(f"{parent}/{PREVIOUS_PREFIX}{place.name}-*"):
        files.delete(leftover)


def discard_own_staging(files: Files, place: Placement) -> None:
    """Remove what this process staged for ``place`` and did not swap in (a failed job, check or swap)."""
    for token in _tokens(files, place):
        if _is_mine(files.read_text(place.owner(token))):
            _clean_token(files, place, token)


def drop_staging(files: Files, staging: str, faults: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """Remove a failed client's staging folder; a file system that fails here (``faults``) leaves it to the
    next run of this date, with a warning."""
    if not staging:
        return
    try:
        files.delete(staging)
    except faults as exc:
        LOGGER.warning("staging folder %s not removed (%s): the next run of this date removes it", staging, exc)


def _clean_token(files: Files, place: Placement, token: str) -> None:
    """Undo (or finish) one run's staging: before its data went in, drop it; after, its manifest follows."""
    staging, staged, previous = place.staging(token), place.staged_manifest(token), place.previous(token)
    if files.exists(staged):
        if files.exists(staging) or not files.exists(place.target):
            files.delete(staged)  # stopped before its data was swapped in
        else:
            _publish(files, staged, place.manifest)  # stopped after: the data is in, its lineage goes with it
    files.delete(staging)
    if files.exists(previous) and not files.exists(place.target):
        files.rename(previous, place.target)  # stopped between the two renames: the old output comes back
    files.delete(previous)
    files.delete(place.owner(token))


def swap_in(files: Files, place: Placement, token: str, manifest: dict[str, Any]) -> None:
    """Swap the run's staging folder in as ``place.target``, then put its manifest in place.

    The staging folder must exist and be this process's (its owner record): one that was removed
    is never recreated, and another run's is never swapped in.
    """
    staging, staged = place.staging(token), place.staged_manifest(token)
    if not files.exists(staging) or not _is_mine(files.read_text(place.owner(token))):
        found = "is gone" if not files.exists(staging) else "belongs to another process"
        raise InfrastructureError(f"output {place.target}: this run's staging folder {staging} {found}; nothing "
                                  f"written, the output of {place.date} is left as it was")
    for path in files.glob(f"{staging}/*"):
        if not path.endswith(DATA_SUFFIX):  # .crc checksums, _SUCCESS: only data goes into the dataset
            files.delete(path)
    # Staged first: if this process dies after the data rename, the next run publishes it.
    files.write_text(staged, json.dumps(manifest, indent=2))
    previous = place.previous(token)
    files.mkdirs(place.target.rsplit("/", 1)[0])  # a rename into a missing folder would fall back to a copy
    if files.exists(place.target):
        files.rename(place.target, previous)
    if not files.rename(staging, place.target):
        files.delete(staged)
        if files.exists(previous):
            files.rename(previous, place.target)
        raise InfrastructureError(f"output {place.target}: could not move the new output into place from {staging}; "
                                  "the previous output of this date is left as it was")
    _publish(files, staged, place.manifest)
    files.delete(previous)
    files.delete(place.owner(token))


def _publish(files: Files, staged: str, target: str) -> None:
    """Move a manifest to ``target``, replacing the one there (in one rename where the file system can)."""
    files.mkdirs(target.rsplit("/", 1)[0])
    if not files.rename(staged, target):
        # Object stores and HDFS refuse to rename over an existing file.
        files.delete(target)
        if not files.rename(staged, target):
            raise InfrastructureError(f"manifest {target}: could not move it into place from {staged}")
