"""scripts/_processes.py: stopping a process group, as `make stop-airflow` does."""
import subprocess
import sys
import time

import psutil

from scripts._processes import group_running, stop_group, stop_groups
from tests.helpers import wait_until


def _zombie_leader() -> subprocess.Popen:
    """A process group whose only process has exited and is not reaped: what a stack's server looks like
    to `stop` once it ended on SIGTERM, when its adoptive parent (init) has not collected it yet."""
    process = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)  # pylint: disable=consider-using-with
    wait_until(lambda: psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE, 30, "the child exited",
               interval=0.05)
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
        assert stop_groups([process.pid for process in processes], grace=20.0,
                           reaper=lambda: [process.poll() for process in processes]) == []
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
        assert stop_groups([process.pid], grace=30.0, reaper=process.poll, leaders_first=5.0) == []
        assert time.monotonic() - started < 4  # the group's SIGTERM would have cost the child's 10 s
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


def test_leaders_first_falls_back_to_the_whole_group():
    process = _leader("pass", term_delay=0.5)  # leaves its child running (it is still in the group)
    try:
        started = time.monotonic()
        assert stop_groups([process.pid], grace=30.0, reaper=process.poll, leaders_first=1.0) == []
        assert 1.0 <= time.monotonic() - started < 10  # the child got the group's SIGTERM after 1 s
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()
