#!/usr/bin/env python
"""Train and evaluate MS-EmoBoost with the paper's protocols, then save (and optionally push) the model.

    python train.py                                    # offline demo: generated corpus, tiny backbone, a few minutes
    python train.py configs/emodb.yaml --dataset_name ../shared/data/emodb
    python train.py configs/iemocap.yaml --dataset_name <hub id or folder> --push_to_hub --hub_model_id you/ser
    python train.py configs/emodb_noisy.yaml --dataset_name ../shared/data/emodb  # noise augmentation, staged
                                                       # unfreezing, tests at 20/10/5/0 dB SNR (--eval_snr)
    accelerate launch train.py configs/emodb.yaml ...  # several processes or GPUs

Every argument of `transformers.TrainingArguments` works. A YAML or JSON file of arguments may come first; arguments
after it override the file. Protocols (`--protocol`):

- `loso`: leave-one-speaker-out (with `--num_folds` smaller than the number of speakers, speakers are grouped into
  that many folds);
- `kfold`: stratified k-fold over utterances;
- `splits`: the dataset's own train / validation / test splits;
- `cross_corpus`: train on `--extra_train_datasets` only, test on all of `--dataset_name` over the classes they share;
- `leave_one_corpus_out`: each of `--dataset_name` and `--extra_train_datasets` tested once by a model trained on all
  the others (a `cross_corpus` run each, in `OUTPUT_DIR/<corpus>`), with per-corpus and mean WA/UA;
- `train_only`: no test; the final model trains on every utterance of `--dataset_name` and `--extra_train_datasets`,
  over the union of their classes (configs/multicorpus_cpu.yaml; evaluate such a recipe with leave_one_corpus_out).

Early stopping and the choice of the best checkpoint use a validation part drawn from each fold's *training*
speakers only (whole speakers, `--validation_fraction` of them, chosen with scikit-learn's `StratifiedGroupKFold`):
the test speaker never takes part in model selection. Without a speaker column, a stratified random part of the
training utterances is used instead. `--validation_fraction 0` holds nothing out: each fold trains on all of its
training speakers for the whole schedule and keeps its last weights, or the average of its last N epochs' weights
(`--average_last_epochs N`). `--parallel_folds N` trains N folds at once, each in a process of its own with an
equal share of the CPU threads (small models on few cores finish sooner so).

Training is at segment level: the model cuts each utterance into 3 s segments and scores every segment against its
utterance's label. Evaluation is at utterance level: segment log-probabilities are averaged per utterance, and WA/UA
are computed over utterances.
"""

import csv
import dataclasses
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import EarlyStoppingCallback, HfArgumentParser, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

import msemoboost
from msemoboost.augmentation import BatchMixup, Chain, WaveformAugmentation, check_waveform_augmentation
from msemoboost.data import AudioCollator, combine_corpora, decode_audio, load_corpus, parse_label_merge
from msemoboost.demo import make_demo_corpus
from msemoboost.noise import (
    SILENCE_FLOOR_DBFS,
    FixedNoise,
    NoiseAugmentation,
    NoiseDataset,
    active_power,
    check_augmentation,
    check_noise_types,
    check_snrs,
    fold_noise_bank,
)
from msemoboost.pretraining import holds_model, pretrain_if_missing
from msemoboost.protocols import PROTOCOLS, Fold, hold_out_validation, make_folds
from msemoboost.reporting import (
    confusion_matrix,
    format_report,
    mean_std,
    per_class_report,
    render_model_card,
    save_confusion_matrix,
    save_snr_plot,
    write_json,
)
from msemoboost.statistics_fusion import (
    choose_statistics_weight,
    fit_statistics_classifier,
    fused_logits,
    statistics_classifier_off,
    statistics_log_probabilities,
    utterance_statistics,
)
from msemoboost.training import (
    CheckpointAveraging,
    MSEmoBoostTrainer,
    StagedUnfreezing,
    WaUaMetrics,
    argument_words,
    build_feature_extractor,
    build_model,
    class_balanced_weights,
    load_for_transfer,
    load_wa_ua,
    read_arguments_file,
    read_json_argument,
    run_in_processes,
)

