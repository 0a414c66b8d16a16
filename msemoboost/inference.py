"""Running a trained MS-EmoBoost model on recordings: loading, reading audio, batched prediction, per-segment
timelines, frame weights, pooled features and speech enhancement."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from .handler import log_probabilities
from .modeling_msemoboost import average_over_segments, segment_bounds

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".webm")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_classifier(model: str, device: str | None = None):
    """Loads a model directory or Hub id through the Auto classes (with its own code) and its feature extractor.

    Raises `ValueError` naming `model` when it is not a folder or Hub id of an audio classifier."""
    if Path(model).exists() and not (Path(model) / "config.json").is_file():
        raise ValueError(f"--model {model}: not a model folder (it has no config.json).")
    try:
        classifier = AutoModelForAudioClassification.from_pretrained(model, trust_remote_code=True)
        extractor = AutoFeatureExtractor.from_pretrained(model, trust_remote_code=True)
    except (OSError, ValueError, KeyError) as error:
        where = "model folder" if Path(model).exists() else "model folder or reachable Hub model id"
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"--model {model}: cannot load an audio classifier from this {where} ({reason})") from None
    return classifier.to(device or default_device()).eval(), extractor


def pad_batch(waveforms: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Right-pads raw waveforms with zeros, without normalising them: `input_values` (float32) and `attention_mask`
    (int64, 1 on audio), each `(batch_size, longest)`. The intensity model, the pretraining collator and the ONNX
    graph (which normalises inside) take this; the MS-EmoBoost PyTorch model takes its feature extractor's output."""
    longest = max(len(waveform) for waveform in waveforms)
    input_values = torch.zeros(len(waveforms), longest)
    attention_mask = torch.zeros(len(waveforms), longest, dtype=torch.long)
    for row, waveform in enumerate(waveforms):
        input_values[row, : len(waveform)] = torch.from_numpy(waveform)
        attention_mask[row, : len(waveform)] = 1
    return {"input_values": input_values, "attention_mask": attention_mask}


class BadAudioError(ValueError):
    """A recording that cannot be classified; the message names it and says why, in one line."""


def read_audio(source: str | Path | dict, sampling_rate: int, name: str | None = None, min_samples: int = 1) -> np.ndarray:
    """Decodes a file path, or an undecoded `datasets` audio value, with anything FFmpeg reads: resampled to
    `sampling_rate` and downmixed to mono (the mean of the channels). Raises [`BadAudioError`] naming the recording
    when it cannot be decoded, holds NaN/Inf samples or fewer than `min_samples` samples."""
    from .data import audio_problem, decode_audio, decoding_error_reason

    audio = source if isinstance(source, dict) else {"path": str(source), "bytes": None}
    name = name or audio.get("path")
    try:
        waveform = decode_audio(audio, sampling_rate)
    except Exception as error:  # the decoders raise many types; all mean "unreadable"
        raise BadAudioError(f"{name}: cannot be decoded: {decoding_error_reason(error, audio)}") from None
    problem = audio_problem(waveform, min_samples)
    if problem:
        raise BadAudioError(f"{name}: {problem}")
    return waveform


def find_audio_files(inputs: list[str]) -> list[Path]:
    """Files as given, and every audio file (by extension) under the folders given, sorted. An empty folder or a
    missing path is an error."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(path for path in item.rglob("*") if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file())
            if not found:
                raise ValueError(f"No audio files in folder {item} (looked for {', '.join(AUDIO_EXTENSIONS)}).")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise ValueError(f"{item}: no such file or folder.")
    return files


@dataclass
class Prediction:
    """The model's answer for one recording."""

    name: str
    probabilities: np.ndarray  # (num_labels,): utterance-level class probabilities
    segment_probabilities: np.ndarray  # (num_segments, num_labels)
    segment_bounds: np.ndarray  # (num_segments, 2): start and end of each segment's audio, in seconds
    group: str | None = None  # the group (speaker) whose recordings normalised this one's statistics, if any


@torch.no_grad()
def predict(
    classifier, extractor, waveforms: list[np.ndarray], names: list[str], group_mean: torch.Tensor | None = None,
    group_scale: torch.Tensor | None = None,
) -> list[Prediction]:
    """Classifies several recordings in one forward pass: their 3 s segments are batched together.

    The utterance probabilities are the softmax of the model's own `logits` (the mean of segment log-probabilities,
    plus, with `config.utterance_statistics_classifier`, the statistics classifier's, with `config.speaker_normalization`
    of the statistics standardised by `group_mean` and `group_scale` `(num_recordings, num_statistics)` when given,
    see [`group_normalization`]; over `config.calibration_temperature`); the segments' are the network's alone (over
    `config.segment_calibration_temperature`).
    """
    utterance_log_probs, segment_log_probs, counts = log_probabilities(classifier, extractor, waveforms, group_mean,
                                                                       group_scale)
    per_file = torch.split(segment_log_probs, counts.tolist())
    return predictions(names, waveforms, utterance_log_probs.numpy(), [p.numpy() for p in per_file],
                       classifier.config)


