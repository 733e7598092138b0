"""What the terminal shows of a local run, read from the lines the run prints; the run's log gets every line.

By default the terminal gets one line as each step starts and one as it ends (with its time and key figure),
the steps' progress lines (training's epochs) between, and what only kfp.local says: a step reused from the
interrupted run, a retry, a failure the step did not explain. `--verbose` shows every line as printed. The steps
speak on marked lines (components/progress.py); kfp.local's own lines are read by runner/kfp_local_log.py.
"""

import datetime
import time
from typing import TextIO

from components import progress
from runner import kfp_local_log

PROGRESS_INDENT = " " * 9  # under the step's name, past the clock


class Console:
    """Reads a run's output line by line (`read`); times each step (`steps`, for run.json) and keeps the first
    step's refusal (`refusal`, its one-line error) and a step that failed without a word (`unexplained`)."""

    def __init__(self, terminal: TextIO, log_file: TextIO, verbose: bool = False):
        self.terminal, self.log_file, self.verbose = terminal, log_file, verbose
        self.steps, self.running = [], {}  # running: task -> when it started and its key figure so far
        self.refusal = self.unexplained = None

    def say(self, line: str) -> None:
        """A line of the runner's own, to the terminal and to the log."""
        self.terminal.write(line + "\n")
        self.terminal.flush()
        self.log(line)

    def read(self, line: str) -> None:
        """One line the run printed."""
        printed = line.rstrip("\n")
        line = self.log(line)
        marked = progress.parse(line)
        if self.verbose:
            self._echo(printed, marked)
        if self.refusal:  # the run is being stopped: what follows is for the log
            return
        if marked:
            self._step_event(*marked)
        elif event := kfp_local_log.parse(line):
            self._task_event(event)

    def _echo(self, printed, marked):
        """A line as printed, colours and all; a step's marked line as its text alone (none for a start or end)."""
        if marked:
            if not marked[2]:
                return
            printed = printed[: len(printed) - len(printed.lstrip())] + marked[2]
        self.terminal.write(printed + "\n")
        self.terminal.flush()

    def _step_event(self, task, event, text):
        step = task.partition(":")[0]  # a score shard `score:0-6999` is a score step
        if event == "started":
            self.running[task] = {"started": time.monotonic(), "figure": None}
            self._show(f"{clock()} {step} ...")
        elif event == "progress":
            self._show(PROGRESS_INDENT + text)
        elif event == "figure" and task in self.running:
            self.running[task]["figure"] = text
        elif event == "done" and task in self.running:
            seconds, figure = self._ended(task, step, "success")
            self._show(f"{clock()} {step} done in {seconds:.0f} s" + (f": {figure}" if figure else ""))
        elif event == "failed":
            seconds, _ = self._ended(task, step, "failed") if task in self.running else (0, None)
            self._show(f"{clock()} {step} FAILED in {seconds:.0f} s: {text}")
            self.refusal = text

    def _task_event(self, event):
        if event.kind == "reused":
            self.steps.append({"step": event.step, "seconds": 0.0, "status": "reused"})
            self._show(f"{clock()} {event.step}: reused, done in the interrupted run")
        elif event.kind == "retried":
            attempt = f"try {event.attempt} of {event.attempts}"
            self._show(f"{clock()} {event.step} failed ({attempt}): trying again in {event.delay:.0f} s")
        else:  # failed, and the step said nothing of it (else it refused, and the run stopped)
            task = next((task for task in self.running if task.partition(":")[0] == event.step), None)
            seconds = f" in {self._ended(task, event.step, 'failed')[0]:.0f} s" if task else ""
            self._show(f"{clock()} {event.step} FAILED{seconds}")
            self.unexplained = event.step

    def _ended(self, task, step, status):
        """The seconds and key figure of `task`, which ended with `status`."""
        state = self.running.pop(task)
        seconds = time.monotonic() - state["started"]
        self.steps.append({"step": step, "seconds": round(seconds, 1), "status": status})
        return seconds, state["figure"]

    def log(self, line: str) -> str:
        """A line the run printed, for the log alone (what a stopped run printed last); returns it, colours removed."""
        line = kfp_local_log.ANSI_COLOUR.sub("", line.rstrip("\n"))
        self.log_file.write(line + "\n")
        self.log_file.flush()
        return line

    def _show(self, line):
        if not self.verbose:
            self.say(line)


def clock() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S")
