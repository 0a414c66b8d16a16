"""Running a protocol's folds for `train.py`: each fold trained and tested ([`run_fold`], several side by side with
`--parallel_folds`, a finished fold skipped and a killed one resumed), the statistics classifier's weight chosen
over the folds ([`choose_fold_weights`]), the model to publish trained on all the data ([`train_final_model`]), and
the runs of `--protocol leave_one_corpus_out` ([`leave_one_corpus_out_runs`])."""

import csv
import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import EarlyStoppingCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .arguments import DataArguments, ModelArguments, NoiseArguments, RunArguments, corpus_name
from .augmentation import BatchMixup, Chain, TelephoneAugmentation, WaveformAugmentation
from .calibration import calibration_report, cross_fitted_temperatures, mean_report, pooled_report
from .configuration_msemoboost import MSEmoBoostConfig
from .data import AudioCollator, EmotionCorpus, combine_corpora, decode_audio, load_corpus, parse_label_merge
from .modeling_msemoboost import MSEmoBoostForSequenceClassification
from .noise import SILENCE_FLOOR_DBFS, FixedNoise, NoiseAugmentation, active_power, fold_noise_bank
from .protocols import Fold, hold_out_validation
from .reporting import confusion_matrix, format_report, per_class_report, save_confusion_matrix, write_json
from .statistics_fusion import (
    add_ungrouped_regression,
    choose_statistics_weight,
    classify_statistics,
    fit_statistics_classifier,
    fused_logits,
    statistics_classifier_off,
    utterance_statistics,
)
from .training import (
    CheckpointAveraging,
    MSEmoBoostTrainer,
    StagedUnfreezing,
    WaUaMetrics,
    build_model,
    class_balanced_weights,
    load_for_transfer,
    load_wa_ua,
    read_json_argument,
    run_in_processes,
)

logger = logging.getLogger("msemoboost.train")


@dataclass
class FoldRun:
    """What every fold of a run shares: the corpus (with any extra training corpora pooled in), the run's arguments,
    the feature extractor, the output folder, the Trainer callbacks, the noise recordings (--noise_dataset) and the
    shortest input the model takes, in samples."""

    corpus: EmotionCorpus
    args: RunArguments
    feature_extractor: object
    output_dir: Path
    callbacks: tuple = ()
    noise_dataset: object = None
    min_samples: int = 0


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


def finished_run(output_dir: Path, overwrite: bool) -> dict | None:
    """The summary of the run finished in `output_dir` (its results.json), read back, unless `overwrite`; None when
    none has finished there. A killed `--protocol leave_one_corpus_out` thus goes on from the first corpus it had
    not finished, as a killed cross-validation goes on from its first unfinished fold."""
    finished = output_dir / "results.json"
    if overwrite or not finished.exists():
        return None
    logger.info(f"Reading back the finished run in {output_dir} ({finished}); --overwrite_output_dir true runs it again.")
    return json.loads(finished.read_text())


def resume_checkpoint(training_args: TrainingArguments, checkpoint_dir: Path) -> str | None:
    """The checkpoint this fold resumes from with --resume_from_checkpoint (true/last: its own last one; a path: that)."""
    request = training_args.resume_from_checkpoint
    if not request or str(request).lower() in ("false", "0", "no"):
        return None
    if str(request).lower() in ("true", "last", "1", "yes"):
        return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    return str(request) if Path(request).resolve().parent == checkpoint_dir.resolve() else None


def model_config(model_args: ModelArguments) -> MSEmoBoostConfig:
    """The configuration the run's models will have (labels aside), to read rates and sizes before training."""
    if model_args.model_name_or_path:
        return MSEmoBoostConfig.from_pretrained(model_args.model_name_or_path)
    if model_args.backbone:
        backbone_config = transformers.AutoConfig.from_pretrained(model_args.backbone)
    else:
        backbone_config = read_json_argument(model_args.backbone_config) or None
    return MSEmoBoostConfig(
        backbone_config=backbone_config, **model_overrides(model_args)
    )


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
    """MSEmoBoostConfig arguments from --model_config_overrides, with --use_se_head and --speaker_normalization (which
    brings the regression for recordings without a group, `ungrouped_statistics_weight`)."""
    overrides = read_json_argument(model_args.model_config_overrides)
    if model_args.use_se_head:
        overrides["use_se_head"] = True
    if model_args.speaker_normalization:
        overrides["speaker_normalization"] = True
    if overrides.get("speaker_normalization") and overrides.get("ungrouped_statistics_weight") is None:
        # train.py fits the regression for recordings without a group too; its weight is chosen as the other's
        overrides["ungrouped_statistics_weight"] = overrides.get(
            "utterance_statistics_weight", MSEmoBoostConfig.utterance_statistics_weight
        )
    return overrides


