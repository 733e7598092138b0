"""The server: KServe V2 endpoints, /predict, the drawing page, Prometheus metrics, access logs."""

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from common.errors import InputError
from common.kaggle_format import TEST_HEADER, TRAIN_HEADER, value_problem
from serving.batching import Batcher
from serving.errors import BadRequest
from serving.images import image_to_pixels
from serving.model_server import SERVER_METADATA, ModelServer, access_log
from serving.protocol import infer_response, parse_infer_request, pixels_from_array

STATIC = Path(__file__).parent / "static"
MODEL_PATH = "/v2/models/{name}"
VERSION_PATH = "/v2/models/{name}/versions/{version}"  # the same routes for a version: the served one only
INFER_PATHS = {False: MODEL_PATH + "/infer", True: VERSION_PATH + "/infer"}  # versioned or not
_LONG_NUMBER = re.compile(r"\d{10}")


def create_app(model_path: str | Path, grpc_address: str | None = None, **settings) -> FastAPI:
    """The HTTP app serving `model_path`; with `grpc_address` (host:port) it also runs the gRPC service
    (serving.grpc_server) in the same event loop: one model, one batcher, one set of metrics for both."""
    server = ModelServer(model_path, **settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.batcher = Batcher(server.predict, server.max_batch_size, server.max_wait_ms, server.batch_sizes.observe)
        server.batcher.start()
        grpc_server = None
        if grpc_address:
            # Imported only to serve gRPC: its messages bear the protocol's names (inference.*), which Triton's
            # client registers too, and one process's protobuf descriptor pool holds a name once.
            from serving.grpc_server import GRACE_SECONDS, start_grpc_server

            grpc_server = await start_grpc_server(server, grpc_address)
        loading = asyncio.create_task(load_in_background())
        yield
        loading.cancel()
        server.stopping = True
        if grpc_server:  # uvicorn has finished its requests; gRPC calls in flight finish too (up to 30 s)
            await grpc_server.stop(GRACE_SECONDS)
        await server.batcher.stop()

    async def load_in_background():
        try:
            await asyncio.to_thread(server.load)
        except InputError as error:
            access_log.error(json.dumps({"event": "model_load_failed", "error": str(error)}))
            return
        server.ready = True
        access_log.info(json.dumps({"event": "ready", "model": str(server.model_path)}))

    app = ServingApp(
        title="Digit Recognizer",
        version="1",
        description="KServe V2 inference protocol and a /predict endpoint for the digit model.",
        lifespan=lifespan,
    )
    app.state.server = server

    @app.exception_handler(BadRequest)
    async def bad_request(request, error):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    # Starlette's own refusals (no such route, a method a route does not take) in V2's error shape too.
    @app.exception_handler(HTTPException)
    async def no_such_route(request, error):
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}: the V2 protocol is under /v2, see /docs"
        elif error.status_code == 405:
            message = f"{request.url.path} does not take {request.method} (it takes {error.headers['Allow']})"
        else:
            message = str(error.detail)
        return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/v2", summary="Server metadata")
    async def server_metadata():
        return SERVER_METADATA

    @app.get("/v2/health/live", summary="Liveness")
    async def live():
        return {"live": True}

    # The V2 protocol answers readiness with the status: 200 for true, a 4xx for false.
    @app.get("/v2/health/ready", summary="Readiness: true once the model is loaded and warmed, until shutdown begins")
    async def ready():
        return JSONResponse({"ready": server.serving}, status_code=200 if server.serving else 400)

    @app.get(MODEL_PATH, summary="Model metadata: its version, inputs, outputs, datatypes, shapes")
    @app.get(VERSION_PATH, summary="Model metadata of a version (the served one)")
    async def model_metadata(name: str, version: str = ""):
        server.check_model(name, version)
        return server.model_metadata()

    @app.get(MODEL_PATH + "/ready", summary="Model readiness")
    @app.get(VERSION_PATH + "/ready", summary="Readiness of a version (the served one)")
    async def model_ready(name: str, version: str = ""):
        server.check_model(name, version)
        return JSONResponse({"name": server.name, "ready": server.ready}, status_code=200 if server.ready else 400)

    # The V2 inference routes, which ServingApp serves before FastAPI's stack (the OpenAPI document lists them
    # by hand, in openapi below); the router keeps them to answer other methods.
    infer = V2Inference(server)
    app.infer_routes = [Route(path, infer, methods=["POST"]) for path in INFER_PATHS.values()]
    app.router.routes.extend(app.infer_routes)

    def openapi():
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for versioned, path in INFER_PATHS.items():
                parameters = ["name", "version"] if versioned else ["name"]
                schema["paths"][path] = {
                    "post": {
                        "summary": "V2 inference (JSON tensors or the binary tensor extension)"
                        + (" by a version (the served one)" if versioned else ""),
                        "operationId": "infer_version" if versioned else "infer",
                        "parameters": [
                            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                            for name in parameters
                        ],
                        "responses": {"200": {"description": "the output tensors"}},
                    }
                }
        return app.openapi_schema

    app.openapi = openapi

    @app.post(
        "/predict",
        summary="Predict digits from an image (PNG/JPEG, raw or multipart 'file'), JSON pixels, or Kaggle CSV rows",
    )
    async def predict(request: Request):
        images = await images_from_request(server, request)
        probabilities, labels = await server.infer(images)
        predictions = [
            {"label": int(label), "probabilities": row} for label, row in zip(labels, probabilities.tolist())
        ]
        single = predictions[0] if len(predictions) == 1 and not getattr(request.state, "many", False) else None
        return Response(orjson.dumps(single or {"predictions": predictions}), media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def check_declared_length(server: ModelServer, declared: str | bytes | None) -> None:
    """Refuse with 413 a body whose Content-Length is over the server's `max_body_bytes`, before reading it."""
    if declared and declared.isdigit() and int(declared) > server.max_body_bytes:
        raise BadRequest(f"body of {int(declared)} bytes is over the limit of {server.max_body_bytes}", status=413)


async def read_body(server: ModelServer, declared: str | bytes | None, receive) -> bytes | None:
    """The request body from the ASGI `receive`, refused with 413 past the server's `max_body_bytes` (its declared
    Content-Length first) before it is all read; None if the client hung up."""
    check_declared_length(server, declared)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > server.max_body_bytes:
            raise BadRequest(f"body is over the limit of {server.max_body_bytes} bytes", status=413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def request_body(server: ModelServer, request: Request) -> bytes:
    """read_body for a Starlette request, whose client hanging up ends the handler as Starlette's own reads do."""
    body = await read_body(server, request.headers.get("content-length"), request.receive)
    if body is None:
        raise ClientDisconnect()
    return body


async def images_from_request(server: ModelServer, request: Request) -> np.ndarray:
    """Images [n, 28, 28, 1] from whichever body /predict was given."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type.startswith("image/"):
        return image_to_pixels(await request_body(server, request))[None]
    if content_type == "multipart/form-data":
        check_declared_length(server, request.headers.get("content-length"))
        try:
            form = await request.form(max_files=1, max_fields=10, max_part_size=server.max_body_bytes)
        except Exception as error:  # the multipart parser's own errors: a malformed form
            raise BadRequest(f"malformed multipart form: {error}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest("the multipart form needs a file field named 'file'")
        return image_to_pixels(await upload.read())[None]
    body = await request_body(server, request)
    if content_type == "application/json":
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"malformed JSON: {error}") from None
        if isinstance(document, dict) and "pixels" in document:
            return _numbers(document["pixels"], "'pixels'", expected=784)
        if isinstance(document, dict) and "images" in document:
            request.state.many = True
            images = document["images"]
            if not isinstance(images, list):
                raise BadRequest("'images' must be a list of images of 784 pixels")
            if any(not isinstance(image, list) or len(image) != 784 for image in images):
                bad = next(i for i, image in enumerate(images) if not isinstance(image, list) or len(image) != 784)
                raise BadRequest(f"'images'[{bad}] must be a list of 784 pixel values")
            return _numbers(images, "'images'")
        raise BadRequest("a JSON body needs 'pixels' (784 values) or 'images' (a list of them)")
    if content_type in ("text/csv", "application/csv"):
        request.state.many = True
        return _csv_images(body)
    raise BadRequest(
        f"unsupported content type {content_type or '(none)'!r}: send image/png, image/jpeg, "
        "multipart/form-data, application/json or text/csv",
        status=415,
    )


def _numbers(values, what, expected=None):
    if not isinstance(values, list) or (expected and len(values) != expected):
        raise BadRequest(f"{what} must be a list of {expected} pixel values" if expected else f"{what} must be a list")
    try:
        array = np.array(values, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{what} must hold only numbers") from None
    return pixels_from_array(array, what)


def _csv_images(body):
    """Kaggle CSV rows (header optional; a `label` column is ignored) as images.

    numpy parses the integers in C; only a body it refuses is walked field by field to name the fault.
    """
    try:
        lines = [line for line in body.decode("utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise BadRequest("the CSV body is not UTF-8 text") from None
    if lines and lines[0].lstrip().startswith(("pixel", "label")):
        has_label, lines = lines[0].lstrip().startswith("label"), lines[1:]
    else:
        has_label = bool(lines) and lines[0].count(",") == 784
    if not lines:
        raise BadRequest("the CSV body has no rows")
    columns = TRAIN_HEADER if has_label else TEST_HEADER
    for number, line in enumerate(lines, start=1):
        if line.count(",") != len(columns) - 1:
            raise BadRequest(f"CSV row {number} has {line.count(',') + 1} values, expected {len(columns)}")
    text = ",".join(lines)
    values = None
    if not _LONG_NUMBER.search(text):  # numpy's integer parser wraps around past 64 bits
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            try:
                values = np.fromstring(text, dtype=np.int64, sep=",")
            except (ValueError, DeprecationWarning):
                values = None
    if values is None or values.size != len(lines) * len(columns):
        for number, line in enumerate(lines, start=1):
            for name, field in zip(columns, line.split(",")):
                problem = value_problem(name, field)
                if problem:
                    raise BadRequest(f"CSV row {number}, column '{name}': {problem}")
        raise BadRequest("the CSV rows could not be read as integers")
    pixels = values.reshape(len(lines), len(columns))[:, 1:] if has_label else values.reshape(len(lines), -1)
    outside = np.argwhere((pixels < 0) | (pixels > 255))
    if len(outside):
        row, column = outside[0]
        raise BadRequest(
            f"CSV row {row + 1}, column 'pixel{column}': pixel value {pixels[row, column]} is outside 0-255"
        )
    return pixels_from_array(pixels, "CSV")


class V2Inference:
    """V2 inference (JSON tensors or the binary tensor extension) as a bare ASGI app: ServingApp calls it before
    FastAPI's stack; through the router it is reached only for what routing adds (a 405 for another method)."""

    def __init__(self, server: ModelServer):
        self.server = server

    async def __call__(self, scope, receive, send):
        server, path = self.server, scope["path_params"]
        try:
            server.check_model(path["name"], path.get("version", ""))
            headers = dict(scope["headers"])
            header_length = headers.get(b"inference-header-content-length")
            if header_length is not None and not header_length.isdigit():
                raise BadRequest("Inference-Header-Content-Length must be a whole number")
            body = await read_body(server, headers.get(b"content-length"), receive)
            if body is None:
                return  # the client hung up
            request_id, images, outputs, binary = parse_infer_request(
                body, int(header_length) if header_length else None
            )
            probabilities, labels = await server.infer(images)
            content, extra = infer_response(
                server.name, server.version, request_id, probabilities, labels, outputs, binary
            )
            media_type = "application/octet-stream" if binary else "application/json"
            response = Response(content, media_type=media_type, headers=extra)
        except BadRequest as error:
            response = JSONResponse({"error": str(error)}, status_code=error.status)
        except Exception as error:  # onnxruntime failed: logged, and told as V2 clients read errors
            access_log.error(json.dumps({"event": "inference_failed", "error": repr(error)}))
            response = JSONResponse({"error": f"inference failed: {error}"}, status_code=500)
        await response(scope, receive, send)


class ServingApp(FastAPI):
    """FastAPI's app, with what every HTTP request passes on the way: its metrics and access-log line, and, while
    draining, `Connection: close` on its answer (a client's kept-alive connection would otherwise stay on this
    server until it exits; closed, its next request opens a new one, which the load balancer sends to a ready
    server). V2 inference, the hot path, goes straight to its route's ASGI app, past FastAPI's middleware stack
    and router, which had taken about two fifths of the event loop's time at concurrency 64 (py-spy).
    """

    infer_routes: list[Route]  # create_app's

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        server, started, status = self.state.server, time.perf_counter(), 500

        async def send_recorded(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if server.draining:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            infer_route = self.infer_route(scope)
            if infer_route:
                await infer_route.app(scope, receive, send_recorded)
            else:
                await super().__call__(scope, receive, send_recorded)
        finally:
            server.record(
                scope["method"],
                scope["path"],
                getattr(scope.get("route"), "path", "unmatched"),
                status,
                time.perf_counter() - started,
                scope["client"][0] if scope.get("client") else None,
            )

    def infer_route(self, scope):
        """The V2 inference route a POST matches, its path parameters put in `scope` as the router puts them."""
        if scope["method"] != "POST" or not scope["path"].endswith("/infer"):
            return None
        for route in self.infer_routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope, route=route)  # the metrics' label, as the router would set it
                return route
        return None


def configure_logging(access_log_enabled: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.handlers[:] = [handler]
    access_log.propagate = False
    access_log.setLevel(logging.INFO if access_log_enabled else logging.WARNING)
