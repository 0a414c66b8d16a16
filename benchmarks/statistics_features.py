"""Log-mel band functionals beside the model's whole-utterance statistics, for its statistics classifier: measured on
finished runs' networks, without training. Not part of the model.

    python benchmarks/statistics_features.py --loso outputs/headline/seed{0,1,2} \\
        --output benchmarks/results/statistics_features_emodb_loso_cpu.json
    python benchmarks/statistics_features.py --loco outputs/multicorpus_cpu_loco [--corpora tess] \\
        --output benchmarks/results/statistics_features_loco_cpu.json

The features ([`log_mel_functionals`]): 40 Slaney mel bands of a 25 ms Hann window every 10 ms (512-point FFT),
log10 power; per band, over the whole utterance, the mean, standard deviation, 10th, 50th and 90th percentiles,
range, covariance with the standardised time (a slope), skewness, excess kurtosis, and the standard deviation and
mean absolute value of the frame-to-frame change: 440 values. The statistics classifier is fitted as train.py fits
it, speaker-normalised (`fit_statistics_classifier`: each speaker standardised by its own utterances, C by
speaker-grouped cross-validation) on each fold's training utterances, once on the model's statistics (380 values,
what the model has) and once on those and the log-mel functionals (820); test speakers are standardised over their
own test utterances, without labels.

- `--loso RUN …`, train.py runs with `fusion_parts.npz` (EMO-DB leave-one-speaker-out): each variant alone, and fused
  with each fold's network at the weight chosen on the run's other folds (`choose_statistics_weight`, the run's own
  grid), as `benchmarks/speaker_normalization.py` fuses. Each fold's classifier is fitted once and fused with every
  run's network of that fold (the folds must hold the same speakers).
- `--loco DIR`: each of the five corpora tested by the classifier fitted on the other four (train.py's and the
  anchors' `cross_corpus` folds over the classes they share), with the model's statistics and the log-mel functionals;
  the model's statistics alone are `benchmarks/results/anchors_loco_statistics_speaker.json`'s row (the same fit).
  Where `DIR/<corpus>` holds that corpus's finished `train.py --protocol leave_one_corpus_out` run, also fused with
  its network at the run's own weight, beside the run's recorded fused UA. `--corpora` tests some of the five; an
  `--output` file that exists keeps the others' rows, and the mean over the five is written once all five are in.
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from anchors import cached_per_corpus, model_statistics, statistics_classifier_model  # noqa: E402
from speaker_normalization import run_folds  # noqa: E402

CORPORA = ("emodb", "ravdess", "tess", "nemo", "ased")
NUM_MEL_BANDS = 40


def log_mel_functionals(waveform: np.ndarray, sampling_rate: int = 16000) -> np.ndarray:
    """The 440 log-mel band functionals of one mono 16 kHz waveform (see the module's docstring), `(440,)`."""
    from scipy.stats import kurtosis, skew
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    if sampling_rate != 16000:
        raise ValueError(f"log_mel_functionals() reads 16 kHz audio, got {sampling_rate} Hz.")
    filters = mel_filter_bank(num_frequency_bins=257, num_mel_filters=NUM_MEL_BANDS, min_frequency=0,
                              max_frequency=8000, sampling_rate=16000, norm="slaney", mel_scale="slaney")
    bands = spectrogram(waveform.astype(np.float32), window_function(400, "hann"), frame_length=400, hop_length=160,
                        fft_length=512, power=2.0, mel_filters=filters, log_mel="log10", mel_floor=1e-10)
    time = np.arange(bands.shape[1], dtype=np.float64)
    time = (time - time.mean()) / max(time.std(), 1e-9)
    change = np.diff(bands, axis=1) if bands.shape[1] > 1 else np.zeros_like(bands)
    low, median, high = np.percentile(bands, [10, 50, 90], axis=1)
    return np.concatenate([
        bands.mean(1), bands.std(1), low, median, high, bands.max(1) - bands.min(1), (bands * time).mean(1),
        np.nan_to_num(skew(bands, axis=1)), np.nan_to_num(kurtosis(bands, axis=1)), change.std(1), np.abs(change).mean(1),
    ])


def corpus_features(corpus, config) -> tuple[dict[str, np.ndarray], "MSEmoBoostForSequenceClassification"]:
    """`{"statistics": the model's (num_rows, 380), "statistics+log-mel": (num_rows, 820)}` of every row of `corpus`,
    each cached per source corpus in outputs/benchmarks/features/ (the statistics under the anchors' name), and the
    anchors' statistics-only model for `corpus`'s labels, speaker-normalised, unfitted."""
    from msemoboost.data import decode_audio

    model = statistics_classifier_model(corpus, config, distributions=True, speaker_normalization=True)
    statistics = model_statistics(corpus, model)
    mel = cached_per_corpus(corpus, "log_mel_functionals", lambda rows: [
        log_mel_functionals(decode_audio(corpus.dataset[int(row)]["audio"], corpus.sampling_rate)) for row in rows])
    return {"statistics": statistics, "statistics+log-mel": np.concatenate([statistics, mel], 1)}, model


def fitted_log_probabilities(model, features, labels, speakers, train, test, seed: int = 0) -> np.ndarray:
    """The speaker-normalised statistics classifier fitted on rows `train` of `features` as train.py fits it, and its
    log-probabilities of rows `test`, `(len(test), num_labels)`."""
    from msemoboost.modeling_statistics import MSEmoBoostStatisticsClassifier
    from msemoboost.statistics_fusion import classify_statistics, fit_statistics_classifier

    model = copy.deepcopy(model)
    model.statistics_classifier = MSEmoBoostStatisticsClassifier(features.shape[1], model.config.num_labels)
    fit_statistics_classifier(model, features[train], labels[train], speakers[train], seed=seed)
    return classify_statistics(model, features[test], speakers[test])


def rows(fold) -> tuple:
    """A fold's name, training and test rows (to check that runs share their folds)."""
    return fold.name, list(np.concatenate([fold.train, fold.validation])), list(fold.test)


def ua(log_probabilities: np.ndarray, labels: np.ndarray) -> float:
    from msemoboost.training import load_wa_ua

    return load_wa_ua().compute(predictions=log_probabilities.argmax(-1), references=labels)["ua"]


def loso(runs: list[Path]) -> dict:
    """Each variant alone and fused with each run's networks (the weight chosen on the other folds)."""
    from msemoboost.arguments import parse_arguments
    from msemoboost.cross_validation import model_config
    from msemoboost.reporting import mean_std
    from msemoboost.statistics_fusion import choose_statistics_weight, fused_logits

    corpus, folds, _ = run_folds(runs[0])
    # The anchors' configuration: the statistics depend on the feature settings only, which the CPU presets keep.
    features, model = corpus_features(corpus, model_config(parse_arguments(["--output_dir", "/tmp/unused"])[0]))
    speakers = np.asarray(corpus.speakers)
    fitted = {variant: {fold.name: fitted_log_probabilities(model, values, corpus.labels, speakers,
                                                            np.concatenate([fold.train, fold.validation]), fold.test)
                        for fold in folds}
              for variant, values in features.items()}
    results = {variant: {"statistics_alone_ua": mean_std([ua(found, corpus.labels[fold.test]) for fold, found in
                                                          zip(folds, by_fold.values())]), "runs": {}}
               for variant, by_fold in fitted.items()}
    for run in runs:
        _, run_folds_, summary = run_folds(run)
        if [rows(fold) for fold in run_folds_] != [rows(fold) for fold in folds]:
            raise ValueError(f"{run} has other folds than {runs[0]}: the classifiers are fitted once for all runs.")
        grid = summary["protocol_arguments"]["statistics_weight_grid"]
        for variant, by_fold in fitted.items():
            parts = {fold.name: {**dict(np.load(run / "folds" / fold.name / "fusion_parts.npz")),
                                 "statistics_log_probabilities": by_fold[fold.name]} for fold in folds}
            for fold in folds:
                if not np.array_equal(parts[fold.name]["labels"], corpus.labels[fold.test]):
                    raise ValueError(f"{run / 'folds' / fold.name / 'fusion_parts.npz'} holds other test utterances "
                                     f"than fold {fold.name}.")
            choice = choose_statistics_weight(parts, grid)
            fused = {name: ua(fused_logits(part, choice["nested"][name]), part["labels"]) for name, part in parts.items()}
            results[variant]["runs"][str(run)] = {"seed": summary["training"]["seed"], "fused_ua": mean_std(list(fused.values())),
                                                  "per_fold_fused_ua": fused, "nested_weights": choice["nested"]}
            print(f"{run} {variant}: fused UA {np.mean(list(fused.values())):.2%}", flush=True)
    for variant in results:
        results[variant]["fused_ua"] = mean_std([found["fused_ua"]["mean"] for found in results[variant]["runs"].values()])
    return results


def loco(directory: Path, data: Path, tested_corpora: list[str]) -> dict:
    """Each of `tested_corpora` tested by the classifier fitted on the other four: UA alone, and fused with the run's
    network where `directory/<corpus>` holds one."""
    from msemoboost.arguments import parse_arguments
    from msemoboost.cross_validation import load_corpora, model_config
    from msemoboost.protocols import make_folds
    from msemoboost.statistics_fusion import fused_logits

    results = {}
    for tested in tested_corpora:
        argv = ["--dataset_name", str(data / tested), "--label_column", "emotion", "--speaker_column", "speaker",
                "--protocol", "cross_corpus", "--output_dir", "/tmp/unused",
                "--extra_train_datasets", *[str(data / other) for other in CORPORA if other != tested]]
        model_args, data_args, _, protocol_args, _, _ = parse_arguments(argv)
        config = model_config(model_args)
        corpus, extra_rows, _ = load_corpora(data_args, config, protocol_args.protocol)
        fold = make_folds("cross_corpus", corpus.labels, corpus.speakers, corpus.splits, None, 0.0, 0, None, None,
                          None, extra_rows)[0]
        features, model = corpus_features(corpus, config)
        labels = corpus.labels[fold.test]
        found = fitted_log_probabilities(model, features["statistics+log-mel"], corpus.labels,
                                         np.asarray(corpus.speakers), np.concatenate([fold.train, fold.validation]), fold.test)
        row = {"label_names": corpus.label_names, "num_test": len(fold.test),
               "statistics+log-mel_alone_ua": ua(found, labels)}
        parts_path = directory / tested / "folds" / "cross_corpus" / "fusion_parts.npz"
        if parts_path.exists():
            parts = dict(np.load(parts_path))
            if not np.array_equal(parts["labels"], labels):
                raise ValueError(f"{parts_path} holds other test utterances than the cross_corpus fold of {tested}.")
            weight = float(parts["utterance_statistics_weight"])
            row |= {"network_alone_ua": ua(parts["network_logits"], labels), "weight": weight,
                    "recorded_statistics_alone_ua": ua(parts["statistics_log_probabilities"], labels),
                    "recorded_fused_ua": ua(fused_logits(parts, weight), labels),
                    "statistics+log-mel_fused_ua": ua(fused_logits({**parts, "statistics_log_probabilities": found}, weight), labels)}
        results[tested] = row
        print(f"{tested}: " + ", ".join(f"{key} {value:.2%}" for key, value in row.items() if key.endswith("_ua")), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loso", nargs="+", type=Path, default=[], help="train.py runs of one LOSO protocol (seeds)")
    parser.add_argument("--loco", type=Path, help="a train.py --protocol leave_one_corpus_out output folder")
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA),
                        help="with --loco, the corpora to test (default: all five)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the five corpora's folder")
    parser.add_argument("--output", type=Path, help="JSON file for the results (default: print only); a file that "
                        "exists keeps the corpora this call does not test")
    args = parser.parse_args()
    results = json.loads(args.output.read_text()) if args.output and args.output.exists() else {}
    if args.loso:
        results["loso"] = loso(args.loso)
    if args.loco:
        found = {name: row for name, row in results.get("leave_one_corpus_out", {}).items() if name in CORPORA}
        found |= loco(args.loco, args.data, args.corpora)
        found = {name: found[name] for name in CORPORA if name in found}
        if len(found) == len(CORPORA):
            found["mean_statistics+log-mel_alone_ua"] = float(np.mean([row["statistics+log-mel_alone_ua"] for row in found.values()]))
        results["leave_one_corpus_out"] = found
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
