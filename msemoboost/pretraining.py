"""Self-supervised pretraining of an SSL speech backbone by masked reconstruction, with random or EMS masking.

Masked acoustic modelling as in Mockingjay, on the backbone's own frames (Liu & Ma's EMS builds on it):

- runs of `mask_span` (7) consecutive backbone frames are chosen until `mask_ratio` (15 %) of the frames are covered;
- `masking="random"` draws the runs at random; `masking="ems"` takes first the runs whose start frame has an emotion
  intensity above `intensity_threshold` (0.5), in random order, and fills the rest at random;
- a chosen run is masked 80 % of the time (the backbone's `mask_time_indices`: its learned mask embedding replaces
  the frames), replaced by another run of the same utterance 10 % (in the waveform, so the backbone sees other
  audio there) and left unchanged 10 %;
- the loss is the L1 distance between the reconstruction head's output and the log-mel spectrogram of the original
  audio, over the chosen frames; the log-mel frames are the backbone's frames (window = its receptive field,
  hop = its stride), normalised per utterance and band.

`target="clusters"` predicts HuBERT's first-iteration targets instead: each frame's cluster among `num_clusters`
k-means centroids of 39-dimensional MFCC features (13 cepstra of that normalised log-mel, with deltas and
delta-deltas), under a cross-entropy loss over the same chosen frames. `msemoboost pretrain` fits the centroids on
the pretraining audio before the first step ([`fit_kmeans`], scikit-learn's k-means).

With `masking="ems"` the frame intensity (from [`~msemoboost.intensity.MSEmoBoostIntensityModel`], aligned linearly to
the backbone's frames) is also an input, added to the projected features through a learned projection (masked frames
get the mask embedding instead, so their intensity is hidden), and a second head reconstructs it under its own L1
loss, weighted by `intensity_loss_weight`. `intensity_conditioning=False` drops that input and head and keeps only
the intensity-guided masking (an ablation).

Only the backbone is kept: `msemoboost pretrain` saves it as a plain model of its own type, which
`AutoModel.from_pretrained` loads with no remote code; the heads live only in the training checkpoints.
"""

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, TrainerCallback
from transformers import initialization as init
from transformers.utils import ModelOutput

from .acoustic_features import MSEmoBoostLogMel, MSEmoBoostPowerSpectrogram, dct_matrix
from .configuration_msemoboost import MSEmoBoostConfig, _as_audio_ssl_config
from .modeling_statistics import masked_mean_std
from .training import read_json_argument

MASKINGS = ("random", "ems")
TARGETS = ("log_mel", "clusters")
logger = logging.getLogger(__name__)


