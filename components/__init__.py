"""The pipeline's steps: preprocess, train, export, evaluate, score.

Each step module holds plain functions over arrays and paths (they never touch
kfp) and a CLI (`python -m components.<step> --help`); `kfp_components` wraps each
step as a KFP v2 component that runs in the training image and calls the function.
"""

import os

# TensorFlow's C++ start-up chatter (CPU instruction sets, oneDNN) buries the step's own progress.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
