"""PyTorch MS-EmoBoost model (Song et al., "MS-EmoBoost: a novel strategy for enhancing self-supervised speech
emotion representations", Scientific Reports 15, 21607, 2025).

Data flow for one utterance, in the order this file defines it:

1. The waveform is cut into 3 s segments; the last one is the final 3 s of audio, overlapping the one before it,
   and only an utterance shorter than 3 s is zero-padded (`MSEmoBoostModel.split_into_segments`).
2. The SSL backbone gives frame features `X_w` of shape `(num_frames, hidden_size)` per segment (eq. 1).
3. The MFCC branch (`MSEmoBoostMFCCEncoder`: Bi-LSTM and residual self-attention, eqs. 2, 4–10) and the spectrogram
   branch (`MSEmoBoostSpectrogramEncoder`: AlexNet features and residual self-attention, eqs. 3–10) each give a
   128-d guidance vector.
4. `MSEmoBoostEnhancement` maps the concatenated guidance to the frame weights `X_enh` (eq. 11), and the segment
   feature is `X_enh · X_w` (eq. 12).
5. `MSEmoBoostForSequenceClassification` classifies each segment with one linear layer (eq. 13) and averages the
   segments' log-probabilities into the utterance's prediction.
6. Optionally (`config.utterance_statistics_classifier`, not in the paper), `MSEmoBoostStatisticsClassifier`
   classifies the whole utterance's MFCC and prosody statistics (with `config.utterance_distribution_statistics`,
   also the shape of their distributions), and its log-probabilities join the utterance's.
7. Optionally (`config.use_se_head`, not in the paper), `MSEmoBoostSpeechEnhancementHead` reads the same frames
   `X_w` and predicts the clean magnitude spectrogram of the segment, for joint SER + speech-enhancement training
   on noisy audio.
"""

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .acoustic_features import (
    MSEmoBoostFrameSTFT,
    MSEmoBoostMFCC,
    MSEmoBoostPowerSpectrogram,
    MSEmoBoostProsody,
    MSEmoBoostSpectrogram,
    pre_emphasis,
)
from .configuration_msemoboost import MSEmoBoostConfig


logger = logging.get_logger(__name__)

# The logit that `class_mask` gives the classes it leaves out: low enough that their softmax probability is exactly 0
# in float32, finite so that a zero target times its log-probability stays 0.
LOGIT_EXCLUDED = -1.0e4

# What `config.prosody_statistics` adds per segment (`MSEmoBoostMFCCEncoder.prosody_statistics`).
NUM_PROSODY_STATISTICS = 9
NUM_PROSODY_DISTRIBUTION_STATISTICS = 11  # config.utterance_distribution_statistics with prosody_statistics
# The dtype of the whole-utterance MFCC's STFT (`MSEmoBoostMFCCEncoder.utterance_statistics`). The MFCC's medians
# and percentiles read the weak bins of the spectrum, which a float32 FFT gets only to a digit or two, and a fitted
# statistics classifier reads them steeply (up to 25 logits per unit): on the CPU preset's trained models two float32
# FFTs (torch.stft's and the ONNX graph's) gave logits up to 2.8e-4 apart, torch.stft's up to 1.6e-4 from exact. In
# float64 every bin is its exact power rounded to float32: 6.9e-5 apart at worst. The prosody's STFT and the segments'
# features, where float64 made no measurable difference, stay float32. It costs the CPU preset's model about 1.2x its
# time; models without the statistics classifier never compute this (BENCHMARKS.md section 4).
UTTERANCE_FFT_DTYPE = torch.float64


