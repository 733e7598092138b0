import io
import re

import pytest

from runner.console import Console
from runner.kfp_local_log import ANSI_COLOUR

# A run's output as the console reads it: kfp.local's log (coloured) around the steps' marked lines
# (components/progress.py) and their unmarked prints. Two score shards run at once.
RUN_OUTPUT = """\
07:00:01.000 - INFO - Task preprocess-component cache hit (key=0123456789ab); skipping execution.
07:00:01.100 - INFO - Executing task \x1b[96m'train-component'\x1b[0m
07:00:01.100 - INFO - Streamed logs:

    [KFP Executor 2026-11-28 07:00:01,200 INFO]: Got executor_input:
    {
        "inputs": {"parameterValues": {"epochs": 2}}
    }
    ##step## train started
    ##step## train progress training on the CPU (no GPU found)
    ##step## train progress epoch 1/2: loss 2.1 accuracy 0.3, 100 images/s, about 5 s left
    member 0: best validation accuracy 0.1 (an unmarked print: the log's alone)
    ##step## train figure member 0: best validation accuracy 0.5000 after 2 epochs
    ##step## train done
07:00:09.000 - INFO - Task \x1b[96m'train-component'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
    ##step## score:0-19 started
    ##step## score:20-39 started
    ##step## score:20-39 figure scored 20 rows (500 images/s)
    ##step## score:0-19 figure scored 20 rows (400 images/s)
    ##step## score:0-19 done
    ##step## score:20-39 done
07:00:10.000 - INFO - Task join-component failed (attempt 1/3). Retrying in 30.0s...
"""


def read_all(tmp_path, text, verbose=False):
    terminal = io.StringIO()
    with open(tmp_path / "run.log", "w") as log:
        console = Console(terminal, log, verbose)
        for line in text.splitlines(keepends=True):
            console.read(line)
    return console, terminal.getvalue(), (tmp_path / "run.log").read_text().splitlines()


def shown_without_clock(shown):
    return [line[9:] if line[:2].isdigit() else line for line in shown.splitlines()]


@pytest.mark.parametrize("verbose", [False, True])
def test_the_console_shows_steps_or_everything_and_logs_everything(tmp_path, verbose):
    console, shown, logged = read_all(tmp_path, RUN_OUTPUT, verbose)
    ours = set() if verbose else set(shown.splitlines())
    assert [line for line in logged if line not in ours] == ANSI_COLOUR.sub("", RUN_OUTPUT).splitlines()  # all of it
    assert [step["step"] for step in console.steps] == ["preprocess", "train", "score", "score"]
    assert [step["status"] for step in console.steps] == ["reused", "success", "success", "success"]
    if verbose:  # as printed, but the steps' marks
        assert shown.splitlines() == [
            re.sub(r"##step## \S+ \w+ ?", "", line)
            for line in RUN_OUTPUT.splitlines()
            if not re.fullmatch(r" *##step## \S+ (started|done)", line)
        ]
        return
    assert shown_without_clock(shown) == [
        "preprocess: reused, done in the interrupted run",
        "train ...",
        "         training on the CPU (no GPU found)",
        "         epoch 1/2: loss 2.1 accuracy 0.3, 100 images/s, about 5 s left",
        "train done in 0 s: member 0: best validation accuracy 0.5000 after 2 epochs",
        "score ...",
        "score ...",
        "score done in 0 s: scored 20 rows (400 images/s)",  # each shard its own figure
        "score done in 0 s: scored 20 rows (500 images/s)",
        "join failed (try 1 of 3): trying again in 30 s",
    ]
    assert console.refusal is None and console.unexplained is None


def test_a_refusal_is_kept_and_ends_what_the_console_shows(tmp_path):
    console, shown, logged = read_all(
        tmp_path,
        """\
    ##step## preprocess started
    ##step## preprocess failed error: data/train.csv: line 1 (header), column 2: expected 'pixel0', found 'px0'
07:00:10.000 - ERROR - Task \x1b[96m'preprocess-component'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
07:00:10.000 - INFO - Task preprocess-component failed (attempt 1/3). Retrying in 30.0s...
""",
    )
    assert console.refusal == "error: data/train.csv: line 1 (header), column 2: expected 'pixel0', found 'px0'"
    assert shown_without_clock(shown) == ["preprocess ...", f"preprocess FAILED in 0 s: {console.refusal}"]
    assert "07:00:10.000 - INFO - Task preprocess-component failed (attempt 1/3). Retrying in 30.0s..." in logged
    assert console.steps == [{"step": "preprocess", "seconds": 0.0, "status": "failed"}]


def test_a_step_that_fails_without_a_word_is_named(tmp_path):
    console, shown, _ = read_all(
        tmp_path,
        """\
    ##step## score:0-19 started
    Traceback (most recent call last):
    MemoryError
07:00:10.000 - ERROR - Task \x1b[96m'score-component'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
07:00:10.000 - ERROR - Task \x1b[96m'importer'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
""",
    )
    assert shown_without_clock(shown) == ["score ...", "score FAILED in 0 s", "importer FAILED"]
    assert console.unexplained == "importer" and console.refusal is None
    assert console.steps == [{"step": "score", "seconds": 0.0, "status": "failed"}]
