"""`msemoboost` command line: use, export and deploy a trained model, and pretrain a backbone (EMS).

    msemoboost predict --model DIR_OR_HUB_ID FILES_OR_FOLDERS... [--timeline] [--output out.csv|out.json]
        [--min_confidence P]     (below P: "uncertain", with the probabilities still written)
        [--timeline --vad]       (speech only, by Silero VAD, in the model's segments; gaps "non-speech")
        [--timeline --hop_s H]   (a window ending every H seconds, as `msemoboost stream` gives them)
        [--group_by folder]      (a model trained with --speaker_normalization: each folder's recordings, one
                                  speaker's, normalise each other; --group_column COLUMN with --dataset_name)
    msemoboost predict --onnx EXPORT_DIR FILES_OR_FOLDERS... [--quantize int8]   (ONNX Runtime, see `export`)
    msemoboost stream --model DIR_OR_HUB_ID | --onnx EXPORT_DIR [--input -|FILE.wav|--microphone] [--hop_s 1.0]
        [--min_confidence P]     (a JSON line per hop: the window ending there, as predict --timeline --hop_s)
    msemoboost explain FILE --model DIR_OR_HUB_ID [--output explain.png]
    msemoboost tsne --model DIR_OR_HUB_ID --dataset_name NAME_OR_PATH [--compare_baseline] [--output tsne.png]
    msemoboost enhance FILES_OR_FOLDERS... --model DIR_OR_HUB_ID --output_dir DIR [--noise white --snr 5]
    msemoboost export --model MODEL_DIR --output_dir EXPORT_DIR [--quantize int8 [--calibration FILES_OR_FOLDERS...
        [--quantize_feature_encoder]]] [--opset 23]
    msemoboost intensity train --dataset_name CORPUS [MORE ...] --output_dir DIR [--max_steps N]
    msemoboost intensity score --model DIR FILES... [--output scores.png]
    msemoboost pretrain [CONFIG.yaml] --dataset_name CORPUS [MORE ...] --output_dir OUT [--masking ems
        --intensity_model DIR] [--max_steps N]   (every TrainingArguments flag too; --help lists them)

Options are spelled one way in every command and in train.py: --model names a model to read, --output a file to
write, --output_dir a folder to write, --dataset_name a dataset; underscores join words; a yes/no option alone means
yes and also takes true or false; int8 is --quantize int8. The older spellings (a positional model for export and
intensity score, export --output, predict/tsne --dataset, predict --int8, tsne --compare-baseline, intensity score
--plot) still work, with a FutureWarning naming the new one.

Audio at any sampling rate and with any number of channels is decoded by FFmpeg (through `datasets`), resampled to
the model's rate and downmixed to mono by averaging the channels.

Every recording is read, checked (decodable, finite, at least one backbone frame long) and classified on its own: a
bad one is skipped with a one-line reason naming it on stderr, and the others are still written. Outputs are written
atomically (a temporary file moved into place), and only when there is something to write.

Exit codes: 0 when every recording succeeded; 1 when some were skipped (their reasons are on stderr); 2 when the
command was used wrongly (unknown option, missing input, a --model that is not a model).
"""

import argparse
import csv
import json
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np

from .conventions import CONVENTION

EXIT_SOME_FILES_FAILED = 1
EXIT_BAD_USAGE = 2


