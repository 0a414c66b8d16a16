"""Speaker normalisation of the statistics classifier, with and without, on the same networks of a finished run.

    python benchmarks/speaker_normalization.py outputs/emodb_cpu_sn_seed0 [MORE RUNS] --output results.json

A train.py run with `utterance_statistics_classifier` (and `--save_fold_models`) keeps each fold's model and its two
parts apart (`folds/<fold>/fusion_parts.npz`). Speaker normalisation changes only the statistics classifier, which is
fitted after training, so both variants can be scored on one run's networks. For every fold, the statistics
classifier is fitted again on the fold's training utterances as train.py fits it, once with each speaker standardised
by its own statistics and once with the training data's statistics for all, and each variant is fused with the
fold's network at the weight chosen on the other folds (`choose_statistics_weight`, the run's own
`--statistics_weight_grid`). The variant the run was trained with must reproduce its recorded parts (within 0.1 in
log-probability and 98 % of the predictions: the statistics are computed in other batches, and the solver stops at
its tolerance), which the script checks and prints before it reports. Test speakers are standardised over their own
test utterances; no labels are used. Two more rows score the speaker-normalised model on recordings given without a
group, as `msemoboost predict` without `--group_by` would: with the second regression that train.py fits for them
(`config.ungrouped_statistics_weight`, at its own weight chosen on the other folds), and with the speaker-normalised
regression alone, each recording standardised by the training data's statistics (a model without that second
regression: `ungrouped_statistics_weight` None).

With `--utterance_log_mel_statistics`, the runs' fold models get the log-mel band functionals
(`config.utterance_log_mel_statistics`) beside their statistics before the statistics classifier is fitted: their
networks are unchanged (the classifier is fitted after training and reads no network output), so this scores the
recipe with that option on the runs' own networks, as train.py with it would fit and fuse. The check against the
recorded parts is then skipped: they were fitted on the statistics without it.
"""

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def run_folds(run: Path):
    """The run's corpus (loaded as train.py loaded it), its folds and its recorded results."""
    from msemoboost.arguments import parse_arguments
    from msemoboost.cross_validation import load_corpora, model_config
    from msemoboost.protocols import make_folds

    summary = json.loads((run / "results.json").read_text())
    data, protocol, training = summary["data"], summary["protocol_arguments"], summary["training"]
    argv = ["--dataset_name", data["dataset_name"], "--label_column", data["label_column"],
            "--speaker_column", data["speaker_column"] or "", "--audio_column", data["audio_column"],
            "--protocol", protocol["protocol"], "--seed", str(training["seed"]), "--output_dir", "/tmp/unused",
            "--validation_fraction", str(protocol["validation_fraction"])]
    if protocol["num_folds"]:
        argv += ["--num_folds", str(protocol["num_folds"])]
    model_args, data_args, _, protocol_args, training_args, _ = parse_arguments(argv)
    corpus, extra_rows, _ = load_corpora(data_args, model_config(model_args), protocol_args.protocol)
    folds = make_folds(protocol_args.protocol, corpus.labels, corpus.speakers, corpus.splits, protocol_args.num_folds,
                       protocol_args.validation_fraction, training_args.seed, protocol_args.train_split,
                       protocol_args.validation_split, protocol_args.test_split, extra_rows)
    recorded = [fold["fold"] for fold in summary["folds"]]
    folds = [fold for fold in folds if fold.name in recorded]
    return corpus, folds, summary


def with_log_mel_statistics(model):
    """A copy of `model` with `config.utterance_log_mel_statistics`: the same network and the same other settings, an
    unfitted statistics classifier sized for the longer statistics."""
    config = copy.deepcopy(model.config)
    config.utterance_log_mel_statistics = True
    extended = type(model)(config)
    network = {name: value for name, value in model.state_dict().items() if not name.startswith("statistics_classifier.")}
    missing, unexpected = extended.load_state_dict(network, strict=False)
    if unexpected or any(not name.startswith("statistics_classifier.") for name in missing):
        raise ValueError(f"the model with log-mel statistics does not take the network's weights: missing {missing}, "
                         f"unexpected {unexpected}.")
    return extended.eval()


