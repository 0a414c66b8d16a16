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
   also the shape of their distributions; with `config.utterance_log_mel_statistics`, functionals of its log-mel
   bands), and its log-probabilities join the utterance's at inference
   (`statistics_logits` in the output says when). The statistics live in `modeling_statistics.py`.
7. Optionally (`config.use_se_head`, not in the paper), `MSEmoBoostSpeechEnhancementHead` reads the same frames
   `X_w` and predicts the clean magnitude spectrogram of the segment, for joint SER + speech-enhancement training
   on noisy audio (`modeling_enhancement.py`).
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
    MSEmoBoostUtteranceLogMel,
    pre_emphasis,
)
from .configuration_msemoboost import MSEmoBoostConfig
from .handler import EndpointHandler  # noqa: F401  (a relative import, so save_pretrained writes handler.py too)
from .modeling_enhancement import MSEmoBoostSpeechEnhancement, MSEmoBoostSpeechEnhancementHead
from .modeling_statistics import (
    NUM_BAND_FUNCTIONALS,
    NUM_PROSODY_DISTRIBUTION_STATISTICS,
    NUM_PROSODY_STATISTICS,
    MSEmoBoostMFCCStatistics,
    MSEmoBoostStatisticsClassifier,
    MSEmoBoostStatisticsHead,
    masked_mean_std,
)


logger = logging.get_logger(__name__)

# The logit that `class_mask` gives the classes it leaves out: low enough that their softmax probability is exactly 0
# in float32, finite so that a zero target times its log-probability stays 0.
LOGIT_EXCLUDED = -1.0e4


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
            regression, `config.problem_type`); plus `statistics_logits` when that is returned. In `eval()` mode,
            single-label logits are divided by `config.calibration_temperature` (the last step).
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
        statistics_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
            What `logits` holds besides the network's: the fitted statistics classifier's log-probabilities times
            `config.utterance_statistics_weight` (`config.utterance_statistics_classifier`). Returned, and added to
            `logits`, in `eval()` mode only (the classifier is fitted after training, never by the loss) and at a
            weight above 0; otherwise None, and `logits` is the network's alone.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    classification_loss: torch.FloatTensor | None = None
    statistics_loss: torch.FloatTensor | None = None
    se_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    segments_per_utterance: torch.LongTensor | None = None
    statistics_logits: torch.FloatTensor | None = None


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


