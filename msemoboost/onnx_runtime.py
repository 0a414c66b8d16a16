"""Running a graph written by `msemoboost export` with ONNX Runtime on CPU (`msemoboost predict --onnx DIR`).

Needs `onnxruntime` (`pip install 'msemoboost[onnx]'`); the package imports without it.
"""

import importlib
from pathlib import Path

import numpy as np

from .configuration_msemoboost import MSEmoBoostConfig

ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
INPUT_NAMES = ["input_values", "attention_mask"]
OUTPUT_NAMES = ["logits", "segment_logits", "segments_per_utterance"]


class ONNXClassifier:
    """An exported model run by ONNX Runtime on CPU, with the PyTorch classifier's inputs and outputs.

    Args:
        directory: a folder written by [`export`].
        int8: run `model.int8.onnx` rather than `model.onnx`.
        threads: ONNX Runtime's intra-op threads (default: its own choice).
    """

    def __init__(self, directory: str | Path, int8: bool = False, threads: int | None = None):
        onnxruntime = require("onnxruntime")
        directory = Path(directory)
        path = directory / (INT8_NAME if int8 else ONNX_NAME)
        if not path.is_file():
            hint = " Export it with --quantize int8." if int8 and (directory / ONNX_NAME).is_file() else ""
            raise ValueError(f"--onnx {directory}: no {path.name} in this folder (write one with msemoboost export).{hint}")
        self.config = MSEmoBoostConfig.from_pretrained(directory)
        self.sampling_rate = self.config.sampling_rate
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, waveforms: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Raw mono waveforms at `sampling_rate` → utterance `logits` `(batch_size, num_labels)` and, per
        utterance, its segments' log-probabilities `(num_segments, num_labels)`."""
        from .inference import pad_batch

        feed = {name: tensor.numpy() for name, tensor in pad_batch(waveforms).items()}
        logits, segment_logits, counts = self.session.run(OUTPUT_NAMES, feed)
        return logits, [rows[:count] for rows, count in zip(segment_logits, counts)]

    def predict(self, waveforms: list[np.ndarray], names: list[str]) -> list:
        """[`~msemoboost.inference.Prediction`]s, as `msemoboost.inference.predict` gives them for PyTorch."""
        from .inference import predictions

        logits, segment_logits = self(waveforms)
        return predictions(names, waveforms, logits, segment_logits, self.config)


def require(module: str):
    """Imports an optional dependency of export, or says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"ONNX export and inference need {module}: pip install 'msemoboost[onnx]'.") from None


__all__ = ["ONNXClassifier"]
