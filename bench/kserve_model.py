"""The peer: KServe's Python ModelServer with a custom kserve.Model running onnxruntime on the same model.

Run from the bench-only environment (`make bench-env` installs kserve into .venv-kserve):
    .venv-kserve/bin/python bench/kserve_model.py --model runs/latest/model.onnx --http_port 8081
"""

import argparse
import uuid

import numpy as np
import onnxruntime
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server


class DigitModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        self.session = onnxruntime.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        images = payload.inputs[0].as_numpy().astype(np.float32).reshape(-1, 28, 28, 1)
        probabilities, labels = self.session.run(["probabilities", "label"], {"pixels": images})
        return InferResponse(
            model_name=self.name,
            response_id=payload.id or str(uuid.uuid4()),
            infer_outputs=[
                InferOutput("probabilities", list(probabilities.shape), "FP32", probabilities),
                InferOutput("label", list(labels.shape), "INT64", labels),
            ],
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model", required=True)
    args, _ = parser.parse_known_args()
    ModelServer(workers=1).start([DigitModel("digit-recognizer", args.model)])