logger = logging.getLogger("msemoboost.train")
REPO = Path(__file__).resolve().parent
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
LEAVE_ONE_CORPUS_OUT = "leave_one_corpus_out"
MODEL_CARD_TEMPLATE = REPO / "model_card.md"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from a trained MS-EmoBoost checkpoint (Hub id or directory): its backbone, guidance "
                  "branches and classifier rows of the labels it shares with this run; new labels get new rows. "
                  "Its architecture is kept (--backbone, --backbone_config and the use_* switches are ignored)."},
    )
    backbone: str | None = field(
        default=None,
        metadata={"help": "Hub id or local path of a pretrained SSL model (wav2vec2, HuBERT, WavLM, data2vec-audio, "
                  "...), e.g. facebook/wav2vec2-base. Its weights are kept; the guidance branches start fresh."},
    )
    backbone_config: str | None = field(
        default=None,
        metadata={"help": "Instead of --backbone: a randomly initialised backbone from this config, a JSON object "
                  "inline or in a .json file, e.g. '{\"model_type\": \"wav2vec2\", \"hidden_size\": 64, ...}'."},
    )
    backbone_pretraining: str | None = field(
        default=None,
        metadata={"help": "When --backbone is a folder that holds no model yet: the `msemoboost pretrain` arguments "
                  "(a config file and flags, in one string) that pretrain it there first, e.g. "
                  "'configs/pretrain_cpu.yaml --dataset_name ../shared/data/ravdess --max_steps 1500'. A folder that "
                  "holds a model is used as it is."},
    )
    use_mfcc: bool = field(default=True, metadata={"help": "Use the MFCC guidance branch."})
    use_spectrogram: bool = field(default=True, metadata={"help": "Use the spectrogram guidance branch."})
    use_attention: bool = field(default=True, metadata={"help": "Use residual self-attention in both branches."})
    use_backbone_features: bool = field(
        default=True, metadata={"help": "Pool SSL features; false gives the guidance-only ablation."}
    )
    model_config_overrides: str | None = field(
        default=None, metadata={"help": "Other MSEmoBoostConfig arguments as a JSON object (inline or a .json file)."}
    )
    freeze_feature_encoder: bool = field(default=True, metadata={"help": "Freeze the backbone's CNN feature encoder."})
    freeze_backbone: bool = field(default=False, metadata={"help": "Freeze the whole SSL backbone."})
    imagenet_alexnet: bool = field(
        default=False, metadata={"help": "Start the spectrogram branch from ImageNet AlexNet (torchvision download)."}
    )
    do_normalize: bool | None = field(
        default=None,
        metadata={"help": "Normalise each waveform to zero mean, unit variance. Default: as the backbone's own "
                  "feature extractor does (true when unknown)."},
    )
    unfreeze_stages: list[str] | None = field(
        default=None,
        metadata={"help": "Staged unfreezing: start with the backbone frozen, then unfreeze it in these stages, "
                  "WHEN=WHAT with WHEN epoch:N or step:N and WHAT top:K, all or feature_encoder, e.g. "
                  "epoch:1=top:2 epoch:3=all epoch:5=feature_encoder."},
    )
    class_balanced_loss: bool = field(
        default=False,
        metadata={"help": "Weight the cross-entropy by inverse class frequency in each fold's training data."},
    )
    backbone_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the SSL backbone (default: --learning_rate)."}
    )
    guidance_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the guidance branches and X_enh (default: --learning_rate). The "
                  "classifier always uses --learning_rate."},
    )
    use_se_head: bool = field(
        default=False,
        metadata={"help": "Train a speech-enhancement head on the SSL frames jointly (needs noise augmentation for "
                  "its clean/noisy pairs). Its target, size and loss weight: se_* in --model_config_overrides."},
    )
    speaker_normalization: bool = field(
        default=False,
        metadata={"help": "The whole-utterance statistics classifier reads each speaker's statistics standardised by "
                  "that speaker's own mean and deviation (config.speaker_normalization; needs "
                  "utterance_statistics_classifier). Every speaker, training and test, is standardised over its own "
                  "recordings only, a test speaker over its unlabelled test audio."},
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id or local path (an audiofolder directory with metadata.csv works)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    demo: bool = field(
        default=False, metadata={"help": "Generate the built-in synthetic corpus into OUTPUT_DIR/demo_corpus and use it."}
    )
    audio_column: str = field(default="audio", metadata={"help": "Column holding the audio."})
    label_column: str = field(default="label", metadata={"help": "Column holding the emotion (ClassLabel or string)."})
    speaker_column: str | None = field(
        default="speaker", metadata={"help": "Column holding the speaker; empty for none (kfold or splits only)."}
    )
    label_merge: str | None = field(
        default=None, metadata={"help": "Rename classes before training, 'from:to' pairs, e.g. 'excited:happy'."}
    )
    keep_labels: list[str] | None = field(
        default=None, metadata={"help": "Keep only utterances of these classes (after --label_merge), e.g. IEMOCAP's 4."}
    )
    skip_bad_audio: bool = field(
        default=False, metadata={"help": "Skip unreadable or too-short audio files (and report them) instead of failing."}
    )
    extra_train_datasets: list[str] | None = field(
        default=None,
        metadata={"help": "More corpora (Hub ids or folders) in every fold's training data, never tested. Labels are "
                  "matched by name; classes the evaluated corpus lacks are dropped (see --keep_extra_labels)."},
    )
    extra_train_columns: str | None = field(
        default=None,
        metadata={"help": "Column names of extra corpora that differ from the evaluated one's, as a JSON object "
                  "{corpus: {\"label_column\": ..., \"speaker_column\": ..., \"audio_column\": ...}}."},
    )
    keep_extra_labels: bool = field(
        default=False, metadata={"help": "Also train on extra corpora's classes that the evaluated corpus lacks."}
    )
    corpus_languages: str | None = field(
        default=None,
        metadata={"help": "The language of each corpus, as a JSON object {corpus: language code}, e.g. "
                  "'{\"emodb\": \"de\"}' (corpus: the folder's name or the Hub id): the model card lists them, and "
                  "its metadata names the languages."},
    )
    mask_absent_classes: bool = field(
        default=True,
        metadata={"help": "With extra corpora: score each training utterance's loss over the classes its own corpus "
                  "has, so that a class some corpora lack (EMO-DB's boredom, beside RAVDESS) is not learnt as the "
                  "identity of the corpora that have it. false: one softmax over every class for every utterance."},
    )


@dataclass
class AugmentationArguments:
    speed_perturbation: list[float] | None = field(
        default=None, metadata={"help": "Speed perturbation of training utterances: a factor range LOW HIGH, e.g. 0.9 1.1."}
    )
    speed_perturbation_probability: float = field(
        default=0.5, metadata={"help": "Probability of perturbing a training utterance's speed."}
    )
    time_masks: int = field(default=0, metadata={"help": "SpecAugment-style zeroed spans per training utterance."})
    time_mask_max_s: float = field(default=0.1, metadata={"help": "Longest zeroed span, in seconds."})
    mixup_alpha: float = field(
        default=0.0, metadata={"help": "Mixup of training batches, weights drawn from Beta(alpha, alpha); 0 is off."}
    )

    def __post_init__(self):
        check_waveform_augmentation(
            self.speed_perturbation, self.speed_perturbation_probability, self.time_masks, self.time_mask_max_s
        )
        if not self.mixup_alpha >= 0:
            raise ValueError(f"--mixup_alpha must be >= 0 (0 turns mixup off), got {self.mixup_alpha}.")


@dataclass
class NoiseArguments:
    eval_snr: list[float] | None = field(
        default=None,
        metadata={"help": "Also test every fold on noisy audio at these SNRs in dB, e.g. 20 10 5 0 (SNR over the "
                  "active speech; see msemoboost/noise.py). Results per noise type and SNR go to results.json."},
    )
    eval_noise: list[str] | None = field(
        default=None,
        metadata={"help": "Noise types for --eval_snr: white, pink, babble (other utterances of the fold's training "
                  "speakers), dataset (--noise_dataset). Default: white pink babble, and dataset when given."},
    )
    noise_dataset: str | None = field(
        default=None, metadata={"help": "A folder of noise recordings or a datasets id: the 'dataset' noise type."}
    )
    noise_audio_column: str | None = field(default=None, metadata={"help": "Audio column of --noise_dataset."})
    babble_talkers: int = field(default=4, metadata={"help": "Utterances summed into one babble noise."})
    babble_pool_size: int = field(
        default=64, metadata={"help": "Training utterances per fold that babble is drawn from (decoded once)."}
    )
    noise_augmentation_probability: float = field(
        default=0.0, metadata={"help": "Probability of adding noise to a training utterance (0: no augmentation)."}
    )
    noise_augmentation_snr: list[float] = field(
        default_factory=lambda: [0.0, 20.0], metadata={"help": "SNR range LOW HIGH in dB for noise augmentation."}
    )
    noise_augmentation_types: list[str] | None = field(
        default=None, metadata={"help": "Noise types for augmentation (default: those of --eval_noise)."}
    )

    def __post_init__(self):
        check_snrs(self.eval_snr or [], "--eval_snr")
        check_augmentation(self.noise_augmentation_probability, self.noise_augmentation_snr)
        if self.eval_noise is None:
            self.eval_noise = ["white", "pink", "babble"] + (["dataset"] if self.noise_dataset else [])
        if self.noise_augmentation_types is None:
            self.noise_augmentation_types = list(self.eval_noise)
        check_noise_types(self.eval_noise, "--eval_noise", bool(self.noise_dataset))
        check_noise_types(self.noise_augmentation_types, "--noise_augmentation_types", bool(self.noise_dataset))

    @property
    def needs_noise(self) -> bool:
        return bool(self.eval_snr) or self.noise_augmentation_probability > 0


@dataclass
class ProtocolArguments:
    protocol: str = field(
        default="loso",
        metadata={"help": f"Evaluation protocol, one of {[*PROTOCOLS, LEAVE_ONE_CORPUS_OUT]}. cross_corpus trains on "
                  "--extra_train_datasets only and tests on all of --dataset_name, over the emotions they share; "
                  "leave_one_corpus_out tests each of --dataset_name and --extra_train_datasets once so; train_only "
                  "tests nothing and trains the final model on all of them, over the union of their classes."},
    )
    num_folds: int | None = field(
        default=None, metadata={"help": "loso: group speakers into this many folds (default: one per speaker). "
                                "kfold: number of folds (default 10)."}
    )
    validation_fraction: float = field(
        default=0.15,
        metadata={"help": "Share of each fold's training speakers (whole speakers) held out for early stopping. 0: "
                  "none; every training utterance trains, for the whole schedule, without early stopping (a dataset's "
                  "own validation split, under --protocol splits, is still used)."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop a fold after this many evaluations without improvement (ignored when the "
                                "fold has no validation part)."}
    )
    average_last_epochs: int | None = field(
        default=None, metadata={"help": "Keep the average of the weights after each of the last N epochs instead of the "
                                "last checkpoint (needs a fixed schedule: --validation_fraction 0; not applied to a "
                                "fold whose dataset brings its own validation split, where early stopping picks "
                                "the checkpoint). 0 or unset: keep the last weights."}
    )
    folds: list[str] | None = field(default=None, metadata={"help": "Run only these folds (names or indices)."})
    statistics_weight_grid: list[float] | None = field(
        default=None,
        metadata={"help": "With utterance_statistics_classifier: choose its weight (utterance_statistics_weight) from "
                  "these by cross-validation over the folds. Each fold is scored at the weight that does best (mean "
                  "UA) on the other folds, never on its own test speakers, and the final model gets the weight that "
                  "does best on all of them; results.json -> statistics_weight gives the UA of every weight. Needs 2 "
                  "folds or more (with one, the model's own weight stays). Tests in noise (--eval_snr) keep the "
                  "model's own weight."},
    )
    final_model: bool = field(
        default=True, metadata={"help": "loso/kfold: after cross-validation, train the model to publish on all "
                                "speakers (validation speakers held out for early stopping)."}
    )
    save_fold_models: bool = field(default=True, metadata={"help": "Keep each fold's best model in its folder."})
    parallel_folds: int = field(
        default=1, metadata={"help": "Train this many folds at once, each in a process of its own with an equal share "
                             "of the torch threads, its log in <output_dir>/folds/<fold>/train.log. Small models use "
                             "threads poorly: on 2 CPU cores, 2 finishes the folds about 1.4x sooner. 1: one fold after "
                             "another in this process. Ignored (with a warning) in a run of several processes "
                             "(accelerate launch)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in --output_dir instead of refusing to."}
    )
    train_split: str = field(default="train", metadata={"help": "splits protocol: the training split."})
    validation_split: str | None = field(default="validation", metadata={"help": "splits protocol: validation split."})
    test_split: str = field(default="test", metadata={"help": "splits protocol: the test split."})

    def __post_init__(self):
        if self.statistics_weight_grid is not None and (
            not self.statistics_weight_grid or any(not 0 <= weight < float("inf") for weight in self.statistics_weight_grid)
        ):
            raise ValueError(f"--statistics_weight_grid takes finite, non-negative weights, got {self.statistics_weight_grid}.")


def parse_arguments(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, NoiseArguments, ProtocolArguments, TrainingArguments, AugmentationArguments]:
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, NoiseArguments, ProtocolArguments, TrainingArguments, AugmentationArguments)
    )
    parser.description = __doc__
    names_a_dataset = any(word == "--dataset_name" or word.startswith("--dataset_name=") for word in argv)
    if not argv or (not argv[0].endswith((".yaml", ".yml", ".json")) and ("--demo" in argv or not names_a_dataset)):
        # The demo: bare, with --demo, or with only other options (e.g. --output_dir): all run configs/demo.yaml.
        argv = [str(DEMO_CONFIG), *argv]
    if argv[0].endswith((".yaml", ".yml", ".json")):
        from_file = read_arguments_file(argv[0])
        if any(word.split("=")[0] in ("--backbone", "--backbone_config") for word in argv[1:]):
            # A backbone named on the command line replaces the file's: pretrained, pretrained first, or random.
            from_file = {key: value for key, value in from_file.items() if key not in BACKBONE_ARGUMENTS}
        argv = argument_words(from_file) + argv[1:]
    model_args, data_args, noise_args, protocol_args, training_args, augmentation_args = (
        parser.parse_args_into_dataclasses(args=argv)
    )
    if not (data_args.dataset_name or data_args.demo):
        parser.error("give --dataset_name (or --demo for the built-in corpus)")
    if protocol_args.protocol not in (*PROTOCOLS, LEAVE_ONE_CORPUS_OUT):
        parser.error(f"--protocol must be one of {[*PROTOCOLS, LEAVE_ONE_CORPUS_OUT]}")
    if model_args.speaker_normalization and noise_args.eval_snr:
        parser.error("--eval_snr tests the model in noise without groups, and --speaker_normalization true needs each "
                     "test speaker's recordings together: run them apart")
    if model_args.use_se_head and noise_args.noise_augmentation_probability <= 0:
        parser.error("--use_se_head learns from clean/noisy pairs: set --noise_augmentation_probability above 0")
    if model_args.unfreeze_stages:
        StagedUnfreezing(model_args.unfreeze_stages)  # a malformed schedule fails here, before any data is read
        if model_args.freeze_backbone:
            parser.error("--unfreeze_stages unfreezes the backbone; it cannot be combined with --freeze_backbone true")
    if not model_args.use_backbone_features and (model_args.backbone or model_args.backbone_config):
        # The guidance-only ablation of a preset that names a backbone: nothing to load, nothing to pretrain.
        logger.warning(f"--use_backbone_features false: the guidance-only model has no backbone, so the backbone that "
                       f"this run names ({model_args.backbone or 'a --backbone_config'}) is neither loaded nor "
                       "pretrained.")
        model_args.backbone = model_args.backbone_config = model_args.backbone_pretraining = None
    overrides = read_json_argument(model_args.model_config_overrides) if model_args.model_config_overrides else {}
    if not model_args.use_backbone_features and overrides.pop("use_weighted_layer_sum", False):
        logger.warning("--use_backbone_features false: use_weighted_layer_sum (a weighting of the backbone's layers) "
                       "is dropped from --model_config_overrides.")
        model_args.model_config_overrides = json.dumps(overrides)
    if not model_args.use_mfcc:  # the ablations without the MFCC branch of a preset whose MFCC branch has statistics
        statistics_options = ("mfcc_statistics", "prosody_statistics", "classify_statistics", "utterance_statistics_classifier",
                              "utterance_distribution_statistics", "utterance_statistics_weight")
        dropped = [key for key in statistics_options if overrides.pop(key, False)]
        if dropped:
            logger.warning(f"--use_mfcc false: {', '.join(dropped)} (statistics of the MFCC branch) "
                           f"{'is' if len(dropped) == 1 else 'are'} dropped from --model_config_overrides.")
            model_args.model_config_overrides = json.dumps(overrides)
        if model_args.speaker_normalization and "utterance_statistics_classifier" in dropped:
            logger.warning("--use_mfcc false: --speaker_normalization is off, with the statistics classifier it "
                           "normalises.")
            model_args.speaker_normalization = False
    if model_args.backbone_pretraining and not model_args.backbone:
        parser.error("--backbone_pretraining pretrains the folder that --backbone names: give --backbone")
    to_pretrain = model_args.backbone_pretraining and not model_args.model_name_or_path
    loads_backbone = model_args.backbone and not (model_args.backbone_pretraining or model_args.model_name_or_path)
    if loads_backbone and is_missing_folder(model_args.backbone):
        parser.error(f"--backbone {model_args.backbone}: no such folder, and not a Hub model id. Give a folder that "
                     "holds a model, a Hub id (facebook/wav2vec2-base), or add --backbone_pretraining ARGUMENTS to "
                     "pretrain one into that folder first.")
    if to_pretrain and training_args.world_size > 1 and not holds_model(model_args.backbone):
        parser.error(f"--backbone {model_args.backbone} is not pretrained yet, and pretraining cannot start inside this "
                     f"{training_args.world_size}-process run. Pretrain it first: msemoboost pretrain "
                     f"{model_args.backbone_pretraining} --output_dir {model_args.backbone}")
    if protocol_args.average_last_epochs and protocol_args.validation_fraction > 0:
        parser.error("--average_last_epochs averages the last epochs of a fixed schedule; early stopping on validation "
                     "speakers chooses an epoch instead. Give --validation_fraction 0 with it.")
    if protocol_args.average_last_epochs and protocol_args.average_last_epochs > training_args.num_train_epochs:
        parser.error(f"--average_last_epochs {protocol_args.average_last_epochs} averages more epochs than the run has "
                     f"(--num_train_epochs {training_args.num_train_epochs:g}): lower it, or give 0 to keep the last "
                     "weights.")
    if protocol_args.parallel_folds < 1:
        parser.error(f"--parallel_folds must be at least 1, got {protocol_args.parallel_folds}")
    if protocol_args.parallel_folds > 1 and training_args.world_size > 1:
        logger.warning(f"--parallel_folds {protocol_args.parallel_folds} is ignored: this run already spans "
                       f"{training_args.world_size} processes, which train each fold together, one fold after another.")
        protocol_args.parallel_folds = 1
    if protocol_args.protocol == "train_only" and not protocol_args.final_model:
        parser.error("--protocol train_only tests nothing and only trains the final model: keep --final_model true")
    if protocol_args.protocol == "train_only" and noise_args.eval_snr:
        parser.error("--protocol train_only tests nothing, so --eval_snr has nothing to test in noise")
    if data_args.corpus_languages:
        named = [data_args.dataset_name, *(data_args.extra_train_datasets or [])]
        unknown = sorted(set(read_json_argument(data_args.corpus_languages)) - {corpus_name(name) for name in named})
        if unknown:
            parser.error(f"--corpus_languages names {unknown}, which are not among the run's corpora "
                         f"{[corpus_name(name) for name in named]}")
    if protocol_args.protocol in ("cross_corpus", LEAVE_ONE_CORPUS_OUT) and not data_args.extra_train_datasets:
        parser.error(f"--protocol {protocol_args.protocol} trains on --extra_train_datasets only: name at least one")
    if data_args.mask_absent_classes and data_args.extra_train_datasets and training_args.label_smoothing_factor:
        parser.error("--mask_absent_classes (on by default with --extra_train_datasets) cannot be combined with "
                     "--label_smoothing_factor, which spreads probability over every class, including those an "
                     "utterance's corpus lacks: give --mask_absent_classes false to smooth")
    return model_args, data_args, noise_args, protocol_args, training_args, augmentation_args


