"""The speech-enhancement head of MS-EmoBoost (`config.use_se_head`, not in the paper): a light per-frame head on the
SSL frames that predicts the clean magnitude spectrum of noisy speech, for joint emotion recognition and
enhancement training. [`MSEmoBoostSpeechEnhancement`] is its part of `MSEmoBoostForSequenceClassification` (a mixin),
so that the checkpoints' parameter names are the model's. A remote-code file of every checkpoint.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_msemoboost import MSEmoBoostConfig


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


class MSEmoBoostSpeechEnhancement:
    """The SE head's loss and its enhanced audio, a mixin of `MSEmoBoostForSequenceClassification`, which holds the
    head (`se_head`) and its frame STFT (`se_stft`)."""

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
