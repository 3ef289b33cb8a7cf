"""scripts/supervisor.py: start order, health waits, pid files, stop order, and stopping a process group as
`make stop-airflow` does; tiny real processes (python -c), no mocks."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from scripts.supervisor import (ProcessSpec, StartError, Supervisor, answers, free_ports, group_running, port_free,
                                stop_group, stop_groups)


def _zombie_leader() -> subprocess.Popen:
    """A process group whose only process has exited and is not reaped: what a stack's server looks like
    to `stop` once it ended on SIGTERM, when its adoptive parent (init) has not collected it yet."""
    process = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)  # pylint: disable=consider-using-with
    deadline = time.monotonic() + 30
    while psutil.Process(process.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.05)
    return process


def test_a_group_whose_processes_exited_has_stopped_even_before_they_are_reaped():
    process = _zombie_leader()
    try:
        assert not group_running(process.pid)
        started = time.monotonic()
        # No reaping while waiting: the parent is elsewhere. Before, this waited the whole grace, then SIGKILL.
        assert stop_group(process.pid, grace=20.0, reaper=lambda: None)
        assert time.monotonic() - started < 5
    finally:
        process.wait(timeout=10)


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace():
    process = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "  # pylint: disable=consider-using-with
                                "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        assert process.stdout.readline() == "ready\n" and group_running(process.pid)
        started = time.monotonic()
        assert not stop_group(process.pid, grace=1.0, reaper=process.poll)
        assert process.wait(timeout=5) == -9 and time.monotonic() - started < 10
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


def test_groups_are_stopped_at_once():
    slow_exit = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: (time.sleep(2), sys.exit(0))); "
                 "print('ready', flush=True); time.sleep(60)")
    processes = [subprocess.Popen([sys.executable, "-c", slow_exit], stdout=subprocess.PIPE, text=True,  # pylint: disable=consider-using-with
                                  start_new_session=True) for _ in range(2)]
    try:
        assert [process.stdout.readline() for process in processes] == ["ready\n"] * 2
        started = time.monotonic()
        assert not stop_groups([process.pid for process in processes], grace=20.0,
                              reaper=lambda: [process.poll() for process in processes])
        assert time.monotonic() - started < 3.8  # 2 s each, together: not one after the other
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
            process.stdout.close()


# A leader that stops its child itself on SIGTERM (SIGUSR1 to it), as Airflow's triggerer stops its trigger
# runner; the child ends at once on SIGUSR1, but spends ``term_delay`` s on SIGTERM (the group's signal), deaf to SIGUSR1.
_LEADER = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))
signal.signal(signal.SIGTERM, lambda *_: (signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}}), time.sleep({term_delay}), sys.exit(0)))
print("child ready", flush=True)
time.sleep(60)
'''], stdout=sys.stdout)
def stop(*_):
    {on_sigterm}
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
time.sleep(1)
print("ready", flush=True)
time.sleep(60)
"""


