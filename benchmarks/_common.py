"""What every benchmark shares: the run context, result rows and sections, and measurements."""
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import psutil
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SEED_DATA = PROJECT_ROOT.parent / "shared" / "seed-data"


@dataclass(frozen=True)
class BenchContext:
    """Where a benchmark works and writes, and how big it runs."""

    quick: bool
    workdir: Path  # scratch space (data, MLflow stores), deleted after the run
    outdir: Path  # results.md and the PNG plots go here
    python: str = sys.executable

    @property
    def seed_data(self) -> Optional[Path]:
        """The design's seed data (../shared/seed-data) when it is there."""
        return SEED_DATA if (SEED_DATA / "clients_config.yaml").is_file() else None

    def scratch(self, name: str) -> Path:
        """A fresh sub-folder of the scratch space."""
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Row:
    """One measured figure against its reference."""

    figure: str
    value: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    met: Optional[bool] = None  # None: informative, no target


@dataclass
class Section:
    """One target of the issue: a table, notes and plots."""

    title: str
    target: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # file names in the output folder
    seconds: float = 0.0

    @property
    def met(self) -> Optional[bool]:
        """False if any row misses its target, True if all targeted rows meet it."""
        verdicts = [row.met for row in self.rows if row.met is not None]
        return all(verdicts) if verdicts else None


@dataclass(frozen=True)
class Timed:
    """Wall time and the peak resident memory of a process tree while it ran."""

    seconds: float
    peak_rss_bytes: int
    result: Any = None


def machine() -> str:
    """One line describing the machine the figures come from."""
    memory = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def timed(step: Callable[[], Any], *, pid: Optional[int] = None, interval: float = 0.05) -> Timed:
    """Run ``step`` and measure its wall time and the peak RSS of process ``pid`` and its children.

    ``pid`` defaults to this process; children (Spark's JVM and Python workers, pool workers)
    are included because a process tree is what the machine has to hold.
    """
    sampler = _PeakSampler(pid or os.getpid(), interval)
    sampler.start()
    started = time.perf_counter()
    try:
        result = step()
    finally:
        seconds = time.perf_counter() - started
        sampler.stop()
    return Timed(seconds, sampler.peak, result)


def run_command(args: Sequence[str], *, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
                timeout: float = 3600) -> Timed:
    """Run a command to completion (check=True) and measure its wall time and peak tree RSS."""
    merged = {**os.environ, **(env or {})}
    with subprocess.Popen(list(args), env=merged, cwd=cwd or PROJECT_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        sampler = _PeakSampler(process.pid, 0.05)
        sampler.start()
        started = time.perf_counter()
        try:
            output, _ = process.communicate(timeout=timeout)
        finally:
            seconds = time.perf_counter() - started
            sampler.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {process.returncode}:\n{output[-3000:]}")
    return Timed(seconds, sampler.peak, output)


def ratio(value: float, reference: float) -> str:
    """``value / reference`` as ``1.23x``."""
    return f"{value / reference:.2f}x" if reference else "n/a"


def megabytes(size: float) -> str:
    """Bytes as MB (10^6), the unit the issue uses."""
    return f"{size / 1e6:,.1f} MB"


def seconds(value: float) -> str:
    """Seconds with a precision that suits the magnitude."""
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


class _PeakSampler:
    """Samples the RSS of a process and its descendants in a background thread."""

    def __init__(self, pid: int, interval: float) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.peak = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def _sample(self) -> None:
        try:
            root = psutil.Process(self._pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        self.peak = max(self.peak, total)


def write_config(path: Path, clients: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a clients config (client id -> features and optional params) as YAML; return ``path``."""
    path.write_text(yaml.safe_dump({client: dict(entry) for client, entry in clients.items()}, sort_keys=True),
                    encoding="utf-8")
    return path