BACKBONE_ARGUMENTS = ("backbone", "backbone_config", "backbone_pretraining")


def is_missing_folder(name: str) -> bool:
    """Whether `name` can only be a local folder (it is no valid Hub id) and that folder does not exist."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def fold_training_arguments(
    training_args: TrainingArguments, output_dir: Path, patience: int | None, has_validation: bool = True
) -> TrainingArguments:
    """The run's TrainingArguments for one fold: its own checkpoint folder, no Hub pushes mid-run, and best-model
    selection on the validation speakers when early stopping is on; no evaluation when there is nothing to validate on."""
    # Label smoothing is the model's own (config.label_smoothing, set in train_model), so that it keeps the class
    # weights and the segment-level loss; the Trainer's label smoother would replace that loss.
    changes = {"output_dir": str(output_dir), "push_to_hub": False, "remove_unused_columns": False,
               "label_smoothing_factor": 0.0}
    if not has_validation:
        changes.update(eval_strategy="no", load_best_model_at_end=False)
    elif patience is not None:
        strategy = training_args.eval_strategy if training_args.eval_strategy != "no" else "epoch"
        changes.update(
            eval_strategy=strategy,
            save_strategy=strategy,
            load_best_model_at_end=True,
            metric_for_best_model=training_args.metric_for_best_model or "ua",
        )
    return dataclasses.replace(training_args, **changes)


def prepare_output_dir(output_dir: Path, overwrite: bool, training_args: TrainingArguments) -> None:
    finished = output_dir / "results.json"
    with training_args.main_process_first():
        if finished.exists():
            if not overwrite:
                raise FileExistsError(
                    f"{output_dir} already holds a finished run ({finished}). Pass --overwrite_output_dir true to "
                    "replace it, or choose another --output_dir."
                )
            if training_args.process_index == 0:
                shutil.rmtree(output_dir)
                logger.info(f"Removed the finished run in {output_dir} (--overwrite_output_dir).")
        output_dir.mkdir(parents=True, exist_ok=True)


def resume_checkpoint(training_args: TrainingArguments, checkpoint_dir: Path) -> str | None:
    """The checkpoint this fold resumes from with --resume_from_checkpoint (true/last: its own last one; a path: that)."""
    request = training_args.resume_from_checkpoint
    if not request or str(request).lower() in ("false", "0", "no"):
        return None
    if str(request).lower() in ("true", "last", "1", "yes"):
        return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    return str(request) if Path(request).resolve().parent == checkpoint_dir.resolve() else None


def model_config(model_args: ModelArguments) -> msemoboost.MSEmoBoostConfig:
    """The configuration the run's models will have (labels aside), to read rates and sizes before training."""
    if model_args.model_name_or_path:
        return msemoboost.MSEmoBoostConfig.from_pretrained(model_args.model_name_or_path)
    if model_args.backbone:
        backbone_config = transformers.AutoConfig.from_pretrained(model_args.backbone)
    else:
        backbone_config = read_json_argument(model_args.backbone_config) or None
    return msemoboost.MSEmoBoostConfig(
        backbone_config=backbone_config, **model_overrides(model_args)
    )


