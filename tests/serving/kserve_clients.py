"""Calls a server with KServe's own Python clients (InferenceRESTClient, InferenceGRPCClient) and prints what they
read back as one JSON object. Runs in the benchmark's kserve environment (make bench-env: .venv-kserve), since
kserve pins a web stack and a Kubernetes client of its own; tests/serving/test_clients.py runs it.

    .venv-kserve/bin/python tests/serving/kserve_clients.py HTTP_URL GRPC_ADDRESS PIXELS_CSV_ROW
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request(pixels, model_name):
    tensor = InferInput("pixels", [1, 784], "UINT8")
    tensor.set_data_from_numpy(pixels[None], binary_data=False)
    return InferRequest(model_name=model_name, infer_inputs=[tensor], request_id="kserve-1")


async def main(url, grpc_address, pixels):
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    grpc_client = InferenceGRPCClient(grpc_address, timeout=30, retries=0)
    answers = {}
    try:
        answers["rest_live"] = await rest.is_server_live(url)
        answers["rest_ready"] = await rest.is_model_ready(url, "digit-recognizer")
        response = await rest.infer(url, request(pixels, "digit-recognizer"), model_name="digit-recognizer")
        answers["rest_label"] = response.outputs[1].as_numpy().tolist()
        answers["rest_id"] = response.id
        try:
            await rest.infer(url, request(pixels, "nope"), model_name="nope")
        except Exception as error:  # the client's own error for a 404, whatever its class
            answers["rest_unknown_model"] = f"{type(error).__name__}: {error}"
        answers["grpc_live"] = await grpc_client.is_server_live()
        answers["grpc_ready"] = await grpc_client.is_model_ready("digit-recognizer")
        responses = await asyncio.gather(*(grpc_client.infer(request(pixels, "digit-recognizer")) for _ in range(16)))
        answers["grpc_labels"] = [response.outputs[1].as_numpy().tolist() for response in responses]
        answers["grpc_id"] = responses[0].id
        try:
            await grpc_client.infer(request(pixels, "nope"))
        except Exception as error:
            answers["grpc_unknown_model"] = f"{type(error).__name__}: {error}"
    finally:
        await rest.close()
        await grpc_client.close()
    print(json.dumps(answers))


if __name__ == "__main__":
    url, grpc_address, row = sys.argv[1:]
    asyncio.run(main(url, grpc_address, np.array([int(value) for value in row.split(",")], np.uint8)))
