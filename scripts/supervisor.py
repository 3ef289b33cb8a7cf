"""One process supervisor for every local stack: process specs in, start order, pid files, health waits, stop order.

A profile (``scripts/profiles/``) is a list of :class:`ProcessSpec` plus its settings; a
:class:`Supervisor` over a run folder starts them in order (each in a process group of its own,
output appended to ``<run_dir>/<name>.log``, pid in ``<run_dir>/<name>.pid``), waits until each
says it is healthy (bounded by the spec's deadline; a process that exits meanwhile fails the
start at once, with its log's tail), and stops them in steps (each step's groups at once:
SIGTERM, SIGKILL after a bound). A pid file whose process is gone is stale: it is replaced on
start and dropped on stop. The pid files are what ``stop`` ends, and nothing else, so a later
command (``make stop-airflow``) stops what an earlier one started.

The lower-level helpers (free ports, a TCP check, a group's stop that never waits on zombies)
are here too: the one copy the stacks, the Spark scripts, the tests and the benchmarks use.
"""
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Optional, Sequence

import psutil

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class StartError(RuntimeError):
    """A process did not start: it exited, or it was not healthy by its deadline (the message has its log's tail)."""


# -- ports and checks ------------------------------------------------------------------------------------------


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` right now (the OS picks them), for servers started next."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((host, 0))  # all held at once, so no port is handed out twice
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def free_port(host: str = HOST) -> int:
    """One TCP port free on ``host`` right now."""
    return free_ports(1, host)[0]


def port_free(port: int, host: str = HOST) -> bool:
    """True if nothing listens on ``host:port`` right now (a bind succeeds)."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def answers(port: int, host: str = HOST, timeout: float = 2.0) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 5.0) -> bool:
    """True if ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # nosec: loopback only
            return response.status == 200
    except OSError:  # refused, reset, timed out, HTTP error: not up
        return False


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` s pass (its last value).

    The scripts' one deadline loop (the tests have ``tests.helpers.wait_until``, which asserts).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(interval)


def wait_for_http(url: str, timeout: float, check: Callable[[], None] = lambda: None) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout`` seconds pass (False).

    ``check`` runs before every try and may raise (e.g. a server process that exited).
    """
    def up() -> bool:
        check()
        return http_ok(url)

    return bool(wait_for(up, timeout, interval=2.0))


def tail(log: Path, chars: int = 1500) -> str:
    """The end of a log file, for an error message."""
    return log.read_text(encoding="utf-8", errors="replace")[-chars:] if log.is_file() else "(no log)"


# -- processes and groups --------------------------------------------------------------------------------------


def spawn_detached(command: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path = ROOT,
                   **popen: Any) -> subprocess.Popen:
    """Start ``command`` in a new session (its own process group), output appended to ``log_path``.

    The group is what :func:`stop_groups` ends: the process and every child it starts, and it
    outlives the command that started it. ``popen``: more ``subprocess.Popen`` arguments (``user``...).
    """
    with log_path.open("ab") as log:
        return subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=log,  # pylint: disable=consider-using-with
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **popen)


def alive(pid: int) -> bool:
    """True if a process with ``pid`` exists (a zombie counts until it is reaped)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our exited child, so it stops looking alive."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_group(pid: int, grace: float, reaper: Optional[Callable[[], object]] = None) -> bool:
    """SIGTERM the process group led by ``pid``, SIGKILL it after ``grace`` s; True if SIGTERM ended it."""
    return not stop_groups([pid], grace, reaper)


def stop_groups(pids: Sequence[int], grace: float, reaper: Optional[Callable[[], object]] = None,
                leaders_first: float = 0.0) -> list[int]:
    """SIGTERM the process groups led by ``pids`` at once, SIGKILL those still running after ``grace`` s.

    With ``leaders_first`` (s), SIGTERM goes to each leader alone first, and to the rest of its
    group only if it is still running that much later: a server that stops its own children
    (Airflow's components) then does so in its order; the group's SIGTERM is the fallback.
    Returns the pids of the groups SIGTERM did not end. A group has ended when none of its
    processes runs (:func:`group_running`): an exited process stays a zombie until its parent
    reaps it, and a server started by an earlier command has a parent elsewhere (init, or
    whatever adopted it), which may reap late or never. ``reaper`` (default: :func:`reap` of
    each pid) runs while waiting, to reap our own children.
    """
    reaper = reaper or (lambda: [reap(pid) for pid in pids])
    running = list(pids)
    if leaders_first > 0:
        running = _signal_and_wait(running, signal.SIGTERM, min(leaders_first, grace), reaper, os.kill)
    survivors = _signal_and_wait(running, signal.SIGTERM, max(0.0, grace - leaders_first), reaper)
    if survivors:
        _signal_and_wait(survivors, signal.SIGKILL, 10.0, reaper)
    return survivors


