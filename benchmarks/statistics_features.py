"""The statistics classifier with and without the log-mel band functionals (`config.utterance_log_mel_statistics`),
fitted on finished runs' folds and fused with their networks, without training.

    python benchmarks/statistics_features.py --loso outputs/headline/seed{0,1,2} \\
        --output benchmarks/results/statistics_features_emodb_loso_cpu.json
    python benchmarks/statistics_features.py --loco outputs/multicorpus_cpu_loco [--corpora tess] \\
        --output benchmarks/results/statistics_features_loco_cpu.json

The statistics are the model's own (`utterance_statistics`, on the feature extractor's normalised audio, as train.py
computes them): the whole utterance's MFCC, prosody and distribution statistics (380 values), and with
`utterance_log_mel_statistics` also 11 functionals of each of 40 log-mel bands (820). The statistics classifier is
fitted as train.py fits it, speaker-normalised (`fit_statistics_classifier`: each speaker standardised by its own
utterances, C by speaker-grouped cross-validation) on each fold's training utterances, once on each; test speakers
are standardised over their own test utterances, without labels.

- `--loso RUN …`, train.py runs with `fusion_parts.npz` (EMO-DB leave-one-speaker-out): each variant alone, and fused
  with each fold's network at the weight chosen on the run's other folds (`choose_statistics_weight`, the run's own
  grid), as `benchmarks/speaker_normalization.py` fuses. Each fold's classifier is fitted once and fused with every
  run's network of that fold (the folds must hold the same speakers).
- `--loco DIR`: each of the five corpora tested by the classifier fitted on the other four (train.py's and the
  anchors' `cross_corpus` folds over the classes they share), with the log-mel functionals; the model's statistics
  alone are `benchmarks/results/anchors_loco_statistics_speaker.json`'s row (the same fit).
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
from anchors import cached_per_corpus, model_statistics, statistics_classifier_model, train_arguments  # noqa: E402
from speaker_normalization import run_folds  # noqa: E402

CORPORA = ("emodb", "ravdess", "tess", "nemo", "ased")


class LogMelPart:
    """The log-mel functionals with which `model.utterance_statistics` ends, alone (`utterance_log_mel_statistics`),
    for `msemoboost.statistics_fusion.utterance_statistics`: the other statistics are cached already."""

    def __init__(self, model):
        self.model, self.device = model, model.device

    def utterance_statistics(self, input_values, attention_mask):
        lengths = self.model.msemoboost.utterance_lengths(input_values, attention_mask)
        return self.model.msemoboost.mfcc_encoder.log_mel_statistics(input_values, lengths)


def corpus_features(corpus, config) -> tuple[dict[str, np.ndarray], "MSEmoBoostForSequenceClassification"]:
    """`{"statistics": (num_rows, 380), "statistics+log-mel": (num_rows, 820)}`, the model's utterance statistics of
    every row of `corpus` without and with `utterance_log_mel_statistics` (on the feature extractor's normalised audio,
    as `anchors.model_statistics` computes them), each part cached per source corpus in outputs/benchmarks/features/,
    and the anchors' statistics-only model for `corpus`'s labels, speaker-normalised, unfitted, with the log-mel
    functionals."""
    from msemoboost import MSEmoBoostFeatureExtractor
    from msemoboost.data import AudioCollator
    from msemoboost.statistics_fusion import utterance_statistics

    model = statistics_classifier_model(corpus, config, distributions=True, speaker_normalization=True)
    config = copy.deepcopy(config)
    config.utterance_log_mel_statistics = True
    log_mel_model = statistics_classifier_model(corpus, config, distributions=True, speaker_normalization=True)
    collator = AudioCollator(MSEmoBoostFeatureExtractor(sampling_rate=corpus.sampling_rate, do_normalize=True))
    settings = "_".join(str(getattr(config, key)) for key in ("log_mel_num_bands", "log_mel_n_fft", "log_mel_win_length",
                                                              "mfcc_hop_length"))
    log_mel = cached_per_corpus(corpus, f"log_mel_statistics_{settings}", lambda rows: utterance_statistics(
        LogMelPart(log_mel_model), corpus.dataset.select(rows), collator))
    statistics = model_statistics(corpus, model)
    return {"statistics": statistics, "statistics+log-mel": np.concatenate([statistics, log_mel], 1)}, log_mel_model


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
        argv = train_arguments("cross_corpus", str(data / tested), [str(data / other) for other in CORPORA if other != tested])
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
