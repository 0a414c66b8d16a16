"""Emotions over time on long recordings: windows of the model's segment length, speech-only (voice activity
detection) or sliding, each classified on its own, and the regions where the label stays the same.

    from msemoboost.inference import load_classifier, predict
    from msemoboost.timeline import speech_timeline, regions
    classifier, extractor = load_classifier("outputs/emodb_cpu/model")
    run = lambda waveforms, names: predict(classifier, extractor, waveforms, names)
    prediction = speech_timeline(run, waveform, "talk.wav", classifier.config)
    regions(prediction, labels)   # [{"start": 0.0, "end": 1.2, "label": "non-speech"}, {"start": 1.2, ...}, ...]

Voice activity comes from Silero VAD (`silero-vad`, the `vad` extra: a 2 MB model shipped inside the package, run
by torch in 30 ms frames), chosen over `webrtcvad` for its accuracy on noisy and emotional speech, and for needing
no compiled extension beyond torch. Each speech region is cut into windows of `config.segment_samples` (the last
one overlapping back, as the model cuts an utterance into segments; a region shorter than a window is one window),
classified in batches, so that memory stays bounded by the batch and the decoded waveform, on a recording of any
length. The gaps between regions are rows labelled `non-speech`, without probabilities (NaN).

A recording's own probabilities, in a timeline, are the mean of its speech windows' probabilities.
"""

import warnings

import numpy as np
import torch

from .handler import UNCERTAIN, top_label
from .inference import Prediction
from .modeling_msemoboost import segment_bounds

NON_SPEECH = "non-speech"
VAD_INSTALL = "pip install 'msemoboost[vad]'"
VAD_SAMPLING_RATES = (8000, 16000)
_vad_model = None


def require_vad():
    """The `silero_vad` module, or an `ImportError` naming the extra to install. Importing it sets torch's threads to
    1 for the whole process; the number it found is put back, so that the emotion model keeps its threads."""
    threads = torch.get_num_threads()
    try:
        import silero_vad
    except ImportError:
        raise ImportError(f"Voice activity detection (--vad) needs silero-vad: {VAD_INSTALL}.") from None
    finally:
        torch.set_num_threads(threads)
    return silero_vad


def speech_regions(waveform: np.ndarray, sampling_rate: int, threshold: float = 0.5, min_speech_s: float = 0.25,
                   min_silence_s: float = 0.3) -> list[tuple[int, int]]:
    """The speech regions of `waveform` `(num_samples,)` as `(start, end)` sample indices, by Silero VAD: frames
    whose speech probability is above `threshold`, regions shorter than `min_speech_s` dropped, gaps shorter than
    `min_silence_s` bridged (its `get_speech_timestamps` defaults but the silence, 0.3 s rather than 0.1 s, so that
    a pause between words does not cut a window)."""
    global _vad_model
    silero_vad = require_vad()
    if sampling_rate not in VAD_SAMPLING_RATES:
        raise ValueError(f"Silero VAD takes 8 or 16 kHz audio; this model's rate is {sampling_rate} Hz.")
    if _vad_model is None:
        with warnings.catch_warnings():  # its TorchScript file: torch.jit.load's FutureWarning is the package's
            warnings.simplefilter("ignore", FutureWarning)
            _vad_model = silero_vad.load_silero_vad()
    stamps = silero_vad.get_speech_timestamps(torch.from_numpy(np.asarray(waveform, dtype=np.float32)), _vad_model,
                                   sampling_rate=sampling_rate, threshold=threshold,
                                   min_speech_duration_ms=int(min_speech_s * 1000),
                                   min_silence_duration_ms=int(min_silence_s * 1000))
    return [(int(stamp["start"]), int(stamp["end"])) for stamp in stamps]


def region_windows(regions: list[tuple[int, int]], window: int) -> np.ndarray:
    """`(num_windows, 2)` start and end samples of the windows covering each region, as the model cuts an utterance
    into segments (`segment_bounds`)."""
    bounds = []
    for start, end in regions:
        starts, lengths, _ = segment_bounds(torch.tensor([end - start]), window)
        bounds += [(start + s, start + s + n) for s, n in zip(starts.tolist(), lengths.tolist())]
    return np.asarray(bounds, dtype=np.int64).reshape(-1, 2)


def sliding_windows(num_samples: int, window: int, hop: int) -> np.ndarray:
    """`(num_windows, 2)` start and end samples of the windows that end every `hop` samples (and at the end of the
    recording, if that is not on a hop), each the last `window` samples before its end (fewer at the start): what
    `msemoboost stream` classifies as the audio arrives."""
    if hop < 1:
        raise ValueError(f"The hop must be at least one sample, got {hop}.")
    ends = list(range(hop, num_samples + 1, hop))
    if not ends or ends[-1] != num_samples:
        ends.append(num_samples)
    return np.asarray([(max(0, end - window), end) for end in ends], dtype=np.int64).reshape(-1, 2)


