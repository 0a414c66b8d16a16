"""Tiny random MS-EmoBoost models and deterministic audio for the tests."""

import csv
import json
import runpy
from pathlib import Path

import numpy as np
import torch

from msemoboost import MSEmoBoostConfig, MSEmoBoostForSequenceClassification

TINY_CONV = {"conv_dim": (16,) * 7}  # wav2vec2's kernels and strides, narrow channels: 149 frames per 3 s
TINY_BACKBONE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    **TINY_CONV,
}
TINY_GUIDANCE = {
    "lstm_hidden_size": 16,
    "spectrogram_image_size": 64,
    "spectrogram_conv_channels": (8, 16, 16, 16, 16),
    "spectrogram_pool_size": 2,
    "guidance_hidden_size": 8,
}


def tiny_config(model_type: str = "wav2vec2", **overrides) -> MSEmoBoostConfig:
    """A randomly initialised MS-EmoBoost small enough for CPU tests, with the real segment and feature recipe."""
    backbone = {"model_type": model_type, **TINY_BACKBONE}
    if model_type == "data2vec-audio":
        backbone.pop("num_conv_pos_embedding_groups")
    kwargs = {"backbone_config": backbone, **TINY_GUIDANCE, **overrides}
    if "id2label" not in kwargs:
        kwargs.setdefault("num_labels", 4)
    return MSEmoBoostConfig(**kwargs)


def tiny_model(**overrides) -> MSEmoBoostForSequenceClassification:
    torch.manual_seed(0)
    return MSEmoBoostForSequenceClassification(tiny_config(**overrides)).eval()


def save_tiny_classifier(directory: Path, labels: list[str]) -> Path:
    """A tiny model classifying `labels`, saved with its feature extractor as `train.py` saves one: a model folder."""
    from msemoboost import MSEmoBoostFeatureExtractor

    tiny_model(id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}).save_pretrained(directory)
    MSEmoBoostFeatureExtractor().save_pretrained(directory)
    return directory


def speech_like(num_samples: int, seed: int = 0) -> np.ndarray:
    """A deterministic voiced signal: harmonics of a gliding pitch with noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (0.3 * voiced + 0.02 * rng.standard_normal(num_samples)).astype(np.float32)


# train.py arguments for a tiny, fast run on the generated demo corpus.
TINY_TRAIN_ARGS = [
    "--label_column", "emotion",
    "--backbone_config", json.dumps({
        "model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 37, "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
    }),
    "--model_config_overrides", json.dumps({
        "lstm_hidden_size": 8, "lstm_num_layers": 1, "spectrogram_image_size": 64,
        "spectrogram_conv_channels": [8, 8, 8, 8, 8], "spectrogram_pool_size": 2, "guidance_hidden_size": 8,
    }),
    "--freeze_feature_encoder", "false",
    "--learning_rate", "0.001",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "5",
    "--num_train_epochs", "2",
    "--eval_strategy", "epoch",
    "--save_strategy", "epoch",
    "--early_stopping_patience", "3",
    "--logging_strategy", "epoch",
    "--report_to", "none",
    "--dataloader_pin_memory", "false",
    "--disable_tqdm", "true",
    "--seed", "0",
]


def read_csv(path: Path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


def say_and_count_threads(message: str) -> int:
    """A job for `run_in_processes` (tests): prints `message` and returns the job's torch thread count."""
    print(message)
    return torch.get_num_threads()


TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"


def run_train(argv: list[str], callbacks=()) -> dict:
    """train.py's `main(argv, callbacks)`, loaded from the script as `python train.py` runs it (not imported as a
    module); returns its overall results."""
    return runpy.run_path(str(TRAIN_SCRIPT))["main"](argv, callbacks)