@torch.no_grad()
def group_normalization(classifier, extractor, waveforms: list[np.ndarray], groups: list) -> tuple[torch.Tensor, torch.Tensor]:
    """For a model with `config.speaker_normalization`: each recording's `(group_mean, group_scale)`, each
    `(num_recordings, num_statistics)`, over all the recordings of its group (`groups`, one hashable name per
    recording), to pass to [`predict`] (or the model's `forward`) in batches of any size. Recordings of one group
    normalise each other; no labels are used."""
    if not classifier.config.speaker_normalization:
        raise ValueError(
            "This model does not normalise by group (speaker): it was trained without --speaker_normalization, so "
            "grouping recordings would change nothing."
        )
    statistics = []
    for waveform in waveforms:
        inputs = extractor([waveform], sampling_rate=extractor.sampling_rate, return_tensors="pt").to(classifier.device)
        statistics.append(classifier.utterance_statistics(**inputs)[0])
    return classifier.group_normalization(torch.stack(statistics), group_codes(groups))


def group_codes(groups) -> torch.Tensor:
    """Integer ids `(num_utterances,)` of `groups` (speaker names or any hashable values), for `group_ids`."""
    return torch.from_numpy(np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1].reshape(-1).astype(np.int64))


def predictions(names: list[str], waveforms: list[np.ndarray], utterance_log_probs: np.ndarray,
                segment_log_probs: list[np.ndarray], config) -> list[Prediction]:
    """[`Prediction`]s from log-probabilities, `(num_recordings, num_labels)` and per recording `(num_segments,
    num_labels)`, whichever engine computed them (PyTorch here, ONNX Runtime in `msemoboost.export`)."""
    lengths = torch.tensor([len(waveform) for waveform in waveforms])
    starts, segment_lengths, segments_per_utterance = segment_bounds(lengths, config.segment_samples)
    all_bounds = torch.split(torch.stack([starts, starts + segment_lengths], dim=1), segments_per_utterance.tolist())
    found = []
    for name, utterance, segments, bounds in zip(names, utterance_log_probs, segment_log_probs, all_bounds, strict=True):
        probabilities = np.exp(utterance - utterance.max())
        found.append(Prediction(name, probabilities / probabilities.sum(), np.exp(segments),
                                bounds.numpy() / config.sampling_rate))
    return found


@torch.no_grad()
def enhancement_curve(classifier, extractor, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame weights `X_enh` over a whole recording: one value per backbone frame that holds audio.

    Returns `(times, weights)`, both of shape `(num_frames,)`; `times` are frame starts in seconds, increasing (of
    the overlapping last segment, only the frames after the previous segment's end are kept).
    """
    if classifier.msemoboost.enhancement is None:
        raise ValueError("This model has no guidance branches (use_mfcc and use_spectrogram are off): it has no frame weights.")
    rate = extractor.sampling_rate
    inputs = extractor(waveform, sampling_rate=rate, return_tensors="pt").to(classifier.device)
    outputs = classifier.msemoboost(**inputs)
    stride = classifier.config.backbone_frame_stride
    segment_starts, _, _ = classifier.msemoboost.segment_bounds(torch.tensor([len(waveform)]))
    frame_starts = segment_starts[:, None] + torch.arange(outputs.frame_mask.shape[1]) * stride
    # The last segment overlaps the one before it: keep only its frames past what that one covered.
    covered = torch.cat([torch.zeros(1, dtype=torch.long), segment_starts[:-1] + classifier.config.segment_samples])
    keep = outputs.frame_mask.cpu() & (frame_starts >= covered[:, None])
    weights = outputs.enhancement_weights.float().cpu()[keep].numpy()
    return frame_starts[keep].numpy() / rate, weights


@torch.no_grad()
def pooled_features(classifier, extractor, waveforms: list[np.ndarray], baseline: bool = False) -> dict[str, np.ndarray]:
    """Utterance features `(num_utterances, feature_size)` from one forward pass: `"msemoboost"`, the pooled
    `X_enh · X_w`, and with `baseline` also `"baseline"`, the backbone's plain masked mean over frames of the same
    model (each averaged over the utterance's segments)."""
    rate = extractor.sampling_rate
    inputs = extractor(waveforms, sampling_rate=rate, return_tensors="pt").to(classifier.device)
    outputs = classifier.msemoboost(**inputs, output_hidden_states=baseline)
    features = {"msemoboost": outputs.utterance_features.float().cpu().numpy()}
    if baseline:
        if outputs.hidden_states is None:
            raise ValueError("This model has no backbone (use_backbone_features=False): there is no baseline to compare.")
        mask = outputs.frame_mask[..., None].to(outputs.hidden_states[-1].dtype)
        segment_means = (outputs.hidden_states[-1] * mask).sum(1) / mask.sum(1)
        features["baseline"] = average_over_segments(segment_means, outputs.segments_per_utterance).float().cpu().numpy()
    return features


@torch.no_grad()
def enhance(classifier, extractor, waveform: np.ndarray) -> np.ndarray:
    """The speech-enhancement head's output for one recording `(num_samples,)`, on the recording's own scale: its
    clean-magnitude estimate with the input's phase, the feature extractor's normalisation undone."""
    rate = extractor.sampling_rate
    inputs = extractor(waveform, sampling_rate=rate, return_tensors="pt").to(classifier.device)
    enhanced = classifier.enhance(inputs["input_values"], inputs.get("attention_mask"))[0].float().cpu().numpy()
    if getattr(extractor, "do_normalize", False):
        audio = np.asarray(waveform, dtype=np.float32)
        enhanced = enhanced * np.sqrt(audio.var() + 1e-7) + audio.mean()
    return enhanced[: len(waveform)]
