import subprocess
import sys
import time

from runner.processes import group_runs, start_session, stop_session

# A leader that starts a child of its own (as kfp.local starts a step), says so, and waits; SIGTERM is ignored by
# both, so only SIGKILL ends them.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
step = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                         "print('step', flush=True); time.sleep(60)"])
time.sleep(60)
"""


def test_stopping_a_session_ends_its_processes_and_nothing_else():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the caller's own child
    try:
        process = start_session([sys.executable, "-c", STUBBORN])
        assert process.stdout.readline() == "step\n"  # the leader and its step run
        started = time.monotonic()
        stop_session(process, grace_seconds=0.5)
        assert time.monotonic() - started < 5
        assert not group_runs(process) and process.returncode is not None  # the leader was reaped, the step ended
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_session_that_ended_is_stopped_at_once():
    process = start_session([sys.executable, "-c", "print('done')"])
    assert process.stdout.read() == "done\n"
    started = time.monotonic()
    stop_session(process)
    assert time.monotonic() - started < 1 and process.returncode == 0
