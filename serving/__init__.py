"""A server for the exported ONNX model: KServe's V2 inference protocol over HTTP and gRPC, a /predict
endpoint for images, JSON and CSV, and a page to draw digits on. onnxruntime only: nothing
here imports TensorFlow.
"""
