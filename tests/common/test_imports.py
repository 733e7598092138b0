"""The serve image holds common/ and serving/ only, and no TensorFlow or pandas: neither may import them."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

IMPORTED = """
import sys
import {module}
print(" ".join(sorted({{name.partition(".")[0] for name in sys.modules}})))
"""


@pytest.mark.parametrize("module", ["common.errors", "common.kaggle_format", "common.onnx_model", "serving.__main__"])
def test_the_serve_side_imports_nothing_of_the_steps(module):
    result = subprocess.run(
        [sys.executable, "-c", IMPORTED.format(module=module)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = set(result.stdout.split())
    assert not imported & {"components", "tensorflow", "keras", "pandas", "tf2onnx", "kfp", "mlflow"}
    if module.startswith("common."):
        assert not imported & {"fastapi", "PIL", "orjson"}  # not even the server's own dependencies
