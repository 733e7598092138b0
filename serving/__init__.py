"""An HTTP server for the exported ONNX model: KServe's V2 inference protocol, a /predict
endpoint for images, JSON and CSV, and a page to draw digits on. onnxruntime only: nothing
here imports TensorFlow.
"""
