"""A frame-level speech-emotion-intensity model, trained here from relative rankings with no external weights.

EMS (Liu & Ma) takes its frame intensities from StrengthNet, which learns from relative-attribute rankings. This
model learns from the same kind of target, the orderings a corpus gives for free:

- RAVDESS: strong > normal > neutral, from its own intensity labels (rank 2, 1, 0);
- every corpus: emotional > neutral (rank 1 and 0), e.g. TESS.

Architecture: log-mel (25 ms Hann window, 10 ms hop) → two convolution blocks → bidirectional GRU → a linear score
per frame. A frame's intensity is the sigmoid of its score, in [0, 1]; an utterance's score is the mean of its
frames' scores. Loss: for every pair of utterances in a batch whose ranks differ, the logistic ranking loss
`softplus(-(u_high - u_low))` on their utterance scores, plus `calibration_weight` × the binary cross-entropy of the
utterance score against `rank / max_rank`, which anchors the scale so that 0.5 separates neutral from emotional
(EMS's threshold).

    msemoboost intensity train --dataset_name ../shared/data/ravdess --output_dir DIR [--max_steps N]
    msemoboost intensity score DIR FILE... [--plot scores.png]
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .acoustic_features import MSEmoBoostLogMel, MSEmoBoostPowerSpectrogram
from .inference import pad_batch


class MSEmoBoostIntensityConfig(PretrainedConfig):
    r"""
    Configuration of [`MSEmoBoostIntensityModel`].

    Args:
        sampling_rate (`int`, *optional*, defaults to 16000): rate of the input waveforms.
        n_fft (`int`, *optional*, defaults to 400): STFT size and Hann window length of the log-mel (25 ms).
        hop_length (`int`, *optional*, defaults to 160): samples between frames (10 ms).
        num_mel_bins (`int`, *optional*, defaults to 64): mel bands.
        conv_channels (`int`, *optional*, defaults to 32): channels of both convolution blocks.
        gru_hidden_size (`int`, *optional*, defaults to 64): hidden size of each GRU direction.
        dropout (`float`, *optional*, defaults to 0.1): dropout before the frame scores.
        max_rank (`int`, *optional*, defaults to 2): the highest intensity rank (strong).
        calibration_weight (`float`, *optional*, defaults to 1.0): weight of the calibration term of the loss. At 0.1
            the scores still ranked well (86.6 % strong > normal on held-out actors) but sat high for every
            utterance (neutral frames: median 0.93), so EMS's 0.5 threshold selected nearly every speech frame.
    """

    model_type = "msemoboost_intensity"

    def __init__(
        self,
        sampling_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        num_mel_bins: int = 64,
        conv_channels: int = 32,
        gru_hidden_size: int = 64,
        dropout: float = 0.1,
        max_rank: int = 2,
        calibration_weight: float = 1.0,
        **kwargs,
    ):
        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.num_mel_bins = num_mel_bins
        self.conv_channels = conv_channels
        self.gru_hidden_size = gru_hidden_size
        self.dropout = dropout
        self.max_rank = max_rank
        self.calibration_weight = calibration_weight
        super().__init__(**kwargs)


@dataclass
class MSEmoBoostIntensityOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): ranking + calibration loss, given `intensity_rank`.
        frame_scores (`torch.FloatTensor` of shape `(batch_size, num_frames)`): intensity of each 10 ms frame in
            [0, 1]; 0 on frames without audio.
        utterance_scores (`torch.FloatTensor` of shape `(batch_size,)`): mean frame score of each utterance.
        frame_mask (`torch.BoolTensor` of shape `(batch_size, num_frames)`): frames that hold audio.
    """

    loss: torch.FloatTensor | None = None
    frame_scores: torch.FloatTensor | None = None
    utterance_scores: torch.FloatTensor | None = None
    frame_mask: torch.BoolTensor | None = None


class MSEmoBoostIntensityPreTrainedModel(PreTrainedModel):
    config_class = MSEmoBoostIntensityConfig
    base_model_prefix = "intensity"
    main_input_name = "input_values"
    # The loss is a mean over the batch, not normalised by `num_items_in_batch`: `Trainer` must divide it by the
    # gradient accumulation steps (with `**kwargs` in `forward` it would otherwise assume the model had).
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, MSEmoBoostPowerSpectrogram):  # non-persistent buffers: rebuilt after loading
            for name, value in module.compute_buffers().items():
                init.copy_(getattr(module, name), value)
        else:
            super()._init_weights(module)


