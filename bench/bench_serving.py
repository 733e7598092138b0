"""Serving: our server against KServe's Python ModelServer on the same model, one worker each, over HTTP (wrk) and
gRPC (h2load), on loopback.

    make bench-env   # once: kserve in its own environment, .venv-kserve
    python bench/bench_serving.py [--model runs/latest/model.onnx] [--runs 3] [--seconds 10]

For each server and transport: p50/p99 latency at concurrency 1 and requests/s at concurrency 64 for
requests of one image (V2 JSON over HTTP; over gRPC a ModelInferRequest with raw_input_contents, FP32 both);
for ours also images/s with 64-image requests as V2 binary tensors and as CSV, against bare onnxruntime
images/s at batch 64 in this process; cold start to ready; resident memory. The same figures of the floors of our
stack (bench/serving_floor.py: its bare transports answering a constant, and one model call a request with none of
our server's work), which bound what any server on it reaches here. Medians of `--runs`. Access logs
are off on both servers. h2load (nghttp2's HTTP/2 load generator) sends gRPC's frames as they are on the wire,
each connection one call at a time, as wrk does; it cannot read gRPC's status, so each server's answer to the
body is checked first with a real gRPC call, and ours counts its non-OK calls in /metrics, which must stay 0.
"""

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb  # a client's messages, not ours: a process holds a V2 name once

from common.onnx_model import load_session, predict
from components.kaggle_csv import read_csv

ROOT = Path(__file__).resolve().parent.parent
# The floors of our stack (bench/serving_floor.py): its transports answering a constant, and one model call a request.
FLOORS = {"floor constant": "constant", "floor model": "model"}
LUA = """
local file = io.open(os.getenv("WRK_BODY"), "rb")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE")
local header_length = os.getenv("WRK_HEADER_LENGTH")
if header_length ~= "" then wrk.headers["Inference-Header-Content-Length"] = header_length end
"""


def free_ports(count):
    """`count` distinct free ports (held open together while they are chosen, so none is picked twice)."""
    with contextlib.ExitStack() as stack:
        listeners = [stack.enter_context(socket.socket()) for _ in range(count)]
        for listener in listeners:
            listener.bind(("127.0.0.1", 0))
        return [listener.getsockname()[1] for listener in listeners]


def start(kind, model):
    port, grpc_port = free_ports(2)
    if kind == "ours":
        command = [sys.executable, "-m", "serving", "--model", str(model), "--no-access-log"]
        command += ["--port", str(port), "--grpc-port", str(grpc_port)]
    elif kind in FLOORS:
        command = [
            sys.executable,
            str(ROOT / "bench/serving_floor.py"),
            "--model",
            str(model),
            "--answer",
            FLOORS[kind],
        ]
        command += ["--port", str(port), "--grpc-port", str(grpc_port)]
    else:
        command = [
            str(ROOT / ".venv-kserve/bin/python"),
            str(ROOT / "bench/kserve_model.py"),
            "--model",
            str(model),
            "--http_port",
            str(port),
            "--grpc_port",
            str(grpc_port),
            "--enable_grpc",
            "true",
            "--workers",
            "1",
            "--enable_latency_logging",
            "false",
            "--configure_logging",
            "false",
        ]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if (
                httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
                and httpx.get(f"{url}/v2/models/digit-recognizer/ready", timeout=1).status_code == 200
            ):
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.perf_counter() - started > 60:
            raise RuntimeError(f"{kind} server did not start")
        time.sleep(0.01)
    return process, url, f"127.0.0.1:{grpc_port}", time.perf_counter() - started


