"""Augmentation for training: speed perturbation and SpecAugment-style time masking of each waveform, and mixup of
whole batches.

All act on the waveform (mixup on the padded batch the feature extractor returns), so the backbone, the MFCC and the
spectrogram all see the same augmented audio. They are recipe options for small corpora, not part of the paper.

- **Speed perturbation** (Ko et al., Interspeech 2015, as Kaldi's 0.9/1.0/1.1 recipe): the utterance is resampled by a
  factor drawn uniformly from `speed_range`, which changes tempo and pitch together (`y(t) = x(factor * t)`, so the
  length becomes `length / factor`).
- **Time masking** (SpecAugment's time masks, on the waveform): `num_time_masks` spans of up to `time_mask_max_s`
  seconds, each at a uniformly drawn place, are set to zero.
- **Telephone channel**: 8 kHz, 300–3,400 Hz, μ-law (G.711), then back to the model's rate ([`telephone_band`]),
  for models that will hear calls.
- **Mixup** (Zhang et al., ICLR 2018): each utterance of a batch is mixed with another of the same batch, `λ x_i +
  (1 - λ) x_j`, and so are their one-hot labels, with one `λ ~ Beta(alpha, alpha)` per batch.
"""

import numpy as np
import torch


def check_waveform_augmentation(speed_range, speed_probability: float, num_time_masks: int, time_mask_max_s: float) -> None:
    """Raises `ValueError` for settings [`WaveformAugmentation`] cannot use."""
    if speed_range is not None and (len(speed_range) != 2 or not 0 < speed_range[0] <= speed_range[1]):
        raise ValueError(f"speed perturbation takes a range LOW HIGH with 0 < LOW <= HIGH, e.g. 0.9 1.1; got {list(speed_range)}.")
    if not 0 <= speed_probability <= 1:
        raise ValueError(f"speed perturbation probability must be in [0, 1], got {speed_probability}.")
    if num_time_masks < 0 or not time_mask_max_s > 0:
        raise ValueError(
            f"time masking needs num_time_masks >= 0 and time_mask_max_s > 0, got {num_time_masks} and {time_mask_max_s}."
        )


