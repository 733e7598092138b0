"""`pipeline.py run` end to end through kfp.local on the fixture: outputs, console, interruption and resume, bad
input, and what it leaves of its caller."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.onnx_model import load_session, predict
from components.kaggle_csv import read_csv
from components.preprocess import as_images
from components.train import load_models
from runner.local import run_locally
from runner.outputs import GATED_RUN_FILES, RUN_FILES, TRITON_REPOSITORY
from tests.conftest import ROOT, run_module
from tests.runner.conftest import SMALL_RUN, SMALL_RUN_PARAMS


def descendants(pid):
    """The ids of every process below `pid` (its children, theirs, ...), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # it ended meanwhile
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not status.is_file() or "zombie" not in status.read_text()


def test_run_end_to_end_through_kfp_local(uninterrupted_run, fixture_data):
    out, result = uninterrupted_run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "model-0.keras",
            "run.json",
            "run.log",
            *(name for name in RUN_FILES.values() if "{" not in name),
            *GATED_RUN_FILES.values(),
        ]
    )  # the pipeline root (arrays, cache, checkpoints) is gone
    triton_model = out / TRITON_REPOSITORY / "digit-recognizer" / "1" / "model.onnx"
    assert triton_model.read_bytes() == (out / "model.onnx").read_bytes()
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3
    assert (out / "test_samples.png").read_bytes()[:4] == b"\x89PNG"
    submission = pd.read_csv(out / "submission.csv")
    assert (out / "submission.csv").read_text().startswith("ImageId,Label\n")
    assert submission["ImageId"].tolist() == list(range(1, 61))
    assert submission["Label"].between(0, 9).all()
    _, pixels = read_csv(fixture_data / "test.csv", labelled=False)
    images = as_images(pixels)
    keras_probabilities = load_models(out)[0].predict(images.astype(np.float32), verbose=0)
    onnx_probabilities, labels = predict(load_session(out / "model.onnx"), images)
    assert np.abs(keras_probabilities - onnx_probabilities).max() < 1e-4
    np.testing.assert_array_equal(labels, submission["Label"])