def build_fold_model(run: "FoldRun", rows_train: np.ndarray) -> MSEmoBoostForSequenceClassification:
    """A new model for `run`'s corpus: from --model_name_or_path, or built from the backbone and the overrides, with
    class-balanced weights of `rows_train`'s classes when asked for."""
    corpus, model_args = run.corpus, run.args.model
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
    if model.config.speaker_normalization and model.config.ungrouped_statistics_weight is None:
        add_ungrouped_regression(model)  # a loaded checkpoint's (built models have it from model_overrides)
    if run.args.training.label_smoothing_factor:
        model.config.label_smoothing = run.args.training.label_smoothing_factor
    # A loaded checkpoint's calibration belongs to its own training: the new model is calibrated anew (calibrate_run).
    model.config.calibration_temperature = model.config.segment_calibration_temperature = 1.0
    return model


def train_model(
    run: "FoldRun", rows_train: np.ndarray, rows_validation: np.ndarray, checkpoint_dir: Path, augmentation=None
) -> MSEmoBoostTrainer:
    """Trains one model on `rows_train` of `run`'s corpus (with `augmentation` of the training waveforms and mixup of
    the training batches, if any), choosing the best checkpoint on `rows_validation` (clean) when early stopping is
    on; with no validation rows, for the whole schedule. Then fits its statistics classifier, if it has one."""
    corpus, model_args, protocol_args, training_args = run.corpus, run.args.model, run.args.protocol, run.args.training
    feature_extractor, mixup_alpha = run.feature_extractor, run.args.augmentation.mixup_alpha
    set_seed(training_args.seed)
    model = build_fold_model(run, rows_train)
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
            *([StagedUnfreezing(model_args.unfreeze_stages)] if model_args.unfreeze_stages else []),
            *([CheckpointAveraging(averaging)] if averaging else []),
            *run.callbacks,
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


def fold_augmentation(run: "FoldRun", bank) -> Chain | None:
    """What happens to a training waveform: speed perturbation and time masks, then noise (from `bank`), then the
    telephone channel; None when nothing does."""
    noise_args, augmentation_args, seed = run.args.noise, run.args.augmentation, run.args.training.seed
    sampling_rate, min_samples = run.corpus.sampling_rate, run.min_samples
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
    telephone = None
    if augmentation_args.telephone_augmentation > 0:
        telephone = TelephoneAugmentation(sampling_rate, augmentation_args.telephone_augmentation, seed)
    return Chain(waveform, noise, telephone) if waveform or noise or telephone else None


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


def run_fold(fold: Fold, run: "FoldRun") -> dict:
    """Trains and tests one fold (clean, then in noise with --eval_snr), writing its results; a fold whose results
    exist is skipped."""
    corpus, noise_args, training_args = run.corpus, run.args.noise, run.args.training
    results_path = fold_results_path(run.output_dir, fold.name)
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
    check_fold_classes(fold, corpus)
    # kfold mixes speakers across folds by design: babble then only excludes the test utterances themselves.
    excluded = fold.test_speakers if run.args.protocol.protocol != "kfold" else []
    bank = noise_bank(corpus, fold.train, excluded, noise_args, run.noise_dataset, training_args.seed)
    trainer = train_model(run, fold.train, fold.validation, directory / "checkpoints", fold_augmentation(run, bank))
    logits, scores, fusion = evaluate_fold(trainer, fold, run, directory)
    noisy = {}
    if noise_args.eval_snr:
        noisy = test_in_noise(trainer, corpus, fold.test, bank, noise_args, run.feature_extractor, training_args.seed)
        noisy["babble_speakers"] = sorted({speaker for _, speaker in bank.babble_sources})
    if run.args.protocol.save_fold_models:
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


def check_fold_classes(fold: Fold, corpus) -> None:
    """Refuses a fold whose training data has fewer than 2 classes; warns of classes it lacks."""
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