class MSEmoBoostIntensityModel(MSEmoBoostIntensityPreTrainedModel):
    """Frame-level emotion intensity from the raw waveform (see the module docstring)."""

    def __init__(self, config: MSEmoBoostIntensityConfig):
        super().__init__(config)
        self.log_mel = MSEmoBoostLogMel(config.n_fft, config.hop_length, config.sampling_rate, config.num_mel_bins)
        channels = config.conv_channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.MaxPool2d(kernel_size=(2, 1)),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.MaxPool2d(kernel_size=(2, 1)),
        )
        self.gru = nn.GRU(channels * (config.num_mel_bins // 4), config.gru_hidden_size, batch_first=True,
                          bidirectional=True)
        self.dropout = nn.Dropout(config.dropout)
        self.score = nn.Linear(2 * config.gru_hidden_size, 1)
        self.post_init()

    def frame_mask(self, attention_mask: torch.Tensor | None, input_values: torch.Tensor, num_frames: int) -> torch.Tensor:
        """`(batch_size, num_frames)`: centred frame `t` holds audio while `t * hop` is inside the utterance."""
        lengths = attention_mask.long().sum(-1) if attention_mask is not None else torch.full(
            (input_values.shape[0],), input_values.shape[1], device=input_values.device)
        return torch.arange(num_frames, device=input_values.device) * self.config.hop_length < lengths[:, None]

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        intensity_rank: torch.Tensor | None = None,
        **kwargs,
    ) -> MSEmoBoostIntensityOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, num_samples)`): raw mono waveforms.
            attention_mask (`torch.LongTensor` of shape `(batch_size, num_samples)`, *optional*): 1 on audio.
            intensity_rank (`torch.LongTensor` of shape `(batch_size,)`, *optional*): 0 neutral, 1 emotional (or
                normal intensity), 2 strong; gives the loss.
        """
        if attention_mask is not None:
            input_values = input_values * attention_mask.to(input_values.dtype)
        features = self.log_mel(input_values).transpose(1, 2)  # (batch_size, num_mel_bins, num_frames)
        mask = self.frame_mask(attention_mask, input_values, features.shape[-1])
        mean = (features * mask[:, None]).sum(-1, keepdim=True) / mask.sum(-1)[:, None, None]
        features = (features - mean) * mask[:, None]  # per-utterance mean normalisation of each band
        hidden = self.conv(features[:, None])  # (batch_size, channels, num_mel_bins // 4, num_frames)
        hidden = hidden.flatten(1, 2).transpose(1, 2)  # (batch_size, num_frames, channels * num_mel_bins // 4)
        lengths = mask.sum(-1).cpu()  # the backward GRU starts at each utterance's own last frame, not the padding
        packed = nn.utils.rnn.pack_padded_sequence(hidden, lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=hidden.shape[1])
        logits = self.score(self.dropout(hidden))[..., 0]  # (batch_size, num_frames)
        frame_scores = torch.sigmoid(logits) * mask
        utterance_scores = frame_scores.sum(-1) / mask.sum(-1)
        loss = None if intensity_rank is None else self.ranking_loss(utterance_scores, intensity_rank)
        return MSEmoBoostIntensityOutput(loss=loss, frame_scores=frame_scores, utterance_scores=utterance_scores,
                                         frame_mask=mask)

    def ranking_loss(self, utterance_scores: torch.Tensor, intensity_rank: torch.Tensor) -> torch.Tensor:
        """Logistic loss over every pair of differently ranked utterances, plus the calibration term."""
        higher = intensity_rank[:, None] > intensity_rank[None, :]  # (i, j): i should score above j
        logit = torch.logit(utterance_scores.clamp(1e-4, 1 - 1e-4))
        difference = logit[:, None] - logit[None, :]
        ranking = F.softplus(-difference[higher]).mean() if higher.any() else utterance_scores.sum() * 0.0
        target = intensity_rank.to(utterance_scores.dtype) / self.config.max_rank
        calibration = F.binary_cross_entropy(utterance_scores.clamp(1e-4, 1 - 1e-4), target)
        return ranking + self.config.calibration_weight * calibration


def align_to_frames(frame_scores: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Linear interpolation of `(batch_size, intensity_frames)` scores to `num_frames` frames (EMS aligns the
    intensity to the SSL model's frame rate linearly): `(batch_size, num_frames)`."""
    return F.interpolate(frame_scores[:, None].float(), size=num_frames, mode="linear", align_corners=True)[:, 0]


__all__ = ["MSEmoBoostIntensityConfig", "MSEmoBoostIntensityModel", "MSEmoBoostIntensityOutput", "align_to_frames"]


# --- Training and evaluation (`msemoboost intensity train`) ----------------------------------------------------


@dataclass
class RankedUtterance:
    waveform: np.ndarray
    rank: int
    speaker: str
    emotion: str
    intensity: str
    statement: str
    repetition: str
    corpus: str


def intensity_rank(emotion: str, intensity: str | None) -> int:
    """0 neutral, 2 a `strong` intensity label, 1 any other emotional utterance."""
    if emotion == "neutral":
        return 0
    return 2 if intensity == "strong" else 1


def load_ranked(dataset_name: str, sampling_rate: int, min_samples: int, label_column: str = "emotion",
                speaker_column: str = "speaker") -> tuple[list[RankedUtterance], list[str]]:
    """Every usable utterance of a corpus with its intensity rank; and the reasons files were skipped (silent, too
    short, undecodable), one line each naming the file."""
    from .data import read_corpus_audio

    rows, waveforms, skipped = read_corpus_audio(dataset_name, sampling_rate, min_samples,
                                                 required_columns=(label_column, speaker_column))
    utterances = [
        RankedUtterance(waveform, intensity_rank(str(row[label_column]), str(row.get("intensity") or "")),
                        str(row[speaker_column]), str(row[label_column]), str(row.get("intensity") or ""),
                        str(row.get("statement") or row.get("word") or ""), str(row.get("repetition") or ""),
                        dataset_name)
        for row, waveform in zip(rows, waveforms)
    ]
    return utterances, skipped


@torch.no_grad()
def utterance_scores(model: MSEmoBoostIntensityModel, waveforms: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
    model.eval()
    scores = [model(**pad_batch(waveforms[start : start + batch_size])).utterance_scores
              for start in range(0, len(waveforms), batch_size)]
    return torch.cat(scores).numpy()


def ranking_accuracy(model: MSEmoBoostIntensityModel, utterances: list[RankedUtterance]) -> dict:
    """Pairwise ranking accuracy on held-out utterances: strong vs normal of the same speaker, statement, emotion
    and repetition; emotional vs neutral of the same speaker and statement. Ties count half."""
    scores = utterance_scores(model, [utterance.waveform for utterance in utterances])
    pairs = {"strong_vs_normal": [], "emotional_vs_neutral": []}
    for i, high in enumerate(utterances):
        for j, low in enumerate(utterances):
            if high.speaker != low.speaker or high.statement != low.statement or high.corpus != low.corpus:
                continue
            if high.rank == 2 and low.rank == 1 and (high.emotion, high.repetition) == (low.emotion, low.repetition):
                pairs["strong_vs_normal"].append((i, j))
            if high.rank >= 1 and low.rank == 0:
                pairs["emotional_vs_neutral"].append((i, j))
    result = {}
    for name, found in pairs.items():
        if found:
            wins = [1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0 for i, j in found]
            result[name] = {"accuracy": float(np.mean(wins)), "pairs": len(found)}
    by_rank = {rank: [float(s) for s, u in zip(scores, utterances) if u.rank == rank] for rank in (0, 1, 2)}
    result["mean_score_by_rank"] = {str(rank): float(np.mean(values)) for rank, values in by_rank.items() if values}
    return result


def train_intensity(dataset_names: list[str], output_dir: str, eval_speakers: list[str] | None = None,
                    max_steps: int = 800, batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0,
                    config: MSEmoBoostIntensityConfig | None = None, crop_seconds: float = 2.0) -> dict:
    """Trains the intensity model on the corpora (all speakers of the first corpus but `eval_speakers`, which
    default to its last 4 speakers in sorted order; every speaker of the others), saves it to `output_dir`, and
    measures its ranking accuracy on the held-out speakers (whole utterances; training sees random crops of at most
    `crop_seconds`). Returns the report written to
    `output_dir/intensity_results.json`."""
    import json
    from pathlib import Path

    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(seed)
    config = config or MSEmoBoostIntensityConfig()
    utterances, skipped = [], []
    for name in dataset_names:
        found, missed = load_ranked(name, config.sampling_rate, config.n_fft)
        utterances += found
        skipped += missed
    first = [u for u in utterances if u.corpus == dataset_names[0]]
    speakers = sorted({u.speaker for u in first})
    eval_speakers = eval_speakers if eval_speakers is not None else speakers[-4:]
    unknown = sorted(set(eval_speakers) - set(speakers))
    if unknown:
        raise ValueError(f"--eval_speakers {unknown} are not speakers of {dataset_names[0]}: {speakers}.")
    held_out = [u for u in first if u.speaker in eval_speakers]
    training = [u for u in utterances if not (u.corpus == dataset_names[0] and u.speaker in eval_speakers)]
    if len({u.rank for u in training}) < 2:
        raise ValueError("The training utterances hold a single intensity rank: nothing to rank.")

    class Ranked(Dataset):
        def __len__(self):
            return len(training)

        def __getitem__(self, index):
            return {"waveform": training[index].waveform, "rank": training[index].rank}

    crop = int(crop_seconds * config.sampling_rate)

    def collate(rows):  # a random crop of at most crop_seconds per utterance: intensity is a property of the whole
        waveforms = []
        for row in rows:
            start = int(torch.randint(0, max(1, len(row["waveform"]) - crop + 1), (1,)))
            waveforms.append(row["waveform"][start : start + crop])
        return {**pad_batch(waveforms), "intensity_rank": torch.tensor([row["rank"] for row in rows])}

    model = MSEmoBoostIntensityModel(config)
    arguments = TrainingArguments(
        output_dir=str(Path(output_dir) / "checkpoints"), max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, warmup_steps=0.05, lr_scheduler_type="cosine", weight_decay=0.01,
        logging_steps=max(1, max_steps // 20), save_strategy="no", report_to="none", seed=seed,
        remove_unused_columns=False, dataloader_pin_memory=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, train_dataset=Ranked(), data_collator=collate)
    trainer.train()
    model.save_pretrained(output_dir)
    report = {"datasets": dataset_names, "eval_speakers": eval_speakers, "train_utterances": len(training),
              "eval_utterances": len(held_out), "skipped_files": skipped, "max_steps": max_steps, "seed": seed,
              "ranking_accuracy": ranking_accuracy(model, held_out),
              "loss_history": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]}
    (Path(output_dir) / "intensity_results.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