class MSEmoBoostPretrainingConfig(PretrainedConfig):
    r"""
    Configuration of [`MSEmoBoostForPretraining`].

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*): the SSL backbone (wav2vec2, HuBERT, WavLM,
            data2vec-audio); wav2vec2-base when omitted.
        masking (`str`, *optional*, defaults to `"random"`): `"random"` or `"ems"`.
        mask_ratio (`float`, *optional*, defaults to 0.15): share of each utterance's frames in chosen runs.
        mask_span (`int`, *optional*, defaults to 7): frames per run.
        intensity_threshold (`float`, *optional*, defaults to 0.5): EMS takes runs starting above it first.
        intensity_threshold_quantile (`float`, *optional*): instead of `intensity_threshold`, each utterance's own
            quantile of its frame intensities (0.85: the most intense 15 % of its frames qualify), so that EMS
            prefers the most intense runs within every utterance however the intensity model is calibrated.
        mask_probability (`float`, *optional*, defaults to 0.8): share of runs given the mask embedding.
        replace_probability (`float`, *optional*, defaults to 0.1): share of runs replaced by other audio; the rest
            stay unchanged.
        num_mel_bins (`int`, *optional*, defaults to 80): bands of the log-mel target.
        intensity_loss_weight (`float`, *optional*, defaults to 1.0): weight of the intensity reconstruction (EMS).
        intensity_conditioning (`bool`, *optional*, defaults to `True`): EMS gives the frame intensity to the backbone
            as an input and reconstructs it with a second head, as the paper does; `False` keeps only the
            intensity-guided masking (an ablation).
        target (`str`, *optional*, defaults to `"log_mel"`): `"log_mel"` (L1 reconstruction, Mockingjay/EMS) or
            `"clusters"` (cross-entropy over k-means clusters of MFCC features, HuBERT's first iteration).
        num_clusters (`int`, *optional*, defaults to 100): k-means centroids with `target="clusters"`.
        num_mfcc (`int`, *optional*, defaults to 13): cepstra of the cluster features (with their deltas and
            delta-deltas: `3 * num_mfcc` dimensions).
    """

    model_type = "msemoboost_pretraining"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config=None,
        masking: str = "random",
        mask_ratio: float = 0.15,
        mask_span: int = 7,
        intensity_threshold: float = 0.5,
        intensity_threshold_quantile: float | None = None,
        mask_probability: float = 0.8,
        replace_probability: float = 0.1,
        num_mel_bins: int = 80,
        intensity_loss_weight: float = 1.0,
        intensity_conditioning: bool = True,
        target: str = "log_mel",
        num_clusters: int = 100,
        num_mfcc: int = 13,
        sampling_rate: int = 16000,
        **kwargs,
    ):
        self.backbone_config = _as_audio_ssl_config(backbone_config)
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {list(MASKINGS)}, got {masking!r}.")
        if not 0 < mask_ratio < 1 or mask_span < 1:
            raise ValueError(f"mask_ratio must be in (0, 1) and mask_span at least 1; got {mask_ratio} and {mask_span}.")
        if intensity_threshold_quantile is not None and not 0 < intensity_threshold_quantile < 1:
            raise ValueError(f"intensity_threshold_quantile must be in (0, 1), got {intensity_threshold_quantile}.")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}.")
        if num_clusters < 2 or not 0 < num_mfcc <= num_mel_bins:
            raise ValueError(f"num_clusters must be at least 2 and num_mfcc in [1, num_mel_bins = {num_mel_bins}]; got "
                             f"{num_clusters} and {num_mfcc}.")
        if mask_probability < 0 or replace_probability < 0 or mask_probability + replace_probability > 1:
            raise ValueError("mask_probability and replace_probability must be non-negative and sum to at most 1; got "
                             f"{mask_probability} and {replace_probability}.")
        self.masking = masking
        self.mask_ratio = mask_ratio
        self.mask_span = mask_span
        self.intensity_threshold = intensity_threshold
        self.intensity_threshold_quantile = intensity_threshold_quantile
        self.mask_probability = mask_probability
        self.replace_probability = replace_probability
        self.num_mel_bins = num_mel_bins
        self.intensity_loss_weight = intensity_loss_weight
        self.intensity_conditioning = intensity_conditioning
        self.target = target
        self.num_clusters = num_clusters
        self.num_mfcc = num_mfcc
        self.sampling_rate = sampling_rate
        super().__init__(**kwargs)

    def to_dict(self):
        output = super().to_dict()
        output["backbone_config"] = self.backbone_config.to_dict()
        return output

    @property
    def frame_geometry(self) -> MSEmoBoostConfig:
        """The backbone's frame arithmetic (frames per length, receptive field, stride), shared with MS-EmoBoost."""
        return MSEmoBoostConfig(backbone_config=self.backbone_config)


@dataclass
class MSEmoBoostPretrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`): reconstruction loss (+ the weighted intensity loss with EMS).
        reconstruction_loss (`torch.FloatTensor` of shape `()`), intensity_loss (`torch.FloatTensor` of shape `()`,
            *optional*): the two terms (with `target="clusters"` the first is the cluster cross-entropy).
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_frames, num_mel_bins)`, *optional*): predicted
            log-mel (`target="log_mel"`).
        cluster_logits (`torch.FloatTensor` of shape `(batch_size, num_frames, num_clusters)`, *optional*): predicted
            clusters (`target="clusters"`).
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    intensity_loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    cluster_logits: torch.FloatTensor | None = None


