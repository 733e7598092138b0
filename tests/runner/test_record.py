import hashlib
import json
import re

import pytest

from components.cli import signature_defaults
from components.train import train
from runner.params import pipeline_arguments
from runner.record import new_record, resumed_settings, save


def test_run_json_says_what_made_the_run(uninterrupted_run, fixture_data):
    out, _ = uninterrupted_run
    record = json.loads((out / "run.json").read_text())
    assert record["profile"] == "quick" and record["status"] == "succeeded"
    assert set(record["parameters"]) == set(pipeline_arguments("default", []))
    assert (
        record["parameters"]["epochs"] == 6
        and record["parameters"]["learning_rate"] == signature_defaults(train)["learning_rate"]
    )
    for name in ("train.csv", "test.csv"):
        assert record["data"]["sha256"][name] == hashlib.sha256((fixture_data / name).read_bytes()).hexdigest()
    assert (
        record["packages"]["kfp"] == "2.17.3" and "keras" in record["packages"] and "onnxruntime" in record["packages"]
    )
    assert re.fullmatch(r"[0-9a-f]{40}", record["code"]["commit"]) and isinstance(record["code"]["dirty"], bool)
    (attempt,) = record["runs"]
    assert attempt["started"] <= attempt["ended"] and attempt["status"] == "succeeded"
    steps = [step["step"] for step in attempt["steps"]]
    assert steps[:3] == ["preprocess", "train", "export"] and steps.count("score") == 3 and steps[-1] == "report"
    assert all(step["seconds"] > 0 and step["status"] == "success" for step in attempt["steps"])


def test_resume_needs_the_record_and_the_same_settings(tmp_path, fixture_data):
    with pytest.raises(SystemExit, match=rf"^error: --resume {tmp_path}: no run.json there"):
        resumed_settings(tmp_path, None, [], None)
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(SystemExit, match=rf"^error: --resume {tmp_path}: {tmp_path / 'run.json'}: not JSON"):
        resumed_settings(tmp_path, None, [], None)
    save(tmp_path, {**new_record("quick", pipeline_arguments("quick", []), fixture_data), "status": "interrupted"})
    profile, arguments, data, _ = resumed_settings(tmp_path, None, ["epochs=1"], None)  # the same as the run's
    assert (profile, arguments, data) == ("quick", pipeline_arguments("quick", []), fixture_data)
    with pytest.raises(SystemExit, match=r"the run was started with other settings \(profile quick\); "):
        resumed_settings(tmp_path, "best", [], None)
