"""The pipeline's steps: preprocess, train, export, evaluate, score.

Each step module holds plain functions over arrays and paths (they never touch
kfp) and a CLI (`python -m components.<step> --help`); `kfp_components` wraps each
step as a KFP v2 component that runs in `TRAIN_IMAGE` and calls the function.
"""
import os

# The image every step runs in on a cluster or under Docker (Dockerfile.train).
TRAIN_IMAGE = os.environ.get("DIGITS_TRAIN_IMAGE", "digit-recognizer-train:latest")
# TensorFlow's C++ start-up chatter (CPU instruction sets, oneDNN) buries the step's own progress.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