def classify_windows(run, waveform: np.ndarray, bounds: np.ndarray, name: str, batch_size: int = 8) -> np.ndarray:
    """Each window `waveform[start:end]` classified on its own (`run(waveforms, names)` gives [`Prediction`]s, e.g.
    `msemoboost.inference.predict` or an ONNX engine's): its segment probabilities, `(num_windows, num_labels)`."""
    rows = []
    for first in range(0, len(bounds), batch_size):
        part = bounds[first : first + batch_size]
        windows = [waveform[start:end] for start, end in part]
        names = [f"{name} [{start}:{end}]" for start, end in part]
        rows += [prediction.segment_probabilities[0] for prediction in run(windows, names)]
    return np.asarray(rows)


def timeline_prediction(name: str, windows: np.ndarray, probabilities: np.ndarray, num_samples: int,
                        sampling_rate: int, num_labels: int) -> Prediction:
    """A [`Prediction`] whose segments are `windows` `(num_windows, 2)` with their `probabilities`, and the gaps
    between them as rows of NaN (non-speech); its own probabilities the windows' mean (NaN without any window)."""
    rows, bounds, position = [], [], 0
    for (start, end), row in zip(windows.tolist(), probabilities, strict=True):
        if start > position:
            rows.append(np.full(num_labels, np.nan))
            bounds.append((position, start))
        rows.append(row)
        bounds.append((start, end))
        position = max(position, end)
    if position < num_samples:
        rows.append(np.full(num_labels, np.nan))
        bounds.append((position, num_samples))
    mean = probabilities.mean(0) if len(probabilities) else np.full(num_labels, np.nan)
    return Prediction(name, mean, np.asarray(rows).reshape(-1, num_labels), np.asarray(bounds, float) / sampling_rate)


def speech_timeline(run, waveform: np.ndarray, name: str, config, batch_size: int = 8, **vad_options) -> Prediction:
    """The speech-only timeline of one recording: Silero VAD's speech regions ([`speech_regions`]) in windows of
    `config.segment_samples` ([`region_windows`]), each classified on its own; non-speech between them."""
    regions_found = speech_regions(waveform, config.sampling_rate, **vad_options)
    windows = region_windows(regions_found, config.segment_samples)
    windows = windows[(windows[:, 1] - windows[:, 0]) >= config.min_input_samples]
    probabilities = classify_windows(run, waveform, windows, name, batch_size)
    return timeline_prediction(name, windows, probabilities.reshape(len(windows), config.num_labels), len(waveform),
                               config.sampling_rate, config.num_labels)


def sliding_timeline(run, waveform: np.ndarray, name: str, config, hop_s: float, batch_size: int = 8) -> Prediction:
    """The timeline of windows ending every `hop_s` seconds ([`sliding_windows`]), as `msemoboost stream` gives it."""
    windows = sliding_windows(len(waveform), config.segment_samples, int(round(hop_s * config.sampling_rate)))
    windows = windows[(windows[:, 1] - windows[:, 0]) >= config.min_input_samples]
    probabilities = classify_windows(run, waveform, windows, name, batch_size)
    return Prediction(name, probabilities.mean(0), probabilities, windows / config.sampling_rate)


def segment_label(labels: list[str], probabilities: np.ndarray, min_confidence: float | None = None) -> str:
    """A timeline row's label: `non-speech` for a gap (NaN probabilities), else the top label or `uncertain`."""
    if np.isnan(probabilities).all():
        return NON_SPEECH
    return top_label(labels, probabilities, min_confidence)


def regions(prediction: Prediction, labels: list[str], min_confidence: float | None = None) -> list[dict]:
    """Adjacent rows of a timeline with the same label merged: `{"start", "end", "label"}` in seconds, in order,
    not overlapping (a window that overlaps the one before it with another label starts where that one ends)."""
    merged = []
    for (start, end), row in zip(prediction.segment_bounds.tolist(), prediction.segment_probabilities):
        label = segment_label(labels, row, min_confidence)
        if merged and start <= merged[-1]["end"] + 1e-9 and (merged[-1]["label"] == label or end <= merged[-1]["end"]):
            merged[-1]["end"] = max(merged[-1]["end"], end)
        elif merged and start < merged[-1]["end"]:  # a window overlapping the previous one starts where that ends
            merged.append({"start": merged[-1]["end"], "end": float(end), "label": label})
        else:
            merged.append({"start": float(start), "end": float(end), "label": label})
    return merged


__all__ = ["NON_SPEECH", "UNCERTAIN", "regions", "sliding_timeline", "speech_regions", "speech_timeline"]