def evaluate_fold(trainer: MSEmoBoostTrainer, fold: Fold, run: "FoldRun", directory: Path) -> tuple[np.ndarray, dict, dict]:
    """The fold's test utterances' logits `(num_test, num_labels)`, their WA/UA, and with a statistics classifier the
    WA/UA of the network and of the statistics classifier alone (whose parts go to `directory/fusion_parts.npz`)."""
    corpus, feature_extractor = run.corpus, run.feature_extractor
    test_set = corpus.dataset.select(fold.test)
    fusion = {}
    if trainer.model.config.utterance_statistics_classifier:
        # The network alone and the statistics classifier alone, each computed once; the fused logits are their sum
        # at the model's weight, as the model's forward and the weight search (choose_fold_weights) make it.
        with statistics_classifier_off(trainer.model):
            network = trainer.predict(test_set, metric_key_prefix="test")
        statistics = utterance_statistics(trainer.model, test_set, AudioCollator(feature_extractor))
        parts = {
            "network_logits": network.predictions,
            # With speaker normalisation, each test speaker's statistics are standardised over its own test audio.
            "statistics_log_probabilities": classify_statistics(trainer.model, statistics, corpus.speakers[fold.test]),
            "labels": corpus.labels[fold.test],
            "utterance_statistics_weight": trainer.model.config.utterance_statistics_weight,
        }
        if trainer.model.statistics_classifier.ungrouped:  # each test recording alone, as predict without groups
            parts["ungrouped_statistics_log_probabilities"] = classify_statistics(trainer.model, statistics)
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
        if "ungrouped_statistics_log_probabilities" in parts:
            fusion["ungrouped"] = ungrouped_scores(parts, trainer.model.config.ungrouped_statistics_weight)
    else:
        prediction = trainer.predict(test_set, metric_key_prefix="test")
        logits, scores = prediction.predictions, {"wa": prediction.metrics["test_wa"], "ua": prediction.metrics["test_ua"]}
    if single_label(trainer.model.config) and trainer.is_world_process_zero():  # for the segment temperature
        segments, counts = segment_log_probabilities(trainer.model, test_set, AudioCollator(feature_extractor))
        np.savez(directory / "segment_log_probabilities.npz", log_probabilities=segments,
                 labels=np.repeat(corpus.labels[fold.test], counts))
    return logits, scores, fusion


def single_label(config) -> bool:
    return config.problem_type in (None, "single_label_classification")


@torch.no_grad()
def segment_log_probabilities(model, dataset, collator, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Each segment's log-probabilities, as the model gives them for timelines (at its segment calibration
    temperature), `(num_segments, num_labels)`, of every row of `dataset`, and each row's number of segments
    `(len(dataset),)`."""
    model.eval()
    rows, counts = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[index] for index in range(start, min(start + batch_size, len(dataset)))])
        attention_mask = batch.get("attention_mask")
        outputs = model.msemoboost(batch["input_values"].to(model.device),
                                   attention_mask=None if attention_mask is None else attention_mask.to(model.device))
        segment_logits = model.calibrated(model.classifier(outputs.segment_features), segments=True)
        rows.append(segment_logits.float().log_softmax(-1).cpu().numpy())
        counts.append(outputs.segments_per_utterance.cpu().numpy())
    return np.concatenate(rows), np.concatenate(counts)


def write_fold_results(directory: Path, corpus, fold: Fold, result: dict, logits: np.ndarray) -> None:
    """A fold's predictions.csv, classification report, confusion matrix and results.json, from its test utterances'
    `logits` `(num_test, num_labels)` and `result` (whose WA and UA are those of the logits)."""
    write_predictions(directory, corpus, fold.test, logits)
    np.savez(directory / "test_logits.npz", logits=logits, labels=corpus.labels[fold.test])
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
    choice = choose_weights(parts, grid, "folds")
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
            if "ungrouped" in choice:
                result["ungrouped"] = ungrouped_scores(parts[fold.name], choice["ungrouped"]["nested"][fold.name])
            write_fold_results(directory, corpus, fold, result, logits)
            if (directory / "model" / "config.json").exists():
                config = MSEmoBoostConfig.from_pretrained(directory / "model")
                config.utterance_statistics_weight = weight
                if "ungrouped" in choice:
                    config.ungrouped_statistics_weight = choice["ungrouped"]["nested"][fold.name]
                config.save_pretrained(directory / "model")
    return choice


GRID_WITHOUT_CLASSIFIER = ("--statistics_weight_grid is ignored: the model has no statistics classifier "
                           "(utterance_statistics_classifier) whose weight it would choose.")


def choose_weights(parts: dict[str, dict[str, np.ndarray]], grid: list[float], unit: str) -> dict:
    """The statistics classifier's weight chosen over `parts` (`fusion_parts.npz` by fold or corpus name, `unit`
    naming them in the log) by `msemoboost.statistics_fusion.choose_statistics_weight`, with `"ungrouped"`: the same
    for the regression for recordings without a group, when every part has it."""
    choice = choose_statistics_weight(parts, grid)
    log_weight_choice(choice, unit, "Statistics classifier's weight")
    if all("ungrouped_statistics_log_probabilities" in found for found in parts.values()):
        choice["ungrouped"] = choose_statistics_weight({name: ungrouped_parts(found) for name, found in parts.items()}, grid)
        log_weight_choice(choice["ungrouped"], unit, "The weight of the regression for recordings without a group")
    return choice


def log_weight_choice(choice: dict, unit: str, what: str) -> None:
    logger.info(
        f"{what} chosen over {len(choice['per_fold'])} {unit}: {choice['weight']:g} (UA by weight: "
        + ", ".join(f"{weight}: {ua:.3f}" for weight, ua in choice["ua_by_weight"].items())
        + f"); each of the {unit} is scored at the weight chosen on the others: "
        + ", ".join(f"{name} {weight:g}" for name, weight in choice["nested"].items())
    )


def ungrouped_parts(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A fold's `fusion_parts` as each test recording alone gives them (`config.ungrouped_statistics_weight`): the
    ungrouped regression's log-probabilities in place of the speaker-normalised ones."""
    return {**parts, "statistics_log_probabilities": parts["ungrouped_statistics_log_probabilities"]}


