"""An Inference Endpoints handler for an MS-EmoBoost checkpoint: `save_pretrained` writes this file into every model
directory, so the directory deploys as a custom Inference Endpoint as it is. It needs what the model's remote code
needs (torch, numpy, transformers) and FFmpeg, which reads the audio.

Requests (JSON, or the audio file itself as the body):

    {"inputs": "<base64 of an audio file>"}                      # any format FFmpeg reads
    {"inputs": [0.0, 0.01, ...], "parameters": {"sampling_rate": 16000}}
    {"inputs": ..., "parameters": {"top_k": 3, "timeline": true, "min_confidence": 0.5}}

Answers, like the audio-classification pipeline's: a list of `{"label", "score"}` (the model's calibrated
probabilities when `train.py` calibrated it: `config.calibration_temperature`), the highest score first
(`top_k` of them; all by default). With `min_confidence` and a top score below it, the list starts with
`{"label": "uncertain", "score": <the top score>}`, then the scores as usual. With `timeline`, one entry per 3 s
segment: `{"start", "end", "label", "score", "scores"}` (seconds; the segment's top label, or "uncertain", and its
`top_k` scores).

    from handler import EndpointHandler
    handler = EndpointHandler("path/to/model")
    handler({"inputs": open("speech.wav", "rb").read()})
"""

import base64
import binascii
import struct
import sys

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

UNCERTAIN = "uncertain"


def float_wav(waveform: np.ndarray, sampling_rate: int) -> bytes:
    """A mono 32-bit float WAV file of `waveform` (for FFmpeg to resample)."""
    data = np.asarray(waveform, dtype="<f4").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 3, 1, sampling_rate,
                         4 * sampling_rate, 4, 32, b"data", len(data))
    return header + data


