"""python -m serving --model runs/latest/model.onnx [--host 127.0.0.1] [--port 8080] [--grpc-port 8081]

`--model` may name a folder: its model.onnx, or its only file (KServe's /mnt/models).
"""

import argparse
import json
import signal
import threading
import time

import uvicorn

from serving.app import access_log, configure_logging, create_app


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM first drains: for `drain_seconds` the server reports not ready and closes
    each connection after its answer, yet serves every request; then uvicorn's graceful shutdown (stop
    accepting, let requests in flight finish). Ctrl+C (SIGINT) or a second SIGTERM skips the drain.

    Kubernetes sends SIGTERM while Services may still route here for a moment: the drain answers them.
    gRPC drains alike (its health service says NOT_SERVING, its calls are served), then, once uvicorn has
    finished, stops as gracefully (serving.app's lifespan): no new calls, those in flight finish.
    """

    def __init__(self, config, model_server, drain_seconds):
        super().__init__(config)
        self.model_server, self.drain_seconds = model_server, drain_seconds

    def handle_exit(self, sig, frame):
        if sig == signal.SIGTERM and self.drain_seconds > 0 and not self.model_server.draining:
            self.model_server.draining = True  # at once: the next readiness probe fails
            threading.Thread(target=self.drain_then_exit, args=(sig, frame), daemon=True).start()
        else:
            super().handle_exit(sig, frame)

    def drain_then_exit(self, sig, frame):
        access_log.warning(json.dumps({"event": "draining", "seconds": self.drain_seconds}))
        time.sleep(self.drain_seconds)
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve the digit model: KServe's V2 protocol over HTTP (with /predict and a drawing page at /) "
        "and over gRPC.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="the ONNX model (model.onnx or model.int8.onnx from export), or a folder holding it",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (default: %(default)s)")
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=8081,
        help="gRPC port, on the same host (default: %(default)s, KServe's ModelServer's; 0: no gRPC)",
    )
    parser.add_argument(
        "--model-name", default="digit-recognizer", help="the name in /v2/models/{name} (default: %(default)s)"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=64, help="images per onnxruntime call at most (default: %(default)s)"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=0.0, help="how long a batch waits for more requests (default: %(default)s)"
    )
    parser.add_argument(
        "--max-images", type=int, default=1024, help="images per request at most (default: %(default)s)"
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=8.0, help="request body size limit in MB (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: 0, one per core)")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false", help="do not log each request")
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="on SIGTERM, how long to keep serving while reporting not ready (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.drain_seconds < 0:
        parser.error(f"--drain-seconds must be 0 or more, got {args.drain_seconds}")
    if args.grpc_port and args.grpc_port == args.port:
        parser.error(f"--grpc-port must differ from --port ({args.port})")
    configure_logging(args.access_log)
    app = create_app(
        args.model,
        grpc_address=f"{args.host}:{args.grpc_port}" if args.grpc_port else None,
        name=args.model_name,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_images=args.max_images,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        threads=args.threads,
    )
    # After the drain, uvicorn stops accepting and lets requests in flight finish (up to 30 s).
    config = uvicorn.Config(
        app, host=args.host, port=args.port, access_log=False, timeout_graceful_shutdown=30, log_level="warning"
    )
    DrainingServer(config, app.state.server, args.drain_seconds).run()


if __name__ == "__main__":
    main()