class WaveformAugmentation:
    """A callable `(waveform, row) -> waveform` for [`~msemoboost.data.AudioCollator`].

    Args:
        sampling_rate (`int`): rate of the waveforms.
        speed_range (`tuple[float, float]`, *optional*): speed factors to draw from, e.g. `(0.9, 1.1)`; `None` is off.
        speed_probability (`float`): probability of perturbing the speed of an utterance.
        num_time_masks (`int`): zeroed spans per utterance (0 is off).
        time_mask_max_s (`float`): longest span, in seconds; no span covers more than a tenth of the utterance.
        seed (`int`): seeds the draws; the same seed gives the same augmented stream.
        min_samples (`int`): a perturbed utterance never becomes shorter than this (the model's shortest input).
    """

    def __init__(
        self,
        sampling_rate: int,
        speed_range: tuple[float, float] | None = None,
        speed_probability: float = 1.0,
        num_time_masks: int = 0,
        time_mask_max_s: float = 0.1,
        seed: int = 0,
        min_samples: int = 1,
    ):
        check_waveform_augmentation(speed_range, speed_probability, num_time_masks, time_mask_max_s)
        self.sampling_rate = sampling_rate
        self.speed_range = tuple(speed_range) if speed_range else None
        self.speed_probability = speed_probability
        self.num_time_masks = num_time_masks
        self.time_mask_max = int(time_mask_max_s * sampling_rate)
        self.min_samples = min_samples
        self.rng = np.random.default_rng(seed)

    @property
    def is_active(self) -> bool:
        return self.speed_range is not None or self.num_time_masks > 0

    def change_speed(self, waveform: np.ndarray, factor: float) -> np.ndarray:
        """`y[n] = x(factor * n)` by linear interpolation: `(num_samples,)` → `(round(num_samples / factor),)`."""
        length = max(round(len(waveform) / factor), min(self.min_samples, len(waveform)))
        positions = np.arange(length) * ((len(waveform) - 1) / max(length - 1, 1))
        return np.interp(positions, np.arange(len(waveform)), waveform).astype(np.float32)

    def __call__(self, waveform: np.ndarray, row: dict | None = None) -> np.ndarray:
        waveform = np.asarray(waveform, dtype=np.float32)
        if self.speed_range is not None and self.rng.random() < self.speed_probability:
            waveform = self.change_speed(waveform, self.rng.uniform(*self.speed_range))
        if self.num_time_masks:
            waveform = waveform.copy()
            longest = min(self.time_mask_max, len(waveform) // 10)
            for _ in range(self.num_time_masks):
                width = int(self.rng.integers(0, longest + 1))
                start = int(self.rng.integers(0, len(waveform) - width + 1))
                waveform[start : start + width] = 0.0
        return waveform


TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
MU_LAW_MU = 255


def telephone_band(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    """`waveform` `(num_samples,)` as a narrowband telephone line carries it, back at `sampling_rate`: resampled to
    8 kHz (scipy's polyphase filter), band-passed to 300–3,400 Hz (4th-order Butterworth, causal, as a channel
    is), companded by μ-law with 8-bit codes (μ = 255, G.711's law in its continuous form), decoded and resampled back.
    The length is kept. Needs scipy (the `train` extra)."""
    from math import gcd

    try:
        from scipy.signal import butter, resample_poly, sosfilt
    except ImportError:
        raise ImportError("The telephone channel needs scipy: pip install 'msemoboost[train]'.") from None
    waveform = np.asarray(waveform, dtype=np.float64)
    common = gcd(sampling_rate, TELEPHONE_RATE)
    narrow = resample_poly(waveform, TELEPHONE_RATE // common, sampling_rate // common)
    narrow = sosfilt(butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=TELEPHONE_RATE, output="sos"), narrow)
    companded = np.sign(narrow) * np.log1p(MU_LAW_MU * np.abs(np.clip(narrow, -1, 1))) / np.log1p(MU_LAW_MU)
    codes = np.round((companded + 1) / 2 * 255)  # 8 bits
    decoded = codes / 255 * 2 - 1
    narrow = np.sign(decoded) * np.expm1(np.abs(decoded) * np.log1p(MU_LAW_MU)) / MU_LAW_MU
    wide = resample_poly(narrow, sampling_rate // common, TELEPHONE_RATE // common)
    return np.pad(wide, (0, max(0, len(waveform) - len(wide))))[: len(waveform)].astype(np.float32)


class TelephoneAugmentation:
    """A callable `(waveform, row) -> waveform` for [`~msemoboost.data.AudioCollator`]: with `probability`, the
    utterance through [`telephone_band`] (`train.py --telephone_augmentation P`)."""

    def __init__(self, sampling_rate: int, probability: float, seed: int = 0):
        if not 0 <= probability <= 1:
            raise ValueError(f"--telephone_augmentation is a probability per utterance, from 0 to 1; got {probability}.")
        self.sampling_rate, self.probability = sampling_rate, probability
        self.rng = np.random.default_rng(seed)

    def __call__(self, waveform: np.ndarray, row: dict | None = None) -> np.ndarray:
        if self.rng.random() < self.probability:
            return telephone_band(waveform, self.sampling_rate)
        return waveform


class Chain:
    """Applies `(waveform, row) -> waveform` callables in order (e.g. waveform augmentation, then noise)."""

    def __init__(self, *steps):
        self.steps = [step for step in steps if step is not None]

    def __call__(self, waveform: np.ndarray, row: dict | None = None) -> np.ndarray:
        for step in self.steps:
            waveform = step(waveform, row)
        return waveform


class BatchMixup:
    """Mixup of a padded training batch, for [`~msemoboost.data.AudioCollator`]: a callable `batch -> batch`.

    One weight `λ ~ Beta(alpha, alpha)` and one permutation `π` of the batch are drawn per call. Then
    `input_values` (and `clean_input_values`, the speech-enhancement target, so that it stays the clean part of the
    mixture) become `λ x + (1 - λ) x[π]` `(batch_size, num_samples)`, the `attention_mask` the union of the two
    utterances' masks, and `labels` the class probabilities `λ onehot(y) + (1 - λ) onehot(y[π])` `(batch_size,
    num_labels)`, which the model's loss takes as soft targets. A `class_mask` (the classes of each utterance's
    corpus) becomes the union of the two utterances' masks.

    Args:
        alpha (`float`): the Beta distribution's parameter, > 0 (0.2–0.4 are usual; small values mix little).
        num_labels (`int`): the number of classes.
        seed (`int`): seeds the draws; the same seed gives the same mixed stream.
    """

    def __init__(self, alpha: float, num_labels: int, seed: int = 0):
        if not alpha > 0:
            raise ValueError(f"mixup needs alpha > 0 (0 turns it off), got {alpha}.")
        if num_labels < 2:
            raise ValueError(f"mixup needs at least 2 classes, got num_labels={num_labels}.")
        self.alpha = alpha
        self.num_labels = num_labels
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict) -> dict:
        labels = batch["labels"]
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f"mixup mixes class indices of shape (batch_size,), got shape {tuple(labels.shape)} of dtype {labels.dtype}.")
        weight = float(self.rng.beta(self.alpha, self.alpha))
        permutation = torch.from_numpy(self.rng.permutation(len(labels)))
        mixed = dict(batch)
        for key in ("input_values", "clean_input_values"):
            if key in batch:
                mixed[key] = weight * batch[key] + (1 - weight) * batch[key][permutation]
        if "attention_mask" in batch:
            mixed["attention_mask"] = torch.maximum(batch["attention_mask"], batch["attention_mask"][permutation])
        if "class_mask" in batch:
            mixed["class_mask"] = batch["class_mask"] | batch["class_mask"][permutation]
        one_hot = torch.nn.functional.one_hot(labels, self.num_labels).float()
        mixed["labels"] = weight * one_hot + (1 - weight) * one_hot[permutation]
        return mixed
