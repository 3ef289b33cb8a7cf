"""What several tests need: the project root, the CLI as a subprocess, configs, output paths, a top-k reference,
a trained-and-predicted stack, a snapshot of what a failed command must leave as it was, and the sockets a
stack's processes listen on."""
import ctypes
import hashlib
import io
import ipaddress
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from mlflow.tracking import MlflowClient

from categories_classification.paths import manifest_path, output_path, staging_root
from categories_classification.records import INFERENCE_DATE_TAG, PREDICTION, STAGE_TAG, experiment_name, model_name
from categories_classification.tracking.locks import promotion_lock
from categories_classification.topk import top_k_arrow
from scripts.generate_example_data import ClientSpec

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "categories_classification_cli.py"
DATE = "2026-11-23"
FEATURES = ["f0", "f1", "f2", "f3", "f4"]
# The small generated clients most integration tests use (the session's small_data holds them).
SMALL_CLIENTS = (
    ClientSpec("small_a", 101, n_train=900, n_predict=400, n_categories=12),
    ClientSpec("small_b", 102, n_train=500, n_predict=250, n_categories=3),
)

# What Spark 4 reports when the output's file system fills up while parquet is written (frames trimmed).
FULL_DISK_TRACE = """An error occurred while calling o186.parquet.
: org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to file:/mnt/data/products_categories/client_id=big/_staging-date=2026-11-23-60b8a045ab8b. SQLSTATE: 58030
\tat org.apache.spark.sql.errors.QueryExecutionErrors$.taskFailedWhileWritingRowsError(QueryExecutionErrors.scala:823)
\tat py4j.ClientServerConnection.run(ClientServerConnection.java:108)
\tat java.base/java.lang.Thread.run(Thread.java:840)
Caused by: org.apache.parquet.util.AutoCloseables$ParquetCloseResourceException: Unable to close resource
\tat org.apache.parquet.util.AutoCloseables.uncheckedClose(AutoCloseables.java:85)
\tat java.base/java.util.concurrent.ThreadPoolExecutor$Worker.run(ThreadPoolExecutor.java:635)
\t... 1 more
Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device
\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:549)
\t... 29 more
\tSuppressed: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device
\t\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:549)
\t\t... 31 more
\t\tSuppressed: org.apache.hadoop.fs.FSError: java.io.IOException: Stream closed
\t\t\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:549)
\t\tCaused by: java.io.IOException: Stream closed
\t\t\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\t\t\t... 44 more
\tCaused by: java.io.IOException: Disk quota exceeded
\t\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\t\t... 43 more
Caused by: java.io.IOException: No space left on device
\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\tat java.base/java.io.FileOutputStream.write(FileOutputStream.java:349)
\t... 43 more
"""


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s")
        time.sleep(interval)


