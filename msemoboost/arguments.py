"""The arguments of `train.py`: five dataclasses beside `transformers.TrainingArguments`, read by `HfArgumentParser`
from the command line and an optional YAML or JSON file of arguments first ([`parse_arguments`])."""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from transformers import HfArgumentParser, TrainingArguments

from .augmentation import check_waveform_augmentation
from .conventions import CONVENTION
from .noise import check_augmentation, check_noise_types, check_snrs
from .pretraining import holds_model
from .protocols import PROTOCOLS
from .training import StagedUnfreezing, argument_words, read_arguments_file, read_json_argument

logger = logging.getLogger("msemoboost.train")
REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
LEAVE_ONE_CORPUS_OUT = "leave_one_corpus_out"
BACKBONE_ARGUMENTS = ("backbone", "backbone_config", "backbone_pretraining")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from a trained MS-EmoBoost checkpoint (Hub id or directory): its backbone, guidance "
                  "branches and classifier rows of the labels it shares with this run; new labels get new rows. "
                  "Its architecture is kept (--backbone, --backbone_config and the use_* switches are ignored). "
                  "--model is the same option, spelled as in every msemoboost command.",
                  "aliases": ["--model"]},
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
    telephone_augmentation: float = field(
        default=0.0, metadata={"help": "Probability of passing a training utterance through a narrowband telephone "
                               "channel (8 kHz, 300-3400 Hz, G.711 mu-law, back to the model's rate), after any noise; "
                               "0 is off."}
    )

    def __post_init__(self):
        check_waveform_augmentation(
            self.speed_perturbation, self.speed_perturbation_probability, self.time_masks, self.time_mask_max_s
        )
        if not 0 <= self.telephone_augmentation <= 1:
            raise ValueError(f"--telephone_augmentation is a probability per utterance, from 0 to 1; got "
                             f"{self.telephone_augmentation}.")
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
                  "folds or more (with one, the model's own weight stays). Under leave_one_corpus_out, each corpus "
                  "is scored at the weight that does best on the other corpora's runs (results.json -> per_corpus "
                  "-> statistics_weight; at_model_weight keeps the runs' own). Tests in noise (--eval_snr) keep the "
                  "model's own weight."},
    )
    final_model: bool = field(
        default=True, metadata={"help": "loso/kfold: after cross-validation, train the model to publish on all "
                                "speakers (validation speakers held out for early stopping)."}
    )
    save_fold_models: bool = field(default=True, metadata={"help": "Keep each fold's best model in its folder."})
    calibrate: bool = field(
        default=True, metadata={"help": "Fit temperatures (utterance and segment probabilities) that calibrate the "
                                "model's probabilities, cross-fitted over the folds: each fold is scored at the "
                                "temperature fitted on the other folds' test predictions, the published model gets the "
                                "one fitted on all of them; results.json -> calibration gives ECE and log-loss before "
                                "and after. Needs 2 folds or more and single-label classification; never changes a "
                                "prediction's class."}
    )
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


class RunArguments(NamedTuple):
    """The parsed arguments of a run, one dataclass each."""

    model: ModelArguments
    data: DataArguments
    noise: NoiseArguments
    protocol: ProtocolArguments
    training: TrainingArguments
    augmentation: AugmentationArguments


def parse_arguments(argv: list[str], description: str | None = None) -> RunArguments:
    """The run's arguments from the command-line words `argv`: a YAML or JSON file of arguments may come first, and
    the words after it override it; with no file and no --dataset_name (or with --demo), configs/demo.yaml comes
    first. Contradictory arguments exit through `parser.error`, with the message of each."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, NoiseArguments, ProtocolArguments, TrainingArguments, AugmentationArguments)
    )
    parser.description = description
    parser.epilog = CONVENTION
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
    args = RunArguments(*parser.parse_args_into_dataclasses(args=argv))
    check_model_arguments(parser, args)
    check_protocol_arguments(parser, args)
    return args


def check_model_arguments(parser: HfArgumentParser, args: RunArguments) -> None:
    """Refuses contradictory data and model arguments; drops the options that an ablation switches off, saying so."""
    model_args, data_args, noise_args, protocol_args, training_args, augmentation_args = args
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
                              "utterance_distribution_statistics", "utterance_log_mel_statistics",
                              "utterance_statistics_weight")
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


def check_protocol_arguments(parser: HfArgumentParser, args: RunArguments) -> None:
    """Refuses contradictory protocol and training arguments."""
    model_args, data_args, noise_args, protocol_args, training_args, augmentation_args = args
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
        if unknown:  # e.g. a preset's corpus replaced on the command line
            logger.warning(f"--corpus_languages names {unknown}, which are not among the run's corpora "
                           f"{[corpus_name(name) for name in named]}: ignored.")
    if protocol_args.protocol in ("cross_corpus", LEAVE_ONE_CORPUS_OUT) and not data_args.extra_train_datasets:
        parser.error(f"--protocol {protocol_args.protocol} trains on --extra_train_datasets only: name at least one")
    if data_args.mask_absent_classes and data_args.extra_train_datasets and training_args.label_smoothing_factor:
        parser.error("--mask_absent_classes (on by default with --extra_train_datasets) cannot be combined with "
                     "--label_smoothing_factor, which spreads probability over every class, including those an "
                     "utterance's corpus lacks: give --mask_absent_classes false to smooth")


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


def corpus_name(dataset_name: str) -> str:
    """A short name for a corpus: the folder's name, or the Hub id."""
    return Path(dataset_name).name if Path(dataset_name).exists() else dataset_name