def _leader(on_sigterm: str, term_delay: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", _LEADER.format(on_sigterm=on_sigterm, term_delay=term_delay)],  # pylint: disable=consider-using-with
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert sorted([process.stdout.readline(), process.stdout.readline()]) == ["child ready\n", "ready\n"]
    return process


def test_leaders_first_lets_a_server_stop_its_children_in_its_own_way():
    process = _leader("child.send_signal(signal.SIGUSR1); child.wait()", term_delay=10)
    try:
        started = time.monotonic()
        assert not stop_groups([process.pid], grace=30.0, reaper=process.poll, leaders_first=5.0)
        assert time.monotonic() - started < 4  # the group's SIGTERM would have cost the child's 10 s
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


def test_leaders_first_falls_back_to_the_whole_group():
    process = _leader("pass", term_delay=0.5)  # leaves its child running (it is still in the group)
    try:
        started = time.monotonic()
        assert not stop_groups([process.pid], grace=30.0, reaper=process.poll, leaders_first=1.0)
        assert 1.0 <= time.monotonic() - started < 10  # the child got the group's SIGTERM after 1 s
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


# -- the Supervisor over specs ----------------------------------------------------------------------------------

# A process that writes "<name> started" to a shared file, and "<name> stopped" on SIGTERM (then exits).
_RECORDER = """
import pathlib, signal, sys, time
name, journal = sys.argv[1], pathlib.Path(sys.argv[2])
def write(line):
    with journal.open("a") as handle:
        handle.write(line + "\\n")
signal.signal(signal.SIGTERM, lambda *_: (write(name + " stopped"), sys.exit(0)))
time.sleep(float(sys.argv[3]))
write(name + " started")
time.sleep(60)
"""


def _recorder(name: str, journal: Path, delay: float = 0.0, **spec: object) -> ProcessSpec:
    """A spec healthy once the process has written its start line, ``delay`` s after it was spawned."""
    return ProcessSpec(name, [sys.executable, "-c", _RECORDER, name, str(journal), str(delay)], dict(os.environ),
                       health=lambda: f"{name} started" in _lines(journal), **spec)


def _lines(journal: Path) -> list[str]:
    return journal.read_text(encoding="utf-8").splitlines() if journal.exists() else []


def test_specs_are_spawned_in_order_then_waited_for_in_order(tmp_path):
    journal, first_checks = tmp_path / "journal", []
    slow = _recorder("slow", journal, delay=1.0)
    fast = _recorder("fast", journal)
    watched = ProcessSpec(fast.name, fast.command, fast.env,
                          health=lambda: first_checks.append(_lines(journal)) or fast.health())
    with Supervisor(tmp_path / "run", quiet=True) as supervisor:
        supervisor.start([slow, watched])
        assert [supervisor.pid(name) for name in ("slow", "fast")] == [
            supervisor.processes["slow"].pid, supervisor.processes["fast"].pid]
        # Both run before any wait (fast started first, slow a second later); fast is asked only once slow is healthy.
        assert _lines(journal) == ["fast started", "slow started"]
        assert "slow started" in first_checks[0]


def test_stop_goes_step_by_step_and_drops_the_pid_files(tmp_path):
    journal = tmp_path / "journal"
    supervisor = Supervisor(tmp_path / "run", [("b", "c"), ("a",)], quiet=True)
    supervisor.start([_recorder(name, journal) for name in "abc"])
    assert sorted(path.name for path in (tmp_path / "run").glob("*.pid")) == ["a.pid", "b.pid", "c.pid"]

    assert supervisor.stop() == []
    stopped = [line for line in _lines(journal) if line.endswith("stopped")]
    assert sorted(stopped[:2]) == ["b stopped", "c stopped"] and stopped[2:] == ["a stopped"]
    assert not list((tmp_path / "run").glob("*.pid"))


def test_a_recorded_process_that_runs_is_not_started_twice_and_a_later_supervisor_stops_it(tmp_path):
    journal, run = tmp_path / "journal", tmp_path / "run"
    first = Supervisor(run, quiet=True)
    first.start([_recorder("a", journal)])
    pid = first.pid("a")
    try:
        later = Supervisor(run, quiet=True)  # what `make stop-airflow` is: another command, same run folder
        assert later.spawn(_recorder("a", journal)) is None and later.pid("a") == pid
        assert later.stop() == [] and first.processes["a"].wait(timeout=5) == 0
        assert later.pid("a") is None
    finally:
        first.stop()


def test_a_stale_pid_file_is_replaced_on_start_and_dropped_on_stop(tmp_path, capsys):
    run = tmp_path / "run"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    supervisor = Supervisor(run, [("a",)])
    supervisor.record("a", int(gone.stdout))
    assert not supervisor.running("a")
    assert supervisor.stop() == [] and "a (pid" in capsys.readouterr().out and supervisor.pid("a") is None

    supervisor.record("a", int(gone.stdout))
    with supervisor:
        process = supervisor.spawn(_recorder("a", tmp_path / "journal"))
        assert process is not None and supervisor.pid("a") == process.pid != int(gone.stdout)


def test_the_health_wait_ends_at_its_deadline_and_stops_what_it_started(tmp_path):
    never = ProcessSpec("never", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ),
                        health=lambda: False, timeout=1.0)
    supervisor = Supervisor(tmp_path / "run", quiet=True)
    started = time.monotonic()
    with pytest.raises(StartError, match="never was not healthy within 1s"):
        supervisor.start([never])
    assert time.monotonic() - started < 10
    assert supervisor.pid("never") is None and not supervisor.processes


def test_a_process_that_exits_during_start_fails_it_at_once_with_its_log(tmp_path):
    crash = ProcessSpec("crash", [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"],
                        dict(os.environ), health=lambda: False, timeout=60.0)
    supervisor = Supervisor(tmp_path / "run", quiet=True)
    started = time.monotonic()
    with pytest.raises(StartError, match=r"(?s)crash exited \(code 3\).*bad config"):
        supervisor.start([crash])
    assert time.monotonic() - started < 10


def test_a_process_deaf_to_sigterm_is_killed_after_its_grace_and_an_outage_kills_at_once(tmp_path):
    log = tmp_path / "run" / "deaf.log"
    deaf = ProcessSpec("deaf", [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                "signal.SIG_IGN); print('deaf', flush=True); time.sleep(60)"], dict(os.environ),
                       health=lambda: log.exists() and log.read_text(encoding="utf-8").count("deaf") == runs, grace=1.0)
    supervisor = Supervisor(tmp_path / "run", quiet=True)
    runs = 1
    supervisor.start([deaf])
    assert supervisor.stop() == ["deaf"]

    runs = 2  # its log is appended to
    supervisor.start([deaf])
    process = supervisor.processes["deaf"]
    started = time.monotonic()
    supervisor.kill("deaf", signal.SIGKILL)
    assert process.wait(timeout=5) == -9 and time.monotonic() - started < 5 and supervisor.pid("deaf") is None


def test_free_ports_are_distinct_and_free():
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(port_free(port) and not answers(port, timeout=0.5) for port in ports)
