"""The tiny models that the ONNX export tests save, export and compare with PyTorch."""

from pathlib import Path

import numpy as np
import torch

from msemoboost import MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification
from tiny import tiny_model

LABELS = ["angry", "happy", "neutral", "sad"]
# The CPU recipe's options, so the graph covers standardised and pooled MFCC, mean-residual frame weights and the
# classifier on [X'_w ; guidance]; and the recipe option pooled_normalization (batch norm at inference). Segments
# go through 2 at a time, so the graph's front end takes several Scan steps, the last one padded.
RECIPE = {"frame_weighting": "mean_residual", "classifier_input": "pooled_and_guidance",
          "mfcc_normalization": "standardize", "mfcc_pool_frames": 10, "pooled_normalization": "batch_norm",
          "segment_chunk_size": 2}
# Most of an export's time is the exporter propagating shapes through the Bi-LSTM: with no shape rule for
# aten.lstm, it runs the LSTM's decomposition on fake tensors, one MFCC frame at a time (301 frames a segment at the
# default hop of 160). The tests of backbones, ablations and errors check translation and parity, which do not
# depend on the MFCC frame rate: at hop 480 (101 frames) an export takes a third of the time. The recipe's own
# graph (test_export.py's `exported`) keeps the default hop.
FEWER_MFCC_FRAMES = {"mfcc_hop_length": 480}


def save_model(directory: Path, **overrides) -> Path:
    """Saves a tiny random classifier over `LABELS` with its feature extractor in `directory`."""
    model = tiny_model(id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
                       **overrides)
    if model.msemoboost.enhancement is not None:  # mean_residual starts at zero: give the frame weights a shape
        with torch.no_grad():
            model.msemoboost.enhancement.projection.weight.normal_(0.0, 0.5)
    if model.statistics_classifier is not None:  # a fitted statistics classifier's buffers: not uniform
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            model.statistics_classifier.mean.normal_(0.0, 1.0, generator=generator)
            model.statistics_classifier.scale.uniform_(0.5, 2.0, generator=generator)
            model.statistics_classifier.weight.normal_(0.0, 0.01, generator=generator)
    model.save_pretrained(directory)
    MSEmoBoostFeatureExtractor().save_pretrained(directory)
    return directory


def pytorch_logits(model_dir: Path, waveforms: list[np.ndarray]) -> np.ndarray:
    """The PyTorch path's utterance logits `(len(waveforms), num_labels)` for the model saved in `model_dir`."""
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir).eval()
    extractor = MSEmoBoostFeatureExtractor.from_pretrained(model_dir)
    with torch.no_grad():
        return model(**extractor(waveforms, sampling_rate=16000, return_tensors="pt")).logits.numpy()