def resident_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def wrk(url, body, content_type, connections, seconds, header_length=""):
    with (
        tempfile.NamedTemporaryFile(suffix=".lua", mode="w", delete=False) as script,
        tempfile.NamedTemporaryFile(delete=False) as body_file,
    ):
        script.write(LUA)
        body_file.write(body)
    environment = {
        **os.environ,
        "WRK_BODY": body_file.name,
        "WRK_CONTENT_TYPE": content_type,
        "WRK_HEADER_LENGTH": str(header_length),
    }
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    os.unlink(body_file.name)
    if "Non-2xx" in output:
        raise RuntimeError(f"wrk saw failed requests:\n{output}")
    latency = {percent: _milliseconds(value) for percent, value in re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.M)}
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
    }


GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def grpc_infer_once(address, request):
    """One ModelInfer call with the benchmark's bytes, through grpcio: the labels the server answers."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(GRPC_INFER, request_serializer=None, response_deserializer=None)
        response = pb.ModelInferResponse.FromString(call(request, timeout=30))
    return np.frombuffer(response.raw_output_contents[1], "<i8").tolist()


def h2load(address, request, connections, seconds):
    """gRPC calls of `request` (a serialized ModelInferRequest) from h2load: requests/s and p50/p99 latency."""
    frame = b"\0" + len(request).to_bytes(4, "big") + request  # gRPC's message framing: uncompressed, length
    with tempfile.TemporaryDirectory() as folder:
        body, log = Path(folder) / "body", Path(folder) / "log"
        body.write_bytes(frame)
        output = subprocess.run(
            ["h2load", "-t1", f"-c{connections}", "-m1", f"-D{seconds}", "--warm-up-time=1", f"--log-file={log}"]
            + ["-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body)]
            + [f"http://{address}{GRPC_INFER}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        microseconds = np.array([int(line.split("\t")[2]) for line in log.read_text().splitlines() if line])
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", output)
    if not done or done.group(1) != done.group(2) or done.group(3) != "0":
        raise RuntimeError(f"h2load saw failed requests:\n{output}")
    return {
        "requests_per_second": float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output).group(1)),
        "p50_ms": float(np.percentile(microseconds, 50)) / 1000,
        "p99_ms": float(np.percentile(microseconds, 99)) / 1000,
    }


def grpc_failures(url):
    """Our server's ModelInfer calls that failed, from its /metrics (CANCELLED: those in flight when h2load's time
    was up, which it resets)."""
    metrics = httpx.get(f"{url}/metrics").text
    found = re.findall(r'requests_total\{route="' + GRPC_INFER + r'",status="(\w+)"\} ([\d.e+]+)', metrics)
    return sum(float(count) for status, count in found if status not in ("OK", "CANCELLED"))


def _milliseconds(text):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def bodies(pixels):
    one = orjson.dumps(
        {
            "inputs": [
                {"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": pixels[0].astype(float).tolist()}
            ]
        }
    )
    batch = pixels[:64]
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [64, 784],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": batch.size},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    )
    csv = "\n".join(",".join(map(str, row)) for row in batch).encode()
    grpc_one = pb.ModelInferRequest(
        model_name="digit-recognizer",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[1, 784])],
        raw_input_contents=[pixels[0].astype("<f4").tobytes()],
    ).SerializeToString()
    return one, (header + batch.tobytes(), len(header)), csv, grpc_one


def bare_images_per_second(model, pixels, seconds=5):
    session = load_session(model)
    batch = pixels[:64].reshape(-1, 28, 28, 1).astype(np.float32)
    predict(session, batch)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"pixels": batch})
        count += len(batch)
    return count / (time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/latest/model.onnx")
    parser.add_argument("--test-csv", default="data/digit-recognizer/test.csv")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--results", default="bench/results/serving.json")
    args = parser.parse_args(argv)
    _, pixels = read_csv(args.test_csv, labelled=False)
    one, (binary, header_length), csv, grpc_one = bodies(pixels)
    samples = {}

    def record(name, value):
        samples.setdefault(name, []).append(value)
        print(f"  {name}: {value:.3f}", flush=True)

    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", flush=True)
        bare = bare_images_per_second(args.model, pixels)
        record("bare onnxruntime images/s (batch 64)", bare)
        for kind in ("ours", "kserve", *FLOORS):
            process, url, grpc_address, cold_start = start(kind, args.model)
            try:
                record(f"{kind} cold start to ready (s)", cold_start)
                expected = grpc_infer_once(grpc_address, grpc_one)
                h2load(grpc_address, grpc_one, 8, 2)  # warm-up
                single = h2load(grpc_address, grpc_one, 1, args.seconds)
                record(f"{kind} gRPC c=1 p50 (ms)", single["p50_ms"])
                record(f"{kind} gRPC c=1 p99 (ms)", single["p99_ms"])
                record(
                    f"{kind} gRPC c=64 requests/s",
                    h2load(grpc_address, grpc_one, 64, args.seconds)["requests_per_second"],
                )
                if grpc_infer_once(grpc_address, grpc_one) != expected or (kind == "ours" and grpc_failures(url)):
                    raise RuntimeError(f"{kind}: gRPC calls failed under load")
                infer = f"{url}/v2/models/digit-recognizer/infer"
                wrk(infer, one, "application/json", 8, 2)  # warm-up
                single = wrk(infer, one, "application/json", 1, args.seconds)
                record(f"{kind} V2 JSON c=1 p50 (ms)", single["p50_ms"])
                record(f"{kind} V2 JSON c=1 p99 (ms)", single["p99_ms"])
                record(
                    f"{kind} V2 JSON c=64 requests/s",
                    wrk(infer, one, "application/json", 64, args.seconds)["requests_per_second"],
                )
                if kind == "ours":
                    binary_rate = wrk(infer, binary, "application/octet-stream", 4, args.seconds, header_length)
                    record("ours V2 binary 64 images/request images/s", 64 * binary_rate["requests_per_second"])
                    csv_rate = wrk(f"{url}/predict", csv, "text/csv", 4, args.seconds)
                    record("ours CSV 64 rows/request images/s", 64 * csv_rate["requests_per_second"])
                record(f"{kind} resident memory (MB)", resident_mb(process.pid))
            finally:
                process.terminate()
                process.wait(30)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {
        "c=64 requests/s, ours / kserve": medians["ours V2 JSON c=64 requests/s"]
        / medians["kserve V2 JSON c=64 requests/s"],
        "c=1 p99, ours / kserve": medians["ours V2 JSON c=1 p99 (ms)"] / medians["kserve V2 JSON c=1 p99 (ms)"],
        "gRPC c=64 requests/s, ours / kserve": medians["ours gRPC c=64 requests/s"]
        / medians["kserve gRPC c=64 requests/s"],
        "gRPC c=1 p99, ours / kserve": medians["ours gRPC c=1 p99 (ms)"] / medians["kserve gRPC c=1 p99 (ms)"],
        "c=64 requests/s, ours gRPC / ours HTTP JSON": medians["ours gRPC c=64 requests/s"]
        / medians["ours V2 JSON c=64 requests/s"],
        "binary images/s / bare onnxruntime": medians["ours V2 binary 64 images/request images/s"]
        / medians["bare onnxruntime images/s (batch 64)"],
        "CSV images/s / bare onnxruntime": medians["ours CSV 64 rows/request images/s"]
        / medians["bare onnxruntime images/s (batch 64)"],
        # What any server on our stack could reach here: the transports' ceilings and one model call a request.
        "c=64 requests/s, gRPC / HTTP JSON, both answering a constant": medians["floor constant gRPC c=64 requests/s"]
        / medians["floor constant V2 JSON c=64 requests/s"],
        "c=1 p99, one model call a request / kserve": medians["floor model V2 JSON c=1 p99 (ms)"]
        / medians["kserve V2 JSON c=1 p99 (ms)"],
    }
    results = {
        "runs": args.runs,
        "seconds_per_measurement": args.seconds,
        "medians": medians,
        "ratios": ratios,
        "samples": samples,
    }
    print(json.dumps({"medians": medians, "ratios": ratios}, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