def compare(run: Path, log_mel: bool = False) -> dict:
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from msemoboost.data import AudioCollator
    from msemoboost.reporting import mean_std
    from msemoboost.statistics_fusion import (
        add_ungrouped_regression, choose_statistics_weight, classify_statistics, fit_statistics_classifier,
        fused_logits, utterance_statistics,
    )
    from msemoboost.training import load_wa_ua

    corpus, folds, summary = run_folds(run)
    grid = summary["protocol_arguments"]["statistics_weight_grid"]
    if not grid:
        raise ValueError(f"{run} chose no statistics weight (no --statistics_weight_grid): nothing to compare.")
    metric = load_wa_ua()
    speakers, labels = np.asarray(corpus.speakers), corpus.labels
    statistics = None
    # Fitted with speaker normalisation, tested one recording at a time: "ungrouped" with the second regression,
    # "single_regression" without it (the speaker-normalised regression on the training data's statistics).
    parts = {"speaker": {}, "global": {}, "ungrouped": {}, "single_regression": {}}
    for fold in folds:
        directory = run / "folds" / fold.name
        model = AutoModelForAudioClassification.from_pretrained(directory / "model").eval()
        if log_mel:
            model = with_log_mel_statistics(model)
        if statistics is None:  # the statistics depend on the model's settings only, never on its weights
            collator = AudioCollator(AutoFeatureExtractor.from_pretrained(directory / "model"))
            statistics = utterance_statistics(model, corpus.dataset, collator)
        recorded = dict(np.load(directory / "fusion_parts.npz"))
        for variant in ("speaker", "global"):
            fitted = copy.deepcopy(model)
            fitted.config.speaker_normalization = variant == "speaker"
            if variant == "speaker" and not fitted.statistics_classifier.ungrouped:
                add_ungrouped_regression(fitted)
            fit_statistics_classifier(fitted, statistics[fold.train], labels[fold.train], speakers[fold.train],
                                      seed=summary["training"]["seed"])
            log_probabilities = classify_statistics(fitted, statistics[fold.test], speakers[fold.test])
            if fitted.config.speaker_normalization == model.config.speaker_normalization and not log_mel:
                # The same fit on statistics computed in other batches: equal up to the solver's tolerance.
                gap = np.abs(log_probabilities - recorded["statistics_log_probabilities"]).max()
                same = (log_probabilities.argmax(-1) == recorded["statistics_log_probabilities"].argmax(-1)).mean()
                print(f"{fold.name}: refitted within {gap:.2g} of the run's own parts, {same:.1%} of the predictions the same")
                if gap > 0.1 or same < 0.98:
                    raise ValueError(f"{directory}: the refitted statistics classifier is {gap:.2g} from the run's own "
                                     f"parts, with {same:.1%} of the predictions the same.")
            parts[variant][fold.name] = {**recorded, "statistics_log_probabilities": log_probabilities}
            if variant == "speaker":
                parts["ungrouped"][fold.name] = {**recorded, "statistics_log_probabilities": classify_statistics(
                    fitted, statistics[fold.test])}
                single = fitted.statistics_classifier  # its grouped regression on the training data's statistics
                standardised = single.standardised(torch.from_numpy(statistics[fold.test]).to(single.mean.dtype))
                parts["single_regression"][fold.name] = {**recorded, "statistics_log_probabilities": torch.nn.functional.linear(
                    standardised, single.weight, single.bias).log_softmax(-1).double().numpy()}

    def scores(variant: str) -> dict:
        choice = choose_statistics_weight(parts[variant], grid)
        fused = {name: metric.compute(predictions=fused_logits(folds_parts, choice["nested"][name]).argmax(-1),
                                      references=folds_parts["labels"])
                 for name, folds_parts in parts[variant].items()}
        alone = {name: metric.compute(predictions=folds_parts["statistics_log_probabilities"].argmax(-1),
                                      references=folds_parts["labels"])
                 for name, folds_parts in parts[variant].items()}
        return {
            "fused_ua": mean_std([score["ua"] for score in fused.values()]),
            "fused_wa": mean_std([score["wa"] for score in fused.values()]),
            "statistics_alone_ua": mean_std([score["ua"] for score in alone.values()]),
            "nested_weights": choice["nested"],
            "per_fold_fused_ua": {name: score["ua"] for name, score in fused.items()},
        }

    network = [metric.compute(predictions=p["network_logits"].argmax(-1), references=p["labels"])["ua"]
               for p in parts["speaker"].values()]
    return {"run": str(run), "seed": summary["training"]["seed"], "utterance_log_mel_statistics": log_mel,
            "network_alone_ua": mean_std(network),
            "with_speaker_normalization": scores("speaker"), "without": scores("global"),
            "with_speaker_normalization_tested_ungrouped": scores("ungrouped"),
            "with_speaker_normalization_tested_ungrouped_single_regression": scores("single_regression")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="train.py output folders")
    parser.add_argument("--output", help="JSON file for the results (default: print only)")
    parser.add_argument("--utterance_log_mel_statistics", action="store_true",
                        help="give the runs' fold models the log-mel band functionals before fitting")
    args = parser.parse_args()
    results = []
    for run in args.runs:
        found = compare(run, args.utterance_log_mel_statistics)
        results.append(found)
        print(f"{run} (seed {found['seed']}): network alone UA {found['network_alone_ua']['mean']:.2%}; "
              + "; ".join(f"{name}: fused UA {found[key]['fused_ua']['mean']:.2%} (statistics alone "
                          f"{found[key]['statistics_alone_ua']['mean']:.2%})"
                          for name, key in (("with speaker normalisation", "with_speaker_normalization"),
                                            ("without", "without"),
                                            ("fitted with it, tested ungrouped", "with_speaker_normalization_tested_ungrouped"),
                                            ("the same with the speaker-normalised regression alone",
                                             "with_speaker_normalization_tested_ungrouped_single_regression"))),
              flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