def test_default_output_is_steps_and_epochs_and_the_log_has_everything(uninterrupted_run):
    out, result = uninterrupted_run
    lines = result.stdout.splitlines()
    assert lines[0] == f"digit-recognizer: profile quick, run folder {out}"
    assert lines[1].startswith("training on the CPU")  # which device trains, first thing
    assert lines[2] == f"everything the steps print: {out / 'run.log'} (--verbose shows it here)"
    for step in ("preprocess", "train", "export", "evaluate", "shard_plan", "join", "report"):
        assert sum(re.fullmatch(rf"\d\d:\d\d:\d\d {step} \.\.\.", line) is not None for line in lines) == 1, step
        assert sum(re.match(rf"\d\d:\d\d:\d\d {step} done in \d+ s", line) is not None for line in lines) == 1, step
    # Each shard its own figure: the three shards' rows make the test set's 60.
    shards = [
        re.fullmatch(r"\d\d:\d\d:\d\d score done in \d+ s: scored (\d+) rows \(\d+ images/s\)", line) for line in lines
    ]
    assert sorted(int(shard[1]) for shard in shards if shard) == [20, 20, 20]
    assert any(
        re.match(r"\d\d:\d\d:\d\d preprocess done in \d+ s: 270 training, 30 validation and 60 test images", line)
        for line in lines
    )
    assert any(re.match(r"\d\d:\d\d:\d\d evaluate done in \d+ s: validation accuracy 0\.\d{4}", line) for line in lines)
    assert any(
        re.match(r"\d\d:\d\d:\d\d join done in \d+ s: joined 60 rows into submission.csv", line) for line in lines
    )
    epochs = [line.strip() for line in lines if line.strip().startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == [f"epoch {n}/6" for n in range(1, 7)]
    assert all(
        re.search(r"loss \d\.\d{4} accuracy \d\.\d{4}, .* \d+ images/s, about .* left$", line) for line in epochs
    )
    assert f"  {out / 'submission.csv'}  Kaggle's submission" in result.stdout  # where every output went
    assert (
        "executor_input" not in result.stdout
        and '"inputs"' not in result.stdout
        and "Executing task" not in result.stdout
    )
    assert "##step##" not in result.stdout
    # Only the run's own lines: none of TensorFlow's start-up notes from naming the device.
    assert "oneDNN" not in result.stdout + result.stderr and "absl" not in result.stdout + result.stderr
    assert len(lines) < 50
    log = (out / "run.log").read_text()
    assert log.count("Executing task 'score-component'") == 3  # kfp.local's own log, colours removed
    assert (
        "Got executor_input:" in log
        and "epoch 6/6" in log
        and "Pipeline 'digit-recognizer' finished with status SUCCESS" in log
    )


def test_interrupted_run_stops_every_step_and_resumes_to_the_same_submission(uninterrupted_run, tmp_path, fixture_data):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "pipeline.py", "run", "--data", str(fixture_data), "--out", str(out), *SMALL_RUN],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:  # wait until training has finished two epochs
        lines.append(line)
        if line.strip().startswith("epoch 2/6"):
            break
    steps = descendants(process.pid)
    assert steps  # the train step's processes
    process.send_signal(signal.SIGINT)  # to the pipeline alone, not its process group: it must stop the steps itself
    interrupted = time.monotonic()
    output = "".join(lines) + process.stdout.read()
    assert process.wait() == 130
    assert time.monotonic() - interrupted < 15
    assert not [pid for pid in steps if pid_alive(pid)], output  # no orphan
    assert f"resume with: python pipeline.py run --resume {out}" in output
    assert f"training checkpoints: {out.resolve()}/pipeline-root/checkpoints (round-0-member-0: " in output
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (out / "submission.csv").exists()

    refused = run_module("pipeline.py", "run", "--resume", str(out), "--param", "epochs=7")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: --resume {out}: the run was started with other settings (profile quick, epochs); "
        "resume with the same ones, or start a new run"
    )
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "train.csv").write_bytes((fixture_data / "train.csv").read_bytes() + b"\n")
    (changed / "test.csv").write_bytes((fixture_data / "test.csv").read_bytes())
    refused = run_module("pipeline.py", "run", "--resume", str(out), "--data", str(changed))
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: --resume {out}: {changed / 'train.csv'} is not the file the run started with (its SHA-256 differs); "
        "start a new run"
    )

    resumed = run_module("pipeline.py", "run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert re.search(r"\d\d:\d\d:\d\d preprocess: reused", resumed.stdout)  # finished steps are not run again
    assert "resuming from" in resumed.stdout and "epoch 1/6" not in resumed.stdout and "epoch 6/6" in resumed.stdout
    history = json.loads((out / "history.json").read_text())["members"][0]
    assert len(history["loss"]) == 6  # each epoch once
    assert (out / "submission.csv").read_bytes() == (uninterrupted_run[0] / "submission.csv").read_bytes()
    assert (out / "model.onnx").read_bytes() == (uninterrupted_run[0] / "model.onnx").read_bytes()
    record = json.loads((out / "run.json").read_text())
    assert [attempt["status"] for attempt in record["runs"]] == ["interrupted", "succeeded"]
    assert record["status"] == "succeeded"


def callers_state():
    """What of its caller's state a run could change: output, logging, warning filters, signal handlers."""
    root = logging.getLogger()
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    return sys.stdout, sys.stderr, list(root.handlers), root.level, list(warnings.filters), handlers


def test_sigterm_stops_the_runs_steps_alone_and_leaves_the_callers_state(tmp_path, fixture_data, capsys):
    import tensorflow  # noqa: F401  (imported by the run's first lines: its import-time warning filters are not the run's)

    out = tmp_path / "run"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # the caller's own child
    steps = []

    earlier = set(descendants(os.getpid()))  # the caller's, with the bystander (an earlier test's server, say)

    def stop_when_training():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (out / "run.log").is_file() and "##step## train progress epoch 1/" in (out / "run.log").read_text():
                steps.extend(pid for pid in descendants(os.getpid()) if pid not in earlier)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.1)

    before = callers_state()
    threading.Thread(target=stop_when_training, daemon=True).start()
    try:
        with pytest.raises(SystemExit) as stopped:
            run_locally(fixture_data, out, "quick", SMALL_RUN_PARAMS)
        assert stopped.value.code == 128 + signal.SIGTERM
        assert steps and not [pid for pid in steps if pid_alive(pid)]  # the run's processes, and only those
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert callers_state() == before
    output = capsys.readouterr().out
    assert "\ninterrupted (SIGTERM); every step stopped.\n" in output
    assert f"resume with: python pipeline.py run --resume {out}" in output
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_the_gate_stops_a_poor_model_before_scoring(tmp_path, fixture_data):
    result = run_module(
        "pipeline.py", "run", "--data", str(fixture_data), "--out", str(tmp_path / "out"), "--profile", "quick"
    )
    assert result.returncode != 0
    assert re.fullmatch(
        r"error: validation accuracy \d+\.\d{4}% is below accuracy_threshold 90\.0000%: "
        r"the model is not scored or published",
        result.stderr.strip().splitlines()[-1],
    )
    assert re.search(r"^\d\d:\d\d:\d\d reject \.\.\.$", result.stdout, re.MULTILINE)
    assert re.search(r"^\d\d:\d\d:\d\d reject FAILED in \d+ s: error: validation accuracy", result.stdout, re.MULTILINE)
    assert "score-component" not in (tmp_path / "out" / "run.log").read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "pipeline-root",
        "run.json",
        "run.log",
    ]  # no outputs
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


