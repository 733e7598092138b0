import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "digit-recognizer"


@pytest.fixture(scope="session")
def fixture_data():
    """A few hundred real rows cut from Kaggle's train.csv and test.csv."""
    return FIXTURES


@pytest.fixture(scope="session")
def served_model():
    """A model exported by the real pipeline (default profile, seed 42): serving needs one that reads digits well."""
    return ROOT / "tests" / "fixtures" / "model.onnx"


@pytest.fixture(scope="session")
def arrays(tmp_path_factory, fixture_data):
    """The fixture preprocessed once: paths of train, validation and test arrays."""
    from components.preprocess import preprocess

    folder = tmp_path_factory.mktemp("arrays")
    paths = {name: folder / f"{name}.npz" for name in ("train", "validation", "test")}
    preprocess(fixture_data / "train.csv", fixture_data / "test.csv",
               paths["train"], paths["validation"], paths["test"])
    return paths


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, arrays):
    """A model trained for a few seconds on the fixture (good enough to be confident), and its history."""
    from components.train import train

    folder = tmp_path_factory.mktemp("model")
    history = train(arrays["train"], arrays["validation"], folder, folder / "history.json",
                    epochs=8, batch_size=32, curves_png=folder / "curves.png")
    return folder, history


@pytest.fixture(scope="session")
def exported(tmp_path_factory, trained_model, arrays):
    """The fixture model exported: paths of the fp32 and int8 ONNX models."""
    from components.export import export

    folder = tmp_path_factory.mktemp("onnx")
    export(trained_model[0], arrays["train"], arrays["validation"], folder / "model.onnx", folder / "model.int8.onnx")
    return folder / "model.onnx", folder / "model.int8.onnx"


@pytest.fixture(scope="session")
def onnx_model(exported):
    return exported[0]


def run_module(*arguments, cwd=ROOT):
    """Run `python -m ...` or a script as a user would; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, *arguments], cwd=cwd, capture_output=True, text=True)