def parse_bool(text: str) -> bool:
    """A yes/no option's value, spelled as `HfArgumentParser` (train.py, pretrain) takes it."""
    if text.lower() in ("true", "yes", "1", "t", "y"):
        return True
    if text.lower() in ("false", "no", "0", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_flag(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    """A yes/no option: `--name` alone or `--name true` is yes, `--name false` no (the default)."""
    parser.add_argument(name, nargs="?", const=True, default=False, type=parse_bool, metavar="true|false", help=help)


def deprecated(message: str) -> None:
    """A FutureWarning about an old spelling, attributed to the command (not to a line of argparse)."""
    warnings.warn_explicit(message, FutureWarning, filename="msemoboost", lineno=0)


class DeprecatedSpelling(argparse.Action):
    """An old spelling of an option (hidden from --help): it still works, storing into the new option's destination,
    with a FutureWarning naming the new spelling. `value` replaces what the old spelling takes (e.g. `--int8` gives
    `--quantize int8`)."""

    def __init__(self, option_strings, dest, new: str, value=None, **kwargs):
        self.new, self.value = new, value
        super().__init__(option_strings, dest, nargs=0 if value is not None else None, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(f"{option_string} is deprecated and will be removed; use {self.new}.")
        setattr(namespace, self.dest, self.value if self.value is not None else values)


def command_parser(commands, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand's parser, whose --help ends with the option convention."""
    return commands.add_parser(name, help=help, epilog=CONVENTION, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_predict(commands) -> None:
    predict = command_parser(commands, "predict", "classify audio files, folders or a dataset")
    predict.add_argument("inputs", nargs="*", help="audio files and folders (searched recursively)")
    engine = predict.add_mutually_exclusive_group(required=True)
    engine.add_argument("--model", help="model directory or Hub id (PyTorch)")
    engine.add_argument("--onnx", help="folder written by msemoboost export (ONNX Runtime on CPU)")
    predict.add_argument("--quantize", choices=["int8"], default=None,
                         help="with --onnx: run the int8 model (written by export --quantize int8)")
    predict.add_argument("--int8", dest="quantize", action=DeprecatedSpelling, new="--quantize int8", value="int8")
    predict.add_argument("--dataset_name", help="instead of files: a Hub dataset id or local path loaded with datasets")
    predict.add_argument("--dataset", dest="dataset_name", action=DeprecatedSpelling, new="--dataset_name")
    predict.add_argument("--audio_column", default="audio", help="audio column of --dataset_name (default: audio)")
    predict.add_argument("--split", default=None, help="split of --dataset_name (default: every split)")
    add_flag(predict, "--timeline", "also give one row per 3 s segment")
    add_flag(predict, "--vad", "with --timeline: classify speech only, found by Silero VAD (pip install "
                               "'msemoboost[vad]'), in windows of the model's segment length; gaps are 'non-speech'")
    predict.add_argument("--hop_s", type=float, default=None,
                         help="with --timeline: a window ending every HOP_S seconds, each the model's segment length "
                              "(as msemoboost stream gives them), instead of the model's own 3 s segments")
    predict.add_argument("--min_confidence", type=float, default=None, metavar="P",
                         help="label a recording (and a --timeline segment) whose top probability is below P "
                              "'uncertain'; its probabilities are still written (they are calibrated when the model "
                              "was: train.py --calibrate)")
    predict.add_argument("--output", help="write a .csv or .json file instead of printing a table")
    predict.add_argument("--batch_size", type=int, default=8, help="recordings per forward pass (default: 8)")
    grouping = predict.add_mutually_exclusive_group()
    grouping.add_argument("--group_column", default=None,
                          help="with --dataset_name and a model trained with --speaker_normalization: the column naming "
                               "each recording's group (speaker, session); the recordings of a group normalise each other")
    grouping.add_argument("--group_by", choices=["folder"], default=None,
                          help="with files and folders and a model trained with --speaker_normalization: the "
                               "recordings of one folder are one group (speaker) and normalise each other")
    predict.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def add_stream(commands) -> None:
    stream = command_parser(commands, "stream", "classify audio as it arrives: a JSON line per hop (stdin PCM, a "
                                                "growing WAV file or the microphone)")
    engine = stream.add_mutually_exclusive_group(required=True)
    engine.add_argument("--model", help="model directory or Hub id (PyTorch)")
    engine.add_argument("--onnx", help="folder written by msemoboost export (ONNX Runtime on CPU)")
    stream.add_argument("--quantize", choices=["int8"], default=None, help="with --onnx: run the int8 model")
    source = stream.add_mutually_exclusive_group()
    source.add_argument("--input", default="-", help="'-' (default): raw PCM on standard input; or a WAV file, "
                                                     "followed while it grows")
    add_flag(source, "--microphone", "read the default microphone through sounddevice (pip install "
                                     "'msemoboost[stream]'), until Ctrl-C")
    stream.add_argument("--format", choices=["s16le", "f32le"], default="s16le",
                        help="sample format of --input - (default: s16le, 16-bit little-endian)")
    stream.add_argument("--sampling_rate", type=int, default=16000,
                        help="sampling rate of --input - (default: 16000); it must be the model's")
    stream.add_argument("--hop_s", type=float, default=1.0, help="seconds between lines (default: 1.0)")
    stream.add_argument("--min_confidence", type=float, default=None, metavar="P",
                        help="label a window whose top probability is below P 'uncertain'")
    stream.add_argument("--follow_s", type=float, default=2.0,
                        help="with a WAV --input: stop once it has not grown for this many seconds (default: 2)")
    stream.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def add_explain_and_tsne(commands) -> None:
    explain = command_parser(commands, "explain", "plot the guidance frame weights X_enh of one recording")
    explain.add_argument("file", help="audio file")
    explain.add_argument("--model", required=True, help="model directory or Hub id")
    explain.add_argument("--output", default="explain.png", help="PNG to write (default: explain.png)")
    explain.add_argument("--size", default="1200x900", help="width x height in pixels (default: 1200x900)")
    explain.add_argument("--device", default=None)

    tsne = command_parser(commands, "tsne", "t-SNE plot of pooled utterance features, coloured by true label")
    tsne.add_argument("--model", required=True, help="model directory or Hub id")
    tsne.add_argument("--dataset_name", default=None, help="Hub dataset id or local path (e.g. an audiofolder); required")
    tsne.add_argument("--dataset", dest="dataset_name", action=DeprecatedSpelling, new="--dataset_name")
    tsne.add_argument("--audio_column", default="audio")
    tsne.add_argument("--label_column", default="label")
    add_flag(tsne, "--compare_baseline", "beside MS-EmoBoost's features, plot the backbone's plain masked-mean features")
    tsne.add_argument("--compare-baseline", dest="compare_baseline", action=DeprecatedSpelling,
                      new="--compare_baseline", value=True)
    tsne.add_argument("--max_utterances", type=int, default=None, help="use at most this many utterances")
    tsne.add_argument("--output", default="tsne.png", help="PNG to write (default: tsne.png)")
    tsne.add_argument("--size", default="1400x700", help="width x height in pixels (default: 1400x700)")
    tsne.add_argument("--seed", type=int, default=0)
    tsne.add_argument("--batch_size", type=int, default=8)
    tsne.add_argument("--device", default=None)


def add_enhance(commands) -> None:
    enhance = command_parser(commands, "enhance", "listening check of a model's speech-enhancement head: write "
                                                  "enhanced WAV files")
    enhance.add_argument("inputs", nargs="+", help="audio files and folders (searched recursively)")
    enhance.add_argument("--model", required=True, help="model directory or Hub id (trained with --use_se_head)")
    enhance.add_argument("--output_dir", required=True, help="folder for NAME.enhanced.wav (and NAME.noisy.wav)")
    enhance.add_argument("--noise", choices=["white", "pink"], default=None,
                         help="first add this noise to the (clean) input, and write the noisy version too")
    enhance.add_argument("--snr", type=float, default=5.0, help="SNR in dB for --noise (default: 5)")
    enhance.add_argument("--seed", type=int, default=0, help="seed of the --noise (default: 0)")
    enhance.add_argument("--device", default=None)


def add_export(commands) -> None:
    export = command_parser(commands, "export", "write an ONNX graph from the raw waveform to logits")
    export.add_argument("legacy_model", nargs="?", default=None, help=argparse.SUPPRESS)  # the old positional model
    export.add_argument("--model", default=None, help="folder of a trained model (train.py's output or "
                                                      "save_pretrained); required")
    export.add_argument("--output_dir", default=None,
                        help="folder for model.onnx, config.json, preprocessor_config.json; required")
    export.add_argument("--output", dest="output_dir", action=DeprecatedSpelling, new="--output_dir")
    export.add_argument("--quantize", choices=["int8"], default=None,
                        help="also write model.int8.onnx (dynamic int8 quantisation of MatMul, Gemm and LSTM)")
    export.add_argument("--calibration", nargs="+", default=None, metavar="FILE_OR_FOLDER",
                        help="with --quantize int8: also quantise the convolutions (all but the backbone's feature "
                             "encoder), statically, with activation ranges measured on these recordings (speech like "
                             "the deployment's, not a test set)")
    add_flag(export, "--quantize_feature_encoder",
             "with --calibration: the backbone's convolutional feature encoder in int8 too (faster; check what it "
             "costs your model in accuracy, BENCHMARKS.md section 4)")
    export.add_argument("--finetune", default=None, metavar="DATASET",
                        help="with --quantize_feature_encoder: first fine-tune the model for a few epochs on the int8 "
                             "feature encoder's output (quantisation-aware), on this dataset id or local path (an "
                             "audiofolder: the model's training data, never a test set); OUTPUT_DIR then also holds "
                             "the fine-tuned PyTorch model")
    export.add_argument("--finetune_label_column", default="label",
                        help="the label column of --finetune, named as the model's labels (default: label)")
    export.add_argument("--finetune_split", default=None, help="only this split of --finetune (default: every split)")
    export.add_argument("--finetune_epochs", type=float, default=3.0, help="epochs of --finetune (default: 3)")
    export.add_argument("--finetune_learning_rate", type=float, default=1e-4,
                        help="AdamW's learning rate for --finetune, constant (default: 1e-4)")
    export.add_argument("--finetune_batch_size", type=int, default=8, help="utterances per step (default: 8)")
    export.add_argument("--seed", type=int, default=0, help="seed of --finetune (default: 0)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 23, whose fused Attention and Gelu "
                        "run fastest; 18 is the lowest that works)")


def add_intensity(commands) -> None:
    intensity = command_parser(commands, "intensity", "the emotion-intensity model that guides EMS pretraining")
    intensity_commands = intensity.add_subparsers(dest="intensity_command", required=True)
    intensity_train = command_parser(intensity_commands, "train", "train it from intensity rankings")
    intensity_train.add_argument("--dataset_name", nargs="+", required=True,
                                 help="corpora (audiofolders or dataset ids) with emotion and speaker columns, and "
                                      "optionally intensity (normal/strong); the first one's --eval_speakers are held out")
    intensity_train.add_argument("--output_dir", required=True)
    intensity_train.add_argument("--eval_speakers", nargs="*", default=None,
                                 help="held-out speakers of the first corpus (default: its last 4, sorted)")
    intensity_train.add_argument("--max_steps", type=int, default=800)
    intensity_train.add_argument("--batch_size", type=int, default=32)
    intensity_train.add_argument("--learning_rate", type=float, default=1e-3)
    intensity_train.add_argument("--seed", type=int, default=0)
    intensity_train.add_argument("--calibration_weight", type=float, default=1.0,
                                 help="weight of the term that pulls utterance scores to rank / max_rank (default: 1)")
    intensity_score = command_parser(intensity_commands, "score", "frame intensities of audio files")
    intensity_score.add_argument("inputs", nargs="+", help="audio files and folders")
    intensity_score.add_argument("--model", default=None, help="folder of an intensity model (msemoboost intensity train)")
    intensity_score.add_argument("--output", default=None, help="PNG of the frame scores over time")
    intensity_score.add_argument("--plot", dest="output", action=DeprecatedSpelling, new="--output")


def build_parser() -> argparse.ArgumentParser:
    """The `msemoboost` parser, one subparser per command (`pretrain` parses its own arguments)."""
    parser = argparse.ArgumentParser(prog="msemoboost", description=__doc__, epilog=CONVENTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pretrain", help="self-supervised pretraining of a backbone, random or EMS masking (see "
                                         "msemoboost pretrain --help)")
    add_predict(commands)
    add_stream(commands)
    add_explain_and_tsne(commands)
    add_enhance(commands)
    add_export(commands)
    add_intensity(commands)
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses contradictory options; takes an old positional model (export, intensity score) as --model, warning."""
    if args.command == "export" or getattr(args, "intensity_command", None) == "score":
        old = args.legacy_model if args.command == "export" else (args.inputs[0] if not args.model and args.inputs else None)
        if old and args.model:
            parser.error(f"give the model once: --model {args.model}, and not also {old}")
        if old:
            deprecated(f"a model given without --model ({old}) is deprecated and will be removed; use --model {old}.")
            args.model = old
            if args.command != "export":
                args.inputs = args.inputs[1:]
        if not args.model:
            parser.error("the following arguments are required: --model")
    if args.command == "export" and not args.output_dir:
        parser.error("the following arguments are required: --output_dir")
    if args.command == "tsne" and not args.dataset_name:
        parser.error("the following arguments are required: --dataset_name")
    if args.command in ("predict", "stream") and args.quantize and not args.onnx:
        parser.error("--quantize int8 needs --onnx (it runs the int8 graph that export --quantize int8 wrote)")
    if args.command == "predict" and (args.group_column or args.group_by) and args.onnx:
        parser.error("--group_column and --group_by need --model: the ONNX graph takes no group statistics")
    if args.command == "predict" and (args.vad or args.hop_s is not None) and not args.timeline:
        parser.error("--vad and --hop_s choose the windows of a timeline: add --timeline")
    if args.command == "predict" and args.vad and args.hop_s is not None:
        parser.error("--vad classifies speech regions in the model's segments, --hop_s sliding windows: choose one")
    if args.command == "predict" and (args.vad or args.hop_s is not None) and (args.group_column or args.group_by):
        parser.error("--vad and --hop_s classify windows on their own: they take no --group_by or --group_column")
    if args.command == "predict" and args.group_column and not args.dataset_name:
        parser.error("--group_column names a column of --dataset_name; for files and folders use --group_by folder")
    if args.command == "predict" and args.group_by and args.dataset_name:
        parser.error("--group_by folder groups files and folders; for --dataset_name use --group_column")
    if args.command == "export" and args.calibration and args.quantize != "int8":
        parser.error("--calibration sets the int8 convolutions' activation ranges: it needs --quantize int8")
    if args.command == "export" and args.quantize_feature_encoder and not args.calibration:
        parser.error("--quantize_feature_encoder quantises the feature encoder's convolutions statically: it needs "
                     "--quantize int8 and --calibration")
    if args.command == "export" and args.finetune and not args.quantize_feature_encoder:
        parser.error("--finetune trains the model on the int8 feature encoder's output: it needs --quantize int8, "
                     "--calibration and --quantize_feature_encoder")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pretrain"]:  # Trainer's own arguments: parsed by HfArgumentParser in msemoboost.pretraining
        from .pretraining import pretrain

        try:
            return pretrain(argv[1:])
        except ValueError as error:
            print(f"msemoboost pretrain: error: {error}", file=sys.stderr)
            return EXIT_BAD_USAGE
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    from .inference import BadAudioError

    commands = {"predict": run_predict, "stream": run_stream, "explain": run_explain, "tsne": run_tsne, "enhance": run_enhance,
                "export": run_export, "intensity": run_intensity}
    try:
        return commands[args.command](args)
    except BadAudioError as error:
        print(f"msemoboost {args.command}: skipped {error}; nothing was written.", file=sys.stderr)
        return EXIT_SOME_FILES_FAILED
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"msemoboost {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_USAGE


def write_atomically(path: Path, write) -> None:
    """Calls `write(temporary_path)`, then moves the file into `path`: a killed run never leaves a half-written file.
    The temporary file keeps `path`'s suffix, so writers that choose a format by suffix (matplotlib) still work."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def pixel_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(value) for value in text.lower().split("x"))
    except ValueError as error:
        raise ValueError(f"--size takes WIDTHxHEIGHT in pixels, e.g. 1200x900; got {text!r}.") from error
    return width, height


def recordings(args) -> list[tuple[str, object, str | None]]:
    """(name, source, group) of every input recording, in order: file paths, or undecoded `datasets` audio values;
    the group (its folder with `--group_by folder`, its `--group_column` value) is None without grouping."""
    from .inference import find_audio_files

    if not args.dataset_name:
        if not args.inputs:
            raise ValueError("Give audio files or folders, or --dataset_name.")
        return [(str(path), path, str(path.parent) if args.group_by else None) for path in find_audio_files(args.inputs)]
    import datasets

    source = datasets.load_dataset(args.dataset_name, split=args.split)
    splits = source.items() if isinstance(source, datasets.DatasetDict) else [(args.split or "data", source)]
    found = []
    for split, table in splits:
        for column in (args.audio_column, args.group_column):
            if column and column not in table.column_names:
                raise ValueError(f"Column {column!r} is not in {args.dataset_name}; its columns are {table.column_names}.")
        groups = [str(group) for group in table[args.group_column]] if args.group_column else [None] * len(table)
        for row, audio in enumerate(table.cast_column(args.audio_column, datasets.Audio(decode=False))[args.audio_column]):
            found.append((audio.get("path") or f"{split}/{row}", audio, groups[row]))
    if not found:
        raise ValueError(f"{args.dataset_name} holds no rows.")
    return found


def read_groups(sources: list, read, classifier, extractor) -> tuple[list, dict]:
    """With --group_by or --group_column: every readable recording `(name, waveform)` (each read once, by
    `read(name, source)`, which gives None for a bad one), and per name its group with the group's statistics
    `(group, mean, scale)` over all the group's readable recordings, which normalise each of them."""
    from .inference import group_normalization

    readable = [(name, waveform, group) for name, source, group in sources if (waveform := read(name, source)) is not None]
    normalization = {}
    if readable:
        mean, scale = group_normalization(classifier, extractor, [w for _, w, _ in readable], [g for _, _, g in readable])
        normalization = {name: (group, mean[row], scale[row]) for row, (name, _, group) in enumerate(readable)}
    return [(name, waveform) for name, waveform, _ in readable], normalization


def prediction_engine(args) -> tuple:
    """`(classifier, extractor, config, run)`: the PyTorch model and its feature extractor (None, None under
    --onnx), the model's config, and `run(waveforms, names, **group_inputs)`, which gives the predictions."""
    from .inference import load_classifier, predict

    if args.onnx:
        from .onnx_runtime import ONNXClassifier

        engine = ONNXClassifier(args.onnx, int8=args.quantize == "int8")
        return None, None, engine.config, engine.predict
    classifier, extractor = load_classifier(args.model, args.device)
    return classifier, extractor, classifier.config, partial(predict, classifier, extractor)


def run_predict(args) -> int:
    from tqdm.auto import tqdm

    import torch

    from .inference import BadAudioError, read_audio

    check_predict_values(args)
    sources = recordings(args)
    total = len(sources)
    classifier, extractor, config, run = prediction_engine(args)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    predictions, failures, batch = [], [], []

    def skip(reason: str) -> None:
        failures.append(reason)
        tqdm.write(f"skipped {reason}", file=sys.stderr)

    def read(name: str, source) -> np.ndarray | None:
        try:
            return read_audio(source, config.sampling_rate, name, config.min_input_samples)
        except BadAudioError as error:
            skip(str(error))
            return None

    normalization = {}
    if not (args.group_column or args.group_by) and getattr(config, "speaker_normalization", False):
        alone = ("each recording is classified alone, by the statistics regression fitted for recordings without a "
                 "group" if getattr(config, "ungrouped_statistics_weight", None) is not None else
                 "each recording is standardised by the training data's statistics, which scored lower than grouped "
                 "recordings")
        print("Note: this model was trained with speaker normalisation; without --group_by folder or --group_column, "
              f"{alone} (README, Speaker normalisation).", file=sys.stderr)
    if args.vad or args.hop_s is not None:  # one recording at a time, its windows in batches
        predictions += window_timelines(args, sources, read, skip, run, config)
        waveforms, count = [], 0
    elif args.group_column or args.group_by:  # every recording is read once, here, and kept for its batch
        waveforms, normalization = read_groups(sources, read, classifier, extractor)
        count = len(waveforms)
    else:  # read one at a time, as the batches need them
        waveforms, count = ((name, read(name, source)) for name, source, _ in sources), len(sources)

    def classify(batch) -> None:
        names = [n for n, _ in batch]
        grouped = {}
        if normalization:
            grouped = {"group_mean": torch.stack([normalization[n][1] for n in names]),
                       "group_scale": torch.stack([normalization[n][2] for n in names])}
        try:
            found = run([w for _, w in batch], names, **grouped)
        except ValueError as error:  # one recording the model refuses: classify each alone, so only it is skipped
            if len(batch) == 1:
                skip(f"{batch[0][0]}: {error}")
            else:
                for item in batch:
                    classify([item])
            return
        for prediction in found:
            prediction.group = normalization[prediction.name][0] if normalization else None
        predictions.extend(found)

    for position, (name, waveform) in enumerate(tqdm(waveforms, total=count, unit="file", file=sys.stderr) if count else []):
        if waveform is not None:
            batch.append((name, waveform))
        if batch and (len(batch) == args.batch_size or position == count - 1):
            classify(batch)
            batch = []

    if predictions:
        write_predictions(predictions, labels, args.output, args.timeline, args.min_confidence)
    else:
        print("No recording could be classified; nothing was written.", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {total} recording(s) skipped:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return EXIT_SOME_FILES_FAILED
    return 0


def check_predict_values(args) -> None:
    """Refuses values `predict` cannot use, and --vad without its extra, before any audio is read."""
    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--output must end in .csv or .json, got {args.output}.")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}.")
    check_window_values(args)
    if args.vad:
        from .timeline import require_vad

        require_vad()


def check_window_values(args) -> None:
    """`--min_confidence` and `--hop_s`, as predict and stream take them."""
    if args.min_confidence is not None and not 0 <= args.min_confidence <= 1:
        raise ValueError(f"--min_confidence is a probability, from 0 to 1; got {args.min_confidence}.")
    if args.hop_s is not None and not 0 < args.hop_s < float("inf"):
        raise ValueError(f"--hop_s must be a positive number of seconds, got {args.hop_s}.")


def window_timelines(args, sources, read, skip, run, config) -> list:
    """--vad or --hop_s: each readable recording's timeline of windows (`read(name, source)` gives its waveform or
    None; `skip(reason)` records a recording the model refuses)."""
    from tqdm.auto import tqdm

    from .timeline import sliding_timeline, speech_timeline

    found = []
    for name, source, _ in tqdm(sources, unit="file", file=sys.stderr):
        waveform = read(name, source)
        if waveform is None:
            continue
        try:
            if args.vad:
                found.append(speech_timeline(run, waveform, name, config, args.batch_size))
                if np.isnan(found[-1].probabilities).all():
                    tqdm.write(f"{name}: no speech found; its rows are all non-speech.", file=sys.stderr)
            else:
                found.append(sliding_timeline(run, waveform, name, config, args.hop_s, args.batch_size))
        except ValueError as error:
            skip(f"{name}: {error}")
    return found


def run_stream(args) -> int:
    from .streaming import stream_lines

    check_window_values(args)
    _, _, config, run = prediction_engine(args)
    return stream_lines(args, run, config)


def run_export(args) -> int:
    from .configuration_msemoboost import MSEmoBoostConfig
    from .export import DEFAULT_OPSET, export
    from .inference import find_audio_files, read_audio

    calibration = None
    if args.calibration is not None:
        config = MSEmoBoostConfig.from_pretrained(args.model)
        calibration = [read_audio(path, config.sampling_rate, min_samples=config.min_input_samples)
                       for path in find_audio_files(args.calibration)]
    fine_tuning = None
    if args.finetune:
        try:
            from .quantization_aware import QuantizationAwareFineTuning
        except ImportError as error:
            raise ImportError(f"--finetune reads its data with datasets and trains with the Trainer: pip install "
                              f"'msemoboost[train]' ({error}).") from error

        fine_tuning = QuantizationAwareFineTuning(
            args.finetune, label_column=args.finetune_label_column, split=args.finetune_split,
            epochs=args.finetune_epochs, learning_rate=args.finetune_learning_rate, batch_size=args.finetune_batch_size,
            seed=args.seed)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    for path in export(args.model, args.output_dir, quantize=args.quantize, opset=opset, calibration=calibration,
                       quantize_feature_encoder=args.quantize_feature_encoder, fine_tuning=fine_tuning):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def run_intensity(args) -> int:
    from .intensity import MSEmoBoostIntensityConfig, MSEmoBoostIntensityModel, train_intensity

    if args.intensity_command == "train":
        report = train_intensity(args.dataset_name, args.output_dir, args.eval_speakers, args.max_steps,
                                 args.batch_size, args.learning_rate, args.seed,
                                 MSEmoBoostIntensityConfig(calibration_weight=args.calibration_weight))
        for line in report["skipped_files"]:
            print(f"skipped {line}", file=sys.stderr)
        print(json.dumps({"ranking_accuracy": report["ranking_accuracy"], "skipped": len(report["skipped_files"])}, indent=2))
        print(f"Saved the intensity model to {args.output_dir}")
        return EXIT_SOME_FILES_FAILED if report["skipped_files"] else 0
    import torch

    from .inference import BadAudioError, find_audio_files, pad_batch, read_audio

    if not (Path(args.model) / "config.json").is_file():
        raise ValueError(f"{args.model}: not an intensity model folder (it has no config.json).")
    model = MSEmoBoostIntensityModel.from_pretrained(args.model).eval()
    rows, failures = [], []
    for path in find_audio_files(args.inputs):
        try:
            waveform = read_audio(path, model.config.sampling_rate, str(path), model.config.n_fft)
        except BadAudioError as error:
            failures.append(str(error))
            print(f"skipped {error}", file=sys.stderr)
            continue
        with torch.no_grad():
            frames = model(**pad_batch([waveform])).frame_scores[0].numpy()
        rows.append((str(path), frames))
        print(f"{path}: mean {frames.mean():.3f}  max {frames.max():.3f}  frames above 0.5 {(frames > 0.5).mean():.0%}")
    if args.output and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(10, 3 + 0.2 * len(rows)), dpi=100)
        for name, frames in rows:
            axis.plot(np.arange(len(frames)) * model.config.hop_length / model.config.sampling_rate, frames,
                      label=Path(name).name)
        axis.set(xlabel="time (s)", ylabel="emotion intensity", ylim=(0, 1))
        axis.legend(fontsize=7)
        figure.tight_layout()
        write_atomically(Path(args.output), lambda path: figure.savefig(path))
        plt.close(figure)
        print(f"Wrote {args.output}")
    return EXIT_SOME_FILES_FAILED if failures else 0


def write_predictions(predictions, labels: list[str], output: str | None, timeline: bool,
                      min_confidence: float | None = None) -> None:
    """The files' rows, and with `timeline` the segments' (or windows') rows and the regions where the label stays
    the same: printed, or written to a JSON file (`files`, `segments`, `regions`) or CSV files (`out.csv`,
    `out.timeline.csv`, `out.regions.csv`). A non-speech row's label is `non-speech`, its probabilities empty."""
    from .timeline import regions, segment_label

    def probabilities(values) -> dict:
        return {label: None if np.isnan(value) else float(value) for label, value in zip(labels, values)}

    grouped = any(p.group is not None for p in predictions)
    file_rows = [
        {"file": p.name, **({"group": p.group} if grouped else {}),
         "prediction": segment_label(labels, p.probabilities, min_confidence), **probabilities(p.probabilities)}
        for p in predictions
    ]
    segment_rows = [
        {"file": p.name, "segment": index, "start": float(start), "end": float(end),
         "prediction": segment_label(labels, probs, min_confidence), **probabilities(probs)}
        for p in predictions
        for index, ((start, end), probs) in enumerate(zip(p.segment_bounds, p.segment_probabilities))
    ]
    region_rows = [{"file": p.name, **region} for p in predictions for region in regions(p, labels, min_confidence)]
    if output is None:
        print_table(file_rows, labels)
        if timeline:
            for rows in (segment_rows, region_rows):
                print()
                print_table(rows, labels)
    elif output.lower().endswith(".json"):
        content = {"labels": labels, "files": file_rows}
        if timeline:
            content.update(segments=segment_rows, regions=region_rows)
        write_atomically(Path(output), lambda path: path.write_text(json.dumps(content, indent=2) + "\n"))
    else:
        write_csv(Path(output), file_rows)
        if timeline:
            write_csv(timeline_path(Path(output)), segment_rows)
            write_csv(timeline_path(Path(output), "regions"), region_rows)


def timeline_path(output: Path, kind: str = "timeline") -> Path:
    """Where `--timeline` rows go next to a CSV output: `out.csv` → `out.timeline.csv` (and `out.regions.csv`)."""
    return output.with_name(f"{output.stem}.{kind}.csv")


def write_csv(path: Path, rows: list[dict]) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write)


def print_table(rows: list[dict], labels: list[str]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    cells = [[format_cell(row[column]) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def format_cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "" if value is None else str(value)


def run_explain(args) -> int:
    from .analysis import plot_explanation
    from .inference import enhancement_curve, load_classifier, predict, read_audio

    width, height = pixel_size(args.size)
    classifier, extractor = load_classifier(args.model, args.device)
    waveform = read_audio(args.file, extractor.sampling_rate, min_samples=classifier.config.min_input_samples)
    times, weights = enhancement_curve(classifier, extractor, waveform)
    (prediction,) = predict(classifier, extractor, [waveform], [args.file])
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    write_atomically(Path(args.output), lambda path: plot_explanation(
        path, waveform, extractor.sampling_rate, times, weights, prediction, labels, (width, height), Path(args.file).name))
    print(f"Wrote {args.output}: {Path(args.file).name} → {labels[int(prediction.probabilities.argmax())]}")
    return 0


def run_tsne(args) -> int:
    from .analysis import plot_tsne
    from .data import load_corpus
    from .inference import load_classifier, pooled_features, read_audio

    width, height = pixel_size(args.size)
    classifier, extractor = load_classifier(args.model, args.device)
    corpus = load_corpus(args.dataset_name, extractor.sampling_rate, classifier.config.min_input_samples,
                         audio_column=args.audio_column, label_column=args.label_column, speaker_column=None,
                         skip_bad_audio=True)
    if len(corpus.dataset) < 2:
        raise ValueError(f"{args.dataset_name}: fewer than 2 usable utterances, nothing to plot.")
    rows = np.arange(len(corpus.dataset))
    if args.max_utterances and args.max_utterances < len(rows):
        rows = np.sort(np.random.default_rng(args.seed).choice(rows, args.max_utterances, replace=False))
    titles = {"msemoboost": "MS-EmoBoost pooled features"}
    if args.compare_baseline:
        titles = {"baseline": "backbone masked mean (baseline)", **titles}
    features = {key: [] for key in titles}
    for start in range(0, len(rows), args.batch_size):
        waveforms = [read_audio(corpus.dataset[int(row)]["audio"], extractor.sampling_rate) for row in rows[start : start + args.batch_size]]
        batch = pooled_features(classifier, extractor, waveforms, baseline=args.compare_baseline)
        for key in titles:
            features[key].append(batch[key])
    labels = [corpus.label_names[label] for label in corpus.labels[rows]]
    features = {titles[key]: np.concatenate(parts) for key, parts in features.items()}
    write_atomically(Path(args.output), lambda path: plot_tsne(path, features, labels, (width, height), args.seed))
    print(f"Wrote {args.output}: t-SNE of {len(rows)} utterances")
    if corpus.num_skipped:
        print(f"{corpus.num_skipped} unusable utterance(s) skipped (named above).", file=sys.stderr)
        return EXIT_SOME_FILES_FAILED
    return 0


def run_enhance(args) -> int:
    """Writes OUTPUT_DIR/NAME.enhanced.wav for each input (16-bit, the model's rate; scaled down if it would clip),
    and with --noise OUTPUT_DIR/NAME.noisy.wav, the input that was enhanced."""
    from .demo import write_wav
    from .inference import BadAudioError, enhance, find_audio_files, load_classifier, read_audio
    from .noise import NoiseBank, check_snrs, mix_at_snr, utterance_rng

    (snr,) = check_snrs([args.snr], "--snr")
    classifier, extractor = load_classifier(args.model, args.device)
    if classifier.se_head is None:
        raise ValueError(f"{args.model} has no speech-enhancement head: train it with --use_se_head true.")
    rate = extractor.sampling_rate
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files, failures = find_audio_files(args.inputs), []
    for path in files:
        try:
            waveform = read_audio(path, rate, min_samples=classifier.config.min_input_samples)
        except BadAudioError as error:
            failures.append(str(error))
            print(f"skipped {error}", file=sys.stderr)
            continue
        if args.noise:
            noise = NoiseBank(rate).sample(args.noise, len(waveform), utterance_rng(args.seed, path.name, args.noise))
            waveform, _ = mix_at_snr(waveform, noise, snr, rate)
            noisy = peak_limited(waveform)
            write_atomically(output_dir / f"{path.stem}.noisy.wav", lambda target: write_wav(target, noisy, rate))
        enhanced = peak_limited(enhance(classifier, extractor, waveform))
        write_atomically(output_dir / f"{path.stem}.enhanced.wav", lambda target: write_wav(target, enhanced, rate))
        print(f"Wrote {output_dir / (path.stem + '.enhanced.wav')}")
    if failures:
        print(f"{len(failures)} of {len(files)} recording(s) skipped.", file=sys.stderr)
        return EXIT_SOME_FILES_FAILED
    return 0


def peak_limited(waveform: np.ndarray) -> np.ndarray:
    """`waveform` scaled down to a 0.99 peak if it would clip, unchanged otherwise."""
    peak = float(np.abs(waveform).max(initial=0.0))
    return waveform * (0.99 / peak) if peak > 0.99 else waveform


if __name__ == "__main__":
    sys.exit(main())
