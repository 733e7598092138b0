"""What the pipeline's steps and the model server share: the error of bad input, Kaggle's CSV format, the ONNX
model's names and its onnxruntime session.

Nothing here imports TensorFlow or pandas: the serve image holds numpy and onnxruntime only.
"""