def read_waveform(inputs, sampling_rate: int, input_sampling_rate: int | None) -> np.ndarray:
    """A mono float32 waveform at `sampling_rate` from audio file bytes, their base64 text, or samples (a list or
    array at `input_sampling_rate`, which defaults to `sampling_rate`). Raises `ValueError` saying what is wrong."""
    from transformers.pipelines.audio_utils import ffmpeg_read  # FFmpeg through a pipe, as the pipelines read audio

    if isinstance(inputs, dict):  # {"array"/"raw": samples, "sampling_rate": rate}, as the pipeline takes
        samples = inputs.get("array", inputs.get("raw"))
        if samples is None:
            raise ValueError('inputs: a dict needs "array" (or "raw") samples and their "sampling_rate".')
        return read_waveform(samples, sampling_rate, inputs.get("sampling_rate", input_sampling_rate))
    if isinstance(inputs, str):
        try:
            inputs = base64.b64decode(inputs, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("inputs: a string must be the base64 text of an audio file.") from None
    if isinstance(inputs, (bytes, bytearray)):
        if not inputs:
            raise ValueError("inputs: the audio is empty (0 bytes).")
        try:
            waveform = ffmpeg_read(bytes(inputs), sampling_rate)
        except ValueError as error:
            raise ValueError(f"inputs: FFmpeg cannot read this audio ({' '.join(str(error).split())[:200]}).") from None
    else:
        waveform = np.asarray(inputs, dtype=np.float32)
        if waveform.ndim != 1:
            raise ValueError(f"inputs: samples must be one channel, a flat list; got shape {waveform.shape}.")
        rate = input_sampling_rate or sampling_rate
        if rate != sampling_rate and waveform.size:
            waveform = ffmpeg_read(float_wav(waveform, int(rate)), sampling_rate)
    if waveform.size == 0:
        raise ValueError("inputs: the audio holds no samples.")
    if not np.isfinite(waveform).all():
        raise ValueError("inputs: the audio holds NaN or infinite samples.")
    return waveform


@torch.no_grad()
def log_probabilities(model, extractor, waveforms: list[np.ndarray], group_mean=None, group_scale=None):
    """The model's calibrated class log-probabilities for each recording, `(num_recordings, num_labels)`, as its
    `forward` gives them in eval mode (the segments' mean, plus the statistics classifier's where the model has one,
    over `config.calibration_temperature`), and each segment's, `(num_segments, num_labels)` (the network's alone,
    over `config.segment_calibration_temperature`), with `segments_per_utterance`."""
    modeling = sys.modules[type(model).__module__]  # the model's own code, wherever it was loaded from
    inputs = extractor(waveforms, sampling_rate=extractor.sampling_rate, return_tensors="pt").to(model.device)
    outputs = model.msemoboost(**inputs)
    segment_logits = model.classifier(outputs.segment_features)
    counts = outputs.segments_per_utterance
    utterance = modeling.average_over_segments(segment_logits.log_softmax(-1), counts)
    if model.statistics_classifier is not None:  # as the model's forward adds it at inference
        if group_mean is not None:
            group_mean, group_scale = group_mean.to(model.device), group_scale.to(model.device)
        utterance = utterance + model.statistics_logits(**inputs, group_mean=group_mean, group_scale=group_scale)
    utterance = calibrated(model, utterance).float().log_softmax(-1)
    segments = calibrated(model, segment_logits, segments=True).float().log_softmax(-1)
    return utterance.cpu(), segments.cpu(), counts.cpu()


def calibrated(model, logits: torch.Tensor, segments: bool = False) -> torch.Tensor:
    """`model.calibrated(logits, segments)`; unchanged for a model whose own code predates calibration (a checkpoint
    saved before it, loaded with its own remote code)."""
    method = getattr(model, "calibrated", None)
    return logits if method is None else method(logits, segments=segments)


def top_label(labels: list[str], probabilities: np.ndarray, min_confidence: float | None = None) -> str:
    """The most probable label, or "uncertain" when its probability is below `min_confidence`."""
    best = int(np.argmax(probabilities))
    return UNCERTAIN if min_confidence is not None and probabilities[best] < min_confidence else labels[best]


def ranked(labels: list[str], probabilities: np.ndarray, top_k: int | None) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[: top_k or len(labels)]
    return [{"label": labels[i], "score": float(probabilities[i])} for i in order]


class EndpointHandler:
    """`EndpointHandler(path)(data)`: the Inference Endpoints custom-handler convention (see the module's docstring)."""

    def __init__(self, path: str = "", device: str | None = None):
        self.model = AutoModelForAudioClassification.from_pretrained(path, trust_remote_code=True)
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        self.extractor = AutoFeatureExtractor.from_pretrained(path, trust_remote_code=True)
        config = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]

    def __call__(self, data: dict) -> list[dict]:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('The request needs "inputs": audio file bytes, their base64 text, or samples.')
        parameters = data.get("parameters") or {}
        unknown = sorted(set(parameters) - {"top_k", "timeline", "min_confidence", "sampling_rate"})
        if unknown:
            raise ValueError(f"Unknown parameters {unknown}: this handler takes top_k, timeline, min_confidence and "
                             f"sampling_rate.")
        top_k, minimum = parameters.get("top_k"), parameters.get("min_confidence")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
        if minimum is not None and not (isinstance(minimum, (int, float)) and 0 <= minimum <= 1):
            raise ValueError(f"min_confidence must be a number from 0 to 1, got {minimum!r}.")
        rate = self.extractor.sampling_rate
        waveform = read_waveform(data["inputs"], rate, parameters.get("sampling_rate"))
        if len(waveform) < self.model.config.min_input_samples:
            raise ValueError(f"inputs: {len(waveform)} samples at {rate} Hz is too short for this model (at least "
                             f"{self.model.config.min_input_samples}).")
        utterance, segments, _ = log_probabilities(self.model, self.extractor, [waveform])
        if parameters.get("timeline"):
            return self.timeline(len(waveform), segments.exp().numpy(), top_k, minimum)
        probabilities = utterance[0].exp().numpy()
        answer = ranked(self.labels, probabilities, top_k)
        if minimum is not None and probabilities.max() < minimum:
            answer.insert(0, {"label": UNCERTAIN, "score": float(probabilities.max())})
        return answer

    def timeline(self, num_samples: int, probabilities: np.ndarray, top_k, minimum) -> list[dict]:
        modeling = sys.modules[type(self.model).__module__]
        starts, lengths, _ = modeling.segment_bounds(torch.tensor([num_samples]), self.model.config.segment_samples)
        rate = self.extractor.sampling_rate
        entries = []
        for start, length, row in zip(starts.tolist(), lengths.tolist(), probabilities, strict=True):
            entries.append({"start": start / rate, "end": (start + length) / rate,
                            "label": top_label(self.labels, row, minimum), "score": float(row.max()),
                            "scores": ranked(self.labels, row, top_k)})
        return entries