class MSEmoBoostMFCCEncoder(MSEmoBoostMFCCStatistics, nn.Module):
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
        self.log_mel = MSEmoBoostUtteranceLogMel(config) if config.utterance_log_mel_statistics else None
        self.num_utterance_statistics = (
            self.num_statistics
            + config.utterance_distribution_statistics
            * (6 * config.num_mfcc * config.mfcc_statistics + NUM_PROSODY_DISTRIBUTION_STATISTICS * config.prosody_statistics)
            + config.utterance_log_mel_statistics * NUM_BAND_FUNCTIONALS * config.log_mel_num_bands
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
            for name in ("mean", "weight", "bias") + (("ungrouped_weight", "ungrouped_bias") if module.ungrouped else ()):
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


class MSEmoBoostForSequenceClassification(MSEmoBoostStatisticsHead, MSEmoBoostSpeechEnhancement, MSEmoBoostPreTrainedModel):
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
            MSEmoBoostStatisticsClassifier(self.msemoboost.mfcc_encoder.num_utterance_statistics, config.num_labels,
                                           ungrouped=config.ungrouped_statistics_weight is not None)
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
                With `config.use_se_head`: the clean speech of which `input_values` is a noisy version, padded alike.
            output_hidden_states, output_attentions, return_dict (`bool`, *optional*):
                Return the backbone's hidden states or attention weights of every segment; a `ModelOutput`.
            class_mask (`torch.BoolTensor` of shape `(batch_size, num_labels)`, *optional*):
                Training on several corpora: the classes each utterance's corpus has. Its loss is the cross-entropy
                over those only, so that a class some corpora lack is not learnt as "not that corpus"; `logits` are
                unchanged. (No "label" in its name: `Trainer` takes such arguments for labels.)
            group_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                With `config.speaker_normalization`: each utterance's group (speaker, session). The statistics
                classifier reads its statistics standardised over the batch's utterances of its group; a negative
                id, or a group of fewer than `config.speaker_normalization_min_utterances`, by the training data's.
            group_mean, group_scale (`torch.FloatTensor` of shape `(batch_size, num_statistics)`, *optional*):
                Instead of `group_ids`, for a group larger than a batch: each utterance's group's mean and standard
                deviation of the statistics, computed beforehand ([`~MSEmoBoostStatisticsHead.group_normalization`]).
            kwargs:
                Ignored (`Trainer` may pass some), but `label_mask`, the former `class_mask`, with a `FutureWarning`.

        Returns:
            [`MSEmoBoostSequenceClassifierOutput`]: `logits` `(batch_size, num_labels)`, each utterance's mean of its
            segments' log-probabilities, plus, in `eval()` mode, the statistics classifier's weighted log-probabilities
            (`statistics_logits`), the sum over `config.calibration_temperature` in `eval()` mode; `loss` (the
            network's) when `labels` or `clean_input_values` is given.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if kwargs.get("label_mask") is not None:
            if class_mask is not None:
                raise ValueError("Give class_mask only: label_mask is its former name.")
            warnings.warn("label_mask is deprecated: pass class_mask instead.", FutureWarning, stacklevel=2)
            class_mask = kwargs["label_mask"]
        grouping = self.checked_grouping(input_values.shape[0], group_ids, group_mean, group_scale)
        outputs = self.msemoboost(input_values, attention_mask=attention_mask, output_hidden_states=output_hidden_states,
                                  return_dict=True, output_attentions=output_attentions)
        segment_logits = self.classifier(outputs.segment_features)
        logits = self.utterance_logits(segment_logits, outputs.segments_per_utterance)
        losses = self.losses(outputs, segment_logits, logits, labels, class_mask, input_values, clean_input_values,
                             attention_mask)
        # The statistics classifier is fitted after training, not by the loss: its log-probabilities join the logits
        # only at inference, after the loss is computed (and not at all at weight 0, where they would add nothing);
        # then the calibration temperature divides them all (fitted after training too).
        statistics_logits = None
        if self.statistics_classifier is not None and not self.training and self.config.utterance_statistics_weight != 0:
            statistics_logits = self.statistics_logits(input_values, attention_mask, **grouping)
            logits = logits + statistics_logits
        logits = logits if self.training else self.calibrated(logits)
        output = MSEmoBoostSequenceClassifierOutput(
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            segments_per_utterance=outputs.segments_per_utterance,
            statistics_logits=statistics_logits,
            **losses,
        )
        return output if return_dict else output.to_tuple()

    def losses(
        self,
        outputs: MSEmoBoostModelOutput,
        segment_logits: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        class_mask: torch.Tensor | None,
        input_values: torch.Tensor,
        clean_input_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> dict:
        """`forward`'s `loss` and its parts (`classification_loss`, `statistics_loss`, `se_loss`), from the base model's
        `outputs`, the segments' and utterances' logits (before any statistics classifier) and `forward`'s inputs."""
        classification_loss = statistics_loss = se_loss = None
        if labels is not None:
            classification_loss = self.classification_loss(
                segment_logits, logits, labels, outputs.segments_per_utterance, class_mask=class_mask
            )
            if self.config.classify_statistics and self.config.statistics_loss_weight > 0:
                statistics_loss = self.statistics_loss(
                    outputs.segment_features, labels, outputs.segments_per_utterance, class_mask=class_mask
                )
        if self.se_head is not None and clean_input_values is not None:
            if clean_input_values.shape != input_values.shape:
                raise ValueError(
                    f"clean_input_values has shape {tuple(clean_input_values.shape)} but input_values has shape "
                    f"{tuple(input_values.shape)}: give the clean version of every noisy utterance, padded alike."
                )
            se_loss = self.speech_enhancement_loss(
                input_values, clean_input_values, attention_mask, outputs.last_hidden_state, outputs.frame_mask
            )
        terms = [
            classification_loss,
            None if statistics_loss is None else self.config.statistics_loss_weight * statistics_loss,
            None if se_loss is None else self.config.se_loss_weight * se_loss,
        ]
        terms = [term for term in terms if term is not None]
        return {
            "loss": sum(terms) if terms else None,
            "classification_loss": classification_loss if len(terms) > 1 else None,
            "statistics_loss": statistics_loss,
            "se_loss": se_loss,
        }

    def calibrated(self, logits: torch.Tensor, segments: bool = False) -> torch.Tensor:
        """Single-label classification: `logits` `(batch_size, num_labels)` divided by `config.calibration_temperature`
        (with `segments`, `(num_segments, num_labels)` by `config.segment_calibration_temperature`), whose softmax is
        then the calibrated probability; other problem types unchanged."""
        if self.config.problem_type not in (None, "single_label_classification"):
            return logits
        temperature = self.config.segment_calibration_temperature if segments else self.config.calibration_temperature
        return logits if temperature == 1 else logits / temperature

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


__all__ = [
    "MSEmoBoostForSequenceClassification",
    "MSEmoBoostModel",
    "MSEmoBoostModelOutput",
    "MSEmoBoostPreTrainedModel",
    "MSEmoBoostSequenceClassifierOutput",
    "MSEmoBoostSpeechEnhancementHead",
]
