"""The run's processes: started in a session of their own, so that stopping them stops nothing else.

kfp.local and every step it starts run in one process group (the session's), apart from the command that
started them: the terminal's Ctrl-C reaches that command alone, which then ends the group, and only it.
"""

import os
import signal
import subprocess
import time
from pathlib import Path


def start_session(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` as the leader of a new session and process group; its output (stdout and stderr) is read
    from the returned process's `stdout`, line by line."""
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, start_new_session=True
    )


def stop_session(process: subprocess.Popen, grace_seconds: float = 5) -> None:
    """End every process of `process`'s group: SIGTERM, then SIGKILL whatever still runs after `grace_seconds`."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signal_number)
        except ProcessLookupError:  # the group is empty already
            pass
        deadline = time.monotonic() + grace_seconds
        while group_runs(process) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not group_runs(process):
            return


def group_runs(process: subprocess.Popen) -> bool:
    """Whether a process of `process`'s group still runs; the leader, our child, is reaped once it ended."""
    process.poll()
    if not Path("/proc").is_dir():  # no /proc (macOS): ask the kernel whether the group has members
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:  # it ended meanwhile
            continue
        if int(group) == process.pid and state != "Z":  # a zombie has ended: it only waits for its parent
            return True
    return False
