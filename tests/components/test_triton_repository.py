"""Triton's model repository of the exported model, its config.pbtxt parsed with Triton's own protobuf
(tritonclient's model_config_pb2) and checked against the ONNX model."""

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from common.errors import InputError
from common.onnx_model import load_session
from components.triton_repository import main, model_config, write_repository

TRITON_TYPES = {"tensor(float)": model_config_pb2.TYPE_FP32, "tensor(int64)": model_config_pb2.TYPE_INT64}


def parsed(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_the_repository_is_tritons_layout_and_its_config_describes_the_onnx_model(tmp_path, served_model):
    folder = write_repository(served_model, tmp_path / "triton")
    assert folder == tmp_path / "triton" / "digit-recognizer"
    assert sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
    ]
    assert (folder / "1" / "model.onnx").read_bytes() == served_model.read_bytes()
    config = parsed((folder / "config.pbtxt").read_text())
    assert config.name == "digit-recognizer" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 1024 and config.HasField("dynamic_batching")
    session = load_session(served_model)
    for declared, nodes in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [tensor.name for tensor in declared] == [node.name for node in nodes]
        for tensor, node in zip(declared, nodes):
            assert tensor.data_type == TRITON_TYPES[node.type]
            # Triton's full shape: the batch dimension, then dims (or the reshape, for a tensor of the batch alone).
            shape = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            assert [-1, *shape] == [-1, *node.shape[1:]], tensor.name
    # The declared shapes hold for what the model answers to a batch of the declared input.
    probabilities, labels = session.run(["probabilities", "label"], {"pixels": np.zeros((3, 28, 28, 1), np.float32)})
    outputs = {tensor.name: tensor for tensor in config.output}
    assert list(probabilities.shape[1:]) == list(outputs["probabilities"].dims)
    assert list(labels.shape[1:]) == list(outputs["label"].reshape.shape)


def test_the_command_line_writes_it_and_bad_settings_are_refused(tmp_path, served_model, capsys):
    main(["--onnx-model", str(served_model), "--repository", str(tmp_path), "--name", "digits"])
    assert parsed((tmp_path / "digits" / "config.pbtxt").read_text()).name == "digits"
    with pytest.raises(ValueError, match="max_batch_size must be at least 1, got 0"):
        model_config(served_model, max_batch_size=0)
    with pytest.raises(InputError, match="file not found"):
        write_repository(tmp_path / "missing.onnx", tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()
