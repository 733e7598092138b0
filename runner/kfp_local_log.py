"""What only kfp.local itself can say of a task: it was reused from the cache, it failed and is tried again,
or it failed without saying why (its process ended badly before it could, or with a traceback).

Everything else the console shows, the steps say themselves (components/progress.py). kfp.local's wording
is no interface: tests/runner/test_kfp_local_log.py runs kfp.local to pin it, so an upgrade that changes it
fails a test rather than the console.
"""

import re
from typing import NamedTuple

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
CACHE_HIT = re.compile(r"Task ([\w-]+) cache hit \(key=\w+\); skipping execution\.")
RETRY = re.compile(r"Task ([\w-]+) failed \(attempt (\d+)/(\d+)\)\. Retrying in ([\d.]+)s\.\.\.")
FAILED = re.compile(r"Task '([\w-]+)' finished with status FAILURE")


class TaskEvent(NamedTuple):
    """`kind` is "reused", "retried" or "failed"; `step` the step's name (`train`, `shard_plan`)."""

    kind: str
    step: str
    attempt: int = 0  # a retry: the attempt that failed, of `attempts`, and the seconds until the next one
    attempts: int = 0
    delay: float = 0.0


def parse(line: str) -> TaskEvent | None:
    """The TaskEvent a line of kfp.local's log says, None for any other line (colours are ignored)."""
    line = ANSI_COLOUR.sub("", line)
    if match := CACHE_HIT.search(line):
        return TaskEvent("reused", step_name(match[1]))
    if match := RETRY.search(line):
        return TaskEvent("retried", step_name(match[1]), int(match[2]), int(match[3]), float(match[4]))
    if match := FAILED.search(line):
        return TaskEvent("failed", step_name(match[1]))
    return None


def step_name(task: str) -> str:
    """kfp.local's task name as the step's: `train-component` -> train, `shard-plan-component` -> shard_plan."""
    return task.removesuffix("-component").replace("-", "_")