def _signal_and_wait(pids: Sequence[int], sig: int, wait: float, reaper: Callable[[], object],
                     send: Callable[[int, int], None] = os.killpg) -> list[int]:
    """Send ``sig`` to each group (or, with ``send=os.kill``, its leader), then wait up to ``wait`` s for the
    groups to end; the groups still running."""
    for pid in pids:
        try:
            send(pid, sig)
        except ProcessLookupError:  # nothing left of it
            pass

    running = list(pids)

    def ended() -> bool:
        reaper()
        running[:] = [pid for pid in running if group_running(pid)]
        return not running

    wait_for(ended, wait, interval=0.2)
    return running


def group_running(pgid: int) -> bool:
    """True while a process of the group ``pgid`` runs; exited ones waiting for their parent (zombies) do not count."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except OSError:  # gone since the listing
            continue
    return False


# -- specs and the supervisor ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a profile: what runs, in which environment, and how to tell it serves.

    ``health``: called until it returns True (within ``timeout`` s of the start); it may raise
    :class:`StartError` for a failure no wait can mend. ``ready``: run once, after ``health``
    (e.g. a warm-up job). ``grace``: SIGTERM to SIGKILL on stop; ``leaders_first``: SIGTERM to
    the leader alone that long first (:func:`stop_groups`).
    """

    name: str
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    health: Optional[Callable[[], bool]] = None
    timeout: float = 120.0
    ready: Optional[Callable[[], None]] = None
    grace: float = 30.0
    leaders_first: float = 0.0
    cwd: Path = ROOT
    popen: Mapping[str, Any] = field(default_factory=dict)


