import inspect

import pytest

import pipeline
from runner.params import parse_params, pipeline_arguments


def test_param_parsing_types_and_errors():
    assert parse_params(["epochs=3", "learning_rate=0.01", "augment=false", "mixed_precision=off"]) == {
        "epochs": 3,
        "learning_rate": 0.01,
        "augment": False,
        "mixed_precision": "off",
    }
    with pytest.raises(SystemExit, match="no such pipeline parameter"):
        parse_params(["epoch=3"])
    with pytest.raises(SystemExit, match=r"^error: --param 'train_csv': no such pipeline parameter"):
        parse_params(["train_csv=elsewhere.csv"])  # the data comes from --data, --train-csv and --test-csv
    with pytest.raises(SystemExit, match=r"^error: --param epochs='three': expected int$"):
        parse_params(["epochs=three"])
    with pytest.raises(SystemExit, match=r"^error: --param augment='maybe': expected bool$"):
        parse_params(["augment=maybe"])
    with pytest.raises(SystemExit, match="expected NAME=VALUE"):
        parse_params(["epochs"])


def test_a_local_run_gets_every_parameter_the_profile_then_the_params():
    defaults = {
        name: p.default for name, p in inspect.signature(pipeline.build_pipeline().pipeline_func).parameters.items()
    }
    arguments = pipeline_arguments("quick", ["epochs=3"])
    assert set(arguments) == set(defaults) - {"train_csv", "test_csv"}
    assert arguments["epochs"] == 3  # the param over the profile's 1
    assert arguments["accuracy_threshold"] == pipeline.PROFILES["quick"]["accuracy_threshold"]
    assert arguments["batch_size"] == pipeline.PROFILES["quick"]["batch_size"]
    assert arguments["learning_rate"] == defaults["learning_rate"]  # not the profile's: the pipeline's default
