"""KServe's Open Inference Protocol over gRPC (inference.GRPCInferenceService), and gRPC's health service.

It runs in the HTTP server's event loop (serving.app starts it) and serves through the same ModelServer:
the same model and batcher, the same input checks (serving.protocol), the same metrics and access log,
whose route is the gRPC method and status the gRPC code. A refusal is the status the protocol's
clients read: INVALID_ARGUMENT naming the field, NOT_FOUND for another model, UNAVAILABLE before ready.
"""

import asyncio
import functools
import time

import grpc
import numpy as np

from serving import grpc_predict_v2_pb2 as pb
from serving import grpc_predict_v2_pb2_grpc as pb_grpc
from serving import health_pb2, health_pb2_grpc
from serving.errors import BadRequest
from serving.model_server import INPUTS, SERVER_METADATA, ModelServer
from serving.protocol import input_images, output_tensors

SERVICE = "inference.GRPCInferenceService"
GRACE_SECONDS = 30  # as uvicorn's graceful shutdown: calls in flight may finish
# BadRequest's HTTP status as a gRPC code.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The typed contents field that holds each datatype's values (FP16 comes only as raw bytes).
CONTENTS = {
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def served(method):
    """Count, time and log each call as HTTP's are; a BadRequest ends the call with its gRPC code and message."""
    route = f"/{SERVICE}/{method.__name__}"

    @functools.wraps(method)
    async def serve(self, request, context):
        started, code = time.perf_counter(), grpc.StatusCode.INTERNAL
        try:
            answer = await method(self, request, context)
            code = grpc.StatusCode.OK
            return answer
        except BadRequest as error:
            code = CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(code, str(error))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the client hung up or its deadline passed
            raise
        finally:
            peer = context.peer()  # ipv4:127.0.0.1:54321
            client = peer.split(":", 1)[1].rsplit(":", 1)[0] if ":" in peer else peer
            self.server.record("gRPC", route, route, code.name, time.perf_counter() - started, client)

    return serve


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: ModelServer):
        self.server = server

    @served
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @served
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.server.serving)

    @served
    async def ModelReady(self, request, context):
        self.server.check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.server.ready)

    @served
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**SERVER_METADATA)

    @served
    async def ModelMetadata(self, request, context):
        self.server.check_model(request.name, request.version)
        metadata = self.server.model_metadata()
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[tensor(**spec) for spec in metadata["inputs"]],
            outputs=[tensor(**spec) for spec in metadata["outputs"]],
        )

    @served
    async def ModelInfer(self, request, context):
        self.server.check_model(request.model_name, request.model_version)
        images = request_images(request)
        probabilities, labels = await self.server.infer(images)
        outputs = output_tensors(probabilities, labels, [output.name for output in request.outputs])
        return pb.ModelInferResponse(
            model_name=self.server.name,
            model_version=self.server.version,
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=values.shape)
                for name, values, datatype in outputs
            ],
            raw_output_contents=[values.tobytes() for _, values, _ in outputs],
        )


def request_images(request) -> np.ndarray:
    """The images of a ModelInferRequest, checked as HTTP's are: raw_input_contents, or the typed contents."""
    if len(request.inputs) != 1:
        raise BadRequest(f"the model takes one input tensor, {INPUTS[0]['name']!r}; got {len(request.inputs)}")
    tensor = request.inputs[0]
    if len(request.raw_input_contents) not in (0, 1):
        raise BadRequest(f"raw_input_contents holds {len(request.raw_input_contents)} tensors for one input")
    if request.raw_input_contents:
        if tensor.HasField("contents"):
            raise BadRequest(f"input {tensor.name!r}: give raw_input_contents or contents, not both")
        raw, data = request.raw_input_contents[0], None
    else:
        field = CONTENTS.get(tensor.datatype)
        raw, data = None, np.asarray(getattr(tensor.contents, field)) if field else []
    return input_images(
        tensor.name, list(tensor.shape), tensor.datatype, data=data, raw=raw, raw_field="raw_input_contents[0] of"
    )


class HealthService(health_pb2_grpc.HealthServicer):
    """grpc.health.v1: SERVING while the model is ready and the server is not draining, for the whole server ("")
    and for the inference service; another service name is NOT_FOUND, as the health protocol says."""

    def __init__(self, server: ModelServer):
        self.server = server

    def status(self, request):
        if request.service not in ("", SERVICE):
            raise BadRequest(f"unknown service {request.service!r}: this server has {SERVICE!r}", status=404)
        serving = health_pb2.HealthCheckResponse.SERVING
        return serving if self.server.serving else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request, context):
        try:
            return health_pb2.HealthCheckResponse(status=self.status(request))
        except BadRequest as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))

    async def Watch(self, request, context):
        """The status now, then each change (checked every 0.2 s) until the client hangs up or the server stops."""
        try:
            status = self.status(request)
        except BadRequest:
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        yield health_pb2.HealthCheckResponse(status=status)
        while status != health_pb2.HealthCheckResponse.SERVICE_UNKNOWN and not self.server.stopping:
            await asyncio.sleep(0.2)
            if self.status(request) != status:
                status = self.status(request)
                yield health_pb2.HealthCheckResponse(status=status)


async def start_grpc_server(server: ModelServer, address: str) -> grpc.aio.Server:
    """The gRPC server on `address` (host:port), started; messages up to the server's body limit."""
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", server.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a port taken by another server is an error, not a shared port
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(server), grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(server), grpc_server)
    if not grpc_server.add_insecure_port(address):
        raise OSError(f"cannot listen for gRPC on {address}")
    await grpc_server.start()
    return grpc_server
