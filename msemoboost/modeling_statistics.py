"""The statistics of MS-EmoBoost that the paper does not have: per segment, the MFCC statistics and the pitch,
voicing and energy statistics that join the MFCC branch (`config.mfcc_statistics`, `config.prosody_statistics`);
per whole utterance, those statistics, the shape of their distributions (`config.utterance_distribution_statistics`)
and functionals of the log-mel bands (`config.utterance_log_mel_statistics`), classified by a logistic regression
fitted after training (`config.utterance_statistics_classifier`, [`MSEmoBoostStatisticsClassifier`]), optionally
standardised per speaker (`config.speaker_normalization`).

[`MSEmoBoostMFCCStatistics`] is the part of the MFCC branch (`MSEmoBoostMFCCEncoder`) that computes them, and
[`MSEmoBoostStatisticsHead`] the part of `MSEmoBoostForSequenceClassification` that classifies them; both are mixins
of those classes, so that the checkpoints' parameter names are the model's. A remote-code file of every checkpoint.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .acoustic_features import device_dtype, pre_emphasis


# What `config.prosody_statistics` adds per segment (`MSEmoBoostMFCCEncoder.prosody_statistics`).
NUM_PROSODY_STATISTICS = 9
NUM_PROSODY_DISTRIBUTION_STATISTICS = 11  # config.utterance_distribution_statistics with prosody_statistics
NUM_BAND_FUNCTIONALS = 11  # config.utterance_log_mel_statistics, per band (`masked_band_functionals`)
# The dtype of the whole-utterance MFCC's STFT (`MSEmoBoostMFCCEncoder.utterance_statistics`). The MFCC's medians
# and percentiles read the weak bins of the spectrum, which a float32 FFT gets only to a digit or two, and a fitted
# statistics classifier reads them steeply (up to 25 logits per unit): on the CPU preset's trained models two float32
# FFTs (torch.stft's and the ONNX graph's) gave logits up to 2.8e-4 apart, torch.stft's up to 1.6e-4 from exact. In
# float64 every bin is its exact power rounded to float32: 6.9e-5 apart at worst. The prosody's STFT and the segments'
# features, where float64 made no measurable difference, stay float32. It costs the CPU preset's model about 1.2x its
# time; models without the statistics classifier never compute this (BENCHMARKS.md section 4).
UTTERANCE_FFT_DTYPE = torch.float64


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


def masked_band_functionals(bands: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The functionals of `config.utterance_log_mel_statistics` over dim 1 of `bands` `(batch, time, num_bands)`,
    counting only the steps where `mask` `(batch, time, 1)` is 1, which must come first (a prefix, as the frames within
    an utterance are): `(batch, 11 * num_bands)`, eleven blocks of one value per band, in this order: the mean, the
    standard deviation, the 10th, 50th and 90th percentiles, the range, the covariance with the time standardised
    over the counted steps (`numpy.std`'s), the skewness, the excess kurtosis (`masked_skewness_kurtosis`), and the
    standard deviation and the mean absolute value of the change between consecutive counted steps. The deviations
    are `numpy.std`'s, without an offset; with one step counted, everything but the level is 0."""
    count = mask.sum(1).clamp(min=1)  # (batch, 1)
    mean = (bands * mask).sum(1) / count
    deviation = (((bands - mean[:, None]) * mask).square().sum(1) / count).sqrt()
    highest = bands.masked_fill(mask == 0, -torch.inf).amax(1)
    lowest = bands.masked_fill(mask == 0, torch.inf).amin(1)
    rank = mask.cumsum(1) - 1  # (batch, time, 1)
    time_mean = (count[:, None] - 1) / 2
    time_std = ((count[:, None].square() - 1) / 12).sqrt().clamp(min=1e-9)
    time = (rank - time_mean) / time_std * mask
    covariance = (bands * time).sum(1) / count
    pairs = mask[:, 1:] * mask[:, :-1]
    num_pairs = pairs.sum(1).clamp(min=1)
    change = bands[:, 1:] - bands[:, :-1]
    change_mean = (change * pairs).sum(1) / num_pairs
    change_deviation = (((change - change_mean[:, None]) * pairs).square().sum(1) / num_pairs).sqrt()
    change_size = (change.abs() * pairs).sum(1) / num_pairs
    return torch.cat([mean, deviation, *masked_quantiles(bands, mask, (0.1, 0.5, 0.9)), highest - lowest, covariance,
                      *masked_skewness_kurtosis(bands, mask), change_deviation, change_size], dim=-1)


class MSEmoBoostMFCCStatistics:
    """The statistics of the MFCC branch, a mixin of `MSEmoBoostMFCCEncoder`, which sets the attributes they read
    (`mfcc`, `prosody`, `log_mel`, `hop_length`, `mfcc_statistics`, `distribution_statistics`, `segment_samples` and the
    voicing and energy thresholds)."""

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

    def log_mel_statistics(self, waveform: torch.Tensor, lengths: torch.LongTensor) -> torch.Tensor:
        """Raw whole utterances `(batch_size, num_samples)` (not pre-emphasised), right-padded, and their lengths in
        samples `(batch_size,)` → the functionals of `config.utterance_log_mel_statistics` over each utterance's
        log-mel frames that lie within it (and the first frame, for an utterance shorter than one window): `(batch_size,
        11 * log_mel_num_bands)`, in float32 (`masked_band_functionals`). The STFT is computed in float64
        (`UTTERANCE_FFT_DTYPE`) and the functionals too, a band's kurtosis being a fourth moment (in float32 on Apple's
        MPS, which has no float64)."""
        bands = self.log_mel(waveform, UTTERANCE_FFT_DTYPE).to(device_dtype(torch.float64, waveform.device))
        frames = torch.arange(bands.shape[1], device=bands.device)
        inside = (frames * self.log_mel.hop_length + self.log_mel.win_length <= lengths[:, None]) | (frames == 0)
        return masked_band_functionals(bands, inside.to(bands.dtype)[..., None]).float()

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