def corpus_name(dataset_name: str) -> str:
    """A short name for a corpus: the folder's name, or the Hub id."""
    return Path(dataset_name).name if Path(dataset_name).exists() else dataset_name


def load_corpora(data_args: DataArguments, config, protocol: str):
    """The evaluated corpus, with the extra training corpora (if any) pooled in: `(corpus, extra_rows, report)`.

    `report` gives, per corpus, the utterances used and those dropped for a class outside the label space."""
    options = dict(
        sampling_rate=config.sampling_rate,
        min_samples=config.min_input_samples,
        label_merge=parse_label_merge(data_args.label_merge),
        skip_bad_audio=data_args.skip_bad_audio,
    )
    columns = dict(
        audio_column=data_args.audio_column, label_column=data_args.label_column,
        speaker_column=data_args.speaker_column or None,
    )
    corpus = load_corpus(
        data_args.dataset_name, dataset_config_name=data_args.dataset_config_name, keep_labels=data_args.keep_labels,
        require_speaker=protocol == "loso", **columns, **options,
    )
    name = corpus_name(data_args.dataset_name)
    if len(corpus.label_names) < 2:
        raise ValueError(
            f"{name} has {len(corpus.label_names)} class(es) ({corpus.label_names}) after --label_merge/--keep_labels; "
            "emotion recognition needs at least 2."
        )
    if not data_args.extra_train_datasets:
        report = {"utterances": len(corpus.dataset), "dropped": {}, "num_dropped": 0, "label_names": corpus.label_names}
        return corpus, np.array([], dtype=int), {name: report}
    per_corpus = read_json_argument(data_args.extra_train_columns)
    unknown = sorted(set(per_corpus) - set(data_args.extra_train_datasets))
    if unknown:
        raise ValueError(f"--extra_train_columns names {unknown}, which are not in --extra_train_datasets {data_args.extra_train_datasets}.")
    extras = []
    for dataset_name in data_args.extra_train_datasets:
        extra_columns = {**columns, **per_corpus.get(dataset_name, {})}
        extras.append((corpus_name(dataset_name), load_corpus(dataset_name, require_speaker=False, **extra_columns, **options)))
    combined = combine_corpora(
        corpus, name, extras, protocol == "cross_corpus", data_args.keep_extra_labels or protocol == "train_only",
        data_args.mask_absent_classes,
    )
    return combined.corpus, combined.extra_rows, combined.report


def model_overrides(model_args: ModelArguments) -> dict:
    """MSEmoBoostConfig arguments from --model_config_overrides, with --use_se_head."""
    overrides = read_json_argument(model_args.model_config_overrides)
    if model_args.use_se_head:
        overrides["use_se_head"] = True
    if model_args.speaker_normalization:
        overrides["speaker_normalization"] = True
    return overrides


def train_model(
    rows_train: np.ndarray,
    rows_validation: np.ndarray,
    corpus,
    model_args: ModelArguments,
    protocol_args: ProtocolArguments,
    training_args: TrainingArguments,
    feature_extractor,
    checkpoint_dir: Path,
    callbacks,
    augmentation=None,
    mixup_alpha: float = 0.0,
) -> MSEmoBoostTrainer:
    """Trains one model on `rows_train` (with `augmentation` of the training waveforms and mixup of the training
    batches, if any), choosing the best checkpoint on `rows_validation` (clean) when early stopping is on; with no
    validation rows, for the whole schedule."""
    set_seed(training_args.seed)
    overrides = model_overrides(model_args)
    if model_args.class_balanced_loss:
        overrides["class_weights"] = class_balanced_weights(corpus.labels[rows_train], len(corpus.label_names))
    staged = bool(model_args.unfreeze_stages)
    if staged and model_args.freeze_feature_encoder:
        logger.info("--unfreeze_stages decides when the feature encoder trains; --freeze_feature_encoder is ignored.")
    freezing = dict(
        freeze_feature_encoder=model_args.freeze_feature_encoder and not staged, freeze_backbone=model_args.freeze_backbone
    )
    if model_args.model_name_or_path:
        model = load_for_transfer(
            model_args.model_name_or_path, corpus.label_names, class_weights=overrides.get("class_weights"), **freezing
        )
        if model_args.speaker_normalization and not model.config.utterance_statistics_classifier:
            raise ValueError(f"--speaker_normalization true standardises what the statistics classifier reads, and "
                             f"{model_args.model_name_or_path} has none (utterance_statistics_classifier).")
        model.config.speaker_normalization = model_args.speaker_normalization or model.config.speaker_normalization
    else:
        model = build_model(
            corpus.label_names,
            backbone=model_args.backbone,
            backbone_config=read_json_argument(model_args.backbone_config) or None,
            imagenet_alexnet=model_args.imagenet_alexnet,
            use_mfcc=model_args.use_mfcc,
            use_spectrogram=model_args.use_spectrogram,
            use_attention=model_args.use_attention,
            use_backbone_features=model_args.use_backbone_features,
            **freezing,
            **overrides,
        )
    if training_args.label_smoothing_factor:
        model.config.label_smoothing = training_args.label_smoothing_factor
    mixup = BatchMixup(mixup_alpha, len(corpus.label_names), training_args.seed) if mixup_alpha else None
    class_masks = "class_mask" in corpus.dataset.column_names  # --mask_absent_classes with extra corpora
    has_validation = len(rows_validation) > 0
    patience = protocol_args.early_stopping_patience if has_validation else None
    if protocol_args.early_stopping_patience is not None and not has_validation:
        logger.info("No validation part (--validation_fraction 0): the model trains for the whole schedule, without "
                    "early stopping.")
    args = fold_training_arguments(training_args, checkpoint_dir, patience, has_validation)
    averaging = protocol_args.average_last_epochs if not has_validation else None
    if protocol_args.average_last_epochs and has_validation:
        logger.info("The fold has a validation part (the dataset's own validation split): early stopping on it picks "
                    "the checkpoint, so --average_last_epochs is not applied.")
    trainer = MSEmoBoostTrainer(
        model=model,
        args=args,
        train_dataset=corpus.dataset.select(rows_train),
        eval_dataset=corpus.dataset.select(rows_validation) if has_validation else None,
        data_collator=AudioCollator(feature_extractor),
        train_data_collator=AudioCollator(
            feature_extractor, augmentation, return_clean=model_args.use_se_head, mixup=mixup, class_masks=class_masks
        ) if augmentation or mixup or class_masks else None,
        processing_class=feature_extractor,
        compute_metrics=WaUaMetrics(),
        part_learning_rates={"backbone": model_args.backbone_learning_rate, "guidance": model_args.guidance_learning_rate},
        callbacks=[
            *([EarlyStoppingCallback(patience)] if patience is not None else []),
            *([StagedUnfreezing(model_args.unfreeze_stages)] if staged else []),
            *([CheckpointAveraging(averaging)] if averaging else []),
            *callbacks,
        ],
    )
    checkpoint = resume_checkpoint(training_args, checkpoint_dir)
    if checkpoint:
        logger.info(f"Resuming from {checkpoint}")
    elif checkpoint_dir.exists() and trainer.is_world_process_zero():
        shutil.rmtree(checkpoint_dir)  # a killed attempt that is not being resumed
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.model.config.utterance_statistics_classifier:  # fitted on the training rows once the network is trained
        trainer.model.eval()
        statistics = utterance_statistics(trainer.model, corpus.dataset.select(rows_train), AudioCollator(feature_extractor))
        fit = fit_statistics_classifier(
            trainer.model, statistics, corpus.labels[rows_train], corpus.speakers[rows_train], seed=training_args.seed
        )
        trainer.log({"statistics_classifier_c": fit["c"]})
    return trainer