def deltas(features: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas over time (HTK/Kaldi, the edges repeated): `(batch_size, num_frames, dim)` → same shape."""
    padded = torch.cat([features[:, :1].expand(-1, width, -1), features, features[:, -1:].expand(-1, width, -1)], 1)
    frames = features.shape[1]
    total = sum(n * (padded[:, width + n : width + n + frames] - padded[:, width - n : width - n + frames])
                for n in range(1, width + 1))
    return total / (2 * sum(n * n for n in range(1, width + 1)))


def fit_kmeans(features: torch.Tensor, num_clusters: int, seed: int = 0, max_iter: int = 100) -> torch.Tensor:
    """Centroids `(num_clusters, dim)` of `features` `(num_points, dim)`: scikit-learn's `KMeans` (k-means++
    seeding, Lloyd iterations), seeded."""
    from sklearn.cluster import KMeans

    if len(features) < num_clusters:
        raise ValueError(f"k-means needs at least num_clusters = {num_clusters} frames; the audio gave {len(features)}.")
    kmeans = KMeans(n_clusters=num_clusters, init="k-means++", n_init=1, max_iter=max_iter, random_state=seed)
    kmeans.fit(features.double().numpy())
    return torch.from_numpy(kmeans.cluster_centers_).float()


def choose_runs(num_frames: int, config: MSEmoBoostPretrainingConfig, generator: torch.Generator,
                intensity: torch.Tensor | None = None) -> torch.LongTensor:
    """Start frames of the runs to mask in one utterance of `num_frames` frames, `(num_runs,)`.

    Runs are disjoint: candidate starts are `0, span, 2 span, …` (every whole run inside the utterance), and
    `round(mask_ratio * num_frames / span)` of them are taken (at least one). With `intensity` `(num_frames,)`
    (EMS), the candidates whose start frame's intensity exceeds the threshold (`intensity_threshold`, or the
    utterance's `intensity_threshold_quantile` of `intensity`) come first, in random order, and random other
    candidates fill the rest.
    """
    span = config.mask_span
    candidates = torch.arange(0, num_frames - span + 1, span)
    if len(candidates) == 0:
        return candidates
    wanted = min(len(candidates), max(1, round(config.mask_ratio * num_frames / span)))
    order = candidates[torch.randperm(len(candidates), generator=generator)]
    if intensity is not None:
        threshold = config.intensity_threshold
        if config.intensity_threshold_quantile is not None:
            threshold = torch.quantile(intensity.float(), config.intensity_threshold_quantile)
        strong = intensity[order] > threshold
        order = torch.cat([order[strong], order[~strong]])
    return order[:wanted].sort().values


def assign_runs(runs: torch.LongTensor, config: MSEmoBoostPretrainingConfig, generator: torch.Generator) -> torch.LongTensor:
    """What happens to each run, `(num_runs,)`: 0 masked (mask embedding), 1 replaced by other audio, 2 unchanged,
    with probabilities `mask_probability`, `replace_probability` and the rest."""
    draw = torch.rand(len(runs), generator=generator)
    return (draw >= config.mask_probability).long() + (draw >= config.mask_probability + config.replace_probability).long()


class MSEmoBoostMaskingCollator:
    """Crops (to `max_samples`, at random) and pads waveforms and draws each utterance's runs.

    Its randomness comes from `seed` and the number of the batch only (`batches_drawn`, which [`MaskingSchedule`]
    sets from the Trainer's step when training starts or resumes), so a resumed run draws exactly the crops and
    masks an uninterrupted one would, whatever the global RNG did meanwhile. Batches must be collated in the main
    process (`dataloader_num_workers=0`), where that count lives.

    Returns `input_values` (with replaced runs), `target_values` (the original audio), `attention_mask`,
    `mask_time_indices` and `loss_mask` `(batch_size, num_frames)`, and with EMS `intensity` `(batch_size,
    num_frames)`.
    """

    def __init__(self, config: MSEmoBoostPretrainingConfig, intensity_model=None, max_samples: int | None = None,
                 seed: int = 0):
        if config.masking == "ems" and intensity_model is None:
            raise ValueError("masking='ems' needs an intensity model (msemoboost intensity train; --intensity_model DIR).")
        if intensity_model is not None and intensity_model.config.sampling_rate != config.sampling_rate:
            raise ValueError(f"The intensity model works at {intensity_model.config.sampling_rate} Hz but the backbone "
                             f"is pretrained at {config.sampling_rate} Hz: train an intensity model at that rate.")
        self.config = config
        self.geometry = config.frame_geometry
        self.intensity_model = intensity_model.eval() if intensity_model is not None else None
        self.max_samples = max_samples
        self.seed = seed
        self.batches_drawn = 0  # set from the Trainer's step on (re)start by MaskingSchedule

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        from .inference import pad_batch
        from .intensity import align_to_frames

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches_drawn)
        self.batches_drawn += 1
        waveforms = [np.asarray(row["waveform"], dtype=np.float32) for row in rows]
        if self.max_samples:  # a random crop of each long utterance
            starts = [int(torch.randint(0, max(1, len(w) - self.max_samples + 1), (1,), generator=generator))
                      for w in waveforms]
            waveforms = [w[start : start + self.max_samples] for w, start in zip(waveforms, starts)]
        batch = pad_batch(waveforms)
        num_frames = self.geometry.num_backbone_frames(batch["input_values"].shape[1])
        stride, field, span = self.geometry.backbone_frame_stride, self.geometry.min_input_samples, self.config.mask_span
        intensity = None
        if self.intensity_model is not None:
            with torch.no_grad():
                scores = self.intensity_model(**batch).frame_scores  # (batch_size, intensity frames)
            intensity = torch.zeros(len(rows), num_frames)
            for row, waveform in enumerate(waveforms):  # each utterance's own frames, aligned linearly
                own = scores[row : row + 1, : len(waveform) // self.intensity_model.config.hop_length + 1]
                frames = self.geometry.num_backbone_frames(len(waveform))
                intensity[row, :frames] = align_to_frames(own, frames)[0]
        mask_time_indices = torch.zeros(len(rows), num_frames, dtype=torch.bool)
        loss_mask = torch.zeros(len(rows), num_frames, dtype=torch.bool)
        input_values = batch["input_values"].clone()
        for row, waveform in enumerate(waveforms):
            frames = self.geometry.num_backbone_frames(len(waveform))
            runs = choose_runs(frames, self.config, generator, None if intensity is None else intensity[row, :frames])
            for start, kind in zip(runs.tolist(), assign_runs(runs, self.config, generator).tolist()):
                loss_mask[row, start : start + span] = True
                if kind == 0:
                    mask_time_indices[row, start : start + span] = True
                elif kind == 1:  # the samples this run's frames see, taken from another place in the utterance
                    first, last = start * stride, (start + span - 1) * stride + field
                    source = int(torch.randint(0, max(1, len(waveform) - (last - first)), (1,), generator=generator))
                    input_values[row, first:last] = torch.from_numpy(waveform[source : source + last - first])
        output = {"input_values": input_values, "target_values": batch["input_values"],
                  "attention_mask": batch["attention_mask"], "mask_time_indices": mask_time_indices,
                  "loss_mask": loss_mask}
        if intensity is not None:
            output["intensity"] = intensity
        return output


class MaskingSchedule(TrainerCallback):
    """Keeps [`MSEmoBoostMaskingCollator`]'s batch count in step with the Trainer's, also after a resume."""

    def __init__(self, collator: MSEmoBoostMaskingCollator):
        self.collator = collator

    def on_train_begin(self, args, state, control, **kwargs):
        self.collator.batches_drawn = state.global_step * args.gradient_accumulation_steps


class MSEmoBoostForPretraining(PreTrainedModel):
    """An SSL backbone with a log-mel reconstruction head or a cluster head (and, for EMS, an intensity input and
    head)."""

    config_class = MSEmoBoostPretrainingConfig
    base_model_prefix = "pretraining"
    main_input_name = "input_values"
    # A per-batch mean loss: `Trainer` divides it by the gradient accumulation steps (see MSEmoBoostPreTrainedModel).
    accepts_loss_kwargs = False

    def __init__(self, config: MSEmoBoostPretrainingConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone_config)
        hidden_size = config.backbone_config.hidden_size
        if getattr(self.backbone, "masked_spec_embed", None) is None:
            # A backbone built with mask_time_prob = 0 (as for fine-tuning) has no mask embedding; the masks here
            # are the collator's, so give it one without turning on the backbone's own SpecAugment.
            self.backbone.masked_spec_embed = nn.Parameter(torch.empty(hidden_size).uniform_())
        geometry = config.frame_geometry  # frame t of the target covers the samples SSL frame t sees
        self.log_mel = MSEmoBoostLogMel(geometry.min_input_samples, geometry.backbone_frame_stride, config.sampling_rate,
                                        config.num_mel_bins, center=False)
        if config.target == "clusters":
            self.cluster_head = nn.Linear(hidden_size, config.num_clusters)
            self.register_buffer("cluster_centroids", torch.zeros(config.num_clusters, 3 * config.num_mfcc))
            self.reconstruction_head = None
        else:
            self.reconstruction_head = nn.Linear(hidden_size, config.num_mel_bins)
            self.cluster_head = self.cluster_centroids = None
        if config.masking == "ems" and config.intensity_conditioning:
            self.intensity_projection = nn.Linear(1, config.backbone_config.hidden_size)
            self.intensity_head = nn.Linear(hidden_size, 1)
            self.backbone.feature_projection.register_forward_hook(self._add_intensity)
        else:
            self.intensity_projection = self.intensity_head = None
        self._intensity_input = None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, MSEmoBoostPowerSpectrogram):
            for name, value in module.compute_buffers().items():
                init.copy_(getattr(module, name), value)
        elif module is self and self.cluster_centroids is not None:
            init.zeros_(self.cluster_centroids)  # fitted on the pretraining audio by fit_cluster_targets
        elif module is self.intensity_projection:
            init.zeros_(module.weight)  # the backbone starts as without the intensity input
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def _add_intensity(self, module, inputs, output):
        """Adds the projected intensity to the feature projection's output (before the mask embedding)."""
        if self._intensity_input is None:
            return output
        added = self.intensity_projection(self._intensity_input[..., None].to(self.intensity_projection.weight.dtype))
        if isinstance(output, tuple):  # wav2vec2 returns (projected, normalised)
            return (output[0] + added, *output[1:])
        return output + added

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        target_values: torch.Tensor | None = None,
        intensity: torch.Tensor | None = None,
        **kwargs,
    ) -> MSEmoBoostPretrainingOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`): waveforms, replaced runs included.
            attention_mask (`torch.LongTensor` of shape `(batch_size, num_samples)`, *optional*): 1 on audio.
            mask_time_indices (`torch.BoolTensor` of shape `(batch_size, num_frames)`, *optional*): frames given the
                backbone's mask embedding.
            loss_mask (`torch.BoolTensor` of shape `(batch_size, num_frames)`, *optional*): frames whose
                reconstruction is scored (masked, replaced and unchanged runs); gives the loss.
            target_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`, *optional*): the original audio
                whose log-mel is the target; `input_values` when not given.
            intensity (`torch.FloatTensor` of shape `(batch_size, num_frames)`, *optional*): frame intensity (EMS).
        """
        if self.intensity_head is not None and intensity is None:
            raise ValueError("This model was configured with masking='ems': give the frame intensity.")
        self._intensity_input = intensity if self.intensity_projection is not None else None
        try:
            hidden = self.backbone(input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices,
                                   return_dict=True).last_hidden_state  # (batch_size, num_frames, hidden_size)
        finally:
            self._intensity_input = None
        clusters = self.cluster_head is not None
        prediction = self.cluster_head(hidden) if clusters else self.reconstruction_head(hidden)
        outputs = {"cluster_logits" if clusters else "reconstruction": prediction}
        if loss_mask is None:
            return MSEmoBoostPretrainingOutput(**outputs)
        target = self.log_mel(target_values if target_values is not None else input_values)
        frames = min(target.shape[1], hidden.shape[1])
        target, prediction, loss_mask = target[:, :frames], prediction[:, :frames], loss_mask[:, :frames]
        valid = self.frame_mask(attention_mask, input_values, frames)
        target = self.normalize(target, valid)
        selected = loss_mask & valid
        if clusters:
            reconstruction_loss = F.cross_entropy(prediction[selected].float(), self.assign_clusters(target)[selected])
        else:
            reconstruction_loss = F.l1_loss(prediction[selected].float(), target[selected])
        loss, intensity_loss = reconstruction_loss, None
        if self.intensity_head is not None:
            predicted = self.intensity_head(hidden[:, :frames])[..., 0]
            intensity_loss = F.l1_loss(predicted[selected].float(), intensity[:, :frames][selected].float())
            loss = loss + self.config.intensity_loss_weight * intensity_loss
        return MSEmoBoostPretrainingOutput(loss=loss, reconstruction_loss=reconstruction_loss,
                                           intensity_loss=intensity_loss, **outputs)

    def cluster_features(self, log_mel: torch.Tensor) -> torch.Tensor:
        """MFCC with deltas and delta-deltas of a normalised log-mel `(batch_size, num_frames, num_mel_bins)`:
        `(batch_size, num_frames, 3 * num_mfcc)`."""
        dct = torch.from_numpy(dct_matrix(self.config.num_mel_bins, self.config.num_mfcc)).to(log_mel)
        cepstra = log_mel @ dct
        velocity = deltas(cepstra)
        return torch.cat([cepstra, velocity, deltas(velocity)], dim=-1)

    def assign_clusters(self, log_mel: torch.Tensor) -> torch.LongTensor:
        """The nearest centroid of each frame's cluster features: `(batch_size, num_frames)`."""
        features = self.cluster_features(log_mel.float())
        return torch.cdist(features, self.cluster_centroids.float()[None].expand(len(features), -1, -1)).argmin(-1)

    @torch.no_grad()
    def fit_cluster_targets(self, waveforms: list[np.ndarray], seed: int = 0, max_frames: int = 200_000) -> None:
        """Fits `cluster_centroids` by k-means on the cluster features of `waveforms` (each a 1-D array at the
        config's sampling rate), at most `max_frames` frames drawn at random; the same audio and seed give the same
        centroids."""
        generator = torch.Generator().manual_seed(seed)
        features = []
        for waveform in waveforms:
            log_mel = self.log_mel(torch.as_tensor(waveform, dtype=torch.float32)[None].to(self.device))
            valid = torch.ones(log_mel.shape[:2], dtype=torch.bool, device=log_mel.device)
            features.append(self.cluster_features(self.normalize(log_mel, valid))[0].cpu())
        features = torch.cat(features)
        if len(features) > max_frames:
            features = features[torch.randperm(len(features), generator=generator)[:max_frames]]
        self.cluster_centroids.copy_(fit_kmeans(features, self.config.num_clusters, seed))

    def frame_mask(self, attention_mask: torch.Tensor | None, input_values: torch.Tensor, num_frames: int) -> torch.Tensor:
        """`(batch_size, num_frames)`: frames whose whole window holds audio."""
        if attention_mask is None:
            return torch.ones(input_values.shape[0], num_frames, dtype=torch.bool, device=input_values.device)
        lengths = self.backbone._get_feat_extract_output_lengths(attention_mask.long().sum(-1))
        return torch.arange(num_frames, device=input_values.device) < lengths[:, None]

    @staticmethod
    def normalize(log_mel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit variance per utterance and band over the frames holding audio."""
        mean, std = masked_mean_std(log_mel, valid[..., None].to(log_mel.dtype))
        return (log_mel - mean[:, None]) / std[:, None]


__all__ = ["MASKINGS", "TARGETS", "MSEmoBoostForPretraining", "MSEmoBoostMaskingCollator",
           "MSEmoBoostPretrainingConfig", "assign_runs", "choose_runs", "deltas", "fit_kmeans"]


# --- `msemoboost pretrain` -----------------------------------------------------------------------------------------


@dataclass
class PretrainingArguments:
    """What to pretrain, on what, and how to mask (`msemoboost pretrain --help`)."""

    dataset_name: list[str] = field(metadata={"help": "One or more audiofolders or dataset ids (every split is used)."})
    masking: str = field(default="random", metadata={"help": "random (the baseline) or ems (intensity-guided)."})
    intensity_model: str | None = field(default=None, metadata={"help": "With --masking ems: msemoboost intensity "
                                                                         "train's output folder."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Continue pretraining this backbone "
                                                                           "(a folder or Hub id of an SSL model); "
                                                                           "--model is the same option.",
                                                                   "aliases": ["--model"]})
    backbone_config: str | None = field(default=None, metadata={"help": "Or pretrain from scratch: a backbone config "
                                                                        "as JSON, e.g. {\"model_type\": \"wav2vec2\"}, or the path of a .json file."})
    mask_ratio: float = field(default=0.15, metadata={"help": "Share of frames in chosen runs."})
    mask_span: int = field(default=7, metadata={"help": "Frames per run."})
    intensity_threshold: float = field(default=0.5, metadata={"help": "EMS takes runs starting above it first."})
    intensity_threshold_quantile: float | None = field(default=None, metadata={
        "help": "Instead of --intensity_threshold: each utterance's own quantile of its frame intensities (0.85: its "
                "most intense 15 %% of frames qualify)."})
    mask_probability: float = field(default=0.8, metadata={"help": "Share of runs given the mask embedding."})
    replace_probability: float = field(default=0.1, metadata={"help": "Share of runs replaced by other audio."})
    num_mel_bins: int = field(default=80, metadata={"help": "Bands of the log-mel target."})
    intensity_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the intensity reconstruction."})
    intensity_conditioning: bool = field(default=True, metadata={"help": "EMS: give the intensity as an input and "
                                         "reconstruct it (the paper); false keeps only the guided masking."})
    max_seconds: float = field(default=4.0, metadata={"help": "Random crop of each utterance per step."})
    target: str = field(default="log_mel", metadata={"help": "log_mel (L1 reconstruction, Mockingjay/EMS) or clusters "
                                                              "(k-means on MFCC, HuBERT's first iteration)."})
    num_clusters: int = field(default=100, metadata={"help": "With --target clusters: k-means centroids."})
    kmeans_max_frames: int = field(default=200_000, metadata={"help": "With --target clusters: frames k-means is fitted "
                                                                      "on, drawn at random from the pretraining audio."})


def parse_pretraining_arguments(argv: list[str]):
    """`[CONFIG.yaml] --flag value …` → (PretrainingArguments, TrainingArguments); usage errors exit with a message."""
    from transformers import HfArgumentParser, TrainingArguments

    from .training import arguments_from_file

    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = arguments_from_file(argv[0]) + argv[1:]
    from .conventions import CONVENTION

    parser = HfArgumentParser((PretrainingArguments, TrainingArguments), epilog=CONVENTION)
    parser.prog = "msemoboost pretrain"
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if args.masking not in MASKINGS:
        parser.error(f"--masking must be one of {list(MASKINGS)}, got {args.masking!r}")
    if args.target not in TARGETS:
        parser.error(f"--target must be one of {list(TARGETS)}, got {args.target!r}")
    if args.masking == "ems" and not args.intensity_model:
        parser.error("--masking ems needs --intensity_model DIR (train one with: msemoboost intensity train)")
    if args.model_name_or_path and args.backbone_config:
        parser.error("give --model_name_or_path (continued pretraining) or --backbone_config (from scratch), not both")
    return args, training_args


def pretraining_config(args) -> tuple[nn.Module | None, MSEmoBoostPretrainingConfig]:
    """The backbone to continue pretraining (None: from scratch) and the pretraining configuration, from the parsed
    `msemoboost pretrain` arguments."""
    backbone = None
    if args.model_name_or_path:
        backbone = AutoModel.from_pretrained(args.model_name_or_path)
        backbone_config = backbone.config
    else:
        backbone_config = read_json_argument(args.backbone_config) or None  # inline JSON or a .json file
    config = MSEmoBoostPretrainingConfig(
        backbone_config=backbone_config, masking=args.masking, mask_ratio=args.mask_ratio, mask_span=args.mask_span,
        intensity_threshold=args.intensity_threshold, intensity_threshold_quantile=args.intensity_threshold_quantile,
        mask_probability=args.mask_probability,
        replace_probability=args.replace_probability, num_mel_bins=args.num_mel_bins,
        intensity_loss_weight=args.intensity_loss_weight, intensity_conditioning=args.intensity_conditioning,
        target=args.target, num_clusters=args.num_clusters)
    return backbone, config


def pretrain(argv: list[str]) -> int:
    """`msemoboost pretrain [CONFIG.yaml] --dataset_name … --output_dir OUT [...]`: see the module docstring."""
    import json
    from pathlib import Path

    from torch.utils.data import Dataset
    from transformers import Trainer, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from .data import read_corpus_audio

    args, training_args = parse_pretraining_arguments(argv)
    set_seed(training_args.seed)

    backbone, config = pretraining_config(args)
    intensity_model = None
    if args.intensity_model:
        from .intensity import MSEmoBoostIntensityModel

        if not (Path(args.intensity_model) / "config.json").is_file():
            raise ValueError(f"--intensity_model {args.intensity_model}: not an intensity model folder (no config.json).")
        intensity_model = MSEmoBoostIntensityModel.from_pretrained(args.intensity_model)
    collator = MSEmoBoostMaskingCollator(config, intensity_model, max_samples=int(args.max_seconds * config.sampling_rate),
                                         seed=training_args.seed)

    min_samples = config.frame_geometry.min_input_samples * config.mask_span  # room for at least one run
    waveforms, skipped = [], []
    for name in args.dataset_name:
        _, found, missed = read_corpus_audio(name, config.sampling_rate, min_samples)
        waveforms += found
        skipped += missed
    for line in skipped:
        logger.warning(f"skipped {line}")
    logger.warning(f"Pretraining on {len(waveforms)} utterances ({sum(map(len, waveforms)) / config.sampling_rate / 3600:.2f} h) "
                   f"of {', '.join(args.dataset_name)}; {len(skipped)} file(s) skipped.")

    class Audio(Dataset):
        def __len__(self):
            return len(waveforms)

        def __getitem__(self, index):
            return {"waveform": waveforms[index]}

    output = Path(training_args.output_dir)
    if training_args.dataloader_num_workers:
        logger.warning("Pretraining collates in the main process (the masks' batch count lives there): "
                       "--dataloader_num_workers is set to 0.")
    training_args = dataclasses.replace(training_args, output_dir=str(output / "checkpoints"),
                                        remove_unused_columns=False, dataloader_num_workers=0)
    model = MSEmoBoostForPretraining(config, backbone=backbone)
    if config.target == "clusters":  # the same audio and seed give the same centroids, also on a resume
        model.fit_cluster_targets(waveforms, seed=training_args.seed, max_frames=args.kmeans_max_frames)
        logger.warning(f"Fitted {config.num_clusters} k-means clusters of MFCC features as the targets.")
    trainer = Trainer(model=model, args=training_args, train_dataset=Audio(), data_collator=collator,
                      callbacks=[MaskingSchedule(collator)])
    resume = training_args.resume_from_checkpoint
    if resume in ("true", "True", True):
        resume = get_last_checkpoint(training_args.output_dir)
    metrics = trainer.train(resume_from_checkpoint=resume or None).metrics

    # A plain model of the backbone's own type: no heads, no remote code, and no mask embedding its config would
    # not create (mask_time_prob = 0 and mask_feature_prob = 0).
    state = model.backbone.state_dict()
    backbone_config = model.backbone.config
    if not (getattr(backbone_config, "mask_time_prob", 0) or getattr(backbone_config, "mask_feature_prob", 0)):
        state.pop("masked_spec_embed", None)
    model.backbone.save_pretrained(output, state_dict=state)
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    (output / "pretraining_args.json").write_text(json.dumps({
        **dataclasses.asdict(args), "pretraining_config": config.to_dict(), "seed": training_args.seed,
        "max_steps": training_args.max_steps, "utterances": len(waveforms), "skipped_files": skipped,
        "train_runtime_seconds": metrics.get("train_runtime"), "loss_history": history}, indent=2, default=str) + "\n")
    plot_loss(history, output / "loss_curve.png", f"{args.masking} masking")
    print(f"Saved the pretrained {config.backbone_config.model_type} backbone to {output} "
          f"({len(skipped)} file(s) skipped)")
    return 0


def holds_model(folder: str) -> bool:
    """Whether `folder` holds a saved model (its `config.json`): what [`pretrain_if_missing`] reuses."""
    from pathlib import Path

    return (Path(folder) / "config.json").is_file()


def pretrain_if_missing(output_dir: str, arguments: str) -> bool:
    """Runs `msemoboost pretrain ARGUMENTS --output_dir output_dir` unless `output_dir` already holds a model (its
    `config.json`); `arguments` is one string, split as a shell would. Returns whether it pretrained. A recipe that
    names a pretrained backbone by its folder (`train.py --backbone DIR --backbone_pretraining ARGUMENTS`) thus
    pretrains it on its first run and reuses it on every later one. A pretraining killed before it saved the model
    resumes from its last checkpoint (in `output_dir/checkpoints`)."""
    import shlex
    from pathlib import Path

    from transformers.trainer_utils import get_last_checkpoint

    if holds_model(output_dir):
        logger.warning(f"Using the pretrained backbone in {output_dir} (delete the folder to pretrain it again).")
        return False
    command = [*shlex.split(arguments), "--output_dir", str(output_dir)]
    checkpoints = Path(output_dir) / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last and "--resume_from_checkpoint" not in command:
        logger.warning(f"Resuming the pretraining of {output_dir} from {last}.")
        command += ["--resume_from_checkpoint", "true"]
    logger.warning(f"{output_dir} holds no backbone yet; pretraining it first: msemoboost pretrain {shlex.join(command)}")
    pretrain(command)
    return True


def plot_loss(history: list[dict], path, title: str) -> None:
    """The training loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot([entry["step"] for entry in history], [entry["loss"] for entry in history], "o-", markersize=3)
    axis.set(xlabel="step", ylabel="training loss", title=f"Pretraining loss ({title})")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