def fused_scores(parts: dict[str, np.ndarray], weight: float) -> dict:
    """WA/UA of a fold's fused model at the statistics classifier's `weight` (`fused_logits` of its `parts`), with
    that weight."""
    logits = fused_logits(parts, weight)
    return {**load_wa_ua().compute(predictions=logits.argmax(-1), references=parts["labels"]), "statistics_weight": weight}


def ungrouped_scores(parts: dict[str, np.ndarray], weight: float) -> dict:
    """WA/UA of a fold's test recordings each given alone, without a group, at the ungrouped regression's `weight`."""
    return fused_scores(ungrouped_parts(parts), weight)


def run_folds_in_parallel(folds: list[Fold], run: "FoldRun", processes: int) -> None:
    """Runs the unfinished folds `processes` at a time, each in a process of its own (`run_fold(fold, run)`),
    writing its results to its folder as it would in this process."""
    output_dir = run.output_dir
    pending = {fold.name: (fold, run) for fold in folds if not fold_results_path(output_dir, fold.name).exists()}
    if len(pending) < 2:  # one fold left: it runs in this process, on every thread
        return
    if run.callbacks:
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


def run_folds(folds: list[Fold], run: FoldRun) -> list[dict]:
    """Runs every fold (`--parallel_folds` of them at a time, each in a process of its own), printing each one's
    WA/UA; returns the folds' results in order. Finished folds are read back, not run again."""
    if run.args.protocol.parallel_folds > 1:
        run_folds_in_parallel(folds, run, run.args.protocol.parallel_folds)
    fold_results = []  # folds run in parallel above are read back from their results here
    for index, fold in enumerate(folds):
        result = run_fold(fold, run)
        fold_results.append(result)
        if run.args.training.process_index == 0:
            speakers = f" (test speaker(s) {', '.join(fold.test_speakers)})" if fold.test_speakers else ""
            print(f"[fold {index + 1}/{len(folds)}] {fold.name}{speakers}: WA {result['wa']:.2%}  UA {result['ua']:.2%}  "
                  f"on {result['num_test']} utterances", flush=True)
    return fold_results