def noise_bank(corpus, rows, excluded_speakers, noise_args: NoiseArguments, noise_dataset, seed: int):
    """The fold's noise (babble from `rows` minus `excluded_speakers`), or None when the run uses no noise."""
    if not noise_args.needs_noise:
        return None
    kinds = set(noise_args.eval_noise if noise_args.eval_snr else [])
    if noise_args.noise_augmentation_probability > 0:
        kinds |= set(noise_args.noise_augmentation_types)
    pool_size = noise_args.babble_pool_size if "babble" in kinds else 0
    return fold_noise_bank(corpus, rows, excluded_speakers, pool_size, noise_args.babble_talkers, noise_dataset, seed)


def augmentation(bank, noise_args: NoiseArguments, augmentation_args: AugmentationArguments, seed: int,
                 sampling_rate: int, min_samples: int) -> Chain | None:
    """What happens to a training waveform: speed perturbation and time masks, then noise; None when nothing does."""
    waveform = WaveformAugmentation(
        sampling_rate, augmentation_args.speed_perturbation, augmentation_args.speed_perturbation_probability,
        augmentation_args.time_masks, augmentation_args.time_mask_max_s, seed, min_samples,
    )
    waveform = waveform if waveform.is_active else None
    noise = None
    if noise_args.noise_augmentation_probability > 0:
        noise = NoiseAugmentation(
            bank, noise_args.noise_augmentation_types, noise_args.noise_augmentation_probability,
            noise_args.noise_augmentation_snr, seed,
        )
    return Chain(waveform, noise) if waveform or noise else None


def test_in_noise(trainer, corpus, rows: np.ndarray, bank, noise_args: NoiseArguments, feature_extractor, seed: int) -> dict:
    """Utterance-level WA/UA of the test rows with each noise type at each SNR: {type: {snr: {wa, ua}}}, plus the
    test utterances that are silent (mixed at the floor)."""
    clean_collator = trainer.data_collator
    results = {}
    try:
        for kind in bank.check_kinds(noise_args.eval_noise, "--eval_noise"):
            for snr in noise_args.eval_snr:
                trainer.data_collator = AudioCollator(feature_extractor, FixedNoise(bank, kind, snr, seed))
                metrics = trainer.predict(corpus.dataset.select(rows), metric_key_prefix="test").metrics
                results.setdefault(kind, {})[f"{snr:g}"] = {"wa": metrics["test_wa"], "ua": metrics["test_ua"]}
    finally:
        trainer.data_collator = clean_collator
    floor = 10 ** (SILENCE_FLOOR_DBFS / 10)
    silent = []
    for row in rows:
        item = corpus.dataset[int(row)]
        if active_power(decode_audio(item["audio"], corpus.sampling_rate), corpus.sampling_rate) < floor:
            silent.append(item["utterance_id"])
    return {"noisy": results, "silent_test_utterances": silent}


def fold_results_path(output_dir: Path, fold_name: str) -> Path:
    """Where a fold writes its results; a fold whose results exist is finished."""
    return output_dir / "folds" / fold_name / "results.json"


def run_fold(
    fold: Fold, corpus, model_args, noise_args, protocol_args, training_args, feature_extractor, output_dir, callbacks,
    noise_dataset, augmentation_args: AugmentationArguments, min_samples: int,
) -> dict:
    """Trains and tests one fold (clean, then in noise with --eval_snr), writing its results; a fold whose results
    exist is skipped."""
    results_path = fold_results_path(output_dir, fold.name)
    directory = results_path.parent
    if results_path.exists():
        logger.info(f"Skipping finished fold {fold.name} ({results_path}).")
        finished = json.loads(results_path.read_text())
        wanted = {kind: [f"{snr:g}" for snr in noise_args.eval_snr] for kind in noise_args.eval_noise} if noise_args.eval_snr else {}
        if {kind: list(by_snr) for kind, by_snr in finished.get("noisy", {}).items()} != wanted:
            raise ValueError(
                f"{results_path} was tested in noise {finished.get('noisy') and list(finished['noisy']) or 'never'}, "
                f"and this run asks for {wanted or 'no noisy test'} (--eval_snr / --eval_noise). Use another "
                "--output_dir, or delete that fold's folder to run it again."
            )
        return finished
    present = sorted(set(corpus.labels[fold.train]))
    if len(present) < 2:
        raise ValueError(
            f"Fold {fold.name}: the training data holds {len(present)} class(es) "
            f"({[corpus.label_names[i] for i in present]}); a classifier needs at least 2."
        )
    missing = sorted(set(range(len(corpus.label_names))) - set(present))
    if missing:
        logger.warning(
            f"Fold {fold.name}: no training utterances of class(es) {[corpus.label_names[i] for i in missing]}; "
            "they stay in the label space."
        )
    # kfold mixes speakers across folds by design: babble then only excludes the test utterances themselves.
    excluded = fold.test_speakers if protocol_args.protocol != "kfold" else []
    bank = noise_bank(corpus, fold.train, excluded, noise_args, noise_dataset, training_args.seed)
    trainer = train_model(
        fold.train, fold.validation, corpus, model_args, protocol_args, training_args, feature_extractor,
        directory / "checkpoints", callbacks,
        augmentation(bank, noise_args, augmentation_args, training_args.seed, corpus.sampling_rate, min_samples),
        augmentation_args.mixup_alpha,
    )
    test_set = corpus.dataset.select(fold.test)
    fusion = {}
    if trainer.model.config.utterance_statistics_classifier:
        # The network alone and the statistics classifier alone, each computed once; the fused logits are their sum
        # at the model's weight, as the model's forward and the weight search (choose_fold_weights) make it.
        with statistics_classifier_off(trainer.model):
            network = trainer.predict(test_set, metric_key_prefix="test")
        parts = {
            "network_logits": network.predictions,
            # With speaker normalisation, each test speaker's statistics are standardised over its own test audio.
            "statistics_log_probabilities": statistics_log_probabilities(
                trainer.model, test_set, AudioCollator(feature_extractor), groups=corpus.speakers[fold.test]
            ),
            "labels": corpus.labels[fold.test],
            "utterance_statistics_weight": trainer.model.config.utterance_statistics_weight,
        }
        if trainer.is_world_process_zero():  # each part apart, to study the fusion weight (benchmarks/fusion_weight.py)
            np.savez(directory / "fusion_parts.npz", **parts)
        logits = fused_logits(parts, parts["utterance_statistics_weight"])
        metric = load_wa_ua()
        scores = metric.compute(predictions=logits.argmax(-1), references=parts["labels"])
        fusion = {
            "network": {"wa": network.metrics["test_wa"], "ua": network.metrics["test_ua"]},
            "statistics_classifier": {
                **metric.compute(predictions=parts["statistics_log_probabilities"].argmax(-1), references=parts["labels"]),
                "c": next(r["statistics_classifier_c"] for r in trainer.state.log_history if "statistics_classifier_c" in r),
            },
        }
    else:
        prediction = trainer.predict(test_set, metric_key_prefix="test")
        logits, scores = prediction.predictions, {"wa": prediction.metrics["test_wa"], "ua": prediction.metrics["test_ua"]}
    noisy = {}
    if noise_args.eval_snr:
        noisy = test_in_noise(trainer, corpus, fold.test, bank, noise_args, feature_extractor, training_args.seed)
        noisy["babble_speakers"] = sorted({speaker for _, speaker in bank.babble_sources})
    if protocol_args.save_fold_models:
        trainer.save_model(str(directory / "model"))
    result = {
        "fold": fold.name,
        "test_speakers": fold.test_speakers,
        "wa": scores["wa"],
        "ua": scores["ua"],
        "num_train": len(fold.train),
        "num_validation": len(fold.validation),
        "num_test": len(fold.test),
        "validation_speakers": sorted(set(corpus.speakers[fold.validation])),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "epochs_trained": trainer.state.epoch,
        "averaged_epochs": next((r["averaged_epochs"] for r in trainer.state.log_history if "averaged_epochs" in r), None),
        **fusion,
        **noisy,
    }
    if trainer.is_world_process_zero():
        write_fold_results(directory, corpus, fold, result, logits)
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return json.loads(results_path.read_text())


