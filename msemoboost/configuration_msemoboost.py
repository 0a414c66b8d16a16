"""MS-EmoBoost model configuration."""

import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Hugging Face audio SSL models whose bare model maps a raw waveform to frame features through a strided
# convolutional feature encoder described by `conv_kernel` / `conv_stride`.
SUPPORTED_BACKBONE_TYPES = (
    "wav2vec2",
    "wav2vec2-conformer",
    "hubert",
    "wavlm",
    "data2vec-audio",
    "unispeech",
    "unispeech-sat",
)


FRAME_WEIGHTINGS = ("relu", "linear", "softmax", "mean_residual")


class MSEmoBoostConfig(PreTrainedConfig):
    r"""
    Configuration of an MS-EmoBoost speech emotion recognition model (Song et al., Scientific Reports 2025).

    An SSL speech backbone turns each 3 s segment of raw audio into frame features `X_w` of shape
    `(num_frames, hidden_size)`. Two guidance branches, computed from the same segment inside the model, produce a
    frame-weighting vector `X_enh` of shape `(num_frames,)`: MFCC → Bi-LSTM → residual self-attention, and log
    spectrogram → AlexNet features → residual self-attention. The pooled segment feature `X_enh · X_w` is classified
    by one linear layer; an utterance's prediction is the mean of its segments' log-probabilities.

    The defaults reproduce the paper with a wav2vec2-base backbone.

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the SSL backbone. Any Hugging Face audio SSL model listed in `SUPPORTED_BACKBONE_TYPES`
            (wav2vec2, wav2vec2-conformer, HuBERT, WavLM, data2vec-audio, UniSpeech, UniSpeech-SAT). Defaults to a
            wav2vec2-base `Wav2Vec2Config()`.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate in Hz of the waveform the model expects.
        segment_length_s (`float`, *optional*, defaults to 3.0):
            Length of the segments an utterance is cut into. An utterance longer than one segment ends with the last
            `segment_length_s` of its audio, overlapping the segment before it (as the reference code, CA-MSER, cuts
            it), so every segment is a full window of audio; only an utterance shorter than one segment is
            zero-padded.
        segment_chunk_size (`int`, *optional*, defaults to 16):
            How many segments go through the network at once. It bounds memory for long recordings and does not
            change any output.
        use_backbone_features (`bool`, *optional*, defaults to `True`):
            Pool SSL frame features. When `False`, no backbone is built and the classifier reads the concatenated
            guidance vectors (the "guidance only" ablation).
        use_mfcc (`bool`, *optional*, defaults to `True`):
            Build the MFCC guidance branch.
        use_spectrogram (`bool`, *optional*, defaults to `True`):
            Build the spectrogram guidance branch. With both guidance branches off the model is the backbone-only
            baseline: masked mean pooling of the SSL frames.
        use_attention (`bool`, *optional*, defaults to `True`):
            Apply residual self-attention in each guidance branch (the paper's Table 4 ablation).
        pre_emphasis (`float`, *optional*, defaults to 0.97):
            Pre-emphasis coefficient applied to the segment before both guidance features.
        num_mfcc (`int`, *optional*, defaults to 40):
            Number of MFCC coefficients.
        mfcc_num_mel_bins (`int`, *optional*, defaults to 128):
            Number of HTK mel filters the MFCC is computed from (librosa's default).
        mfcc_n_fft (`int`, *optional*, defaults to 2048):
            DFT length of the MFCC's STFT (librosa's default).
        mfcc_window (`str`, *optional*, defaults to `"hann"`):
            Window of the MFCC's STFT, a name `transformers.audio_utils.window_function` accepts.
        mfcc_hop_length (`int`, *optional*, defaults to 160):
            Hop of the MFCC's STFT in samples (10 ms at 16 kHz).
        mfcc_top_db (`float`, *optional*, defaults to 80.0):
            Dynamic range kept by the MFCC's power-to-dB conversion.
        lstm_hidden_size (`int`, *optional*, defaults to 256):
            Hidden size per direction of the MFCC branch's Bi-LSTM.
        lstm_num_layers (`int`, *optional*, defaults to 2):
            Number of Bi-LSTM layers.
        lstm_dropout (`float`, *optional*, defaults to 0.5):
            Dropout between Bi-LSTM layers.
        spectrogram_n_fft (`int`, *optional*, defaults to 800):
            DFT length of the spectrogram.
        spectrogram_win_length (`int`, *optional*, defaults to 640):
            Window length of the spectrogram in samples (40 ms at 16 kHz).
        spectrogram_window (`str`, *optional*, defaults to `"hamming"`):
            Window of the spectrogram.
        spectrogram_hop_length (`int`, *optional*, defaults to 160):
            Hop of the spectrogram in samples (10 ms at 16 kHz).
        spectrogram_num_bins (`int`, *optional*, defaults to 200):
            Number of lowest DFT bins kept (200 of 401: 0–4 kHz at 16 kHz).
        spectrogram_top_db (`float`, *optional*, defaults to 80.0):
            Dynamic range kept by the amplitude-to-dB conversion.
        spectrogram_image_size (`int`, *optional*, defaults to 256):
            The spectrogram image is resized so that its short side has this many pixels.
        image_mean (`list[float]`, *optional*, defaults to `[0.485, 0.456, 0.406]`):
            Per-channel mean of the ImageNet normalisation applied to the spectrogram image.
        image_std (`list[float]`, *optional*, defaults to `[0.229, 0.224, 0.225]`):
            Per-channel standard deviation of that normalisation.
        spectrogram_conv_channels (`list[int]`, *optional*, defaults to `[64, 192, 384, 256, 256]`):
            Output channels of AlexNet's five convolutions. Keep the default to load ImageNet weights.
        spectrogram_pool_size (`int`, *optional*, defaults to 6):
            Side of the adaptive average pool after the AlexNet features (6 × 6 = 36 tokens).
        guidance_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on each flattened guidance branch before its projection.
        guidance_hidden_size (`int`, *optional*, defaults to 128):
            Size each guidance branch is projected to before fusion.
        frame_weighting (`str`, *optional*, defaults to `"linear"`):
            How the fused guidance becomes the frame weights `X_enh` (eq. 11). `"linear"`: a plain `Linear(g)`, as
            eq. 11 is written (and as checkpoints saved before this option behave); `"relu"`:
            `ReLU(Linear(Dropout(g)))`, as the reference code (CA-MSER) computes it; `"softmax"`: a softmax of
            `Linear(g)` over the frames that hold audio; `"mean_residual"`: `(1 + Linear(g)) / num_audio_frames` with
            the linear layer initialised to zero, so pooling starts as the masked mean and learns to depart from it.
            The last two are recipe options, not the paper's.
        mfcc_normalization (`str`, *optional*, defaults to `"l2"`):
            `"l2"`: each MFCC frame is L2-normalised over its coefficients (the reference code). `"standardize"`:
            each coefficient is brought to zero mean and unit variance over the segment's frames that hold audio
            (cepstral mean and variance normalisation; padded frames become 0). A recipe option.
        mfcc_statistics (`bool`, *optional*, defaults to `False`):
            Add the segment's MFCC statistics to the MFCC branch: per coefficient, the mean and standard deviation
            over the frames that hold audio and the standard deviation of the frame-to-frame change (`3 * num_mfcc`
            values), standardised with the training segments' statistics, join the flattened Bi-LSTM output before
            its projection. They carry the levels and spreads that `"standardize"` removes. A recipe option; `False`
            is the paper.
        prosody_statistics (`bool`, *optional*, defaults to `False`):
            Add the segment's prosody statistics to the MFCC branch, beside (or without) the MFCC statistics: frame
            pitch and voicing by the autocorrelation method ([`MSEmoBoostProsody`], of the same pre-emphasised
            segment), and frame energy; then the mean, standard deviation and frame-to-frame standard deviation of
            the pitch (semitones) over voiced frames, the mean voicing strength, the voiced fraction of the frames
            that hold audio, the mean, standard deviation and frame-to-frame standard deviation of the energy (dB)
            over the frames within `energy_floor_db` of the segment's loudest, and the fraction of the segment that
            holds audio (9 values), standardised like the MFCC statistics. A recipe option; `False` is the paper.
        prosody_n_fft (`int`, *optional*, defaults to 1024):
            FFT size of the prosody frames. It must hold the window and the longest pitch period:
            `prosody_win_length + ceil(sampling_rate / pitch_min_hz) <= prosody_n_fft`, so that the autocorrelation
            computed from the power spectrum is not circular at the lags searched.
        prosody_win_length (`int`, *optional*, defaults to 640):
            Length of the prosody frames' Hann window (40 ms at 16 kHz: two periods of 50 Hz), centred in
            `prosody_n_fft`; it must be longer than the longest pitch period searched. The hop is `mfcc_hop_length`.
        prosody_max_frequency (`float`, *optional*, defaults to 4000.0):
            The autocorrelation is computed from the power spectrum up to this frequency.
        pitch_min_hz (`float`, *optional*, defaults to 60.0), pitch_max_hz (`float`, *optional*, defaults to 500.0):
            The pitch range searched.
        pitch_step_semitones (`float`, *optional*, defaults to 0.1):
            The pitches searched are `pitch_max_hz` and every `pitch_step_semitones` below it down to `pitch_min_hz`
            (368 by default), at their exact, fractional lags.
        pitch_octave_cost (`float`, *optional*, defaults to 0.01):
            Praat's octave cost: the peak of the normalised autocorrelation is chosen after subtracting this much per
            octave of lag above the shortest, so that a periodic frame's period beats its multiples.
        voicing_threshold (`float`, *optional*, defaults to 0.45):
            A frame is voiced when the peak of its normalised autocorrelation in the pitch range exceeds this (Praat's
            default voicing threshold) and its energy is within `voicing_floor_db` of the segment's loudest frame.
        voicing_floor_db (`float`, *optional*, defaults to 30.0):
            See `voicing_threshold`.
        energy_floor_db (`float`, *optional*, defaults to 60.0):
            The energy statistics count the frames within this many dB of the segment's loudest frame.
        mfcc_pool_frames (`int`, *optional*):
            When set, the Bi-LSTM output is average-pooled over time to this many steps before it is flattened, which
            shrinks the MFCC projection (301 × 512 inputs in the paper) by the same factor. `None` is the paper.
        classifier_input (`str`, *optional*, defaults to `"pooled"`):
            What the classifier reads for each segment: `"pooled"`, the weighted SSL feature `X'_w` (the paper), or
            `"pooled_and_guidance"`, `[X'_w ; guidance vectors]` (a recipe option that lets the classifier use what
            the guidance branches know directly). Without guidance branches both read `X'_w`, the masked mean.
        classify_statistics (`bool`, *optional*, defaults to `False`):
            The classifier also reads each segment's standardised statistics (those of `mfcc_statistics` and
            `prosody_statistics`, one of which must be on), after what `classifier_input` gives it; and its part for
            them (its columns for the statistics, and its bias) is trained as a classifier of its own too: the
            cross-entropy of those logits alone, times `statistics_loss_weight`, joins the loss. The logits are then
            a linear classifier on the statistics, which learns as the classical recipe of a linear SVM on them does
            (`benchmarks/anchors.py`) whatever the rest of the network fits, plus what the rest of the network adds.
            A recipe option; `False` is the paper.
        statistics_loss_weight (`float`, *optional*, defaults to 1.0):
            The weight of that statistics-only loss with `classify_statistics`; 0 leaves the statistics in the
            classifier without a loss of their own.
        utterance_statistics_classifier (`bool`, *optional*, defaults to `False`):
            Add a linear classifier on the statistics of each **whole utterance** (the statistics that
            `mfcc_statistics` and `prosody_statistics` give each segment, one of which must be on), whose
            log-probabilities are added to the utterance's `logits` at inference (in `eval()` mode), times
            `utterance_statistics_weight`: the product of the two models' distributions. It is not trained by
            gradient: `msemoboost.statistics_fusion.fit_statistics_classifier` fits it after training, as a convex,
            class-balanced L2 logistic regression whose penalty is chosen by speaker-grouped cross-validation on the
            training data (`train.py` does this for every model it trains). Until fitted it adds the same value,
            `-log(num_labels)`, to every class. Single-label classification only. A recipe option; `False` is the
            paper.
        utterance_statistics_weight (`float`, *optional*, defaults to 1.0):
            The weight of that classifier's log-probabilities in the `logits`; 0 leaves them out.
        utterance_distribution_statistics (`bool`, *optional*, defaults to `False`):
            The utterance statistics classifier also reads the shape of the distributions over the whole utterance,
            the functionals a classical openSMILE recipe adds to means and deviations: per MFCC coefficient (with
            `mfcc_statistics`) the skewness, the excess kurtosis, the 10th, 50th and 90th percentiles and the slope
            of a straight line fitted over the frames (`6 * num_mfcc` values); and (with `prosody_statistics`) the
            5th, 50th and 95th percentiles of the pitch over voiced frames and of the energy over loud frames, the
            pitch's 5th-to-95th percentile range, the slopes of both and their skewness (11 values). Needs
            `utterance_statistics_classifier`. A recipe option.
        utterance_log_mel_statistics (`bool`, *optional*, defaults to `False`):
            The utterance statistics classifier also reads functionals of the whole utterance's log-mel bands, after
            the statistics above: `log_mel_num_bands` Slaney mel bands of the raw waveform (before pre-emphasis), a
            periodic Hann window of `log_mel_win_length` samples in `log_mel_n_fft` points every `mfcc_hop_length`
            samples, `log10` of the mel power floored at 1e-10, over the frames that lie within the utterance; per
            band, its mean, standard deviation, 10th, 50th and 90th percentiles, range, covariance with the
            standardised time, skewness, excess kurtosis, and the standard deviation and mean absolute value of its
            frame-to-frame change (`11 * log_mel_num_bands` values). Where the MFCC compresses the spectrum's shape
            into a few coefficients, these keep each band's level, spread and movement. Needs
            `utterance_statistics_classifier`. A recipe option.
        log_mel_num_bands (`int`, *optional*, defaults to 40):
            Mel bands of `utterance_log_mel_statistics`.
        log_mel_n_fft (`int`, *optional*, defaults to 512):
            FFT size of `utterance_log_mel_statistics`' frames.
        log_mel_win_length (`int`, *optional*, defaults to 400):
            Window (and frame) length of `utterance_log_mel_statistics`, in samples, at most `log_mel_n_fft`: 25 ms.
        speaker_normalization (`bool`, *optional*, defaults to `False`):
            The utterance statistics classifier reads each utterance's statistics standardised by the mean and
            standard deviation of its **group**'s (a speaker's, a session's, a corpus's): the classical speaker
            normalisation of emotion recognition, which takes away what is constant in a voice and a recording. The
            groups are given at inference (`group_ids`, or `group_mean` and `group_scale`, in `forward`); they need no
            labels. An utterance without a group, or in a group of fewer than `speaker_normalization_min_utterances`,
            is standardised by the training data's statistics instead. `fit_statistics_classifier` fits the classifier
            on the training utterances standardised per speaker. Needs `utterance_statistics_classifier`. A recipe
            option.
        speaker_normalization_min_utterances (`int`, *optional*, defaults to 2):
            The fewest utterances of a group whose own statistics standardise them, with `speaker_normalization`.
        ungrouped_statistics_weight (`float`, *optional*):
            With `speaker_normalization`: `None` (the default) classifies an utterance without a group (or in a group
            too small) with the speaker-normalised regression, its statistics standardised by the training data's. A
            number gives the statistics classifier a second logistic regression, fitted on the training utterances
            standardised by the training data's statistics (as without `speaker_normalization`), which classifies
            those utterances instead, its log-probabilities weighted by this number in place of
            `utterance_statistics_weight`. A regression fitted on speaker-normalised statistics reads a lone
            recording's, standardised by the whole training data's, as a shifted input; the second one reads them
            as it was fitted. `train.py --speaker_normalization true` fits both and chooses both weights.
        pooled_normalization (`str`, *optional*, defaults to `"none"`):
            `"none"`: the classifier reads `X'_w` as pooled (the paper). `"batch_norm"`: each dimension of `X'_w` is
            standardised, with the statistics of the training segments (batch statistics while training, their
            running averages at inference; no learned scale), as a SUPERB-style probe standardises its features. A
            recipe option.
        use_weighted_layer_sum (`bool`, *optional*, defaults to `False`):
            Pool a learned softmax-weighted sum of the backbone's hidden states (its embedding output and every
            layer's, as `Wav2Vec2ForSequenceClassification` does) instead of its last layer alone. `False` is the
            paper; a pretrained backbone's middle layers often carry more emotion than its last (SUPERB).
        loss_level (`str`, *optional*, defaults to `"segment"`):
            Where the single-label cross-entropy is computed. `"segment"` (the paper): every 3 s segment is scored
            against its utterance's label, and `loss` is the mean over segments. `"utterance"`: `loss` is the
            cross-entropy of the returned utterance `logits`. Multi-label classification and regression
            (`problem_type`) always use the utterance logits.
        class_weights (`list[float]`, *optional*):
            Weight of each class in the cross-entropy (one per label), e.g. inverse class frequencies for a
            class-balanced loss. `None` is the paper's unweighted loss.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the single-label cross-entropy, in `[0, 1)`: the target puts `1 - label_smoothing`
            on the utterance's class and spreads `label_smoothing` evenly over all classes (as
            `torch.nn.functional.cross_entropy` does), together with `class_weights` and at `loss_level`. 0 is the
            paper. (`train.py --label_smoothing_factor` sets it.)
        use_se_head (`bool`, *optional*, defaults to `False`):
            Add a light speech-enhancement (SE) head on the shared SSL frame features (`X_w`). Trained jointly when
            clean targets are given (`clean_input_values`): loss = SER cross-entropy + `se_loss_weight` × SE loss.
            It needs `use_backbone_features=True`.
        se_target (`str`, *optional*, defaults to `"mask"`):
            What the SE head predicts for each backbone frame: `"mask"`, a [0, 1] mask over the noisy magnitude
            spectrogram, or `"magnitude"`, the clean magnitude spectrogram itself (compressed, see
            `se_compression`). The spectrogram is aligned with the backbone's frames: window = the feature
            encoder's receptive field (400 samples for wav2vec2), hop = its stride (320), periodic Hann window.
        se_hidden_size (`int`, *optional*, defaults to 256):
            Hidden size of the SE head's two-layer perceptron.
        se_loss_weight (`float`, *optional*, defaults to 0.5):
            Weight of the SE loss in the training loss.
        se_compression (`float`, *optional*, defaults to 0.3):
            The SE loss is the mean squared error between magnitudes raised to this power (power-law compression,
            as common in SE); `"magnitude"` heads predict the compressed magnitude.
        calibration_temperature (`float`, *optional*, defaults to 1.0):
            Calibration: in `eval()` mode the utterance `logits` (single-label classification) are divided by it, so
            that their softmax is a probability that means what it says (of the utterances given 0.8, about 80 % are
            right). `train.py` fits it after training, by minimising the log-loss of held-out predictions
            (`msemoboost.calibration.fit_temperature`); 1.0 leaves the logits as trained. It never changes which
            class is top.
        segment_calibration_temperature (`float`, *optional*, defaults to 1.0):
            The same for each 3 s segment's log-probabilities (the timelines of `msemoboost predict --timeline`,
            the Inference Endpoints handler and the ONNX graph's `segment_logits`), fitted on held-out segments.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of linear layers.

    Example:

    ```python
    >>> from msemoboost import MSEmoBoostConfig, MSEmoBoostForSequenceClassification

    >>> config = MSEmoBoostConfig(num_labels=4)
    >>> config.num_backbone_frames(config.segment_samples)
    149
    >>> model = MSEmoBoostForSequenceClassification(config)
    ```"""

    model_type = "msemoboost"
    # Extra outputs (a jointly trained SE head's, the statistics' own loss and logits) that `Trainer.predict` must not
    # mistake for logits.
    keys_to_ignore_at_inference = [
        "hidden_states", "attentions", "segments_per_utterance", "classification_loss", "statistics_loss", "se_loss",
        "statistics_logits",
    ]
    sub_configs_defaults = {"backbone_config": SubConfigSpec(AutoConfig, model_type="wav2vec2")}

    backbone_config: dict | PreTrainedConfig | None = None
    sampling_rate: int = 16000
    segment_length_s: float | int = 3.0
    segment_chunk_size: int = 16
    use_backbone_features: bool = True
    use_mfcc: bool = True
    use_spectrogram: bool = True
    use_attention: bool = True
    pre_emphasis: float = 0.97
    num_mfcc: int = 40
    mfcc_num_mel_bins: int = 128
    mfcc_n_fft: int = 2048
    mfcc_window: str = "hann"
    mfcc_hop_length: int = 160
    mfcc_top_db: float = 80.0
    lstm_hidden_size: int = 256
    lstm_num_layers: int = 2
    lstm_dropout: float = 0.5
    spectrogram_n_fft: int = 800
    spectrogram_win_length: int = 640
    spectrogram_window: str = "hamming"
    spectrogram_hop_length: int = 160
    spectrogram_num_bins: int = 200
    spectrogram_top_db: float = 80.0
    spectrogram_image_size: int = 256
    image_mean: list[float] | tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: list[float] | tuple[float, ...] = (0.229, 0.224, 0.225)
    spectrogram_conv_channels: list[int] | tuple[int, ...] = (64, 192, 384, 256, 256)
    spectrogram_pool_size: int = 6
    guidance_dropout: float = 0.1
    guidance_hidden_size: int = 128
    frame_weighting: str = "linear"
    mfcc_normalization: str = "l2"
    mfcc_pool_frames: int | None = None
    mfcc_statistics: bool = False
    prosody_statistics: bool = False
    prosody_n_fft: int = 1024
    prosody_win_length: int = 640
    prosody_max_frequency: float = 4000.0
    pitch_min_hz: float = 60.0
    pitch_max_hz: float = 500.0
    pitch_step_semitones: float = 0.1
    pitch_octave_cost: float = 0.01
    voicing_threshold: float = 0.45
    voicing_floor_db: float = 30.0
    energy_floor_db: float = 60.0
    classifier_input: str = "pooled"
    classify_statistics: bool = False
    statistics_loss_weight: float = 1.0
    utterance_statistics_classifier: bool = False
    utterance_statistics_weight: float = 1.0
    utterance_distribution_statistics: bool = False
    utterance_log_mel_statistics: bool = False
    log_mel_num_bands: int = 40
    log_mel_n_fft: int = 512
    log_mel_win_length: int = 400
    speaker_normalization: bool = False
    speaker_normalization_min_utterances: int = 2
    ungrouped_statistics_weight: float | None = None
    pooled_normalization: str = "none"
    use_weighted_layer_sum: bool = False
    loss_level: str = "segment"
    class_weights: list[float] | tuple[float, ...] | None = None
    label_smoothing: float = 0.0
    use_se_head: bool = False
    se_target: str = "mask"
    se_hidden_size: int = 256
    se_loss_weight: float = 0.5
    se_compression: float = 0.3
    calibration_temperature: float = 1.0
    segment_calibration_temperature: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        num_labels = kwargs.get("num_labels")
        if num_labels is not None and self.id2label is not None and len(self.id2label) != num_labels:
            raise ValueError(
                f"num_labels={num_labels} disagrees with id2label, which has {len(self.id2label)} labels "
                f"({list(self.id2label.values())}). Pass one of them, or make them agree."
            )
        if self.id2label is not None and self.label2id is not None:
            inverse = {label: int(index) for index, label in self.id2label.items()}
            if inverse != {label: int(index) for label, index in self.label2id.items()}:
                raise ValueError(f"label2id {self.label2id} is not the inverse of id2label {self.id2label}.")
        self.backbone_config = _as_audio_ssl_config(self.backbone_config)
        super().__post_init__(**kwargs)
        self._validate_sizes()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "MSEmoBoostConfig":
        """As transformers' own configs: `num_labels` given to `from_pretrained` (with or without new `id2label` and
        `label2id`) replaces the saved label maps, for a new head, instead of disagreeing with them.
        (transformers sets `num_labels` before it sets the other keyword arguments.)"""
        num_labels = kwargs.get("num_labels")
        if num_labels is not None:
            config_dict = dict(config_dict)
            if "id2label" in kwargs:
                config_dict["id2label"] = kwargs["id2label"]
                config_dict["label2id"] = kwargs.get("label2id")
            elif len(config_dict.get("id2label") or {}) != num_labels:
                config_dict["id2label"] = config_dict["label2id"] = None
        return super().from_dict(config_dict, **kwargs)

    def _validate_prosody(self):
        if not 0 < self.pitch_min_hz < self.pitch_max_hz <= self.sampling_rate / 2:
            raise ValueError(
                f"pitch_min_hz and pitch_max_hz must satisfy 0 < pitch_min_hz < pitch_max_hz <= sampling_rate / 2 "
                f"= {self.sampling_rate / 2}, got {self.pitch_min_hz} and {self.pitch_max_hz}."
            )
        if self.prosody_win_length + math.ceil(self.sampling_rate / self.pitch_min_hz) > self.prosody_n_fft:
            raise ValueError(
                f"prosody_n_fft ({self.prosody_n_fft}) must hold the window ({self.prosody_win_length}) and the longest "
                f"pitch period searched (ceil({self.sampling_rate} / pitch_min_hz={self.pitch_min_hz}) = "
                f"{math.ceil(self.sampling_rate / self.pitch_min_hz)} samples); raise prosody_n_fft or pitch_min_hz."
            )
        if math.ceil(self.sampling_rate / self.pitch_min_hz) >= self.prosody_win_length:
            raise ValueError(
                f"prosody_win_length ({self.prosody_win_length}) must be longer than the longest pitch period searched "
                f"(ceil({self.sampling_rate} / pitch_min_hz={self.pitch_min_hz}) = "
                f"{math.ceil(self.sampling_rate / self.pitch_min_hz)} samples): a window's autocorrelation is 0 beyond "
                "its length."
            )
        if not self.pitch_step_semitones > 0:
            raise ValueError(f"pitch_step_semitones must be positive, got {self.pitch_step_semitones}.")
        if not 0 < self.prosody_max_frequency <= self.sampling_rate / 2:
            raise ValueError(
                f"prosody_max_frequency must be in (0, sampling_rate / 2 = {self.sampling_rate / 2}], got "
                f"{self.prosody_max_frequency}."
            )

    def _validate_sizes(self):
        """The front end's sizes and the switches (then [`_validate_heads`] and [`_validate_choices`])."""
        if not self.use_backbone_features and not (self.use_mfcc or self.use_spectrogram):
            raise ValueError(
                "use_backbone_features, use_mfcc and use_spectrogram are all False: the model would have no "
                "features to classify. Turn at least one on."
            )
        if self.segment_length_s <= 0:
            raise ValueError(f"segment_length_s must be positive, got {self.segment_length_s}.")
        if self.spectrogram_win_length > self.spectrogram_n_fft:
            raise ValueError(
                f"spectrogram_win_length ({self.spectrogram_win_length}) may not exceed "
                f"spectrogram_n_fft ({self.spectrogram_n_fft})."
            )
        if not 0 < self.spectrogram_num_bins <= self.spectrogram_n_fft // 2 + 1:
            raise ValueError(
                f"spectrogram_num_bins must be in [1, {self.spectrogram_n_fft // 2 + 1}] for "
                f"spectrogram_n_fft={self.spectrogram_n_fft}, got {self.spectrogram_num_bins}."
            )
        if not 0 < self.num_mfcc <= self.mfcc_num_mel_bins:
            raise ValueError(
                f"num_mfcc must be in [1, mfcc_num_mel_bins={self.mfcc_num_mel_bins}], got {self.num_mfcc}."
            )
        if self.prosody_statistics:  # the tracker's settings matter only when it is built
            self._validate_prosody()
        if len(self.spectrogram_conv_channels) != 5:
            raise ValueError(
                "spectrogram_conv_channels lists the output channels of AlexNet's 5 convolutions, got "
                f"{list(self.spectrogram_conv_channels)}."
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need one value per RGB channel (3 each).")
        if getattr(self.backbone_config, "add_adapter", False):
            raise ValueError(
                "backbone_config.add_adapter=True changes the backbone's frame rate, which the frame weights X_enh "
                "are sized for; set add_adapter=False."
            )
        self._validate_heads()
        self._validate_choices()

    def _validate_heads(self):
        """The optional parts (statistics, their classifier, speaker normalisation, the SE head) and what each needs."""
        if self.use_se_head and not self.use_backbone_features:
            raise ValueError("use_se_head=True needs use_backbone_features=True: the SE head reads the SSL frames.")
        for option in ("mfcc_statistics", "prosody_statistics"):
            if getattr(self, option) and not self.use_mfcc:
                raise ValueError(f"{option}=True needs use_mfcc=True: the statistics join the MFCC branch.")
        if self.classify_statistics and not (self.mfcc_statistics or self.prosody_statistics):
            raise ValueError(
                "classify_statistics=True needs mfcc_statistics=True or prosody_statistics=True: it classifies those "
                "statistics."
            )
        if not self.statistics_loss_weight >= 0:
            raise ValueError(f"statistics_loss_weight must be a non-negative number, got {self.statistics_loss_weight}.")
        if self.utterance_statistics_classifier and not (self.mfcc_statistics or self.prosody_statistics):
            raise ValueError(
                "utterance_statistics_classifier=True needs mfcc_statistics=True or prosody_statistics=True: it "
                "classifies those statistics, computed over the whole utterance."
            )
        if self.utterance_statistics_classifier and self.problem_type not in (None, "single_label_classification"):
            raise ValueError(
                "utterance_statistics_classifier=True is for single-label classification (it adds log-probabilities "
                f"to the logits), and problem_type is {self.problem_type!r}."
            )
        if self.utterance_distribution_statistics and not self.utterance_statistics_classifier:
            raise ValueError(
                "utterance_distribution_statistics=True needs utterance_statistics_classifier=True: only that "
                "classifier reads the whole utterance's distribution statistics."
            )
        if self.utterance_log_mel_statistics and not self.utterance_statistics_classifier:
            raise ValueError(
                "utterance_log_mel_statistics=True needs utterance_statistics_classifier=True: only that classifier "
                "reads the whole utterance's log-mel functionals."
            )
        if self.utterance_log_mel_statistics and not 0 < self.log_mel_win_length <= self.log_mel_n_fft:
            raise ValueError(
                f"log_mel_win_length must be between 1 and log_mel_n_fft ({self.log_mel_n_fft}), got "
                f"{self.log_mel_win_length}."
            )
        if self.speaker_normalization and not self.utterance_statistics_classifier:
            raise ValueError(
                "speaker_normalization=True needs utterance_statistics_classifier=True: it standardises the statistics "
                "that classifier reads."
            )
        if self.ungrouped_statistics_weight is not None and not self.speaker_normalization:
            raise ValueError(
                "ungrouped_statistics_weight is the weight of the regression for utterances without a group, which "
                "only speaker_normalization=True has; leave it None without speaker normalisation."
            )
        if self.ungrouped_statistics_weight is not None and not self.ungrouped_statistics_weight >= 0:
            raise ValueError(
                f"ungrouped_statistics_weight must be None or a non-negative number, got {self.ungrouped_statistics_weight}."
            )
        if self.speaker_normalization_min_utterances < 2:
            raise ValueError(
                "speaker_normalization_min_utterances must be at least 2 (a standard deviation needs two utterances), "
                f"got {self.speaker_normalization_min_utterances}."
            )
        if not self.utterance_statistics_weight >= 0:
            raise ValueError(
                f"utterance_statistics_weight must be a non-negative number, got {self.utterance_statistics_weight}."
            )
        if self.use_weighted_layer_sum and not self.use_backbone_features:
            raise ValueError("use_weighted_layer_sum=True needs use_backbone_features=True: it weighs the SSL layers.")
        if self.se_target not in ("mask", "magnitude"):
            raise ValueError(f"se_target must be 'mask' or 'magnitude', got {self.se_target!r}.")
        if not self.se_loss_weight >= 0:
            raise ValueError(f"se_loss_weight must be a non-negative number, got {self.se_loss_weight}.")
        if not 0 < self.se_compression <= 1:
            raise ValueError(f"se_compression must be in (0, 1], got {self.se_compression}.")
        for name in ("calibration_temperature", "segment_calibration_temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive, finite number, got {value!r}.")

    def _validate_choices(self):
        """Named choices, class weights, label smoothing and the segment length against the backbone's frame."""
        for name, allowed in (
            ("frame_weighting", FRAME_WEIGHTINGS),
            ("mfcc_normalization", ("l2", "standardize")),
            ("classifier_input", ("pooled", "pooled_and_guidance")),
            ("pooled_normalization", ("none", "batch_norm")),
            ("loss_level", ("segment", "utterance")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        if self.mfcc_pool_frames is not None and not 1 <= self.mfcc_pool_frames <= self.num_mfcc_frames:
            raise ValueError(
                f"mfcc_pool_frames must be None or in [1, {self.num_mfcc_frames}] (the MFCC frames of a segment), got "
                f"{self.mfcc_pool_frames}."
            )
        if self.class_weights is not None:
            if len(self.class_weights) != self.num_labels:
                raise ValueError(
                    f"class_weights needs one weight per label ({self.num_labels}), got {len(self.class_weights)}."
                )
            if any(not weight >= 0 for weight in self.class_weights) or not sum(self.class_weights) > 0:
                raise ValueError(f"class_weights must be non-negative and not all 0, got {list(self.class_weights)}.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.segment_chunk_size < 1:
            raise ValueError(f"segment_chunk_size must be at least 1, got {self.segment_chunk_size}.")
        if self.num_backbone_frames(self.segment_samples) < 1:
            raise ValueError(
                f"A {self.segment_length_s} s segment is shorter than one frame of the backbone's feature encoder "
                f"({self.min_input_samples} samples)."
            )

    @property
    def segment_samples(self) -> int:
        """Samples in one segment: `segment_length_s * sampling_rate` (48,000 for 3 s at 16 kHz)."""
        return round(self.segment_length_s * self.sampling_rate)

    def num_backbone_frames(self, num_samples: int) -> int:
        """Frames the backbone's convolutional feature encoder gives for `num_samples` samples (T'_w).

        The same formula as `Wav2Vec2Model._get_feat_extract_output_lengths`: each convolution maps a length `L` to
        `floor((L - kernel) / stride) + 1`. 48,000 samples give 149 frames for wav2vec2.
        """
        length = num_samples
        for kernel, stride in zip(self.backbone_config.conv_kernel, self.backbone_config.conv_stride):
            length = max((length - kernel) // stride + 1, 0)
        return length

    @property
    def min_input_samples(self) -> int:
        """Receptive field of one backbone frame in samples (400 for wav2vec2): the shortest usable input."""
        field, jump = 1, 1
        for kernel, stride in zip(self.backbone_config.conv_kernel, self.backbone_config.conv_stride):
            field += (kernel - 1) * jump
            jump *= stride
        return field

    @property
    def backbone_frame_stride(self) -> int:
        """Samples between consecutive backbone frames: the product of the conv strides (320 for wav2vec2)."""
        jump = 1
        for stride in self.backbone_config.conv_stride:
            jump *= stride
        return jump

    @property
    def num_mfcc_frames(self) -> int:
        """MFCC frames in one segment (centred STFT frames: 301 for 3 s at hop 160)."""
        return self.segment_samples // self.mfcc_hop_length + 1

    @property
    def num_spectrogram_frames(self) -> int:
        """Spectrogram frames in one segment (centred STFT frames: 301 for 3 s at hop 160)."""
        return self.segment_samples // self.spectrogram_hop_length + 1


def _as_audio_ssl_config(backbone_config) -> PreTrainedConfig:
    """Turns `backbone_config` (config, dict or None) into the config of a supported audio SSL model."""
    if backbone_config is None:
        return AutoConfig.for_model("wav2vec2")
    if isinstance(backbone_config, dict):
        backbone_config = dict(backbone_config)
        model_type = backbone_config.pop("model_type", None)
        if model_type not in SUPPORTED_BACKBONE_TYPES:
            raise ValueError(
                f"backbone_config must be the config of an audio SSL model, one of {list(SUPPORTED_BACKBONE_TYPES)}; "
                f"got a dict with model_type={model_type!r}."
            )
        backbone_config.pop("transformers_version", None)
        return AutoConfig.for_model(model_type, **backbone_config)
    if not isinstance(backbone_config, PreTrainedConfig):
        raise TypeError(f"backbone_config must be a dict or a PreTrainedConfig, got {type(backbone_config).__name__}.")
    if backbone_config.model_type not in SUPPORTED_BACKBONE_TYPES:
        raise ValueError(
            f"backbone_config must be the config of an audio SSL model, one of {list(SUPPORTED_BACKBONE_TYPES)}; "
            f"got {type(backbone_config).__name__} (model_type={backbone_config.model_type!r})."
        )
    return backbone_config


__all__ = ["MSEmoBoostConfig", "SUPPORTED_BACKBONE_TYPES"]