def choose_run_weight(
    folds: list[Fold], run: FoldRun, config: MSEmoBoostConfig, fold_results: list[dict]
) -> tuple[dict | None, list[dict]]:
    """`--statistics_weight_grid`: the statistics classifier's weight chosen over the folds ([`choose_fold_weights`]),
    and the folds' results rescored at the weight chosen on the other folds (in the main process; elsewhere, and
    when nothing is chosen, `fold_results` as they are). Nothing is chosen without a grid, without a statistics
    classifier or with fewer than 2 folds."""
    grid = run.args.protocol.statistics_weight_grid
    if grid and not config.utterance_statistics_classifier:
        logger.warning(GRID_WITHOUT_CLASSIFIER)
        return None, fold_results
    if not grid:
        return None, fold_results
    if len(folds) < 2:
        logger.warning(f"--statistics_weight_grid needs 2 folds or more to choose the statistics classifier's "
                       f"weight; this run has {len(folds)}, so the model keeps its own "
                       f"({config.utterance_statistics_weight:g}).")
        return None, fold_results
    main_process = run.args.training.process_index == 0
    choice = choose_fold_weights(folds, run.output_dir, grid, run.corpus, rescore=main_process)
    if main_process:
        fold_results = [json.loads(fold_results_path(run.output_dir, fold.name).read_text()) for fold in folds]
    return choice, fold_results