def run_cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI as users and Airflow do (a subprocess from the project root, in exactly ``env``).

    A failure is the caller's to look at, unless ``check``: then anything but exit 0 fails the test with the
    end of the command's output."""
    result = subprocess.run([sys.executable, str(CLI), *args], cwd=ROOT, env=dict(env), capture_output=True,
                            text=True, timeout=timeout, check=False)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def start_cli(args: Sequence[str], env: Mapping[str, str], stdout: Any = subprocess.PIPE,
              stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    """Start the CLI in its own process group (so a test can kill it with its JVM and workers)."""
    return subprocess.Popen([sys.executable, str(CLI), *args], cwd=ROOT, env=dict(env),  # pylint: disable=consider-using-with
                            stdout=stdout, stderr=stderr, text=True, start_new_session=True)


def caught_mid_run(process: subprocess.Popen, started: Callable[[], Any], what: str, timeout: float = 300) -> Any:
    """Wait until ``started()`` is truthy while ``process`` still runs: a test's moment to kill it, or to cut
    something from under it, mid-run. Fails if the process ends first or ``what`` is not seen within
    ``timeout`` s; returns what ``started`` returned."""
    seen = wait_until(lambda: process.poll() is not None or started(), timeout, what, interval=0.05)
    assert process.poll() is None, f"{what}: the process ended (exit {process.returncode}) before it was caught mid-run"
    return seen


def kill_mid_run(process: subprocess.Popen, started: Callable[[], Any], what: str, timeout: float = 300) -> None:
    """:func:`caught_mid_run`, then SIGKILL to the process's whole group (a CLI started by :func:`start_cli`,
    with its JVM and workers): nothing of it runs a ``finally``."""
    caught_mid_run(process, started, what, timeout)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def train_args(client_id: str, features: Sequence[str] = tuple(FEATURES), params: str = "{}",
               date: str = DATE) -> list[str]:
    """The ``trainer`` command's arguments as the training DAG passes them."""
    return ["trainer", f"--client_id={client_id}", f"--features={json.dumps(list(features))}",
            f"--model_params={params}", f"--training_date={date}"]


def write_config(path: Path, clients: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a clients config (``{client_id: {features: [...], params: {...}, ...}}``) as YAML; return its path."""
    path.write_text(yaml.safe_dump({client: dict(entry) for client, entry in clients.items()}, sort_keys=False),
                    encoding="utf-8")
    return path


def client_entry(n_estimators: Optional[int] = None, **extra: Any) -> dict[str, Any]:
    """One client's config entry on the generated features (``params`` only when ``n_estimators`` is given)."""
    entry: dict[str, Any] = {"features": list(FEATURES)}
    if n_estimators is not None:
        entry["params"] = {"n_estimators": n_estimators}
    return {**entry, **extra}


def output_folder(prefix: Union[str, Path], client_id: str, date: str = DATE) -> Path:
    """The output folder of a client and date under a local data prefix (the package's own layout)."""
    return Path(output_path(client_id, date, str(prefix)))


def read_manifest(prefix: Union[str, Path], client_id: str, date: str = DATE) -> dict[str, Any]:
    """The lineage record of a client's output for a date (``_manifests/client_id=<id>/date=<date>.json``)."""
    return json.loads(Path(manifest_path(client_id, date, str(prefix))).read_text(encoding="utf-8"))


def staging_leftovers(prefix: Union[str, Path], client_id: str) -> list[str]:
    """What is left in a client's staging folder (``_staging/client_id=<id>``): nothing once a run is over."""
    folder = Path(staging_root(str(prefix))) / f"client_id={client_id}"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def non_parquet_in_dataset(prefix: Union[str, Path]) -> list[str]:
    """Anything under ``products_categories/`` that is not a parquet file in a ``client_id=/date=`` folder."""
    root = Path(prefix) / "products_categories"
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.name.startswith(("_", ".")) or (path.is_file() and path.suffix != ".parquet"))


def read_output(prefix: Union[str, Path], client_id: str, date: str = DATE) -> pd.DataFrame:
    """The parquet rows a prediction wrote, sorted by product and rank."""
    frame = pd.read_parquet(output_folder(prefix, client_id, date))
    return frame.sort_values(["product_id", "rank"]).reset_index(drop=True)


def ranked(product_ids: Sequence[Any], scores: np.ndarray, labels: Sequence[Any], k: int = 5) -> pd.DataFrame:
    """The package's top-k rows (:func:`~categories_classification.topk.top_k_arrow`) as a DataFrame."""
    ids = pa.array([None if value is None else str(value) for value in product_ids], type=pa.string())
    return top_k_arrow(ids, scores, pa.array([str(label) for label in labels], type=pa.string()), k).to_pandas()


def reference_top_k(product_ids: Sequence[Any], scores: np.ndarray, labels: Sequence[Any], k: int = 5) -> pd.DataFrame:
    """The ranking rule written the obvious way (a stable sort of every row), to check the fast one against."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray([str(label) for label in labels])
    kept = min(k, len(labels))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :kept]
    return pd.DataFrame({
        "product_id": np.repeat(np.asarray([str(value) for value in product_ids], dtype=object), kept),
        "pred_label": labels[order].ravel() if len(order) else np.array([], dtype=object),
        "pred_score": np.take_along_axis(scores, order, axis=1).ravel(),
        "rank": np.tile(np.arange(kept, dtype=np.int32), len(scores)),
    })


def exploded(served: pd.DataFrame) -> pd.DataFrame:
    """The served model's rows (one per product, lists best first) as the batch's rows (one per category), sorted."""
    rows = served.explode(["pred_label", "pred_score", "rank"]).dropna(subset=["rank"])
    return pd.DataFrame({
        "product_id": rows["product_id"].astype(object), "pred_label": rows["pred_label"].astype(object),
        "pred_score": rows["pred_score"].astype(np.float64), "rank": rows["rank"].astype(np.int32),
    }).sort_values(["product_id", "rank"]).reset_index(drop=True)


def trained_and_predicted(source: Path, root: Path, clients: Sequence[str]) -> tuple[Path, dict[str, str]]:
    """A private copy of ``source``'s inputs under ``root``, each client trained (8 trees) and predicted for DATE
    through the CLI, with its own SQLite store and model cache; returns the data prefix and the CLI's environment."""
    data = root / "data"
    shutil.copytree(source, data, ignore=shutil.ignore_patterns("products_categories"))
    env = dict(os.environ, DATA_PREFIX=str(data), MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
               SPARK_MASTER="local[2]", CATEGORIES_MODEL_CACHE=str(root / "model_cache"))
    for client_id in clients:
        for args in (train_args(client_id, params='{"n_estimators": 8}'),
                     ["predictor", f"--client_id={client_id}", f"--inference_date={DATE}"]):
            result = run_cli(args, env)
            assert result.returncode == 0, result.stderr
    return data, env


def drift_sample(rows: int, seed: int, features: int = 3) -> np.ndarray:
    """``rows`` draws of ``features`` independent normal columns (centres 0, 1, ..., scales 1, 2, ...): one
    population, so two seeds give two samples that must not be told apart as drift."""
    rng = np.random.default_rng(seed)
    return rng.normal(np.arange(features, dtype=float), np.arange(1, features + 1, dtype=float), (rows, features))


def shift_prediction_feature(prefix: Path, client_id: str, feature: str, standard_deviations: float) -> None:
    """Shift one feature of a client's prediction file, in place, by ``standard_deviations`` of its training values."""
    source = prefix / "prediction" / f"client_id={client_id}" / "data_predict.csv.gz"
    spread = pd.read_csv(prefix / "train" / f"client_id={client_id}" / "data_train.csv.gz")[feature].std()
    rows = pd.read_csv(source, dtype={"product_id": str})
    rows[feature] += standard_deviations * spread
    rows.to_csv(source, index=False)


def snapshot(data: Path, store_uri: str, clients: Sequence[str]) -> dict:
    """Everything a failed command must leave as it was: each client's registered versions and aliases, and every
    file (name and SHA-256) under its output folder, its manifests and its staging folder."""

    client = MlflowClient(store_uri)
    state: dict[str, Any] = {}
    for client_id in clients:
        name = model_name(client_id)
        state[name] = (sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'")),
                       dict(client.get_registered_model(name).aliases))
        folder = output_folder(data, client_id).parent
        for tree in (folder, Path(manifest_path(client_id, DATE, str(data))).parent,
                     Path(staging_root(str(data))) / f"client_id={client_id}"):
            state[str(tree)] = {str(path.relative_to(tree)): hashlib.sha256(path.read_bytes()).hexdigest()
                                for path in sorted(tree.rglob("*")) if path.is_file()}
        state[f"{folder} entries"] = sorted(path.name for path in folder.iterdir())
    return state


def prediction_runs(client_id: str, date: str = DATE) -> list:
    """A client's prediction runs of ``date`` in the current tracking store, oldest first."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name(client_id))
    runs = [run for run in client.search_runs([experiment.experiment_id]) if run.data.tags.get(STAGE_TAG) == PREDICTION
            and run.data.tags.get(INFERENCE_DATE_TAG) == date]
    return sorted(runs, key=lambda run: run.info.start_time)


def stored_model_file(store_uri: str, client_id: str, version: int) -> Path:
    """The skops file of a registered version in a local artifact store (for tests that damage it in place)."""

    location = MlflowClient(store_uri).get_model_version_download_uri(model_name(client_id), str(version))
    folder = Path(unquote(urlparse(location).path))
    flavor = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))["flavors"]["sklearn"]
    return folder / flavor["pickled_model"]


def flip_bytes_in_largest_entry(data: bytes, count: int = 4) -> bytes:
    """``data`` (a zip) with ``count`` bytes inverted in the middle of its largest entry's compressed content."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entry = max(archive.infolist(), key=lambda info: info.compress_size)
    # The local header: 30 fixed bytes ending with the name's and the extra field's lengths, then those two.
    name_length, extra_length = struct.unpack_from("<HH", data, entry.header_offset + 26)
    start = entry.header_offset + 30 + name_length + extra_length + entry.compress_size // 2
    damaged = bytearray(data)
    for offset in range(start, start + count):
        damaged[offset] ^= 0xFF
    return bytes(damaged)


def write_and_train(specs: Sequence[Any], root: Path, n_estimators: int, date: str = DATE) -> Path:
    """Generate each client of ``specs`` (``ClientSpec``) under ``root`` and train it once (version 1, champion)."""
    # pylint: disable=import-outside-toplevel  # the trainer imports sklearn: only integration tests pay for it
    from categories_classification.training.trainer import train_model
    from scripts.generate_example_data import write_client

    for spec in specs:
        write_client(spec, root)
        train_model(spec.client_id, FEATURES, {"n_estimators": n_estimators}, date, data_prefix=str(root))
    return root


# Each event is a line "<event> <time.monotonic()>": CLOCK_MONOTONIC is one clock for every process of the machine.
_LOCK_TAKER = """\
import sys, time
from pathlib import Path
from categories_classification.tracking.locks import promotion_lock
def note(event):
    with Path(sys.argv[2]).open("a", encoding="utf-8") as log:
        log.write(f"{event} {time.monotonic()!r}\\n")
note("trying")
with promotion_lock(sys.argv[1]):
    note("enter")
    time.sleep(float(sys.argv[3]))
    note("exit")
"""


def lock_taker(client_id: str, log: Path, hold: float = 0.0) -> subprocess.Popen:
    """A process that takes ``client_id``'s promotion lock and holds it ``hold`` s, noting in ``log`` when it
    tried, entered (lock taken) and exited (lock still held): see :func:`lock_events`."""
    return subprocess.Popen(  # pylint: disable=consider-using-with  # the caller waits or kills it
        [sys.executable, "-c", _LOCK_TAKER, client_id, str(log), str(hold)])


def lock_events(log: Path) -> dict[str, float]:
    """What a :func:`lock_taker` noted so far: ``{"trying"|"enter"|"exit": time.monotonic()}``."""
    if not log.exists():
        return {}
    return {event: float(at) for event, at in (line.split() for line in log.read_text(encoding="utf-8").splitlines())}


def waits_for_a_promotion_lock(pid: int) -> bool:
    """True while process ``pid`` is blocked taking a promotion lock, as the lock's owner sees it (no timing): a
    waiter of a file lock in ``/proc/locks`` (SQLite store), or an advisory lock not yet granted on the lock's
    PostgreSQL database (``MLFLOW_TRACKING_URI`` or ``CATEGORIES_LOCK_URL``; the test's own database)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:"):
        return any(line.split()[1:3] == ["->", "FLOCK"] and line.split()[5] == str(pid)
                   for line in Path("/proc/locks").read_text(encoding="utf-8").splitlines())
    import psycopg2  # pylint: disable=import-outside-toplevel  # only the PostgreSQL tests need the driver

    url = urlparse(uri if uri.startswith("postgres") else os.environ["CATEGORIES_LOCK_URL"])
    with psycopg2.connect(url._replace(scheme="postgresql").geturl(), connect_timeout=10) as connection:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE locktype = 'advisory'"
                           " AND NOT granted AND application_name = 'categories promotion lock'")
            waiting = cursor.fetchone()[0] > 0
    connection.close()
    return waiting


def assert_one_gate_at_a_time_per_client(folder: Path) -> None:
    """While this process holds client_0's promotion lock, another process is seen blocked in it and gets in only
    after it is released (event order, not "still waiting after a while"); client_1's lock is free meanwhile."""
    same, other = folder / "same.log", folder / "other.log"
    with promotion_lock("client_0"):
        held_from = time.monotonic()
        blocked, free = lock_taker("client_0", same), lock_taker("client_1", other)
        assert free.wait(timeout=60) == 0  # another client's gate is not held up: in and out while this one holds
        wait_until(lambda: "enter" in lock_events(same) or waits_for_a_promotion_lock(blocked.pid), 60,
                   "client_0's second taker blocked in the lock")
        assert "enter" not in lock_events(same), "a second process took client_0's lock while this one held it"
        held_until = time.monotonic()  # still held
    assert blocked.wait(timeout=60) == 0
    events, free_events = lock_events(same), lock_events(other)
    assert events["trying"] < held_until < events["enter"] < events["exit"], (held_from, held_until, events)
    assert held_from < free_events["enter"] < free_events["exit"] < held_until, (held_from, held_until, free_events)


def listening_sockets(pids: Iterable[int]) -> dict[tuple[str, int], str]:
    """Every TCP socket the process groups led by ``pids`` and their descendants listen on:
    (address, port) -> the listening process's command."""
    leaders = set(pids)
    members = [process for process in psutil.process_iter() if _group_of(process.pid) in leaders]
    tree = {}
    for member in members:
        try:
            for process in [member, *member.children(recursive=True)]:
                tree[process.pid] = " ".join(process.cmdline())[:120]
        except psutil.Error:  # exited since the listing
            continue
    return {(connection.laddr.ip, connection.laddr.port): tree[connection.pid]
            for connection in psutil.net_connections(kind="tcp")
            if connection.pid in tree and connection.status == psutil.CONN_LISTEN}


@contextmanager
def opened_after(path: Path) -> Iterator[Callable[[float], bool]]:
    """Watch ``path`` (Linux inotify, no timing): yields ``opened(timeout)``, True once a process has opened the
    file since the watch began (within ``timeout`` seconds)."""
    libc = ctypes.CDLL(None, use_errno=True)
    watch = libc.inotify_init1(os.O_NONBLOCK)
    if watch < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    try:
        if libc.inotify_add_watch(watch, str(path).encode(), IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        yield lambda timeout: bool(select.select([watch], [], [], timeout)[0])
    finally:
        os.close(watch)


IN_OPEN = 0x20  # <sys/inotify.h>


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``, how the JVM shows its binds)."""
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def _group_of(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def write_previous_output(data: Path, client_id: str, date: str = DATE) -> None:
    """An earlier output of ``date`` (a parquet file and its manifest): what a failed run must leave byte for byte."""
    folder = output_folder(data, client_id, date)
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"product_id": ["p1"], "pred_label": ["c1"]}), folder / "part-00000.parquet")
    manifest = Path(manifest_path(client_id, date, str(data)))
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"client_id": client_id, "prediction_run_id": "earlier"}), encoding="utf-8")
