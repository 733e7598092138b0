"""What a step tells the console of a local run: its start, its progress, its key figure and its end, on marked lines.

Inside a pipeline step (after `start`), each call prints one line `##step## TASK EVENT TEXT`, where TASK names
the step (`train`; a score shard `score:0-6999`) and EVENT is one of EVENTS; the local runner's console reads
them back with `parse`, so what the user sees never depends on the wording of a print. Outside a step (a step's
own command line, a test) the same calls print TEXT alone.
"""

import sys

MARKER = "##step##"
EVENTS = ("started", "progress", "figure", "done", "failed")

_task = None  # the step this process runs, once `start` names it (each step runs in a process of its own)


def start(task: str) -> None:
    """Announce that `task` starts; later lines of this process are marked with it."""
    global _task
    if not task or " " in task:
        raise ValueError(f"a task is named without spaces, got {task!r}")
    _task = task
    _emit("started", "")


def say(text: str) -> None:
    """A progress line (an epoch, a resume): shown under the step as it runs."""
    _emit("progress", text)


def figure(text: str) -> None:
    """The step's key figure (its last one counts): shown on the line that says the step ended."""
    _emit("figure", text)


def done() -> None:
    """The step did its work (its outputs are written): the console says so, with the step's time and figure."""
    _emit("done", "")


def fail(text: str) -> None:
    """The one line that says why the step refused its input; the run ends with it."""
    _emit("failed", text, sys.stderr)


def parse(line: str) -> tuple[str, str, str] | None:
    """(task, event, text) of a marked line, None for any other line."""
    marker, _, rest = line.strip().partition(" ")
    if marker != MARKER:
        return None
    task, _, rest = rest.partition(" ")
    event, _, text = rest.partition(" ")
    return (task, event, text) if task and event in EVENTS else None


def _emit(event, text, stream=None):
    stream = stream or sys.stdout
    if _task is None:
        if text:
            print(text, file=stream, flush=True)
        return
    print(f"{MARKER} {_task} {event} {text}".rstrip(), file=stream, flush=True)