def calibrate_run(folds: list[Fold], run: FoldRun, config: MSEmoBoostConfig, fold_results: list[dict]
                  ) -> tuple[dict | None, list[dict]]:
    """`--calibrate` (single-label models, 2 folds or more): temperatures for the utterance and the segment
    probabilities, cross-fitted over the folds' test predictions ([`~msemoboost.calibration.cross_fitted_temperatures`]):
    each fold is scored at temperatures fitted on the *other* folds' predictions, and the model to publish gets those
    fitted on all of them. Each fold's results gain `calibration` (ECE and log-loss before and after) and its
    predictions.csv the calibrated probabilities; its saved model, if any, its temperatures. Returns the run's
    `calibration` (the temperatures; ECE, log-loss and risk-coverage over the folds' test predictions pooled, and the
    mean over folds of each fold's) and the folds' results, re-read."""
    if not run.args.protocol.calibrate or not single_label(config) or len(folds) < 2:
        if run.args.protocol.calibrate and single_label(config):
            logger.info(f"No calibration: it is cross-fitted over the folds and this run has {len(folds)}; the model "
                        "keeps temperature 1.")
        return None, fold_results
    output_dir = run.output_dir
    directories = {fold.name: output_dir / "folds" / fold.name for fold in folds}
    missing = [str(d) for d in directories.values() if not (d / "segment_log_probabilities.npz").exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} has no segment_log_probabilities.npz: the fold finished before train.py "
                                "kept its predictions for calibration. Delete its folder to run it again, or pass "
                                "--calibrate false.")

    def loaded(name: str, file: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        parts = np.load(directories[name] / file)
        return parts[key], parts["labels"]

    utterances = {name: loaded(name, "test_logits.npz", "logits") for name in directories}
    segments = {name: loaded(name, "segment_log_probabilities.npz", "log_probabilities") for name in directories}
    temperatures, segment_temperatures = cross_fitted_temperatures(utterances), cross_fitted_temperatures(segments)
    reports, segment_reports = [], []
    if run.args.training.process_index == 0:
        for fold in folds:
            result = write_fold_calibration(run, fold, utterances[fold.name], segments[fold.name],
                                            temperatures["nested"][fold.name], segment_temperatures["nested"][fold.name])
            reports.append(result["calibration"])
            segment_reports.append(result["segment_calibration"])
        fold_results = [json.loads(fold_results_path(output_dir, fold.name).read_text()) for fold in folds]
    calibration = {
        "method": "temperature scaling, cross-fitted: each fold at the temperature fitted on the other folds' test "
                  "predictions; the published model at the one fitted on all of them",
        "calibration_temperature": temperatures["all"],
        "segment_calibration_temperature": segment_temperatures["all"],
        "utterances": pooled_report(utterances, temperatures["nested"]),
        "segments": pooled_report(segments, segment_temperatures["nested"]),
        "mean_over_folds": {"utterances": mean_report(reports), "segments": mean_report(segment_reports)}
        if reports else None,
    }
    logger.info(f"Calibration: temperature {temperatures['all']:.3f} (segments {segment_temperatures['all']:.3f}); "
                f"ECE of the folds' test predictions pooled {calibration['utterances']['ece_before']:.3f} → "
                f"{calibration['utterances']['ece_after']:.3f}")
    return calibration, fold_results


def write_fold_calibration(run: FoldRun, fold: Fold, utterances: tuple, segments: tuple, temperature: float,
                           segment_temperature: float) -> dict:
    """A fold's results with its `calibration` and `segment_calibration` (of `utterances` and `segments`, each
    `(logits, labels)`, at the temperatures fitted on the other folds), its predictions.csv calibrated, and its saved
    model, if any, given the temperatures. Returns the results."""
    directory = run.output_dir / "folds" / fold.name
    result = json.loads(fold_results_path(run.output_dir, fold.name).read_text())
    result["calibration"] = calibration_report(*utterances, temperature)
    result["segment_calibration"] = calibration_report(*segments, segment_temperature)
    write_json(fold_results_path(run.output_dir, fold.name), result)
    write_predictions(directory, run.corpus, fold.test, utterances[0] / temperature)
    if (directory / "model" / "config.json").exists():
        fold_config = MSEmoBoostConfig.from_pretrained(directory / "model")
        fold_config.calibration_temperature = temperature
        fold_config.segment_calibration_temperature = segment_temperature
        fold_config.save_pretrained(directory / "model")
    return result


def publish_model(run: FoldRun, folds: list[Fold], extra_rows: np.ndarray, weight_choice: dict | None,
                  calibration: dict | None = None) -> Path | None:
    """The model directory of the run, `OUTPUT_DIR/model`: the fold's model under `splits` and `cross_corpus` (with
    --save_fold_models), otherwise the final model trained on all the data (with --final_model); a finished one is
    kept. Returns it, or None when the run publishes no model."""
    protocol_args, training_args = run.args.protocol, run.args.training
    model_dir = run.output_dir / "model"
    if protocol_args.protocol in ("splits", "cross_corpus"):
        if protocol_args.save_fold_models and training_args.process_index == 0 and not (model_dir / "README.md").exists():
            shutil.copytree(run.output_dir / "folds" / folds[0].name / "model", model_dir, dirs_exist_ok=True)
    elif protocol_args.final_model and not (model_dir / "README.md").exists():
        train_final_model(run, extra_rows, model_dir, weight_choice, calibration)
    return model_dir if (model_dir / "model.safetensors").exists() else None


def train_final_model(run: FoldRun, extra_rows: np.ndarray, model_dir: Path, weight_choice: dict | None,
                      calibration: dict | None = None) -> None:
    """Trains the model to publish on every utterance (with validation speakers held out for early stopping when
    `--validation_fraction` is above 0) and saves it in `model_dir`, with the statistics classifier's weight chosen
    over the folds, if any, and the temperatures fitted over them ([`calibrate_run`]), if any. Under `train_only`
    the extra corpora's speakers may validate too."""
    corpus, protocol_args, training_args = run.corpus, run.args.protocol, run.args.training
    trains_all = protocol_args.protocol == "train_only"
    everything = np.arange(len(corpus.dataset))
    candidates = everything if trains_all else np.setdiff1d(everything, extra_rows)
    train_rows, validation_rows = hold_out_validation(
        candidates, corpus.labels, corpus.speakers,
        bool(run.args.data.speaker_column) and protocol_args.protocol in ("loso", "train_only"),
        protocol_args.validation_fraction, training_args.seed,
    )
    if not trains_all:
        train_rows = np.sort(np.concatenate([train_rows, extra_rows]))
    bank = noise_bank(corpus, train_rows, [], run.args.noise, run.noise_dataset, training_args.seed)
    trainer = train_model(run, train_rows, validation_rows, model_dir, fold_augmentation(run, bank))
    if weight_choice:
        trainer.model.config.utterance_statistics_weight = weight_choice["weight"]
        if "ungrouped" in weight_choice:
            trainer.model.config.ungrouped_statistics_weight = weight_choice["ungrouped"]["weight"]
    if calibration:
        trainer.model.config.calibration_temperature = calibration["calibration_temperature"]
        trainer.model.config.segment_calibration_temperature = calibration["segment_calibration_temperature"]
    trainer.save_model(str(model_dir))
    if trainer.is_world_process_zero():
        for checkpoint in model_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)


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