@dataclass
class MSEmoBoostModelOutput(ModelOutput):
    """
    Output of [`MSEmoBoostModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(num_segments, num_frames, hidden_size)`, *optional*):
            The backbone's frame features `X_w` of every segment, utterance after utterance (`segments_per_utterance`
            maps them to utterances): its last layer, or the weighted sum of its layers with
            `config.use_weighted_layer_sum`. `None` without a backbone.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, feature_size)`):
            The pooled utterance features (the same tensor as `utterance_features`).
        utterance_features (`torch.FloatTensor` of shape `(batch_size, feature_size)`):
            Enhanced utterance features: the mean of the utterance's segment features. `feature_size` is the
            backbone's `hidden_size`, plus `num_branches * guidance_hidden_size` with
            `classifier_input="pooled_and_guidance"`; the guidance-only model has only the guidance part. With
            `config.classify_statistics`, the standardised statistics of the MFCC branch come last.
        segment_features (`torch.FloatTensor` of shape `(num_segments, feature_size)`):
            The pooled feature `X'_w = X_enh · X_w` of every segment (followed by its guidance vectors with
            `classifier_input="pooled_and_guidance"`, then its statistics with `config.classify_statistics`),
            utterance after utterance.
        enhancement_weights (`torch.FloatTensor` of shape `(num_segments, num_frames)`, *optional*):
            The frame weights `X_enh` of every segment, zero on frames past the end of the audio. `None` when no
            guidance branch or no backbone is used.
        frame_mask (`torch.BoolTensor` of shape `(num_segments, num_frames)`, *optional*):
            `True` on backbone frames that hold audio. `None` without a backbone.
        segments_per_utterance (`torch.LongTensor` of shape `(batch_size,)`):
            How many consecutive rows of the segment tensors belong to each utterance.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The backbone's hidden states, one tensor of shape `(num_segments, num_frames, hidden_size)` per layer
            plus the initial embeddings.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            The backbone's attention weights, one tensor of shape `(num_segments, num_heads, num_frames, num_frames)`
            per layer.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    utterance_features: torch.FloatTensor | None = None
    segment_features: torch.FloatTensor | None = None
    enhancement_weights: torch.FloatTensor | None = None
    frame_mask: torch.BoolTensor | None = None
    segments_per_utterance: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MSEmoBoostSequenceClassifierOutput(ModelOutput):
    """
    Output of [`MSEmoBoostForSequenceClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` or `clean_input_values` is given):
            The training loss: the classification loss (see `classification_loss`), plus
            `config.statistics_loss_weight` times the statistics' own loss with `config.classify_statistics`, plus
            `config.se_loss_weight` times the SE loss when the SE head is on and clean targets are given. For
            single-label classification at `config.loss_level="segment"` (the paper's default) it is the mean
            cross-entropy of the **segments**, not the cross-entropy of the returned utterance `logits`; at
            `"utterance"` it is the latter.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            For each utterance, the mean of its segments' log-probabilities (single-label classification; `softmax`
            gives class probabilities), or the mean of its segments' raw outputs (multi-label classification and
            regression, `config.problem_type`).
        classification_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The classification part of `loss`, returned when the SE loss or the statistics loss is too.
        statistics_loss (`torch.FloatTensor` of shape `()`, *optional*):
            With `config.classify_statistics` and `labels`: the classification loss of the statistics' own logits
            (the classifier's columns for the statistics, and its bias), which `loss` holds times
            `config.statistics_loss_weight`.
        se_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Mean squared error between compressed estimated and clean magnitudes over frames that hold audio,
            returned when the SE head is on and `clean_input_values` is given.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The backbone's hidden states, `(num_segments, num_frames, hidden_size)` per layer.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            The backbone's attention weights, `(num_segments, num_heads, num_frames, num_frames)` per layer.
        segments_per_utterance (`torch.LongTensor` of shape `(batch_size,)`):
            How many consecutive rows of the per-segment tensors (`hidden_states`, `attentions`) belong to each
            utterance.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    classification_loss: torch.FloatTensor | None = None
    statistics_loss: torch.FloatTensor | None = None
    se_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    segments_per_utterance: torch.LongTensor | None = None


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype `module`'s layers compute in: that of its first floating-point parameter, or float32 when it has
    none (layers quantised with `torch.ao.quantization.quantize_dynamic` hold int8 weights and take float32)."""
    return next((parameter.dtype for parameter in module.parameters() if parameter.is_floating_point()), torch.float32)


class MSEmoBoostSelfAttention(nn.Module):
    """Residual single-head self-attention (eqs. 4–10): `X + softmax(Q K^T / sqrt(d)) V`.

    Forward input and output: `hidden_states` of shape `(batch_size, num_tokens, hidden_size)`.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # One head, as a 4-D (batch, heads, tokens, size) call: the form every SDPA kernel and the ONNX exporter take.
        query, key, value = (projection(hidden_states)[:, None] for projection in (self.query, self.key, self.value))
        return hidden_states + F.scaled_dot_product_attention(query, key, value)[:, 0]


def masked_mean_std(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over dim 1 of `values` `(batch, time, channels)`, counting only the steps where
    `mask` `(batch, time, 1)` is 1: two tensors `(batch, channels)`. The deviation is `sqrt(variance + 1e-5)`; a row
    with no step counted gives a mean of 0 (not NaN)."""
    count = mask.sum(1).clamp(min=1)
    mean = (values * mask).sum(1) / count
    variance = ((values - mean[:, None]).square() * mask).sum(1) / count
    return mean, torch.sqrt(variance + 1e-5)


def masked_skewness_kurtosis(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Skewness and excess kurtosis over dim 1 of `values` `(batch, time, channels)`, counting only the steps where
    `mask` `(batch, time, 1)` is 1, as `scipy.stats.skew` and `scipy.stats.kurtosis` compute them (biased moments):
    two tensors `(batch, channels)`. A channel without spread (a constant, or no step counted) gets 0 for both, where
    scipy gives NaN."""
    count = mask.sum(1).clamp(min=1)
    mean = (values * mask).sum(1) / count
    centred = (values - mean[:, None]) * mask
    second = centred.square().sum(1) / count
    third = (centred.square() * centred).sum(1) / count
    fourth = centred.square().square().sum(1) / count
    spread = second > 1e-10 * (mean.square() + 1)  # above float32 rounding of a constant's deviations
    second = torch.where(spread, second, 1.0)
    zero = torch.zeros_like(mean)
    return (torch.where(spread, third / second.pow(1.5), zero), torch.where(spread, fourth / second.square() - 3, zero))


def masked_quantiles(values: torch.Tensor, mask: torch.Tensor, quantiles: tuple[float, ...]) -> list[torch.Tensor]:
    """The `quantiles` (each in [0, 1]) over dim 1 of `values` `(batch, time, channels)`, counting only the steps
    where `mask` `(batch, time, 1)` is 1, as `numpy.quantile` computes them (linear interpolation between the
    nearest ranks): one tensor `(batch, channels)` per quantile. A row with no step counted gives 0."""
    count = mask.sum(1)  # (batch, 1)
    ordered = values.masked_fill(mask == 0, torch.inf).sort(dim=1).values  # the counted steps first, ascending
    last = (count - 1).clamp(min=0)
    results = []
    for quantile in quantiles:
        position = quantile * last
        low = position.floor()
        high = torch.minimum(low + 1, last)
        lower = ordered.gather(1, low.long()[:, None].expand(-1, 1, values.shape[-1]))[:, 0]
        upper = ordered.gather(1, high.long()[:, None].expand(-1, 1, values.shape[-1]))[:, 0]
        value = lower + (upper - lower) * (position - low)
        results.append(torch.where(count > 0, value, torch.zeros_like(value)))
    return results


def masked_slope(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The slope of the least-squares straight line through the counted steps of `values` `(batch, time,
    channels)` (those where `mask` `(batch, time, 1)` is 1), against their ranks rescaled to [-1, 1]: `(batch,
    channels)`, half the fitted line's change from the first counted step to the last. 0 with fewer than two steps."""
    count = mask.sum(1, keepdim=True)  # (batch, 1, 1)
    rank = mask.cumsum(1) - 1
    time = (2 * rank / (count - 1).clamp(min=1) - 1) * mask * (count > 1).to(mask.dtype)
    mean = (values * mask).sum(1) / count[:, 0].clamp(min=1)
    return (time * (values - mean[:, None])).sum(1) / time.square().sum(1).clamp(min=1e-9)


class MSEmoBoostPooledNormalization(nn.BatchNorm1d):
    """Standardises each dimension of a per-segment feature: the pooled SSL feature `X'_w`
    (`config.pooled_normalization="batch_norm"`) or the MFCC statistics (`config.mfcc_statistics`). Batch statistics
    while training, their running averages at inference, no learned scale or shift.

    Forward input and output: `(num_segments, hidden_size)`.
    """

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, affine=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training and pooled.shape[0] < 2:  # one segment has no batch statistics: use the running ones
            return F.batch_norm(pooled, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(pooled)


class MSEmoBoostMFCCEncoder(nn.Module):
    """MFCC guidance branch: MFCC → L2 norm over coefficients (or per-coefficient standardisation) → Bi-LSTM →
    residual self-attention → (optional average pool over time) → flatten → dropout → linear → ReLU.

    With `config.mfcc_statistics`, the segment's MFCC statistics (per coefficient: the mean and standard deviation
    over the frames that hold audio, and the standard deviation of the frame-to-frame change; `3 * num_mfcc` values,
    batch-standardised) join the flattened Bi-LSTM output before the dropout: the levels and spreads that
    standardisation removes from the Bi-LSTM's input, the functionals a classical SVM recipe is built on. With
    `config.prosody_statistics`, the segment's 9 pitch, voicing and energy statistics (`prosody_statistics`) join
    them, standardised the same way.

    Forward inputs: pre-emphasised segments of shape `(num_segments, segment_samples)` and their lengths in samples
    `(num_segments,)`.
    Forward output: guidance vectors of shape `(num_segments, guidance_hidden_size)`.
    """

    def __init__(self, config: MSEmoBoostConfig):
        super().__init__()
        self.mfcc = MSEmoBoostMFCC(config)
        self.normalization = config.mfcc_normalization
        self.hop_length = config.mfcc_hop_length
        self.lstm = nn.LSTM(
            input_size=config.num_mfcc,
            hidden_size=config.lstm_hidden_size,
            num_layers=config.lstm_num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.lstm_dropout if config.lstm_num_layers > 1 else 0.0,
        )
        lstm_output_size = 2 * config.lstm_hidden_size
        self.attention = MSEmoBoostSelfAttention(lstm_output_size) if config.use_attention else None
        self.pool = nn.AdaptiveAvgPool1d(config.mfcc_pool_frames) if config.mfcc_pool_frames else None
        self.dropout = nn.Dropout(config.guidance_dropout)
        num_steps = config.mfcc_pool_frames or config.num_mfcc_frames
        self.mfcc_statistics = config.mfcc_statistics
        self.prosody = MSEmoBoostProsody(config) if config.prosody_statistics else None
        self.segment_samples = config.segment_samples
        self.voicing_threshold = config.voicing_threshold
        self.voicing_floor_db = config.voicing_floor_db
        self.energy_floor_db = config.energy_floor_db
        self.num_statistics = (
            3 * config.num_mfcc * config.mfcc_statistics + NUM_PROSODY_STATISTICS * config.prosody_statistics
        )
        self.statistics_normalization = (
            MSEmoBoostPooledNormalization(self.num_statistics) if self.num_statistics else None
        )
        self.distribution_statistics = config.utterance_distribution_statistics
        self.num_utterance_statistics = self.num_statistics + config.utterance_distribution_statistics * (
            6 * config.num_mfcc * config.mfcc_statistics
            + NUM_PROSODY_DISTRIBUTION_STATISTICS * config.prosody_statistics
        )
        self.projection = nn.Linear(num_steps * lstm_output_size + self.num_statistics, config.guidance_hidden_size)

    def frame_mask(self, mfcc: torch.Tensor, lengths: torch.LongTensor) -> torch.Tensor:
        """`(num_segments, num_mfcc_frames, 1)`: 1 for the frames that hold audio, 0 for padding. Frames are centred:
        frame t is centred on sample t * hop, so it holds audio while t * hop < length."""
        frames = torch.arange(mfcc.shape[1], device=mfcc.device)
        return (frames * self.hop_length < lengths[:, None]).to(mfcc.dtype)[..., None]

    def normalize(self, mfcc: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`(num_segments, num_mfcc_frames, num_mfcc)` → the same shape, normalised as `config.mfcc_normalization`."""
        if self.normalization == "l2":
            return F.normalize(mfcc, dim=-1)
        mean, std = masked_mean_std(mfcc, mask)
        return (mfcc - mean[:, None]) / std[:, None] * mask

    def statistics(self, mfcc: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`(num_segments, num_mfcc_frames, num_mfcc)` → `(num_segments, 3 * num_mfcc)`: per coefficient, the mean
        and standard deviation over the frames that hold audio, and the standard deviation of the change between
        consecutive such frames."""
        mean, std = masked_mean_std(mfcc, mask)
        _, delta_std = masked_mean_std(mfcc[:, 1:] - mfcc[:, :-1], mask[:, 1:] * mask[:, :-1])
        return torch.cat([mean, std, delta_std], dim=-1)

    def loud_and_voiced(self, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[`MSEmoBoostProsody`]'s frames `(num_segments, num_frames, 3)` and the `frame_mask` of the frames to count
        → two masks of the same shape as `mask`: the loud frames (within `energy_floor_db` of the loudest counted
        frame) and the voiced ones (voicing strength above `voicing_threshold`, energy within `voicing_floor_db` of
        the loudest)."""
        strength, energy = frames[..., 1:2], frames[..., 2:3]
        loudest = energy.masked_fill(mask == 0, -torch.inf).amax(1, keepdim=True)
        loud = mask * (energy > loudest - self.energy_floor_db).to(mask.dtype)
        voiced = mask * ((strength > self.voicing_threshold) & (energy > loudest - self.voicing_floor_db)).to(mask.dtype)
        return loud, voiced

    def distribution_shape_statistics(
        self, mfcc: torch.Tensor, prosody_frames: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        """The statistics of `config.utterance_distribution_statistics`, `(batch_size, 6 * num_mfcc (with
        mfcc_statistics) + 11 (with prosody_statistics))`, from the MFCC `(batch_size, num_frames, num_mfcc)`, the
        prosody's frames `(batch_size, num_frames, 3)` (or None) and the mask of the frames to count `(batch_size,
        num_frames, 1)`: per MFCC coefficient, its skewness, excess kurtosis, 10th, 50th and 90th percentiles and
        slope over the frames (`masked_slope`); then the 5th, 50th and 95th percentiles of the pitch over voiced
        frames, its 5th-to-95th range and slope, the same three percentiles and the slope of the energy over loud
        frames, and the skewness of the pitch and of the energy (see `loud_and_voiced`)."""
        statistics = []
        if self.mfcc_statistics:
            skewness, kurtosis = masked_skewness_kurtosis(mfcc, mask)
            statistics += [skewness, kurtosis, *masked_quantiles(mfcc, mask, (0.1, 0.5, 0.9)), masked_slope(mfcc, mask)]
        if prosody_frames is not None:
            loud, voiced = self.loud_and_voiced(prosody_frames, mask)
            pitch, energy = prosody_frames[..., :1], prosody_frames[..., 2:3]
            pitch_low, pitch_median, pitch_high = masked_quantiles(pitch, voiced, (0.05, 0.5, 0.95))
            statistics += [pitch_low, pitch_median, pitch_high, pitch_high - pitch_low, masked_slope(pitch, voiced),
                           *masked_quantiles(energy, loud, (0.05, 0.5, 0.95)), masked_slope(energy, loud),
                           masked_skewness_kurtosis(pitch, voiced)[0], masked_skewness_kurtosis(energy, loud)[0]]
        return torch.cat(statistics, dim=-1)

    def prosody_statistics(self, frames: torch.Tensor, mask: torch.Tensor, lengths: torch.LongTensor) -> torch.Tensor:
        """[`MSEmoBoostProsody`]'s frames `(num_segments, num_frames, 3)` (pitch in semitones, voicing strength,
        energy in dB), the `frame_mask` `(num_segments, num_frames, 1)` of the frames that hold audio and the segments'
        lengths in samples → `(num_segments, 9)`: the pitch's mean, standard deviation and frame-to-frame standard
        deviation over voiced frames (consecutive pairs for the last), the mean voicing strength over voiced frames,
        the voiced fraction of the frames that hold audio, the energy's mean, standard deviation and frame-to-frame
        standard deviation over the loud frames (within `energy_floor_db` of the segment's loudest), and the
        fraction of the segment that holds audio. A frame is voiced when it holds audio, its voicing strength
        exceeds `voicing_threshold` and its energy is within `voicing_floor_db` of the loudest. A segment without
        voiced frames gets 0 for the pitch's statistics and the strength."""
        pitch, strength, energy = (frames[..., index : index + 1] for index in range(3))
        loud, voiced = self.loud_and_voiced(frames, mask)
        pairs = voiced[:, 1:] * voiced[:, :-1]
        pitch_mean, pitch_std = masked_mean_std(pitch, voiced)
        _, pitch_change = masked_mean_std(pitch[:, 1:] - pitch[:, :-1], pairs)
        strength_mean, _ = masked_mean_std(strength, voiced)
        energy_mean, energy_std = masked_mean_std(energy, loud)
        _, energy_change = masked_mean_std(energy[:, 1:] - energy[:, :-1], loud[:, 1:] * loud[:, :-1])
        voiced_fraction = voiced.sum(1) / mask.sum(1).clamp(min=1)
        audio_fraction = (lengths.to(frames.dtype) / self.segment_samples)[:, None]
        has_voice = (voiced.sum(1) > 0).to(frames.dtype)  # masked_mean_std's std is sqrt(1e-5) on an empty set
        return torch.cat([pitch_mean, pitch_std * has_voice, pitch_change * (pairs.sum(1) > 0).to(frames.dtype),
                          strength_mean, voiced_fraction, energy_mean, energy_std, energy_change, audio_fraction], dim=-1)

    def segment_statistics(
        self,
        waveform: torch.Tensor,
        mfcc: torch.Tensor,
        mask: torch.Tensor,
        lengths: torch.LongTensor,
        prosody_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The statistics that `config.mfcc_statistics` and `config.prosody_statistics` ask for, side by side, before
        their standardisation: `(num_segments, number of statistics)`, from the segments' waveforms, their MFCC, the
        `frame_mask`, the lengths in samples and, if already computed, the prosody's frames."""
        statistics = [self.statistics(mfcc, mask)] if self.mfcc_statistics else []
        if self.prosody is not None:  # the same frames as the MFCC's: same hop, centred
            if prosody_frames is None:
                prosody_frames = self.prosody(waveform)
            statistics.append(self.prosody_statistics(prosody_frames, mask, lengths))
        return torch.cat(statistics, dim=-1)

    def utterance_statistics(self, waveform: torch.Tensor, lengths: torch.LongTensor) -> torch.Tensor:
        """Pre-emphasised whole utterances `(batch_size, num_samples)`, right-padded, and their lengths in samples
        `(batch_size,)` → the statistics of `segment_statistics` over each whole utterance, before standardisation,
        followed by those of `distribution_shape_statistics` with `config.utterance_distribution_statistics`:
        `(batch_size, num_utterance_statistics)`. They are taken over the frames whose analysis windows lie within
        the utterance (and the first frame, for an utterance shorter than half a window), which do not see the
        padding; the prosody's audio fraction is the utterance's length over one segment's.

        The MFCC's STFT is computed in float64 (`UTTERANCE_FFT_DTYPE`), then rounded to float32."""
        mfcc = self.mfcc(waveform, UTTERANCE_FFT_DTYPE)
        half_window = max(self.mfcc.n_fft, self.prosody.n_fft if self.prosody is not None else 0) // 2
        frames = torch.arange(mfcc.shape[1], device=mfcc.device)
        inside = ((frames * self.hop_length + half_window <= lengths[:, None]) | (frames == 0)).to(mfcc.dtype)[..., None]
        prosody_frames = self.prosody(waveform) if self.prosody is not None else None
        statistics = self.segment_statistics(waveform, mfcc, inside, lengths, prosody_frames)
        if self.distribution_statistics:
            statistics = torch.cat([statistics, self.distribution_shape_statistics(mfcc, prosody_frames, inside)], -1)
        return statistics

    def forward(
        self, waveform: torch.Tensor, lengths: torch.LongTensor, return_statistics: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """With `return_statistics`, also returns the standardised statistics `(num_segments, num_statistics)` that
        joined the projection's input."""
        mfcc = self.mfcc(waveform)
        mask = self.frame_mask(mfcc, lengths)
        hidden_states, _ = self.lstm(self.normalize(mfcc, mask).to(compute_dtype(self)))
        # hidden_states: (num_segments, num_mfcc_frames, 2 * lstm_hidden_size)
        if self.attention is not None:
            hidden_states = self.attention(hidden_states)
        if self.pool is not None:  # (num_segments, mfcc_pool_frames, 2 * lstm_hidden_size)
            hidden_states = self.pool(hidden_states.transpose(1, 2)).transpose(1, 2)
        hidden_states = hidden_states.flatten(1)
        statistics = None
        if self.statistics_normalization is not None:  # (num_segments, flattened size + number of statistics)
            statistics = self.segment_statistics(waveform, mfcc, mask, lengths).to(hidden_states.dtype)
            statistics = self.statistics_normalization(statistics)
            hidden_states = torch.cat([hidden_states, statistics], dim=-1)
        guidance = F.relu(self.projection(self.dropout(hidden_states)))
        if return_statistics:
            if statistics is None:
                raise ValueError("return_statistics=True needs config.mfcc_statistics or config.prosody_statistics.")
            return guidance, statistics
        return guidance


class MSEmoBoostSpectrogramEncoder(nn.Module):
    """Spectrogram guidance branch: log spectrogram image → resize → ImageNet normalisation (3 channels) → AlexNet
    features → adaptive average pool → residual self-attention over the pooled cells → flatten → dropout → linear →
    ReLU.

    `features` has the layout and parameter names of torchvision's `alexnet().features`, so ImageNet weights load
    into it unchanged (see `msemoboost.load_imagenet_alexnet`).

    Forward input: pre-emphasised segments of shape `(num_segments, segment_samples)`.
    Forward output: guidance vectors of shape `(num_segments, guidance_hidden_size)`.
    """

    def __init__(self, config: MSEmoBoostConfig):
        super().__init__()
        self.spectrogram = MSEmoBoostSpectrogram(config)
        # Resize like torchvision's `Resize(image_size)`: the short side becomes `image_size`, the aspect ratio stays.
        height, width = config.spectrogram_num_bins, config.num_spectrogram_frames
        short, long = min(height, width), max(height, width)
        long = int(config.spectrogram_image_size * long / short)
        self.image_size = (config.spectrogram_image_size, long) if height <= width else (long, config.spectrogram_image_size)
        self.image_mean = tuple(config.image_mean)
        self.image_std = tuple(config.image_std)

        conv1, conv2, conv3, conv4, conv5 = config.spectrogram_conv_channels
        self.features = nn.Sequential(
            nn.Conv2d(3, conv1, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(conv1, conv2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(conv2, conv3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(conv3, conv4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(conv4, conv5, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(config.spectrogram_pool_size)
        self.attention = MSEmoBoostSelfAttention(conv5) if config.use_attention else None
        self.dropout = nn.Dropout(config.guidance_dropout)
        self.projection = nn.Linear(config.spectrogram_pool_size**2 * conv5, config.guidance_hidden_size)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        image = self.spectrogram(waveform)[:, None]  # (num_segments, 1, num_bins, num_frames)
        image = F.interpolate(image, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        mean = image.new_tensor(self.image_mean).view(1, 3, 1, 1)
        std = image.new_tensor(self.image_std).view(1, 3, 1, 1)
        image = ((image - mean) / std).to(compute_dtype(self))  # grey image copied to 3 channels
        # Channels-last layout: the same convolutions, about a third faster on CPU (oneDNN) and on tensor-core GPUs.
        image = image.contiguous(memory_format=torch.channels_last)
        feature_maps = self.pool(self.features(image))  # (num_segments, conv5, pool_size, pool_size)
        tokens = feature_maps.flatten(2).transpose(1, 2)  # (num_segments, pool_size ** 2, conv5)
        if self.attention is not None:
            tokens = self.attention(tokens)
        return F.relu(self.projection(self.dropout(tokens.flatten(1))))


class MSEmoBoostEnhancement(nn.Module):
    """Fuses the guidance vectors into the frame weights `X_enh` (eq. 11): concatenation → (dropout) → linear → one
    weight per backbone frame, shaped by `config.frame_weighting` (see [`MSEmoBoostConfig`]).

    Forward inputs: guidance of shape `(num_segments, num_branches * guidance_hidden_size)` and `frame_mask`
    `(num_segments, num_frames)`, `True` on frames that hold audio.
    Forward output: `X_enh` of shape `(num_segments, num_frames)`, zero on frames without audio.
    """

    def __init__(self, config: MSEmoBoostConfig, num_branches: int, num_frames: int):
        super().__init__()
        self.weighting = config.frame_weighting
        self.dropout = nn.Dropout(config.guidance_dropout) if self.weighting == "relu" else nn.Identity()
        self.projection = nn.Linear(num_branches * config.guidance_hidden_size, num_frames)
        # With "mean_residual", zero scores make X_enh the masked mean: pooling starts as the backbone-only baseline.
        self.projection.zero_init = self.weighting == "mean_residual"

    def forward(self, guidance: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        scores = self.projection(self.dropout(guidance))
        if self.weighting == "relu":
            return F.relu(scores) * frame_mask
        if self.weighting == "softmax":
            return scores.float().masked_fill(~frame_mask, float("-inf")).softmax(-1).to(scores.dtype)
        if self.weighting == "mean_residual":
            return (1.0 + scores) * frame_mask / frame_mask.sum(-1, keepdim=True)
        return scores * frame_mask


def average_over_segments(values: torch.Tensor, segments_per_utterance: torch.Tensor) -> torch.Tensor:
    """Mean of consecutive rows per utterance: `(num_segments, ...)` → `(batch_size, ...)`."""
    utterance_index = torch.repeat_interleave(
        torch.arange(len(segments_per_utterance), device=values.device), segments_per_utterance
    )
    totals = values.new_zeros((len(segments_per_utterance), *values.shape[1:])).index_add_(0, utterance_index, values)
    counts = segments_per_utterance.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))
    return totals / counts


def checked_class_mask(class_mask: torch.Tensor, targets: torch.Tensor, num_labels: int, smoothing: float) -> torch.Tensor:
    """`class_mask` `(batch_size, num_labels)` as a bool tensor on the device of `targets` (class indices
    `(batch_size,)` or probabilities `(batch_size, num_labels)`), after checking that every target lies in it."""
    batch_size = targets.shape[0]
    if tuple(class_mask.shape) != (batch_size, num_labels):
        raise ValueError(f"class_mask must have shape (batch_size, num_labels) = ({batch_size}, {num_labels}), got {tuple(class_mask.shape)}.")
    if smoothing:
        raise ValueError(
            "class_mask cannot be combined with label smoothing, which spreads probability over every class, "
            "including those the mask leaves out. Set label_smoothing to 0."
        )
    class_mask = class_mask.to(device=targets.device, dtype=torch.bool)
    soft = targets.dim() == 2
    outside = ((targets > 0) & ~class_mask).any(-1) if soft else ~class_mask.gather(1, targets[:, None]).squeeze(1)
    if outside.any():
        raise ValueError(
            f"class_mask leaves out the label of utterance(s) {outside.nonzero()[:, 0].tolist()}: every utterance's "
            "label must be among the classes its mask allows."
        )
    return class_mask


def segment_slots(
    lengths: torch.LongTensor, num_slots: int, segment_samples: int
) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
    """Where each utterance's segments lie, on a grid of `num_slots` slots per utterance.

    An utterance of `L` samples gives `ceil(L / S)` segments of `S = segment_samples`: they start at `0, S, 2S,
    …`, except the last, which starts at `L - S` and so overlaps the one before it (the reference
    code's last window). An utterance shorter than `S` gives one segment holding `L` samples. Slots past an
    utterance's last segment start at `slot * S` and count `S` samples of silence: callers drop them
    ([`segment_bounds`]) or mask them out (the ONNX graph of `msemoboost.export`).

    Args:
        lengths (`torch.LongTensor` of shape `(batch_size,)`): samples of audio in each utterance.
        num_slots (`int`): at least the largest number of segments of any utterance.
        segment_samples (`int`): samples per segment (`config.segment_samples`).

    Returns:
        starts (`torch.LongTensor` of shape `(batch_size, num_slots)`): first sample of each segment;
        segment_lengths (`torch.LongTensor` of shape `(batch_size, num_slots)`): samples of audio in each;
        segments_per_utterance (`torch.LongTensor` of shape `(batch_size,)`).
    """
    segments_per_utterance = ((lengths + segment_samples - 1) // segment_samples).clamp(min=1)
    index = torch.arange(num_slots, device=lengths.device)
    is_last = index == segments_per_utterance[:, None] - 1
    starts = torch.where(is_last, (lengths[:, None] - segment_samples).clamp(min=0), index * segment_samples)
    is_segment = index < segments_per_utterance[:, None]
    segment_lengths = torch.where(is_segment, (lengths[:, None] - starts).clamp(max=segment_samples), segment_samples)
    return starts, segment_lengths, segments_per_utterance


def segment_bounds(lengths: torch.LongTensor, segment_samples: int) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
    """The segments of [`segment_slots`], utterance after utterance.

    Args:
        lengths (`torch.LongTensor` of shape `(batch_size,)`): samples of audio in each utterance.
        segment_samples (`int`): samples per segment.

    Returns:
        starts (`torch.LongTensor` of shape `(num_segments,)`): first sample of each segment in its utterance;
        segment_lengths (`torch.LongTensor` of shape `(num_segments,)`): samples of audio in each segment;
        segments_per_utterance (`torch.LongTensor` of shape `(batch_size,)`).
    """
    num_slots = int(((lengths + segment_samples - 1) // segment_samples).clamp(min=1).max())
    starts, segment_lengths, segments_per_utterance = segment_slots(lengths, num_slots, segment_samples)
    keep = torch.arange(num_slots, device=lengths.device) < segments_per_utterance[:, None]
    return starts[keep], segment_lengths[keep], segments_per_utterance


class MSEmoBoostStatisticsClassifier(nn.Module):
    """A linear classifier on the whole utterance's statistics (`config.utterance_statistics_classifier`): the
    statistics are standardised with `mean` and `scale` (the training data's), then `weight` and `bias` give the
    logits. All four are buffers, not parameters: the classifier is fitted after training, as a convex logistic
    regression (`msemoboost.statistics_fusion.fit_statistics_classifier`), never by gradient. Until fitted its
    weights are 0, a uniform distribution.

    Forward inputs: `statistics` of shape `(batch_size, num_statistics)`; optionally each utterance's own `mean` and
    `scale` `(batch_size, num_statistics)` to standardise it with instead (its group's, `config.speaker_normalization`).
    Forward output: log-probabilities of shape `(batch_size, num_labels)`.
    """

    def __init__(self, num_statistics: int, num_labels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_statistics))
        self.register_buffer("scale", torch.ones(num_statistics))
        self.register_buffer("weight", torch.zeros(num_labels, num_statistics))
        self.register_buffer("bias", torch.zeros(num_labels))

    def forward(
        self, statistics: torch.Tensor, mean: torch.Tensor | None = None, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        mean = self.mean if mean is None else mean
        scale = self.scale if scale is None else scale
        standardised = (statistics - mean) / scale
        return F.linear(standardised, self.weight, self.bias).log_softmax(-1)

    def group_statistics(self, statistics: torch.Tensor, group_ids: torch.Tensor, min_utterances: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each utterance's group's mean and standard deviation of `statistics` `(batch_size, num_statistics)`, over
        the utterances that share its id in `group_ids` `(batch_size,)`, as `(mean, scale)`, each `(batch_size,
        num_statistics)`. An utterance whose id is negative, or whose group has fewer than `min_utterances`, gets
        the training data's `mean` and `scale`; so does a statistic that is constant over a group (its scale)."""
        mean = self.mean.to(statistics.dtype).expand_as(statistics).clone()
        scale = self.scale.to(statistics.dtype).expand_as(statistics).clone()
        for group in torch.unique(group_ids):
            rows = group_ids == group
            if group < 0 or int(rows.sum()) < min_utterances:
                continue
            values = statistics[rows].double()
            deviation = values.std(0, correction=0)
            mean[rows] = values.mean(0).to(statistics.dtype)
            scale[rows] = torch.where(deviation > 0, deviation.to(statistics.dtype), scale[rows])
        return mean, scale


class MSEmoBoostSpeechEnhancementHead(nn.Module):
    """A light speech-enhancement head on the SSL frames: a two-layer perceptron per frame.

    It predicts, for each backbone frame, either a mask in `[0, 1]` over the noisy magnitude spectrum
    (`se_target="mask"`) or the clean magnitude spectrum compressed by `se_compression` (`"magnitude"`).

    Forward inputs: `frame_features` `(num_segments, num_frames, hidden_size)` and the noisy magnitudes
    `noisy_magnitude` `(num_segments, num_frames, num_bins)`, `num_bins = n_fft // 2 + 1` of
    [`MSEmoBoostFrameSTFT`]. Forward output: the estimated clean magnitude `(num_segments, num_frames, num_bins)`.
    """

    def __init__(self, config: MSEmoBoostConfig):
        super().__init__()
        self.target = config.se_target
        self.compression = config.se_compression
        self.dense = nn.Linear(config.backbone_config.hidden_size, config.se_hidden_size)
        self.activation = nn.GELU()
        self.output = nn.Linear(config.se_hidden_size, config.min_input_samples // 2 + 1)

    def forward(self, frame_features: torch.Tensor, noisy_magnitude: torch.Tensor) -> torch.Tensor:
        prediction = self.output(self.activation(self.dense(frame_features))).float()
        if self.target == "mask":
            return torch.sigmoid(prediction) * noisy_magnitude
        return F.softplus(prediction).pow(1.0 / self.compression)


class MSEmoBoostPreTrainedModel(PreTrainedModel):
    config: MSEmoBoostConfig
    config_class = MSEmoBoostConfig
    base_model_prefix = "msemoboost"
    main_input_name = "input_values"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    # The loss is a mean over the batch, not normalised by `num_items_in_batch`: `Trainer` must divide it by the
    # gradient accumulation steps (with `**kwargs` in `forward` it would otherwise assume the model had).
    accepts_loss_kwargs = False
    # The attention implementation is the backbone's (the guidance branches' attention is plain SDPA math): these
    # flags let the request through, and a backbone that lacks the implementation raises transformers' own error.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _no_split_modules = ["MSEmoBoostMFCCEncoder", "MSEmoBoostSpectrogramEncoder", "MSEmoBoostEnhancement"]

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, MSEmoBoostPowerSpectrogram):
            # Non-persistent buffers are not in the checkpoint: rebuild them from the config after loading.
            for name, value in module.compute_buffers().items():
                init.copy_(getattr(module, name), value)
        elif isinstance(module, MSEmoBoostStatisticsClassifier):  # unfitted: a uniform distribution
            for name in ("mean", "weight", "bias"):
                init.zeros_(getattr(module, name))
            init.ones_(module.scale)
        elif isinstance(module, MSEmoBoostModel) and module.layer_weights is not None:
            init.constant_(module.layer_weights, 1.0 / module.layer_weights.numel())  # an equal mean of the layers
        elif isinstance(module, nn.Linear) and getattr(module, "zero_init", False):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `save_pretrained` names only the saved class (and the config) in `auto_map`. Name both models, so that
        # `AutoModel` and `AutoModelForAudioClassification` each load any MS-EmoBoost checkpoint with remote code.
        modeling = self.__class__.__module__.split(".")[-1]
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": f"{modeling}.MSEmoBoostModel",
            "AutoModelForAudioClassification": f"{modeling}.MSEmoBoostForSequenceClassification",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_backbone(
        cls,
        pretrained_model_name_or_path,
        backbone_kwargs: dict | None = None,
        *,
        dtype=None,
        attn_implementation: str | None = None,
        revision: str | None = None,
        token=None,
        cache_dir=None,
        **config_overrides,
    ):
        """Builds the model around a pretrained SSL checkpoint, which is loaded once and becomes the backbone itself
        (no second, randomly initialised copy is ever built).

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                Hub id or local directory of a supported audio SSL model, e.g. `"facebook/wav2vec2-base"`.
            backbone_kwargs (`dict`, *optional*):
                Other keyword arguments of `AutoModel.from_pretrained` for the backbone.
            dtype, attn_implementation, revision, token, cache_dir:
                Passed to `AutoModel.from_pretrained` of the backbone; `dtype` also applies to the guidance branches
                and the classifier (the feature buffers stay float32). Without `dtype` the whole model is float32,
                also from a checkpoint saved in half precision (which transformers would load in its own dtype).
            config_overrides:
                Any [`MSEmoBoostConfig`] argument, e.g. `num_labels=7` or `use_spectrogram=False`.

        The guidance branches and the classifier are newly initialised; the backbone's weights are kept unchanged.
        """
        loading = {"revision": revision, "token": token, "cache_dir": cache_dir,
                   "dtype": dtype if dtype is not None else torch.float32, "attn_implementation": attn_implementation}
        loading = {**{key: value for key, value in loading.items() if value is not None}, **(backbone_kwargs or {})}
        if config_overrides.get("use_backbone_features") is False:
            raise ValueError("from_backbone needs use_backbone_features=True: the guidance-only model has no backbone.")
        pretrained = AutoModel.from_pretrained(pretrained_model_name_or_path, **loading)
        # The implementation the backbone was loaded with, kept for it (a new composite config would reset it).
        config_overrides.setdefault("attn_implementation", pretrained.config._attn_implementation)
        config = MSEmoBoostConfig(backbone_config=pretrained.config, **config_overrides)
        model = cls(config, backbone=pretrained)
        return model.to(pretrained.dtype)


class MSEmoBoostModel(MSEmoBoostPreTrainedModel):
    """The bare MS-EmoBoost model: raw waveforms in, enhanced utterance and segment features out."""

    def __init__(self, config: MSEmoBoostConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self.num_frames = config.num_backbone_frames(config.segment_samples)
        if not config.use_backbone_features:
            self.backbone = None
        else:  # a pretrained backbone given by `from_backbone` is used as it is
            self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone_config)
        self.mfcc_encoder = MSEmoBoostMFCCEncoder(config) if config.use_mfcc else None
        self.spectrogram_encoder = MSEmoBoostSpectrogramEncoder(config) if config.use_spectrogram else None
        num_branches = int(config.use_mfcc) + int(config.use_spectrogram)
        if config.use_backbone_features and num_branches:
            self.enhancement = MSEmoBoostEnhancement(config, num_branches, self.num_frames)
        else:
            self.enhancement = None
        if config.use_weighted_layer_sum and config.use_backbone_features:
            num_layers = config.backbone_config.num_hidden_layers + 1  # the embedding output and every layer's
            self.layer_weights = nn.Parameter(torch.full((num_layers,), 1.0 / num_layers))
            if getattr(self.backbone.config, "layerdrop", 0.0):
                # transformers records no hidden state for a layer that LayerDrop skips, so the layers of a training
                # step could not be matched with their weights.
                logger.warning("use_weighted_layer_sum turns the backbone's LayerDrop off (layerdrop was %s).",
                               self.backbone.config.layerdrop)
                self.backbone.config.layerdrop = config.backbone_config.layerdrop = 0.0
        else:
            self.layer_weights = None
        use_normalization = config.pooled_normalization == "batch_norm" and config.use_backbone_features
        self.pooled_normalization = (
            MSEmoBoostPooledNormalization(config.backbone_config.hidden_size) if use_normalization else None
        )
        self.classify_guidance = num_branches > 0 and (
            config.classifier_input == "pooled_and_guidance" or not config.use_backbone_features
        )
        # With config.classify_statistics, the MFCC branch's standardised statistics end every segment's features.
        self.num_classified_statistics = self.mfcc_encoder.num_statistics if config.classify_statistics else 0
        self.feature_size = (
            (config.backbone_config.hidden_size if config.use_backbone_features else 0)
            + (num_branches * config.guidance_hidden_size if self.classify_guidance else 0)
            + self.num_classified_statistics
        )
        self.post_init()

    def utterance_lengths(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.LongTensor:
        """Checks a batch of waveforms and returns each utterance's length in samples, `(batch_size,)`.

        Raises `ValueError` for anything the model would otherwise turn into a silent wrong answer: a shape other
        than `(batch_size, num_samples)`, integer samples, NaN/Inf in the audio, a mask that is not right padding,
        and utterances shorter than one backbone frame.
        """
        if input_values.dim() != 2:
            hint = " Downmix multi-channel audio to mono first." if input_values.dim() == 3 else ""
            hint = " Add a batch dimension: input_values[None]." if input_values.dim() == 1 else hint
            raise ValueError(
                "input_values must be a batch of mono waveforms of shape (batch_size, num_samples), got shape "
                f"{tuple(input_values.shape)}.{hint}"
            )
        if not input_values.is_floating_point():
            raise ValueError(
                f"input_values must be a floating-point waveform in [-1, 1], got dtype {input_values.dtype}. Convert "
                "integer PCM first, e.g. pcm.float() / 32768 for 16-bit audio, or use MSEmoBoostFeatureExtractor."
            )
        batch_size, num_samples = input_values.shape
        positions = torch.arange(num_samples, device=input_values.device)
        if attention_mask is None:
            lengths = torch.full((batch_size,), num_samples, device=input_values.device, dtype=torch.long)
        else:
            if attention_mask.shape != input_values.shape:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but input_values has shape "
                    f"{tuple(input_values.shape)}."
                )
            lengths = attention_mask.long().sum(-1)
            if ((positions < lengths[:, None]) != attention_mask.bool()).any():
                raise ValueError(
                    "attention_mask must mark one block of audio at the start of each row (right padding), as "
                    "MSEmoBoostFeatureExtractor pads."
                )
        is_audio = positions < lengths[:, None]
        bad = (~torch.isfinite(input_values) & is_audio).any(-1)
        if bad.any():
            raise ValueError(f"input_values contains NaN or Inf samples in utterance(s) {bad.nonzero().flatten().tolist()}.")
        too_short = lengths < self.config.min_input_samples
        if too_short.any():
            minimum = self.config.min_input_samples
            raise ValueError(
                f"Utterance(s) {too_short.nonzero().flatten().tolist()} have "
                f"{lengths[too_short].tolist()} samples, fewer than one analysis frame of the backbone ({minimum} "
                f"samples = {1000 * minimum / self.config.sampling_rate:.1f} ms at {self.config.sampling_rate} Hz)."
            )
        return lengths

    def segment_bounds(self, lengths: torch.LongTensor) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
        """[`segment_bounds`] with this model's `config.segment_samples`: `(num_segments,)` starts and lengths, and
        `(batch_size,)` segments per utterance."""
        return segment_bounds(lengths, self.config.segment_samples)

    def segment_grid(
        self, input_values: torch.Tensor, lengths: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.LongTensor]:
        """Cuts each utterance into the segments of [`segment_slots`], on `ceil(num_samples / S)` slots per
        utterance: a number the input's shape alone fixes, so the ONNX graph of `msemoboost.export` computes it too
        (slots past an utterance's last segment hold silence there, and are masked out of the mean).

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`)
            lengths (`torch.LongTensor` of shape `(batch_size,)`): samples of audio in each row.

        Returns:
            segments (`torch.FloatTensor` of shape `(batch_size, num_slots, segment_samples)`);
            segment_lengths (`torch.LongTensor` of shape `(batch_size, num_slots)`);
            segments_per_utterance (`torch.LongTensor` of shape `(batch_size,)`).
        """
        rows, starts, segment_lengths, segments_per_utterance = self.slot_grid(input_values, lengths)
        return self.gather_segments(input_values, lengths, rows, starts), segment_lengths, segments_per_utterance

    def split_into_segments(
        self, input_values: torch.Tensor, lengths: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.LongTensor]:
        """The segments of [`segment_slots`], utterance after utterance: only the real ones are cut out, so a batch
        that mixes a long recording with short ones holds no silent slots.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`)
            lengths (`torch.LongTensor` of shape `(batch_size,)`): samples of audio in each row.

        Returns:
            segments (`torch.FloatTensor` of shape `(num_segments, segment_samples)`), utterance after utterance;
            segment_lengths (`torch.LongTensor` of shape `(num_segments,)`): samples of audio in each segment;
            segments_per_utterance (`torch.LongTensor` of shape `(batch_size,)`).
        """
        rows, starts, segment_lengths, segments_per_utterance = self.slot_grid(input_values, lengths)
        keep = torch.arange(starts.shape[1], device=lengths.device) < segments_per_utterance[:, None]
        segments = self.gather_segments(input_values, lengths, rows[keep], starts[keep])
        return segments, segment_lengths[keep], segments_per_utterance

    def slot_grid(
        self, input_values: torch.Tensor, lengths: torch.LongTensor
    ) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor, torch.LongTensor]:
        """[`segment_slots`] on `ceil(num_samples / S)` slots per row: the row index `(batch_size, num_slots)` of
        each slot, its start and its length `(batch_size, num_slots)`, and segments per utterance `(batch_size,)`."""
        segment_samples = self.config.segment_samples
        num_slots = (input_values.shape[1] + segment_samples - 1) // segment_samples
        starts, segment_lengths, segments_per_utterance = segment_slots(lengths, num_slots, segment_samples)
        rows = torch.arange(lengths.shape[0], device=lengths.device)[:, None].expand_as(starts)
        return rows, starts, segment_lengths, segments_per_utterance

    def gather_segments(
        self, input_values: torch.Tensor, lengths: torch.LongTensor, rows: torch.LongTensor, starts: torch.LongTensor
    ) -> torch.Tensor:
        """The `segment_samples` samples from `starts` of utterances `rows` (both of any shape `S`), zero past each
        utterance's length: `(*S, segment_samples)`."""
        segment_samples = self.config.segment_samples
        waveforms = F.pad(input_values, (0, segment_samples))  # every window lies inside
        positions = torch.arange(waveforms.shape[1], device=input_values.device)
        waveforms = torch.where(positions < lengths[:, None], waveforms, 0.0)
        return waveforms[rows[..., None], starts[..., None] + positions[:segment_samples]]

    def encode_segments(
        self,
        segments: torch.Tensor,
        segment_lengths: torch.LongTensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, tuple | None, tuple | None]:
        """Pooled features of a batch of segments.

        Args:
            segments (`torch.FloatTensor` of shape `(num_segments, segment_samples)`)
            segment_lengths (`torch.LongTensor` of shape `(num_segments,)`)

        Returns:
            features `(num_segments, feature_size)`, enhancement weights `(num_segments, num_frames)` or `None`,
            frame mask `(num_segments, num_frames)` or `None`, frame features `X_w` `(num_segments, num_frames,
            hidden_size)` (or `None` without a backbone), and the backbone's hidden states and attentions
            (each `None` unless asked for).
        """
        guidance, statistics = [], None
        if self.mfcc_encoder is not None or self.spectrogram_encoder is not None:
            emphasised = pre_emphasis(segments, self.config.pre_emphasis)
            if self.num_classified_statistics:
                mfcc_guidance, statistics = self.mfcc_encoder(emphasised, segment_lengths, return_statistics=True)
                guidance.append(mfcc_guidance)
            elif self.mfcc_encoder is not None:
                guidance.append(self.mfcc_encoder(emphasised, segment_lengths))
            if self.spectrogram_encoder is not None:
                guidance.append(self.spectrogram_encoder(emphasised))
        guidance = torch.cat(guidance, dim=-1) if guidance else None
        if self.backbone is None:
            if statistics is not None:  # [guidance ; statistics]
                guidance = torch.cat([guidance, statistics.to(guidance.dtype)], dim=-1)
            return guidance, None, None, None, None, None

        sample_mask = torch.arange(segments.shape[1], device=segments.device) < segment_lengths[:, None]
        backbone_outputs = self.backbone(
            segments.to(self.backbone.dtype),
            attention_mask=sample_mask.long(),
            output_hidden_states=output_hidden_states or self.layer_weights is not None,
            output_attentions=output_attentions,
            return_dict=True,
        )
        if self.layer_weights is None:
            frames = backbone_outputs.last_hidden_state  # X_w: (num_segments, num_frames, hidden_size)
        else:  # (num_segments, num_layers, num_frames, hidden_size) → X_w, their softmax-weighted sum
            layers = torch.stack(backbone_outputs.hidden_states, dim=1)
            frames = (layers * self.layer_weights.softmax(-1).to(layers.dtype)[:, None, None]).sum(1)
        frame_lengths = self.backbone._get_feat_extract_output_lengths(segment_lengths)
        frame_mask = torch.arange(frames.shape[1], device=frames.device) < frame_lengths[:, None]
        if self.enhancement is None:
            weights = None
            mask = frame_mask.to(frames.dtype)
            features = (frames * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        else:
            weights = self.enhancement(guidance, frame_mask)  # X_enh
            features = torch.bmm(weights[:, None].to(frames.dtype), frames)[:, 0]  # X'_w = X_enh · X_w
        if self.pooled_normalization is not None:
            features = self.pooled_normalization(features)
        if self.classify_guidance:
            features = torch.cat([features, guidance.to(features.dtype)], dim=-1)  # [X'_w ; guidance]
        if statistics is not None:
            features = torch.cat([features, statistics.to(features.dtype)], dim=-1)  # [... ; statistics]
        attentions = backbone_outputs.attentions if output_attentions else None
        hidden_states = backbone_outputs.hidden_states if output_hidden_states else None
        return features, weights, frame_mask, frames, hidden_states, attentions

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MSEmoBoostModelOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`):
                Raw mono waveforms at `config.sampling_rate`, as [`MSEmoBoostFeatureExtractor`] prepares them.
            attention_mask (`torch.LongTensor` of shape `(batch_size, num_samples)`, *optional*):
                1 on samples of audio, 0 on right padding. Without it every sample counts as audio.
            output_hidden_states (`bool`, *optional*):
                Return the backbone's hidden states of every segment.
            return_dict (`bool`, *optional*):
                Return a [`MSEmoBoostModelOutput`] rather than a tuple.
            output_attentions (`bool`, *optional*):
                Return the backbone's attention weights of every segment.
            kwargs:
                Other keyword arguments (such as those `Trainer` may pass) are accepted and ignored.

        Segments pass through the network `config.segment_chunk_size` at a time, so memory stays bounded for long
        recordings.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        lengths = self.utterance_lengths(input_values, attention_mask)
        segments, segment_lengths, segments_per_utterance = self.split_into_segments(input_values, lengths)

        chunk_size = self.config.segment_chunk_size
        chunks = [
            self.encode_segments(
                segments[start : start + chunk_size],
                segment_lengths[start : start + chunk_size],
                output_hidden_states,
                output_attentions,
            )
            for start in range(0, len(segments), chunk_size)
        ]
        features, weights, frame_mask, frames, hidden_states, attentions = zip(*chunks)
        segment_features = torch.cat(features)
        utterance_features = average_over_segments(segment_features, segments_per_utterance)
        output = MSEmoBoostModelOutput(
            last_hidden_state=torch.cat(frames) if frames[0] is not None else None,
            pooler_output=utterance_features,
            utterance_features=utterance_features,
            segment_features=segment_features,
            enhancement_weights=torch.cat(weights) if weights[0] is not None else None,
            frame_mask=torch.cat(frame_mask) if frame_mask[0] is not None else None,
            segments_per_utterance=segments_per_utterance,
            hidden_states=tuple(map(torch.cat, zip(*hidden_states))) if hidden_states[0] is not None else None,
            attentions=tuple(map(torch.cat, zip(*attentions))) if attentions[0] is not None else None,
        )
        return output if return_dict else output.to_tuple()


class MSEmoBoostForSequenceClassification(MSEmoBoostPreTrainedModel):
    """MS-EmoBoost with its linear emotion classifier (eq. 13), and optionally a speech-enhancement head.

    Each segment is classified; an utterance's `logits` are the mean of its segments' log-softmax outputs, as the
    paper averages segment predictions. With `labels`, the loss is the cross-entropy of every segment against its
    utterance's label (eq. 14), averaged over segments. With `config.use_se_head` and `clean_input_values`, the
    SE loss of every segment is added with weight `config.se_loss_weight`.
    """

    def __init__(self, config: MSEmoBoostConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self.msemoboost = MSEmoBoostModel(config, backbone=backbone)
        self.classifier = nn.Linear(self.msemoboost.feature_size, config.num_labels)
        self.statistics_classifier = (
            MSEmoBoostStatisticsClassifier(self.msemoboost.mfcc_encoder.num_utterance_statistics, config.num_labels)
            if config.utterance_statistics_classifier
            else None
        )
        if config.use_se_head:
            self.se_stft = MSEmoBoostFrameSTFT(config)
            self.se_head = MSEmoBoostSpeechEnhancementHead(config)
        else:
            self.se_stft = self.se_head = None
        self.post_init()

    def freeze_feature_encoder(self):
        """Stops gradients to the backbone's convolutional feature encoder."""
        self._backbone("freeze_feature_encoder").feature_extractor._freeze_parameters()

    def freeze_base_model(self):
        """Stops gradients to the whole SSL backbone; the guidance branches and the classifier still train."""
        for parameter in self._backbone("freeze_base_model").parameters():
            parameter.requires_grad = False

    def _backbone(self, caller: str) -> PreTrainedModel:
        if self.msemoboost.backbone is None:
            raise ValueError(f"{caller}() needs a backbone, and this model has use_backbone_features=False.")
        return self.msemoboost.backbone

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        clean_input_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        class_mask: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
        group_mean: torch.Tensor | None = None,
        group_scale: torch.Tensor | None = None,
        **kwargs,
    ) -> MSEmoBoostSequenceClassifierOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`):
                Raw mono waveforms at `config.sampling_rate`.
            attention_mask (`torch.LongTensor` of shape `(batch_size, num_samples)`, *optional*):
                1 on samples of audio, 0 on right padding.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class index of each utterance, in `[0, config.num_labels)`.
            clean_input_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`, *optional*):
                The clean speech that `input_values` is a noisy version of, on the same scale and padding: the SE
                head's target. Ignored without `config.use_se_head`.
            output_hidden_states (`bool`, *optional*):
                Return the backbone's hidden states of every segment.
            return_dict (`bool`, *optional*):
                Return a [`MSEmoBoostSequenceClassifierOutput`] rather than a tuple.
            output_attentions (`bool`, *optional*):
                Return the backbone's attention weights of every segment.
            class_mask (`torch.BoolTensor` of shape `(batch_size, num_labels)`, *optional*):
                For training on several corpora: the classes each utterance's corpus has. Its loss is the
                cross-entropy over those classes only (the others are left out of its softmax), so that a class that
                only some corpora have is not learnt as "not that corpus". Single-label classification only; the
                `logits` are not changed. (Its name holds no "label": `Trainer` takes every forward argument whose
                name does for a label, and would then evaluate a batch without it as unlabelled.)
            group_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                With `config.speaker_normalization`: each utterance's group (speaker, session, corpus). The
                statistics classifier reads each utterance's statistics standardised by those of the batch's
                utterances of its group; a negative id, or a group of fewer than
                `config.speaker_normalization_min_utterances` in the batch, is standardised by the training data's.
            group_mean (`torch.FloatTensor` of shape `(batch_size, num_statistics)`, *optional*):
                With `config.speaker_normalization`, instead of `group_ids`: each utterance's group's mean of the
                utterance statistics, computed beforehand over the whole group (see
                [`~MSEmoBoostForSequenceClassification.group_normalization`]), for a group larger than a batch.
            group_scale (`torch.FloatTensor` of shape `(batch_size, num_statistics)`, *optional*):
                The standard deviations that go with `group_mean`.
            kwargs:
                Other keyword arguments (such as those `Trainer` may pass) are accepted and ignored, except
                `label_mask`, the former name of `class_mask`, which is used as `class_mask` with a `FutureWarning`.

        Returns:
            [`MSEmoBoostSequenceClassifierOutput`] with `logits` of shape `(batch_size, num_labels)`: for each
            utterance, the mean of its segments' log-probabilities (for a one-segment utterance, its
            log-probabilities); `softmax` of them gives normalised class probabilities. With
            `config.utterance_statistics_classifier`, in `eval()` mode, the statistics classifier's log-probabilities
            (times `config.utterance_statistics_weight`; with `config.speaker_normalization`, of the statistics
            standardised by group) are added; the `loss` is the network's, without them. `loss`
            is given when `labels` (or, with the SE head, `clean_input_values`) is.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if kwargs.get("label_mask") is not None:
            if class_mask is not None:
                raise ValueError("Give class_mask only: label_mask is its former name.")
            warnings.warn("label_mask is deprecated: pass class_mask instead.", FutureWarning, stacklevel=2)
            class_mask = kwargs["label_mask"]
        grouping = self.checked_grouping(input_values.shape[0], group_ids, group_mean, group_scale)
        train_se = self.se_head is not None and clean_input_values is not None
        outputs = self.msemoboost(
            input_values,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            output_attentions=output_attentions,
        )
        segment_logits = self.classifier(outputs.segment_features)
        logits = self.utterance_logits(segment_logits, outputs.segments_per_utterance)
        # The statistics classifier is fitted after training, not by the loss: its log-probabilities join the logits
        # only at inference, after the loss is computed (and not at all at weight 0, where they would add nothing).
        fuse_statistics = (
            self.statistics_classifier is not None and not self.training and self.config.utterance_statistics_weight != 0
        )

        classification_loss = statistics_loss = se_loss = None
        if labels is not None:
            classification_loss = self.classification_loss(
                segment_logits, logits, labels, outputs.segments_per_utterance, class_mask=class_mask
            )
            if self.config.classify_statistics and self.config.statistics_loss_weight > 0:
                statistics_loss = self.statistics_loss(
                    outputs.segment_features, labels, outputs.segments_per_utterance, class_mask=class_mask
                )
        if train_se:
            if clean_input_values.shape != input_values.shape:
                raise ValueError(
                    f"clean_input_values has shape {tuple(clean_input_values.shape)} but input_values has shape "
                    f"{tuple(input_values.shape)}: give the clean version of every noisy utterance, padded alike."
                )
            se_loss = self.speech_enhancement_loss(
                input_values, clean_input_values, attention_mask, outputs.last_hidden_state, outputs.frame_mask
            )

        if fuse_statistics:
            logits = logits + self.statistics_logits(input_values, attention_mask, **grouping)

        losses = [
            classification_loss,
            None if statistics_loss is None else self.config.statistics_loss_weight * statistics_loss,
            None if se_loss is None else self.config.se_loss_weight * se_loss,
        ]
        losses = [term for term in losses if term is not None]
        output = MSEmoBoostSequenceClassifierOutput(
            loss=sum(losses) if losses else None,
            logits=logits,
            classification_loss=classification_loss if len(losses) > 1 else None,
            statistics_loss=statistics_loss,
            se_loss=se_loss,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            segments_per_utterance=outputs.segments_per_utterance,
        )
        return output if return_dict else output.to_tuple()

    def statistics_loss(
        self,
        segment_features: torch.Tensor,
        labels: torch.Tensor,
        segments_per_utterance: torch.LongTensor,
        class_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """With `config.classify_statistics`: the [`~MSEmoBoostForSequenceClassification.classification_loss`] of the
        logits that the classifier gives the statistics alone, from its columns for them (the last
        `num_statistics` of `segment_features` `(num_segments, feature_size)`) and its bias: a linear classifier
        on the statistics, trained as one."""
        num_statistics = self.msemoboost.num_classified_statistics
        segment_logits = F.linear(
            segment_features[:, -num_statistics:], self.classifier.weight[:, -num_statistics:], self.classifier.bias
        )
        logits = self.utterance_logits(segment_logits, segments_per_utterance)
        return self.classification_loss(segment_logits, logits, labels, segments_per_utterance, class_mask=class_mask)

    def utterance_statistics(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The MFCC and prosody statistics of each whole utterance that `config.utterance_statistics_classifier`
        classifies, `(batch_size, num_statistics)`, from raw waveforms `(batch_size, num_samples)` and their
        `attention_mask` (see [`~MSEmoBoostMFCCEncoder.utterance_statistics`])."""
        encoder = self.msemoboost.mfcc_encoder
        if encoder is None or not encoder.num_statistics:
            raise ValueError("utterance_statistics() needs config.mfcc_statistics or config.prosody_statistics.")
        lengths = self.msemoboost.utterance_lengths(input_values, attention_mask)
        return self.statistics_of_lengths(input_values, lengths)

    def statistics_of_lengths(self, input_values: torch.Tensor, lengths: torch.LongTensor) -> torch.Tensor:
        """[`~MSEmoBoostForSequenceClassification.utterance_statistics`] from raw waveforms and their lengths in
        samples `(batch_size,)`, already checked: the computation that the ONNX graph shares."""
        emphasised = pre_emphasis(input_values, self.config.pre_emphasis)
        return self.msemoboost.mfcc_encoder.utterance_statistics(emphasised, lengths)

    def statistics_logits(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
        group_mean: torch.Tensor | None = None,
        group_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What `config.utterance_statistics_classifier` adds to the utterance `logits` at inference: the statistics
        classifier's log-probabilities for each whole utterance, times `config.utterance_statistics_weight`,
        `(batch_size, num_labels)`, from raw waveforms `(batch_size, num_samples)` and their `attention_mask`
        (and, with `config.speaker_normalization`, their groups, as in `forward`)."""
        if self.statistics_classifier is None:
            raise ValueError("statistics_logits() needs config.utterance_statistics_classifier=True.")
        statistics = self.utterance_statistics(input_values, attention_mask)
        if group_ids is not None:
            group_mean, group_scale = self.group_normalization(statistics, group_ids)
        return self.weighted_statistics_log_probabilities(statistics, group_mean, group_scale)

    def weighted_statistics_log_probabilities(
        self, statistics: torch.Tensor, group_mean: torch.Tensor | None = None, group_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The statistics classifier's log-probabilities of `statistics` `(batch_size, num_statistics)` (standardised
        by `group_mean` and `group_scale` when given, else by the training data's), times
        `config.utterance_statistics_weight`: `(batch_size, num_labels)`."""
        return self.config.utterance_statistics_weight * self.statistics_classifier(statistics, group_mean, group_scale)

    def group_normalization(self, statistics: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With `config.speaker_normalization`: the `(group_mean, group_scale)` of each utterance, each `(batch_size,
        num_statistics)`, over the utterances of its group among `statistics` `(batch_size, num_statistics)` (from
        [`~MSEmoBoostForSequenceClassification.utterance_statistics`]) with `group_ids` `(batch_size,)`. To
        normalise a group larger than a batch, compute its utterances' statistics batch by batch, call this once on
        all of them, and give each batch its rows of the result in `forward`."""
        self.checked_grouping(statistics.shape[0], group_ids, None, None)
        return self.statistics_classifier.group_statistics(
            statistics, group_ids.to(statistics.device), self.config.speaker_normalization_min_utterances
        )

    def checked_grouping(
        self,
        batch_size: int,
        group_ids: torch.Tensor | None,
        group_mean: torch.Tensor | None,
        group_scale: torch.Tensor | None,
    ) -> dict:
        """The `forward` inputs for speaker normalisation, checked against the model and the batch."""
        given = {name: value for name, value in (("group_ids", group_ids), ("group_mean", group_mean),
                                                 ("group_scale", group_scale)) if value is not None}
        if not given:
            return {}
        if not self.config.speaker_normalization:
            raise ValueError(
                f"{' and '.join(given)} given, but this model does not normalise by group: it was built without "
                "config.speaker_normalization (train it with --speaker_normalization true)."
            )
        if group_ids is not None and (group_mean is not None or group_scale is not None):
            raise ValueError("Give group_ids, or group_mean and group_scale computed beforehand, not both.")
        if group_ids is not None:
            if tuple(group_ids.shape) != (batch_size,) or group_ids.is_floating_point():
                raise ValueError(f"group_ids must hold one integer id per utterance, shape ({batch_size},); got shape "
                                 f"{tuple(group_ids.shape)} of dtype {group_ids.dtype}.")
            return {"group_ids": group_ids}
        shape = (batch_size, self.statistics_classifier.mean.numel())
        if group_mean is None or group_scale is None or tuple(group_mean.shape) != shape or tuple(group_scale.shape) != shape:
            raise ValueError(
                f"group_mean and group_scale go together, each of shape (batch_size, num_statistics) = {shape}; got "
                f"{None if group_mean is None else tuple(group_mean.shape)} and "
                f"{None if group_scale is None else tuple(group_scale.shape)}."
            )
        return {"group_mean": group_mean, "group_scale": group_scale}

    def utterance_logits(self, segment_logits: torch.Tensor, segments_per_utterance: torch.LongTensor) -> torch.Tensor:
        """`(num_segments, num_labels)` → `(batch_size, num_labels)`: the mean of each utterance's segments'
        log-probabilities (single-label classification), or of their raw outputs (multi-label and regression)."""
        if self.config.problem_type in (None, "single_label_classification"):
            segment_logits = segment_logits.log_softmax(-1)
        return average_over_segments(segment_logits, segments_per_utterance)

    def classification_loss(
        self,
        segment_logits: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        segments_per_utterance: torch.LongTensor,
        class_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of `config.problem_type`, at `config.loss_level`.

        - single-label classification (the default): cross-entropy, weighted by `config.class_weights` and smoothed
          by `config.label_smoothing` if set. `labels` are class indices `(batch_size,)`, or class probabilities
          (float, `(batch_size, num_labels)`, rows summing to 1: soft targets such as mixup's, see
          [`~msemoboost.augmentation.BatchMixup`]); one-hot probabilities give exactly the loss of their indices. At
          `loss_level="segment"` (the paper) every segment `(num_segments, num_labels)` is scored against its
          utterance's label; at `"utterance"` the utterance `logits` `(batch_size, num_labels)` are, which is then
          exactly `cross_entropy(logits, labels)`. The mean is weighted: it divides by the summed class weights of
          the targets, as `cross_entropy` does for class indices. With a `class_mask` `(batch_size, num_labels)`,
          each utterance's cross-entropy is over the classes its mask allows: exactly the cross-entropy of those
          columns alone (the other logits are replaced by `LOGIT_EXCLUDED`, whose probability is 0 in float32).
        - multi-label classification: binary cross-entropy with logits on the utterance `logits` (float `labels` of
          shape `(batch_size, num_labels)`).
        - regression: mean squared error on the utterance `logits` (`labels` `(batch_size,)` or `(batch_size,
          num_labels)`).
        """
        problem_type = self.config.problem_type or "single_label_classification"
        batch_size, num_labels = logits.shape
        if class_mask is not None and problem_type != "single_label_classification":
            raise ValueError(f"class_mask applies to single-label classification; this model's problem_type is {problem_type}.")
        if problem_type == "multi_label_classification":
            if labels.shape != (batch_size, num_labels):
                raise ValueError(f"multi-label labels must have shape ({batch_size}, {num_labels}), got {tuple(labels.shape)}.")
            return F.binary_cross_entropy_with_logits(logits.float(), labels.to(logits.device).float())
        if problem_type == "regression":
            targets = labels.to(logits.device).float()
            if num_labels == 1 and targets.dim() == 1:
                targets = targets[:, None]
            if targets.shape != (batch_size, num_labels):
                raise ValueError(f"regression labels must have shape ({batch_size}, {num_labels}), got {tuple(labels.shape)}.")
            return F.mse_loss(logits.float(), targets)
        soft = labels.is_floating_point() and labels.shape == (batch_size, num_labels)
        if soft:
            targets = labels.to(logits.device).float()
            if (targets < 0).any() or not torch.allclose(targets.sum(-1), torch.ones_like(targets[:, 0]), atol=1e-4):
                raise ValueError(
                    f"soft labels of shape ({batch_size}, {num_labels}) must be class probabilities: non-negative, "
                    f"each row summing to 1; got row sums {targets.sum(-1).tolist()} and minimum {targets.min().item()}."
                )
        else:
            if labels.shape != (batch_size,) or labels.is_floating_point():
                raise ValueError(
                    f"labels must hold one class index per utterance, shape ({batch_size},), or class probabilities, "
                    f"float of shape ({batch_size}, {num_labels}); got shape {tuple(labels.shape)} of dtype {labels.dtype}."
                )
            outside = (labels < 0) | (labels >= num_labels)
            if outside.any():
                raise ValueError(
                    f"labels must be class indices in [0, {num_labels}) for num_labels={num_labels}, got "
                    f"{labels[outside].tolist()}."
                )
            targets = labels.to(logits.device)
        smoothing = self.config.label_smoothing
        if class_mask is not None:
            class_mask = checked_class_mask(class_mask, targets, num_labels, smoothing)
        weight = None
        if self.config.class_weights is not None:
            weight = torch.tensor(self.config.class_weights, dtype=torch.float32, device=logits.device)
        scores = logits
        if self.config.loss_level == "segment":
            scores = segment_logits
            targets = torch.repeat_interleave(targets, segments_per_utterance.to(targets.device), dim=0)
            if class_mask is not None:
                class_mask = torch.repeat_interleave(class_mask, segments_per_utterance.to(class_mask.device), dim=0)
        if class_mask is not None:
            scores = scores.float().masked_fill(~class_mask, LOGIT_EXCLUDED)
        if not soft:
            return F.cross_entropy(scores.float(), targets, weight=weight, label_smoothing=smoothing)
        total = F.cross_entropy(scores.float(), targets, weight=weight, label_smoothing=smoothing, reduction="sum")
        return total / (targets.sum() if weight is None else (targets @ weight).sum())

    def _segment_spectra(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor, torch.LongTensor]:
        """Segments of `input_values` `(num_segments, segment_samples)` and their frame STFT `(num_segments,
        num_frames, num_bins)`, with segment lengths and segments per utterance as `split_into_segments` gives."""
        lengths = self.msemoboost.utterance_lengths(input_values, attention_mask)
        segments, segment_lengths, segments_per_utterance = self.msemoboost.split_into_segments(input_values, lengths)
        return segments, self.se_stft(segments), segment_lengths, segments_per_utterance

    def speech_enhancement_loss(
        self,
        input_values: torch.Tensor,
        clean_input_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
        frame_features: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Mean squared error between `|estimate|^c` and `|clean|^c` (`c = config.se_compression`) over the
        frames that hold audio and every frequency bin. Inputs as in `forward`; `frame_features` and `frame_mask`
        are the base model's `(num_segments, num_frames, ...)` outputs for `input_values`."""
        _, noisy, _, _ = self._segment_spectra(input_values, attention_mask)
        _, clean, _, _ = self._segment_spectra(clean_input_values, attention_mask)
        num_frames = min(noisy.shape[1], frame_features.shape[1])
        estimate = self.se_head(frame_features[:, :num_frames], noisy[:, :num_frames].abs())
        compression = self.config.se_compression
        # Clamped away from 0, where x^c has an infinite slope (silent or padded frames).
        estimate = estimate.clamp(min=1e-8).pow(compression)
        target = clean[:, :num_frames].abs().clamp(min=1e-8).pow(compression)
        error = (estimate - target).square().mean(-1)
        mask = frame_mask[:, :num_frames].to(error.dtype)
        return (error * mask).sum() / mask.sum()

    @torch.no_grad()
    def enhance(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Enhanced waveforms from the SE head: its clean-magnitude estimate with the noisy input's phase.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`), attention_mask: as in `forward`.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_samples)`, zero on padding, on the scale of `input_values`.
            Each 3 s segment is resynthesised by weighted overlap-add; the few samples no analysis frame covers
            (the segment's first sample and the tail after its last whole frame) are passed through unchanged.
        """
        if self.se_head is None:
            raise ValueError("enhance() needs a model with a speech-enhancement head (config.use_se_head=True).")
        outputs = self.msemoboost(input_values, attention_mask=attention_mask, return_dict=True)
        segments, noisy, segment_lengths, segments_per_utterance = self._segment_spectra(input_values, attention_mask)
        num_frames = min(noisy.shape[1], outputs.last_hidden_state.shape[1])
        magnitude = self.se_head(outputs.last_hidden_state[:, :num_frames], noisy[:, :num_frames].abs())
        spectrum = torch.polar(magnitude, noisy[:, :num_frames].angle())
        enhanced = self.se_stft.inverse(spectrum, segments)
        enhanced = enhanced * (torch.arange(enhanced.shape[1], device=enhanced.device) < segment_lengths[:, None])
        lengths = self.msemoboost.utterance_lengths(input_values, attention_mask)
        starts, _, _ = self.msemoboost.segment_bounds(lengths)
        rows = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), segments_per_utterance)
        waveforms = torch.zeros_like(input_values, dtype=enhanced.dtype)  # padding stays 0
        # In order, so that the last (overlapping) segment writes the end of the utterance.
        for row, start, piece, length in zip(rows.tolist(), starts.tolist(), enhanced, segment_lengths.tolist()):
            waveforms[row, start : start + length] = piece[:length]
        return waveforms


__all__ = [
    "MSEmoBoostForSequenceClassification",
    "MSEmoBoostModel",
    "MSEmoBoostModelOutput",
    "MSEmoBoostPreTrainedModel",
    "MSEmoBoostSequenceClassifierOutput",
    "MSEmoBoostSpeechEnhancementHead",
]