def write_fold_results(directory: Path, corpus, fold: Fold, result: dict, logits: np.ndarray) -> None:
    """A fold's predictions.csv, classification report, confusion matrix and results.json, from its test utterances'
    `logits` `(num_test, num_labels)` and `result` (whose WA and UA are those of the logits)."""
    write_predictions(directory, corpus, fold.test, logits)
    matrix = confusion_matrix(corpus.labels[fold.test], logits.argmax(-1), len(corpus.label_names))
    report = per_class_report(matrix, corpus.label_names)
    (directory / "classification_report.txt").write_text(format_report(report, result["wa"], result["ua"]))
    save_confusion_matrix(matrix, corpus.label_names, directory / "confusion_matrix.png", f"{fold.name}: WA {result['wa']:.1%}, UA {result['ua']:.1%}")
    write_json(fold_results_path(directory.parent.parent, fold.name), {**result, "per_class": report, "confusion_matrix": matrix.tolist()})


def choose_fold_weights(folds: list[Fold], output_dir: Path, grid: list[float], corpus, rescore: bool) -> dict:
    """--statistics_weight_grid: the statistics classifier's weight chosen over the folds' `fusion_parts.npz`
    (`msemoboost.statistics_fusion.choose_statistics_weight`). With `rescore` (the main process), each fold's results
    are written again at the weight chosen on the other folds (its saved model, if any, gets that weight too)."""
    paths = {fold.name: output_dir / "folds" / fold.name / "fusion_parts.npz" for fold in folds}
    for name, path in paths.items():
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: fold {name} finished before train.py kept each fold's network and statistics "
                "classifier apart, so its weight cannot be chosen. Delete its folder to run it again."
            )
    parts = {name: dict(np.load(path)) for name, path in paths.items()}
    choice = choose_statistics_weight(parts, grid)
    logger.info(
        f"Statistics classifier's weight chosen over {len(folds)} folds: {choice['weight']:g} (UA by weight: "
        + ", ".join(f"{weight}: {ua:.3f}" for weight, ua in choice["ua_by_weight"].items())
        + "); each fold is scored at the weight chosen on the other folds: "
        + ", ".join(f"{name} {weight:g}" for name, weight in choice["nested"].items())
    )
    if rescore:
        metric = load_wa_ua()
        for fold in folds:
            directory = output_dir / "folds" / fold.name
            weight = choice["nested"][fold.name]
            logits = fused_logits(parts[fold.name], weight)
            result = json.loads(fold_results_path(output_dir, fold.name).read_text())
            result.pop("per_class"), result.pop("confusion_matrix")
            result.update(metric.compute(predictions=logits.argmax(-1), references=corpus.labels[fold.test]))
            result["statistics_weight"] = weight
            write_fold_results(directory, corpus, fold, result, logits)
            if (directory / "model" / "config.json").exists():
                config = msemoboost.MSEmoBoostConfig.from_pretrained(directory / "model")
                config.utterance_statistics_weight = weight
                config.save_pretrained(directory / "model")
    return choice


def run_folds_in_parallel(folds: list[Fold], arguments: tuple, processes: int, output_dir: Path, callbacks) -> None:
    """Runs the unfinished folds `processes` at a time, each in a process of its own (`run_fold(fold, *arguments)`),
    writing its results to its folder as it would in this process."""
    pending = {fold.name: (fold, *arguments) for fold in folds if not fold_results_path(output_dir, fold.name).exists()}
    if len(pending) < 2:  # one fold left: it runs in this process, on every thread
        return
    if callbacks:
        raise ValueError("Callbacks passed to main() run in this process only: use --parallel_folds 1 with them.")
    logs = {name: output_dir / "folds" / name / "train.log" for name in pending}
    processes = min(processes, len(pending))
    logger.info(f"Training {len(pending)} fold(s) side by side; each fold's log: {output_dir}/folds/<fold>/train.log")

    def report(name: str, result: dict) -> None:
        logger.info(f"Fold {name} finished: WA {result['wa']:.2%}  UA {result['ua']:.2%}")

    run_in_processes(run_fold, pending, processes, logs, report)


