"""python -m serving --model runs/latest/model.onnx [--host 127.0.0.1] [--port 8080]

`--model` may name a folder: its model.onnx, or its only file (KServe's /mnt/models).
"""
import argparse

import uvicorn

from serving.app import configure_logging, create_app


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving", description="Serve the digit model over HTTP (KServe V2 protocol, /predict, a drawing page at /).")
    parser.add_argument("--model", required=True, help="the ONNX model (model.onnx or model.int8.onnx from export), or a folder holding it")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument("--model-name", default="digit-recognizer", help="the name in /v2/models/{name} (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="images per onnxruntime call at most (default: %(default)s)")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="how long a batch waits for more requests (default: %(default)s)")
    parser.add_argument("--max-images", type=int, default=1024, help="images per request at most (default: %(default)s)")
    parser.add_argument("--max-body-mb", type=float, default=8.0, help="request body size limit in MB (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: 0, one per core)")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false", help="do not log each request")
    args = parser.parse_args(argv)
    configure_logging(args.access_log)
    app = create_app(args.model, name=args.model_name, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                     max_images=args.max_images, max_body_bytes=int(args.max_body_mb * 1024 * 1024), threads=args.threads)
    # uvicorn stops accepting on SIGTERM/SIGINT and lets in-flight requests finish (up to 30 s).
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, timeout_graceful_shutdown=30,
                log_level="warning")


if __name__ == "__main__":
    main()