def leave_one_corpus_out_runs(
    argv: list[str], data_args: DataArguments, model_args: ModelArguments, output_dir: Path
) -> dict[str, list[str]]:
    """`--protocol leave_one_corpus_out`: the train.py arguments of one `cross_corpus` run per corpus, tested on that
    corpus over the classes it shares with the others and trained on all the others, in `output_dir/<corpus>`, keyed
    by the corpus's name. Each corpus keeps its own columns (`--label_column` etc. for `--dataset_name`,
    `--extra_train_columns` for the others). A backbone that the run pretrains (`--backbone_pretraining`) on the
    tested corpus's audio is pretrained without it for that run ([`backbone_without`])."""
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
        runs[name] = [
            *argv, "--protocol", "cross_corpus", "--dataset_name", tested, "--extra_train_datasets", *others,
            "--extra_train_columns", json.dumps({other: columns[other] for other in others}),
            "--output_dir", str(output_dir / name),
            *[word for key, value in columns[tested].items() for word in (f"--{key}", value)],
            *backbone_without(model_args, name),
        ]
    return runs


def choose_corpus_weights(output_dir: Path, runs: dict[str, dict], grid: list[float] | None) -> dict | None:
    """`--protocol leave_one_corpus_out` with `--statistics_weight_grid`: the statistics classifier's weight chosen over
    the corpora's `cross_corpus` runs (`runs`, their summaries by corpus name, in `output_dir/<name>`) as
    [`choose_fold_weights`] chooses it over folds. Each tested corpus is scored at the weight that does best on the
    *other* corpora, never on its own utterances; `weight` is the best on all of them, the weight for a model trained
    on every corpus. A run's own results stay as they are.

    Returns the choice (`msemoboost.statistics_fusion.choose_statistics_weight`, with `"ungrouped"` where the runs
    have the regression for recordings without a group) and `"scores"`: `{name: {"wa", "ua", "statistics_weight"}}`
    at each corpus's weight, with `"ungrouped"` as [`ungrouped_scores`] gives it. None without a grid, with fewer
    than 2 corpora, or when the runs' models have no statistics classifier (with a warning)."""
    if not grid or len(runs) < 2:
        return None
    if not all(run.get("architecture", {}).get("utterance_statistics_classifier") for run in runs.values()):
        logger.warning(GRID_WITHOUT_CLASSIFIER)
        return None
    paths = {name: output_dir / name / "folds" / "cross_corpus" / "fusion_parts.npz" for name in runs}
    for name, path in paths.items():
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: the run that tests {name} finished before train.py kept its network and statistics "
                "classifier apart, so the statistics classifier's weight cannot be chosen over the corpora. Delete "
                f"{output_dir / name} to run it again."
            )
    return corpus_weight_choice({name: dict(np.load(path)) for name, path in paths.items()}, grid)


def corpus_weight_choice(parts: dict[str, dict[str, np.ndarray]], grid: list[float]) -> dict:
    """[`choose_corpus_weights`]'s choice and `"scores"` from the corpora's `fusion_parts` by name."""
    choice = choose_weights(parts, grid, "corpora")
    choice["scores"] = {name: fused_scores(found, choice["nested"][name]) for name, found in parts.items()}
    if "ungrouped" in choice:
        for name, found in parts.items():
            choice["scores"][name]["ungrouped"] = ungrouped_scores(found, choice["ungrouped"]["nested"][name])
    return choice


def backbone_without(model_args: ModelArguments, tested: str) -> list[str]:
    """For the run that tests the corpus named `tested`: when the backbone is pretrained by the run
    (`--backbone DIR --backbone_pretraining "... --dataset_name A B ..."`) on that corpus among others, the arguments
    that pretrain it on the others only, into `DIR_without_<tested>`, so that no audio of a tested corpus reaches
    the backbone; otherwise none."""
    import shlex

    if not (model_args.backbone and model_args.backbone_pretraining) or model_args.model_name_or_path:
        return []
    words = shlex.split(model_args.backbone_pretraining)
    if "--dataset_name" not in words:
        return []
    start = words.index("--dataset_name") + 1
    end = next((i for i in range(start, len(words)) if words[i].startswith("--")), len(words))
    kept = [word for word in words[start:end] if corpus_name(word) != tested]
    if len(kept) == end - start:
        return []
    if not kept:
        raise ValueError(f"--backbone_pretraining pretrains on {tested} alone, the corpus this run tests: pretrain the "
                         "backbone on other audio.")
    pretraining = shlex.join([*words[:start], *kept, *words[end:]])
    return ["--backbone", f"{model_args.backbone.rstrip('/')}_without_{tested}", "--backbone_pretraining", pretraining]