class Supervisor:
    """Start, wait for and stop the processes of one run folder (its ``*.pid`` files say what runs).

    ``stop_order``: the names in the steps :meth:`stop` ends them (each step's groups at once, with
    the longest ``grace`` and ``leaders_first`` of their ``specs``). As a context manager, it stops
    everything on exit (tests, benchmarks).
    """

    def __init__(self, run_dir: Path, stop_order: Sequence[Sequence[str]] = (), quiet: bool = False,
                 specs: Sequence[ProcessSpec] = ()) -> None:
        self.run_dir = run_dir
        self.stop_order = [tuple(step) for step in stop_order]
        self.quiet = quiet
        self.specs: dict[str, ProcessSpec] = {spec.name: spec for spec in specs}
        self.processes: dict[str, subprocess.Popen] = {}  # the ones this object started (its children)

    def pid_file(self, name: str) -> Path:
        """Where ``name``'s pid is recorded."""
        return self.run_dir / f"{name}.pid"

    def log(self, name: str) -> Path:
        """Where ``name``'s output goes."""
        return self.run_dir / f"{name}.log"

    def pid(self, name: str) -> Optional[int]:
        """The recorded pid (a process-group leader) of ``name``, if any."""
        path = self.pid_file(name)
        return int(path.read_text(encoding="utf-8")) if path.exists() else None

    def running(self, name: str) -> bool:
        """True if ``name`` has a pid file whose process exists."""
        pid = self.pid(name)
        return pid is not None and alive(pid)

    def record(self, name: str, pid: int) -> None:
        """Record a process started elsewhere (e.g. a database server) so that :meth:`stop` ends it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file(name).write_text(str(pid), encoding="utf-8")

    def spawn(self, spec: ProcessSpec) -> Optional[subprocess.Popen]:
        """Start ``spec`` unless its recorded process still runs (a stale pid file is replaced); the process."""
        self.specs[spec.name] = spec
        if self.running(spec.name):
            self._say(f"{spec.name} already running (pid {self.pid(spec.name)})")
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        process = spawn_detached(spec.command, self.log(spec.name), spec.env, spec.cwd, **spec.popen)
        self.processes[spec.name] = process
        self.record(spec.name, process.pid)
        return process

    def start(self, specs: Sequence[ProcessSpec]) -> None:
        """Spawn ``specs`` in order, then wait for each to be healthy in order; on failure stop them all and raise."""
        try:
            for spec in specs:
                self.spawn(spec)
            for spec in specs:
                self.wait_healthy(spec, [other.name for other in specs])
        except BaseException:
            self.stop(quiet=True, only=[spec.name for spec in specs])
            raise

    def wait_healthy(self, spec: ProcessSpec, watched: Sequence[str] = ()) -> None:
        """Wait until ``spec.health`` says yes (then run ``spec.ready``); :class:`StartError` if one of
        ``watched`` (default: ``spec``) exits meanwhile or the deadline passes."""
        watched = list(watched) or [spec.name]

        def healthy() -> bool:
            for name in watched:
                self._check_alive(name)
            return spec.health is None or bool(spec.health())

        if not wait_for(healthy, spec.timeout, interval=0.3):
            raise StartError(f"{spec.name} was not healthy within {spec.timeout:.0f}s: see {self.log(spec.name)}\n"
                             f"{tail(self.log(spec.name))}")
        if spec.ready is not None:
            spec.ready()

    def _check_alive(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None:
            code = process.poll()
        else:
            pid = self.pid(name)
            code = None if pid is None or alive(pid) else "?"
        if code is not None:
            raise StartError(f"{name} exited (code {code}) during start-up: see {self.log(name)}\n{tail(self.log(name))}")

    def steps(self) -> list[tuple[str, ...]]:
        """The stop order, then any started process it does not name (last)."""
        named = {name for step in self.stop_order for name in step}
        rest = tuple(name for name in self.specs if name not in named)
        return [*self.stop_order, *([rest] if rest else [])]

    def stop(self, quiet: Optional[bool] = None, only: Optional[Collection[str]] = None) -> list[str]:
        """Stop the recorded process groups (``only`` those named) step by step; the names SIGTERM did not end
        (SIGKILL did). A pid file whose process is gone is dropped."""
        quiet = self.quiet if quiet is None else quiet
        killed = []
        for step in self.steps():
            pids = {name: pid for name in step if (only is None or name in only) and (pid := self.pid(name)) is not None}
            for name in [name for name, pid in pids.items() if not alive(pid)]:  # stale: gone already
                self._say(f"{name} (pid {pids.pop(name)}) was not running", quiet)
                self.pid_file(name).unlink(missing_ok=True)
            if not pids:
                continue
            specs = [self.specs[name] for name in pids if name in self.specs]
            grace = max((spec.grace for spec in specs), default=30.0)
            leaders_first = max((spec.leaders_first for spec in specs), default=0.0)
            survivors = stop_groups(list(pids.values()), grace, self._reaper(pids), leaders_first)
            for name, pid in pids.items():
                if not quiet:
                    print(f"killed {name} (pid {pid}) after {grace:.0f}s" if pid in survivors
                          else f"stopped {name} (pid {pid})")
                self.pid_file(name).unlink(missing_ok=True)
                self.processes.pop(name, None)
            killed += [name for name, pid in pids.items() if pid in survivors]
        return killed

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Send ``sig`` to ``name``'s group at once, no grace (an outage on purpose), and wait until it has ended."""
        pid = self.pid(name)
        if pid is None:
            return
        _signal_and_wait([pid], sig, timeout, self._reaper({name: pid}))
        self.pid_file(name).unlink(missing_ok=True)
        self.processes.pop(name, None)

    def _reaper(self, pids: Mapping[str, int]) -> Callable[[], object]:
        def reap_all() -> None:
            for name, pid in pids.items():
                process = self.processes.get(name)
                if process is not None:
                    process.poll()
                else:
                    reap(pid)
        return reap_all

    def _say(self, message: str, quiet: Optional[bool] = None) -> None:
        if not (self.quiet if quiet is None else quiet):
            print(message)

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(quiet=True)


class Running:
    """What a supervisor started for a caller (a server, a cluster): stopped on exit from a ``with`` block.

    Subclasses have a ``supervisor`` (None: nothing of ours to stop) and say which of its processes
    are theirs (``names``; default: all of them).
    """

    supervisor: Optional[Supervisor]
    names: Optional[Sequence[str]] = None

    def stop(self) -> None:
        """Stop this one's processes (SIGTERM, SIGKILL after their grace)."""
        if self.supervisor is not None:
            self.supervisor.stop(quiet=True, only=self.names)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