def data_with(tmp_path, fixture_data, row, column, value):
    """The fixture's CSVs, with `value` at `row` (0: the header) and `column` of train.csv."""
    data = tmp_path / "data"
    data.mkdir()
    lines = (fixture_data / "train.csv").read_text().splitlines()
    fields = lines[row].split(",")
    fields[column] = value
    lines[row] = ",".join(fields)
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    (data / "test.csv").write_bytes((fixture_data / "test.csv").read_bytes())
    return data


@pytest.mark.parametrize(
    "row, value, message",
    [
        (2, "256", "row 2 (line 3), column 'pixel9': pixel value 256 is outside 0-255"),
        (5, "abc", "row 5 (line 6), column 'pixel9': 'abc' is not an integer"),
    ],
)
def test_bad_input_reaches_the_user_as_one_line_and_is_not_retried(tmp_path, fixture_data, row, value, message):
    data = data_with(tmp_path, fixture_data, row, 10, value)
    result = run_module("pipeline.py", "run", "--data", str(data), "--out", str(tmp_path / "out"), "--profile", "quick")
    assert result.returncode == 2  # as the step's own command line
    assert result.stderr.strip().splitlines()[-1] == f"error: {data / 'train.csv'}: {message}"
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(r"^\d\d:\d\d:\d\d preprocess FAILED in \d+ s: error: ", result.stdout, re.MULTILINE)
    assert "trying again" not in result.stdout  # the run stopped at the refusal: the step ran once
    assert (tmp_path / "out" / "run.log").read_text().count("Executing task 'preprocess-component'") == 1
    assert not (tmp_path / "out" / "submission.csv").exists()
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


def test_a_wrong_header_fails_at_once_and_starts_no_run(tmp_path, fixture_data):
    data = data_with(tmp_path, fixture_data, 0, 1, "px0")
    started = time.monotonic()
    result = run_module("pipeline.py", "run", "--data", str(data), "--out", str(tmp_path / "out"), "--profile", "quick")
    seconds = time.monotonic() - started
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {data / 'train.csv'}: line 1 (header), column 2: expected 'pixel0', found 'px0'"
    ]
    assert seconds < 15  # the feature itself: checked before any step starts, never retried
    assert not (tmp_path / "out").exists()  # nothing of a run, half-written or not


def test_missing_data_says_how_to_get_it(tmp_path):
    result = run_module("pipeline.py", "run", "--data", str(tmp_path), "--profile", "quick")
    assert result.returncode != 0
    assert "train.csv not found" in result.stderr
    assert "python -m components.download --out" in result.stderr


def test_gpus_from_the_command_line_without_docker_or_its_runtime(tmp_path, fixture_data):
    result = run_module(
        "pipeline.py", "run", "--data", str(fixture_data), "--out", str(tmp_path / "a"), "--gpus", "all"
    )
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --gpus is for --docker; without it the steps use this machine's GPUs through TensorFlow"
    )
    environment = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = subprocess.run(
        [
            sys.executable,
            "pipeline.py",
            "run",
            "--data",
            str(fixture_data),
            "--out",
            str(tmp_path / "b"),
            "--docker",
            "--gpus",
            "all",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --gpus: cannot reach Docker")
    assert not (tmp_path / "b").exists()
