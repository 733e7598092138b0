"""The served model, shared by both transports (HTTP in serving.app, gRPC in serving.grpc_server): its loading,
batcher, readiness, the checks every request passes, its metadata, and the metrics and access log of each call."""

import json
import logging
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from common.errors import InputError
from common.onnx_model import INPUT_NAME, OUTPUT_NAMES, load_session, model_version
from serving.errors import BadRequest

access_log = logging.getLogger("serving.access")
SERVER_METADATA = {"name": "digit-recognizer-server", "version": "1", "extensions": ["binary_tensor_data"]}
INPUTS = [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
OUTPUTS = [
    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    {"name": "label", "datatype": "INT64", "shape": [-1]},
]


class ModelServer:
    """The loaded model, its batcher and its metrics; `ready` only once loaded and warmed.

    `draining` (set on SIGTERM by serving.__main__): the server still answers every request, but
    reports not ready (and HTTP closes each connection after its answer), so load balancers move away.
    `stopping` (set by serving.app as the servers stop): gRPC's health Watch streams end, so that stopping
    waits for calls in flight only.
    """

    def __init__(
        self,
        model_path,
        name="digit-recognizer",
        max_batch_size=64,
        max_wait_ms=0.0,
        max_images=1024,
        max_body_bytes=8 * 1024 * 1024,
        threads=0,
    ):
        self.model_path, self.name, self.threads = Path(model_path), name, threads
        self.max_batch_size, self.max_wait_ms = max_batch_size, max_wait_ms
        self.max_images, self.max_body_bytes = max_images, max_body_bytes
        self.session, self.batcher, self.ready, self.draining, self.stopping = None, None, False, False, False
        self.version = ""  # the model's (common.onnx_model.model_version), once loaded
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "requests",
            "requests by route (an HTTP path, or a gRPC method) and status (HTTP's, or gRPC's code)",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "request_seconds",
            "request latency by route (an HTTP path, or a gRPC method)",
            ["route"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.batch_sizes = Histogram(
            "batch_images",
            "images per onnxruntime call",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )

    def load(self) -> None:
        """Load and warm the model (a thread: the server answers liveness meanwhile)."""
        self.model_path = model_file(self.model_path)
        # No spinning: idle onnxruntime threads would take the cores the event loop needs (docs/BENCHMARKS.md).
        session = load_session(self.model_path, self.threads, spin=False)
        for size in (1, self.max_batch_size):
            session.run(None, {INPUT_NAME: np.zeros((size, 28, 28, 1), np.float32)})
        self.session, self.version = session, model_version(session)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, labels = self.session.run(OUTPUT_NAMES, {INPUT_NAME: images})
        return probabilities, labels

    @property
    def serving(self) -> bool:
        """Whether load balancers should send requests here: loaded, and not shutting down."""
        return self.ready and not self.draining

    async def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.ready:
            raise BadRequest("the model is not ready yet", status=503)
        if len(images) > self.max_images:
            raise BadRequest(f"a batch of {len(images)} images is over the limit of {self.max_images}", status=413)
        return await self.batcher.infer(images)

    def check_model(self, name: str, version: str = "") -> None:
        """Refuse another model, or (`version` given) another version of it than the one served."""
        if name != self.name:
            raise BadRequest(f"unknown model {name!r}: this server serves {self.name!r}", status=404)
        if version and version != self.version:
            served = f"version {self.version!r}" if self.version else "a model not loaded yet"
            raise BadRequest(f"unknown version {version!r} of {name!r}: this server serves {served}", status=404)

    def model_metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [self.version] if self.version else [],
            "platform": "onnxruntime_onnx",
            "inputs": INPUTS,
            "outputs": OUTPUTS,
        }

    def record(self, method: str, path: str, route: str, status, seconds: float, client: str | None) -> None:
        """Count and time one call, and write its access-log line."""
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "time": round(time.time(), 3),
                        "method": method,
                        "path": path,
                        "status": status,
                        "ms": round(seconds * 1000, 2),
                        "client": client,
                    }
                )
            )


def model_file(path: str | Path) -> Path:
    """The model at `path`, or in the folder `path`: its model.onnx, else the model of a Triton model repository
    (`NAME/VERSION/model.onnx`, one model; its highest version), else its only file.

    KServe's storage initializer copies a model artifact into /mnt/models under the artifact's
    own name (KFP calls it `onnx_model`), so a folder with one file is served as that file; a run's
    Triton repository (what KServe's stock Triton runtime serves) serves here unchanged.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / "model.onnx").is_file():
        return path / "model.onnx"
    repository = [model for model in path.glob("*/*/model.onnx") if model.parent.name.isdigit()]
    if len({model.parent.parent for model in repository}) == 1:
        return max(repository, key=lambda model: int(model.parent.name))
    files = sorted(child for child in path.iterdir() if child.is_file() and not child.name.startswith("."))
    if len(files) != 1:
        found = ", ".join(child.name for child in files) or "no files"
        raise InputError(
            f"{path}: a model folder needs model.onnx, one model's NAME/VERSION/model.onnx, or exactly one file "
            f"(found {found})"
        )
    return files[0]
