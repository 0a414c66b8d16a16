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
  the others (a `cross_corpus` run each, in `OUTPUT_DIR/<corpus>`), with per-corpus and mean WA/UA; with
  `--statistics_weight_grid`, each corpus is scored at the statistics classifier's weight that does best on the
  other corpora;
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
are computed over utterances. The probabilities are then calibrated (`--calibrate`, on by default): temperatures
cross-fitted over the folds, ECE and log-loss before and after in results.json -> calibration.
"""

import logging
import sys
from pathlib import Path

import numpy as np
import transformers

from msemoboost.arguments import LEAVE_ONE_CORPUS_OUT, parse_arguments
from msemoboost.cross_validation import (
    FoldRun,
    calibrate_run,
    choose_corpus_weights,
    choose_run_weight,
    finished_run,
    leave_one_corpus_out_runs,
    load_corpora,
    model_config,
    prepare_output_dir,
    publish_model,
    push_model,
    run_folds,
)
from msemoboost.demo import make_demo_corpus
from msemoboost.noise import NoiseDataset
from msemoboost.pretraining import pretrain_if_missing
from msemoboost.protocols import make_folds, select_folds
from msemoboost.reporting import (
    classify_example,
    summarize,
    summarize_leave_one_corpus_out,
    write_json,
    write_model_directory,
)
from msemoboost.training import build_feature_extractor

logger = logging.getLogger("msemoboost.train")


def main(argv: list[str] | None = None, callbacks=()) -> dict:
    """Runs the protocol; returns the overall results. `callbacks` are added to every fold's Trainer."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv, description=__doc__)
    model_args, data_args, noise_args, protocol_args, training_args, _ = args
    main_process = training_args.process_index == 0
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if main_process else logging.WARNING)
    transformers.utils.logging.set_verbosity_warning()
    output_dir = Path(training_args.output_dir)
    prepare_output_dir(output_dir, protocol_args.overwrite_output_dir, training_args)
    if protocol_args.protocol == LEAVE_ONE_CORPUS_OUT:  # one cross_corpus run per corpus, each by this function
        runs = {}
        for name, words in leave_one_corpus_out_runs(argv, data_args, model_args, output_dir).items():
            logger.info(f"Leave one corpus out: testing {name}, trained on all the other corpora.")
            runs[name] = finished_run(output_dir / name, protocol_args.overwrite_output_dir) or main(words, callbacks)
        if not main_process:
            return {}
        weight_choice = choose_corpus_weights(output_dir, runs, protocol_args.statistics_weight_grid)
        return summarize_leave_one_corpus_out(runs, output_dir, weight_choice)

    # The data, and the backbone pretrained first when the recipe asks for it
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
            noise_dataset = NoiseDataset(noise_args.noise_dataset, config.sampling_rate, noise_args.noise_audio_column)
    folds = select_folds(make_folds(
        protocol_args.protocol, corpus.labels, corpus.speakers, corpus.splits, protocol_args.num_folds,
        protocol_args.validation_fraction, training_args.seed, protocol_args.train_split,
        protocol_args.validation_split, protocol_args.test_split, extra_rows,
    ), protocol_args.folds)
    logger.info(
        f"{len(corpus.dataset)} utterances, {len(corpus.label_names)} classes {corpus.label_names}, "
        f"{len(set(corpus.speakers))} speaker(s); protocol {protocol_args.protocol} with {len(folds)} fold(s)."
    )

    # Cross-validation, then the model to publish
    run = FoldRun(corpus, args, feature_extractor, output_dir, tuple(callbacks), noise_dataset, config.min_input_samples)
    fold_results = run_folds(folds, run)
    weight_choice, fold_results = choose_run_weight(folds, run, config, fold_results)
    calibration, fold_results = calibrate_run(folds, run, config, fold_results)
    model_dir = publish_model(run, folds, extra_rows, weight_choice, calibration)

    summary = None
    if main_process:
        summary = summarize(fold_results, corpus, args, output_dir, config, corpora_report, weight_choice, calibration)
        if model_dir:
            write_model_directory(model_dir, summary, data_args, model_args, output_dir, training_args.hub_model_id)
        write_json(output_dir / "results.json", summary)
        print_summary(summary, output_dir, model_dir)
        if model_dir:
            classify_example(model_dir, corpus, folds[0].test if folds else np.arange(1))
    if training_args.push_to_hub:
        if not model_dir:
            raise ValueError("--push_to_hub needs a model directory: keep --final_model true (or --save_fold_models for splits).")
        if main_process:
            push_model(model_dir, training_args, feature_extractor)
    return summary


def print_summary(summary: dict, output_dir: Path, model_dir: Path | None) -> None:
    if summary["num_folds"]:
        print(f"{summary['protocol']} over {summary['num_folds']} fold(s), {summary['num_utterances']} utterances: "
              f"WA {summary['wa']['mean']:.2%} ± {summary['wa']['std']:.2%}  "
              f"UA {summary['ua']['mean']:.2%} ± {summary['ua']['std']:.2%}")
        print(f"Results: {output_dir / 'results.json'}  Confusion matrix: {output_dir / 'confusion_matrix.png'}"
              + (f"  Model: {model_dir}" if model_dir else ""))
    else:
        print(f"{summary['protocol']}: trained on {summary['num_utterances']} utterances of {len(summary['corpora'])} "
              f"corpora, {len(summary['label_names'])} classes; nothing tested.  Model: {model_dir}")


if __name__ == "__main__":
    main()
