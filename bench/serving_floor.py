"""The floor of a server on our stack, for bench/bench_serving.py: how fast any server written on it can be here.

    python bench/serving_floor.py --model M --port P --grpc-port G --answer constant|model

A bare ASGI app on uvicorn (uvloop, httptools) and a bare grpc.aio ModelInfer in the same event loop, as our server
runs them, with none of its work: no input checks, batching, metrics or logs. `--answer constant` reads each request
and answers a fixed V2 response (the transports' own cost); `--answer model` runs onnxruntime on each request's
images, as they come, and answers the model's outputs (the least a server of one model call a request can do).
Any GET answers 200, so the benchmark's readiness poll passes.
"""

import argparse

import grpc
import numpy as np
import orjson
import uvicorn
import uvloop

from common.onnx_model import load_session, predict
from serving import grpc_predict_v2_pb2 as pb
from serving import grpc_predict_v2_pb2_grpc as pb_grpc

JSON_HEADERS = [(b"content-type", b"application/json")]
CONSTANT_OUTPUTS = (np.full((1, 10), 0.1, np.float32), np.zeros(1, np.int64))


def outputs(session, pixels):
    """Probabilities and labels of `pixels` (float32, 784 a row): the model's, or the constant ones without a model."""
    return predict(session, pixels.reshape(-1, 28, 28, 1)) if session else CONSTANT_OUTPUTS


def http_app(session):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        answer = b"{}"
        if scope["method"] == "POST":
            tensor = orjson.loads(body)["inputs"][0]
            probabilities, labels = outputs(session, np.asarray(tensor["data"], np.float32))
            answer = orjson.dumps(
                {
                    "model_name": "digit-recognizer",
                    "outputs": [
                        {
                            "name": "probabilities",
                            "shape": probabilities.shape,
                            "datatype": "FP32",
                            "data": probabilities.ravel().tolist(),
                        },
                        {"name": "label", "shape": labels.shape, "datatype": "INT64", "data": labels.tolist()},
                    ],
                }
            )
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": answer})

    return app


class Inference(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, session):
        self.session = session

    async def ModelInfer(self, request, context):
        probabilities, labels = outputs(self.session, np.frombuffer(request.raw_input_contents[0], "<f4"))
        tensor = pb.ModelInferResponse.InferOutputTensor
        return pb.ModelInferResponse(
            model_name="digit-recognizer",
            outputs=[
                tensor(name="probabilities", datatype="FP32", shape=probabilities.shape),
                tensor(name="label", datatype="INT64", shape=labels.shape),
            ],
            raw_output_contents=[probabilities.tobytes(), labels.tobytes()],
        )


async def serve(model, port, grpc_port, answer):
    session = load_session(model) if answer == "model" else None
    grpc_server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Inference(session), grpc_server)
    grpc_server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await grpc_server.start()
    config = uvicorn.Config(http_app(session), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    await uvicorn.Server(config).serve()
    await grpc_server.stop(0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--answer", choices=("constant", "model"), required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.model, args.port, args.grpc_port, args.answer))


if __name__ == "__main__":
    main()
