"""The Open Inference Protocol over gRPC, called with Triton's client (tritonclient.grpc) on the server as
`make serve` starts it; the generated stubs against their .proto files and against Triton's protocol.

This process never imports serving.grpc_predict_v2_pb2: its messages bear the protocol's names
(inference.*), which tritonclient registers too, and protobuf's descriptor pool holds a name once.
"""

import asyncio
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving import health_pb2, health_pb2_grpc
from tests.conftest import ROOT
from tests.serving.conftest import free_ports

MODEL = "digit-recognizer"
PROTOS = ("grpc_predict_v2", "health")


@pytest.fixture(scope="module")
def labelled(fixture_data):
    rows = np.loadtxt(fixture_data / "train.csv", delimiter=",", skiprows=1, dtype=np.int64, max_rows=32)
    return rows[:, 0], rows[:, 1:].astype(np.uint8)


def pixels_input(pixels, datatype="UINT8"):
    tensor = triton_grpc.InferInput("pixels", list(pixels.shape), datatype)
    tensor.set_data_from_numpy(pixels)
    return tensor


def compile_protos(out):
    """protoc (grpcio-tools) on the .proto files, as their headers say: stubs and a descriptor set in `out`."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(out),
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--descriptor_set_out={out / 'descriptors.pb'}",
            *(f"serving/{name}.proto" for name in PROTOS),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    descriptors = descriptor_pb2.FileDescriptorSet.FromString((out / "descriptors.pb").read_bytes())
    return {descriptor.package: descriptor for descriptor in descriptors.file}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("protoc")
    (out / "serving").mkdir()
    for name in PROTOS:
        shutil.copyfile(ROOT / "serving" / f"{name}.proto", out / "serving" / f"{name}.proto")
    return out, compile_protos(out)


def test_the_committed_stubs_are_what_protoc_generates_from_the_protos(compiled):
    out, _ = compiled
    for name in PROTOS:
        for stub in (f"{name}_pb2.py", f"{name}_pb2_grpc.py"):
            assert (out / "serving" / stub).read_text() == (ROOT / "serving" / stub).read_text(), stub


def test_the_proto_is_tritons_protocol_field_for_field(compiled):
    """Every message, field and method of ours is in Triton's grpc_service.proto (tritonclient's; a superset) with
    the same names, numbers, types and labels: the wire format Triton's and KServe's clients speak."""
    ours = compiled[1]["inference"]
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)

    def messages(file):
        found = {}

        def visit(message, prefix):
            found[prefix + message.name] = {
                field.name: (field.number, field.type, field.label, field.type_name) for field in message.field
            }
            for nested in message.nested_type:
                visit(nested, f"{prefix}{message.name}.")

        for message in file.message_type:
            visit(message, ".inference.")
        return found

    our_messages, their_messages = messages(ours), messages(theirs)
    for name, fields in our_messages.items():
        assert fields.items() <= their_messages[name].items(), name
    (our_service,) = ours.service
    their_methods = {method.name: method for method in theirs.service[0].method}
    assert our_service.name == theirs.service[0].name == "GRPCInferenceService"
    for method in our_service.method:
        assert (method.input_type, method.output_type) == (
            their_methods[method.name].input_type,
            their_methods[method.name].output_type,
        )


def test_health_metadata_and_inference_with_tritons_client(server, labelled):
    url, process = server
    labels, pixels = labelled
    client = triton_grpc.InferenceServerClient(process.grpc_address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    metadata = client.get_server_metadata()
    assert metadata.name == "digit-recognizer-server" and list(metadata.extensions) == ["binary_tensor_data"]
    model = client.get_model_metadata(MODEL)
    assert [(tensor.name, tensor.datatype, list(tensor.shape)) for tensor in model.inputs] == [
        ("pixels", "FP32", [-1, 28, 28, 1])
    ]
    assert [tensor.name for tensor in model.outputs] == ["probabilities", "label"]
    assert list(model.versions) == ["1"]  # a model without the identity export writes (tests/test_app.py has one)
    versioned = client.infer(MODEL, [pixels_input(pixels[:2])], model_version="1")
    assert versioned.get_response().model_version == "1" and client.is_model_ready(MODEL, "1")
    with pytest.raises(InferenceServerException, match="unknown version '2' of 'digit-recognizer'") as error:
        client.infer(MODEL, [pixels_input(pixels[:2])], model_version="2")
    assert error.value.status() == "StatusCode.NOT_FOUND"
    for datatype, values in (("UINT8", pixels), ("FP32", pixels.astype(np.float32).reshape(-1, 28, 28, 1))):
        result = client.infer(MODEL, [pixels_input(values, datatype)], request_id="g-7")
        assert result.get_response().id == "g-7" and result.get_response().model_name == MODEL
        assert (result.as_numpy("label") == labels).mean() >= 0.95
        np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1, atol=1e-4)
    only_label = client.infer(MODEL, [pixels_input(pixels[:3])], outputs=[triton_grpc.InferRequestedOutput("label")])
    assert [output.name for output in only_label.get_response().outputs] == ["label"]
    client.close()


def test_typed_contents_are_read_as_raw_contents_are(server, labelled):
    """The protocol's other form of a tensor, its values in the typed field (uint_contents for UINT8)."""
    _, process = server
    labels, pixels = labelled
    with grpc.insecure_channel(process.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8", shape=[4, 784])
        tensor.contents.uint_contents.extend(pixels[:4].ravel().tolist())
        response = stub.ModelInfer(service_pb2.ModelInferRequest(model_name=MODEL, inputs=[tensor]), timeout=30)
    assert [output.name for output in response.outputs] == ["probabilities", "label"]
    assert np.frombuffer(response.raw_output_contents[1], "<i8").tolist() == labels[:4].tolist()


def test_async_and_concurrent_calls_share_the_batcher(server, labelled):
    url, process = server
    labels, pixels = labelled

    async def calls():
        client = triton_grpc_aio.InferenceServerClient(process.grpc_address)
        try:
            tensors = [triton_grpc_aio.InferInput("pixels", [1, 784], "UINT8") for _ in range(64)]
            for tensor, image in zip(tensors, pixels.repeat(2, axis=0)):
                tensor.set_data_from_numpy(image[None])
            return await asyncio.gather(*(client.infer(MODEL, [tensor]) for tensor in tensors))
        finally:
            await client.close()

    results = asyncio.run(calls())
    assert [int(result.as_numpy("label")[0]) for result in results] == labels.repeat(2).tolist()
    # Callbacks (tritonclient's async_infer), answered on its own threads.
    client, answers = triton_grpc.InferenceServerClient(process.grpc_address), queue.Queue()
    for image in pixels[:8]:
        client.async_infer(MODEL, [pixels_input(image[None])], lambda result, error: answers.put((result, error)))
    received = [answers.get(timeout=30) for _ in range(8)]
    assert all(error is None for _, error in received)
    assert sorted(int(result.as_numpy("label")[0]) for result, _ in received) == sorted(labels[:8].tolist())
    client.close()
    import httpx

    metrics = httpx.get(f"{url}/metrics").text
    assert 'requests_total{route="/inference.GRPCInferenceService/ModelInfer",status="OK"} 72.0' in metrics
    batched = [line for line in metrics.splitlines() if line.startswith("batch_images_count")]
    assert float(batched[0].split()[-1]) < 72  # concurrent calls shared onnxruntime calls


def test_bad_requests_get_the_protocols_status_naming_the_field(server):
    url, process = server
    client = triton_grpc.InferenceServerClient(process.grpc_address)
    cases = [
        ([pixels_input(np.zeros((1, 783), np.uint8))], MODEL, "INVALID_ARGUMENT", "shape [1, 783]"),
        ([pixels_input(np.full((1, 784), 300, np.int32), "INT32")], MODEL, "INVALID_ARGUMENT", "0-255"),
        ([pixels_input(np.zeros((0, 784), np.uint8))], MODEL, "INVALID_ARGUMENT", "the batch is empty"),
        ([pixels_input(np.zeros((3000, 784), np.uint8))], MODEL, "RESOURCE_EXHAUSTED", "over the limit of"),
        ([pixels_input(np.zeros((1, 784), np.uint8))], "nope", "NOT_FOUND", "unknown model 'nope'"),
    ]
    misnamed = triton_grpc.InferInput("image", [1, 784], "UINT8")
    misnamed.set_data_from_numpy(np.zeros((1, 784), np.uint8))
    cases.append(([misnamed], MODEL, "INVALID_ARGUMENT", "unknown input 'image'"))
    for inputs, model, status, message in cases:
        with pytest.raises(InferenceServerException) as error:
            client.infer(model, inputs, client_timeout=30)
        assert error.value.status() == f"StatusCode.{status}" and message in error.value.message(), message
    with pytest.raises(InferenceServerException, match="unknown output 'logits'"):
        client.infer(MODEL, cases[4][0], outputs=[triton_grpc.InferRequestedOutput("logits")])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    client.close()
    import httpx

    metrics = httpx.get(f"{url}/metrics").text
    assert 'route="/inference.GRPCInferenceService/ModelInfer",status="INVALID_ARGUMENT"} 5.0' in metrics
    assert 'route="/inference.GRPCInferenceService/ModelMetadata",status="NOT_FOUND"} 1.0' in metrics


def health(address, service=""):
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)