class MSEmoBoostStatisticsClassifier(nn.Module):
    """A linear classifier on the whole utterance's statistics (`config.utterance_statistics_classifier`): the
    statistics are standardised with `mean` and `scale` (the training data's), then `weight` and `bias` give the
    logits. All four are buffers, not parameters: the classifier is fitted after training, as a convex logistic
    regression (`msemoboost.statistics_fusion.fit_statistics_classifier`), never by gradient. Until fitted its
    weights are 0, a uniform distribution.

    With `ungrouped` (`config.ungrouped_statistics_weight`), a second regression, `ungrouped_weight` and
    `ungrouped_bias`, fitted on the training data's standardisation, classifies the utterances that no group
    standardises ([`~MSEmoBoostStatisticsClassifier.ungrouped_rows`]); `weight` and `bias` then classify the others.

    Forward inputs: `statistics` of shape `(batch_size, num_statistics)`; optionally each utterance's own `mean` and
    `scale` `(batch_size, num_statistics)` to standardise it with instead (its group's, `config.speaker_normalization`).
    Forward output: log-probabilities of shape `(batch_size, num_labels)`.
    """

    def __init__(self, num_statistics: int, num_labels: int, ungrouped: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_statistics))
        self.register_buffer("scale", torch.ones(num_statistics))
        self.register_buffer("weight", torch.zeros(num_labels, num_statistics))
        self.register_buffer("bias", torch.zeros(num_labels))
        self.ungrouped = ungrouped
        if ungrouped:
            self.register_buffer("ungrouped_weight", torch.zeros(num_labels, num_statistics))
            self.register_buffer("ungrouped_bias", torch.zeros(num_labels))

    def forward(
        self, statistics: torch.Tensor, mean: torch.Tensor | None = None, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        grouped = self.standardised(statistics, mean, scale)
        log_probabilities = F.linear(grouped, self.weight, self.bias).log_softmax(-1)
        if not self.ungrouped:
            return log_probabilities
        ungrouped = F.linear(self.standardised(statistics), self.ungrouped_weight, self.ungrouped_bias).log_softmax(-1)
        if mean is None and scale is None:
            return ungrouped
        return torch.where(self.ungrouped_rows(mean, scale)[:, None], ungrouped, log_probabilities)

    def standardised(
        self, statistics: torch.Tensor, mean: torch.Tensor | None = None, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`statistics` `(batch_size, num_statistics)` standardised by `mean` and `scale`, or the training data's."""
        mean = self.mean if mean is None else mean
        scale = self.scale if scale is None else scale
        return (statistics - mean) / scale

    def ungrouped_rows(self, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Which utterances `mean` and `scale` `(batch_size, num_statistics)` leave standardised by the training
        data's statistics (`group_statistics` gives those to an utterance without a group, or in a group too small):
        `(batch_size,)` booleans."""
        return ((mean == self.mean.to(mean.dtype)).all(-1)) & ((scale == self.scale.to(scale.dtype)).all(-1))

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


class MSEmoBoostStatisticsHead:
    """The statistics classifier's part of `MSEmoBoostForSequenceClassification` (a mixin): the whole utterance's
    statistics, the classifier's weighted log-probabilities, speaker normalisation by group, and the loss of the
    statistics' own logits (`config.classify_statistics`)."""

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
        `attention_mask` (see [`~MSEmoBoostMFCCEncoder.utterance_statistics`]), followed by the log-mel functionals of
        the waveforms as given, not pre-emphasised, with `config.utterance_log_mel_statistics`
        ([`~MSEmoBoostMFCCEncoder.log_mel_statistics`])."""
        encoder = self.msemoboost.mfcc_encoder
        if encoder is None or not encoder.num_statistics:
            raise ValueError("utterance_statistics() needs config.mfcc_statistics or config.prosody_statistics.")
        lengths = self.msemoboost.utterance_lengths(input_values, attention_mask)
        return self.statistics_of_lengths(input_values, lengths)

    def statistics_of_lengths(self, input_values: torch.Tensor, lengths: torch.LongTensor) -> torch.Tensor:
        """[`~MSEmoBoostForSequenceClassification.utterance_statistics`] from raw waveforms and their lengths in
        samples `(batch_size,)`, already checked: the computation that the ONNX graph shares."""
        encoder = self.msemoboost.mfcc_encoder
        statistics = encoder.utterance_statistics(pre_emphasis(input_values, self.config.pre_emphasis), lengths)
        if encoder.log_mel is not None:
            statistics = torch.cat([statistics, encoder.log_mel_statistics(input_values, lengths)], dim=-1)
        return statistics

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
        `config.utterance_statistics_weight`: `(batch_size, num_labels)`. With `config.ungrouped_statistics_weight`,
        the utterances that no group standardises get the ungrouped regression's times that weight instead."""
        classifier, weight = self.statistics_classifier, self.config.utterance_statistics_weight
        log_probabilities = classifier(statistics, group_mean, group_scale)
        if not classifier.ungrouped:
            return weight * log_probabilities
        ungrouped_weight = self.config.ungrouped_statistics_weight
        if group_mean is None and group_scale is None:
            return ungrouped_weight * log_probabilities
        ungrouped = classifier.ungrouped_rows(group_mean, group_scale)[:, None]
        return log_probabilities * torch.where(ungrouped, ungrouped_weight, weight).to(log_probabilities.dtype)

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