def write_predictions(directory: Path, corpus, rows: np.ndarray, logits: np.ndarray) -> None:
    """One row per test utterance: id, speaker, true and predicted emotion, and every class probability."""
    probabilities = torch.from_numpy(logits).float().softmax(-1).numpy()
    with open(directory / "predictions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["utterance_id", "speaker", "label", "prediction", *corpus.label_names])
        for row, probs in zip(rows, probabilities, strict=True):
            item = corpus.dataset[int(row)]
            writer.writerow(
                [item["utterance_id"], item["speaker"], corpus.label_names[item["labels"]],
                 corpus.label_names[int(probs.argmax())], *(f"{p:.6f}" for p in probs)]
            )


def summarize(
    fold_results: list[dict], corpus, protocol_args, model_args, data_args, noise_args, training_args, output_dir: Path
) -> dict:
    """Overall results: per-fold WA/UA, mean ± std over folds, pooled confusion matrix and per-class report. With no
    fold (`train_only`), only what the run trained on and how."""
    summary = {
        "protocol": protocol_args.protocol,
        "num_folds": len(fold_results),
        "num_utterances": len(corpus.dataset) if not fold_results else None,  # tested ones, below, after folds
        "num_skipped_audio": corpus.num_skipped,
        "num_processes": training_args.world_size,
        "label_names": corpus.label_names,
        "class_counts": {name: int((corpus.labels == i).sum()) for i, name in enumerate(corpus.label_names)},
        "num_speakers": len(set(corpus.speakers)),
        "folds": [{key: result[key] for key in ("fold", "test_speakers", "wa", "ua", "num_train", "num_validation", "num_test")} for result in fold_results],
        "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args),
        "noise_arguments": dataclasses.asdict(noise_args),
        "protocol_arguments": dataclasses.asdict(protocol_args),
        "training": {key: getattr(training_args, key) for key in (
            "learning_rate", "per_device_train_batch_size", "num_train_epochs", "max_steps", "seed", "optim",
            "weight_decay", "lr_scheduler_type", "warmup_steps", "gradient_accumulation_steps", "max_grad_norm",
            "label_smoothing_factor")},
        "versions": {"msemoboost": msemoboost.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    }
    if not fold_results:
        return summary
    matrix = sum(np.asarray(result["confusion_matrix"]) for result in fold_results)
    references = np.repeat(np.arange(len(matrix)), matrix.sum(1))
    predictions = np.concatenate([np.repeat(np.arange(len(matrix)), row) for row in matrix])
    pooled = load_wa_ua().compute(predictions=predictions, references=references)
    summary.update(
        wa=mean_std([result["wa"] for result in fold_results]), ua=mean_std([result["ua"] for result in fold_results]),
        pooled=pooled, num_utterances=int(matrix.sum()), per_class=per_class_report(matrix, corpus.label_names),
        confusion_matrix=matrix.tolist(),
    )
    if "network" in fold_results[0]:  # with the statistics classifier: each of the two models alone
        for part in ("network", "statistics_classifier"):
            summary[part] = {key: mean_std([result[part][key] for result in fold_results]) for key in ("wa", "ua")}
    if noise_args.eval_snr:
        summary["noise"] = summarize_noise(fold_results, summary, noise_args)
        save_snr_plot(summary["noise"], output_dir / "accuracy_vs_snr.png", f"{protocol_args.protocol}, {len(fold_results)} fold(s)")
    (output_dir / "classification_report.txt").write_text(format_report(summary["per_class"], pooled["wa"], pooled["ua"]))
    title = f"{protocol_args.protocol}, {len(fold_results)} fold(s): WA {summary['wa']['mean']:.1%}, UA {summary['ua']['mean']:.1%}"
    save_confusion_matrix(matrix, corpus.label_names, output_dir / "confusion_matrix.png", title)
    with open(output_dir / "predictions.csv", "w", newline="") as merged:
        for number, result in enumerate(fold_results):
            lines = (output_dir / "folds" / result["fold"] / "predictions.csv").read_text().splitlines(keepends=True)
            merged.writelines(lines if number == 0 else lines[1:])
    return summary


def summarize_noise(fold_results: list[dict], summary: dict, noise_args: NoiseArguments) -> dict:
    """WA/UA (mean ± std over folds) clean and for each noise type and SNR, and their mean over noise types."""
    snrs = [f"{snr:g}" for snr in noise_args.eval_snr]
    kinds = list(fold_results[0]["noisy"])
    by_kind = {
        kind: {snr: {m: mean_std([r["noisy"][kind][snr][m] for r in fold_results]) for m in ("wa", "ua")} for snr in snrs}
        for kind in kinds
    }
    mean_over_types = {
        snr: {m: mean_std([np.mean([r["noisy"][kind][snr][m] for kind in kinds]) for r in fold_results]) for m in ("wa", "ua")}
        for snr in snrs
    }
    return {
        "snr_definition": "10 log10(active speech power / noise power); active = 20 ms frames within 40 dB of the "
        "loudest frame (msemoboost/noise.py)",
        "snr_db": snrs,
        "types": kinds,
        "clean": {"wa": summary["wa"], "ua": summary["ua"]},
        "by_type": by_kind,
        "mean_over_types": mean_over_types,
        "silent_test_utterances": sorted(u for r in fold_results for u in r.get("silent_test_utterances", [])),
    }


def write_model_directory(model_dir: Path, summary: dict, data_args, model_args, output_dir: Path, repo_id: str | None) -> None:
    """Adds the model card (rendered from model_card.md) and the confusion matrix (when the run tested) to the saved
    model."""
    if (output_dir / "confusion_matrix.png").exists():
        shutil.copy(output_dir / "confusion_matrix.png", model_dir / "confusion_matrix.png")
    hub_dataset = data_args.dataset_name if not Path(data_args.dataset_name).exists() else Path(data_args.dataset_name).name
    base_model = model_args.backbone if model_args.backbone and not Path(model_args.backbone).exists() else None
    name = repo_id.split("/")[-1] if repo_id else model_dir.resolve().parent.name
    card = render_model_card(MODEL_CARD_TEMPLATE, summary, hub_dataset, base_model, name, repo_id)
    (model_dir / "README.md").write_text(card)


def push_model(model_dir: Path, training_args: TrainingArguments, feature_extractor) -> None:
    """Pushes the finished model directory through the Trainer's own Hub support."""
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(model_dir)
    args = dataclasses.replace(
        training_args, output_dir=str(model_dir), push_to_hub=False, eval_strategy="no", save_strategy="no",
        load_best_model_at_end=False,
    )
    trainer = MSEmoBoostTrainer(model=model, args=args, processing_class=feature_extractor, model_card=(model_dir / "README.md").read_text())
    try:
        url = trainer.push_to_hub(commit_message="MS-EmoBoost model trained with msemoboost's train.py")
    except Exception as error:  # offline, no token, no permission: all leave the local directory as it is
        raise RuntimeError(
            f"Could not push to the Hub repository {training_args.hub_model_id or model_dir.name!r}: "
            f"{type(error).__name__}: {error}\nNothing is lost: the model directory {model_dir} is complete. Push it "
            f"later with `hf upload {training_args.hub_model_id or '<repo id>'} {model_dir}`."
        ) from error
    logger.info(f"Pushed {model_dir} to {url}")


def classify_example(model_dir: Path, corpus, rows: np.ndarray) -> None:
    """Reloads the saved model through the audio-classification pipeline and classifies one utterance."""
    from transformers import pipeline

    classifier = pipeline("audio-classification", model=str(model_dir), trust_remote_code=True, device="cpu")
    item = corpus.dataset[int(rows[0])]
    waveform = decode_audio(item["audio"], classifier.feature_extractor.sampling_rate)
    top = classifier(waveform, top_k=len(corpus.label_names))
    scores = ", ".join(f"{entry['label']} {entry['score']:.2f}" for entry in top[:3])
    print(f"Reloaded {model_dir} and classified {item['utterance_id']} (true: {corpus.label_names[item['labels']]}): {scores}")


def main(argv: list[str] | None = None, callbacks=()) -> dict:
    """Runs the protocol; returns the overall results. `callbacks` are added to every fold's Trainer."""
    model_args, data_args, noise_args, protocol_args, training_args, augmentation_args = parse_arguments(
        sys.argv[1:] if argv is None else argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if training_args.process_index == 0 else logging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    output_dir = Path(training_args.output_dir)
    prepare_output_dir(output_dir, protocol_args.overwrite_output_dir, training_args)
    if protocol_args.protocol == LEAVE_ONE_CORPUS_OUT:
        return leave_one_corpus_out(sys.argv[1:] if argv is None else argv, data_args, output_dir, training_args, callbacks)

    if data_args.demo:
        with training_args.main_process_first():
            data_args.dataset_name = str(make_demo_corpus(output_dir / "demo_corpus"))
    if model_args.backbone_pretraining and not model_args.model_name_or_path:  # a checkpoint brings its backbone
        pretrain_if_missing(model_args.backbone, model_args.backbone_pretraining)
    config = model_config(model_args)
    feature_extractor = build_feature_extractor(model_args.backbone, config.sampling_rate, model_args.do_normalize)
    with training_args.main_process_first():
        corpus, extra_rows, corpora_report = load_corpora(data_args, config, protocol_args.protocol)
    noise_dataset = None
    if noise_args.noise_dataset:
        with training_args.main_process_first():
            noise_dataset = NoiseDataset(noise_args.noise_dataset, config.sampling_rate, noise_args.noise_audio_column)
    folds = make_folds(
        protocol_args.protocol, corpus.labels, corpus.speakers, corpus.splits, protocol_args.num_folds,
        protocol_args.validation_fraction, training_args.seed, protocol_args.train_split,
        protocol_args.validation_split, protocol_args.test_split, extra_rows,
    )
    if protocol_args.folds:
        wanted = set(protocol_args.folds)
        folds = [fold for index, fold in enumerate(folds) if fold.name in wanted or str(index) in wanted]
        if not folds:
            raise ValueError(f"--folds {protocol_args.folds} matches no fold.")
    logger.info(
        f"{len(corpus.dataset)} utterances, {len(corpus.label_names)} classes {corpus.label_names}, "
        f"{len(set(corpus.speakers))} speaker(s); protocol {protocol_args.protocol} with {len(folds)} fold(s)."
    )

    arguments = (corpus, model_args, noise_args, protocol_args, training_args, feature_extractor, output_dir, callbacks,
                 noise_dataset, augmentation_args, config.min_input_samples)  # run_fold's, after the fold
    if protocol_args.parallel_folds > 1:
        run_folds_in_parallel(folds, arguments, protocol_args.parallel_folds, output_dir, callbacks)
    fold_results = []  # folds run in parallel above are read back from their results here
    for index, fold in enumerate(folds):
        result = run_fold(fold, *arguments)
        fold_results.append(result)
        if training_args.process_index == 0:
            speakers = f" (test speaker(s) {', '.join(fold.test_speakers)})" if fold.test_speakers else ""
            print(f"[fold {index + 1}/{len(folds)}] {fold.name}{speakers}: WA {result['wa']:.2%}  UA {result['ua']:.2%}  on {result['num_test']} utterances", flush=True)

    weight_choice = None
    if protocol_args.statistics_weight_grid and not config.utterance_statistics_classifier:
        logger.warning("--statistics_weight_grid is ignored: the model has no statistics classifier "
                       "(utterance_statistics_classifier) whose weight it would choose.")
    elif protocol_args.statistics_weight_grid:
        if len(folds) < 2:
            logger.warning(f"--statistics_weight_grid needs 2 folds or more to choose the statistics classifier's "
                           f"weight; this run has {len(folds)}, so the model keeps its own "
                           f"({config.utterance_statistics_weight:g}).")
        else:
            weight_choice = choose_fold_weights(folds, output_dir, protocol_args.statistics_weight_grid, corpus,
                                                rescore=training_args.process_index == 0)
            if training_args.process_index == 0:  # the folds' results, rescored
                fold_results = [json.loads(fold_results_path(output_dir, fold.name).read_text()) for fold in folds]

    summary = None
    if training_args.process_index == 0:
        summary = summarize(fold_results, corpus, protocol_args, model_args, data_args, noise_args, training_args, output_dir)
        if weight_choice:
            summary["statistics_weight"] = weight_choice
        languages = read_json_argument(data_args.corpus_languages)
        summary["corpora"] = {name: {**part, **({"language": languages[name]} if name in languages else {})}
                              for name, part in corpora_report.items()}
        summary["augmentation"] = dataclasses.asdict(augmentation_args)
        summary["architecture"] = {key: getattr(config, key) for key in (
            "frame_weighting", "classifier_input", "mfcc_normalization", "mfcc_pool_frames", "mfcc_statistics",
            "prosody_statistics", "classify_statistics", "utterance_statistics_classifier",
            "utterance_distribution_statistics", "utterance_statistics_weight", "speaker_normalization",
            "use_weighted_layer_sum",
            "pooled_normalization", "segment_length_s")}
        if weight_choice:  # the final model's
            summary["architecture"]["utterance_statistics_weight"] = weight_choice["weight"]
    model_dir = output_dir / "model"
    if protocol_args.protocol in ("splits", "cross_corpus") and protocol_args.save_fold_models:
        if training_args.process_index == 0 and not (model_dir / "README.md").exists():
            shutil.copytree(output_dir / "folds" / folds[0].name / "model", model_dir, dirs_exist_ok=True)
    elif protocol_args.protocol not in ("splits", "cross_corpus") and protocol_args.final_model and not (model_dir / "README.md").exists():
        trains_all = protocol_args.protocol == "train_only"  # the extra corpora's speakers may validate too
        evaluated = np.arange(len(corpus.dataset)) if trains_all else np.setdiff1d(np.arange(len(corpus.dataset)), extra_rows)
        train_rows, validation_rows = hold_out_validation(
            evaluated, corpus.labels, corpus.speakers,
            bool(data_args.speaker_column) and protocol_args.protocol in ("loso", "train_only"),
            protocol_args.validation_fraction, training_args.seed,
        )
        if not trains_all:
            train_rows = np.sort(np.concatenate([train_rows, extra_rows]))
        bank = noise_bank(corpus, train_rows, [], noise_args, noise_dataset, training_args.seed)
        trainer = train_model(
            train_rows, validation_rows, corpus, model_args, protocol_args, training_args, feature_extractor, model_dir,
            callbacks,
            augmentation(bank, noise_args, augmentation_args, training_args.seed, corpus.sampling_rate, config.min_input_samples),
            augmentation_args.mixup_alpha,
        )
        if weight_choice:
            trainer.model.config.utterance_statistics_weight = weight_choice["weight"]
        trainer.save_model(str(model_dir))
        if trainer.is_world_process_zero():
            for checkpoint in model_dir.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
    has_model = (model_dir / "model.safetensors").exists()

    if training_args.process_index == 0:
        if has_model:
            write_model_directory(model_dir, summary, data_args, model_args, output_dir, training_args.hub_model_id)
        write_json(output_dir / "results.json", summary)
        if folds:
            print(
                f"{protocol_args.protocol} over {summary['num_folds']} fold(s), {summary['num_utterances']} utterances: "
                f"WA {summary['wa']['mean']:.2%} ± {summary['wa']['std']:.2%}  UA {summary['ua']['mean']:.2%} ± {summary['ua']['std']:.2%}"
            )
            print(f"Results: {output_dir / 'results.json'}  Confusion matrix: {output_dir / 'confusion_matrix.png'}" + (f"  Model: {model_dir}" if has_model else ""))
        else:
            print(f"{protocol_args.protocol}: trained on {summary['num_utterances']} utterances of "
                  f"{len(corpora_report)} corpora, {len(corpus.label_names)} classes; nothing tested.  Model: {model_dir}")
        if has_model:
            classify_example(model_dir, corpus, folds[0].test if folds else np.arange(1))
    if training_args.push_to_hub:
        if not has_model:
            raise ValueError("--push_to_hub needs a model directory: keep --final_model true (or --save_fold_models for splits).")
        if training_args.process_index == 0:
            push_model(model_dir, training_args, feature_extractor)
    return summary



def leave_one_corpus_out(argv: list[str], data_args: DataArguments, output_dir: Path, training_args, callbacks) -> dict:
    """--protocol leave_one_corpus_out: a `cross_corpus` run (`main`) for each corpus in turn, tested on that corpus
    over the classes it shares with the others and trained on all the others, in `output_dir/<corpus>`; then the
    per-corpus and mean WA/UA in `output_dir/results.json`. Each corpus keeps its own columns (`--label_column` etc.
    for `--dataset_name`, `--extra_train_columns` for the others)."""
    corpora = [data_args.dataset_name, *data_args.extra_train_datasets]
    names = [corpus_name(dataset_name) for dataset_name in corpora]
    if len(set(names)) < len(names):
        raise ValueError(f"leave_one_corpus_out names its runs after the corpora, and two share a name: {names}.")
    own = {"label_column": data_args.label_column, "speaker_column": data_args.speaker_column or "",
           "audio_column": data_args.audio_column}
    given = read_json_argument(data_args.extra_train_columns) if data_args.extra_train_columns else {}
    columns = {dataset_name: {**own, **given.get(dataset_name, {})} for dataset_name in corpora}
    runs = {}
    for tested, name in zip(corpora, names):
        others = [dataset_name for dataset_name in corpora if dataset_name != tested]
        logger.info(f"Leave one corpus out: testing {name}, training on {', '.join(corpus_name(o) for o in others)}.")
        runs[name] = main([
            *argv, "--protocol", "cross_corpus", "--dataset_name", tested, "--extra_train_datasets", *others,
            "--extra_train_columns", json.dumps({other: columns[other] for other in others}),
            "--output_dir", str(output_dir / name),
            *[word for key, value in columns[tested].items() for word in (f"--{key}", value)],
        ], callbacks)
    if training_args.process_index != 0:
        return {}
    per_corpus = {
        name: {"wa": run["wa"]["mean"], "ua": run["ua"]["mean"], "num_test": run["num_utterances"],
               "label_names": run["label_names"], "corpora": run["corpora"]}
        for name, run in runs.items()
    }
    summary = {
        "protocol": LEAVE_ONE_CORPUS_OUT,
        "corpora": names,
        "per_corpus": per_corpus,
        "wa": mean_std([row["wa"] for row in per_corpus.values()]),
        "ua": mean_std([row["ua"] for row in per_corpus.values()]),
    }
    write_json(output_dir / "results.json", summary)
    print(f"{LEAVE_ONE_CORPUS_OUT} over {len(names)} corpora: WA {summary['wa']['mean']:.2%} ± {summary['wa']['std']:.2%}  "
          f"UA {summary['ua']['mean']:.2%} ± {summary['ua']['std']:.2%}  ("
          + ", ".join(f"{name} {row['ua']:.1%}" for name, row in per_corpus.items()) + ")")
    return summary


if __name__ == "__main__":
    main()