def test_unavailable_until_the_model_is_loaded(tmp_path):
    port, grpc_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model", str(tmp_path / "missing.onnx")]
        + ["--port", str(port), "--grpc-port", str(grpc_port)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{grpc_port}"
    try:
        client = triton_grpc.InferenceServerClient(address)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert client.is_server_live()
                break
            except InferenceServerException:
                assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
                time.sleep(0.05)
        assert not client.is_server_ready() and not client.is_model_ready(MODEL)
        assert health(address).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(InferenceServerException) as error:
            client.infer(MODEL, [pixels_input(np.zeros((1, 784), np.uint8))])
        assert error.value.status() == "StatusCode.UNAVAILABLE" and "not ready" in error.value.message()
        client.close()
    finally:
        process.kill()
        process.wait()


def test_the_health_service_answers_kubernetes_probes(server):
    _, process = server
    assert health(process.grpc_address).status == health_pb2.HealthCheckResponse.SERVING
    assert (
        health(process.grpc_address, "inference.GRPCInferenceService").status == health_pb2.HealthCheckResponse.SERVING
    )
    with pytest.raises(grpc.RpcError) as error:
        health(process.grpc_address, "nope")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("server", [["--drain-seconds", "2"]], indirect=True)
def test_sigterm_drains_grpc_and_loses_no_call(server, labelled):
    """While draining, health says NOT_SERVING (Check, and Watch at once) and every call is answered; a call in
    flight when the server stops accepting still gets its answer; then the server exits."""
    _, process = server
    labels, pixels = labelled
    client = triton_grpc.InferenceServerClient(process.grpc_address)
    big = pixels_input(np.repeat(pixels[:1], 2048, axis=0))
    channel = grpc.insecure_channel(process.grpc_address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # Watch tells of the change
    while health(process.grpc_address).status == health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() - signalled < 1, "health did not turn NOT_SERVING"
    assert not client.is_server_ready() and client.is_server_live()
    answered = [int(client.infer(MODEL, [pixels_input(pixels[i : i + 1])]).as_numpy("label")[0]) for i in range(8)]
    assert answered == labels[:8].tolist()
    # Calls sent until the drain ends (and uvicorn stops) are answered too, the last ones in flight as it stops.
    results, errors = [], []

    def call_until_stopped():
        while time.monotonic() - signalled < 4:
            try:
                results.append(client.infer(MODEL, [big], client_timeout=30).as_numpy("label"))
            except InferenceServerException as error:
                errors.append(error)
                return

    caller = threading.Thread(target=call_until_stopped)
    caller.start()
    caller.join(60)
    assert results and all(len(labels_) == 2048 for labels_ in results)
    # The only refusal: a call after the server stopped accepting, which a client retries elsewhere.
    assert all(error.status() == "StatusCode.UNAVAILABLE" for error in errors), [str(e) for e in errors]
    assert process.wait(30) in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled > 1.5
    assert list(watch) == []  # the open Watch stream ended as the server stopped, and did not hold it up
    channel.close()
    client.close()
