"""Process helpers shared by the local-stack and Spark-cluster scripts (pid checks, group stop)."""
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence

import psutil


def spawn_detached(command: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start ``command`` in a new session (its own process group), output appended to ``log_path``.

    The group is what :func:`stop_group` ends: the process and every child it starts, and it
    outlives the command that started it.
    """
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                                stdin=subprocess.DEVNULL, start_new_session=True)


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
    deadline = time.monotonic() + wait
    while running and time.monotonic() < deadline:
        reaper()
        running = [pid for pid in running if group_running(pid)]
        if running:
            time.sleep(0.2)
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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it), for a server started next."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout: float, check: Callable[[], None] = lambda: None) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout`` seconds pass (False).

    ``check`` runs before every try and may raise (e.g. a server process that exited).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # nosec: loopback only
                if response.status == 200:
                    return True
        except OSError:  # refused, reset, timed out: not up yet
            pass
        time.sleep(2)
    return False
