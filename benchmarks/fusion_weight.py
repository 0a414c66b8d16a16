"""The weight of the statistics classifier in the fusion (`utterance_statistics_weight`), from finished train.py runs.

    python benchmarks/fusion_weight.py outputs/emodb_cpu
    python benchmarks/fusion_weight.py RUN_SEED0 RUN_SEED1 RUN_SEED2 --weights 0.5 1 2 3 4 --output results.json

With `utterance_statistics_classifier`, train.py writes each fold's two parts apart in `folds/<fold>/fusion_parts.npz`:
the network's utterance logits and the statistics classifier's log-probabilities (unweighted). The fused model's
logits are `network + weight * statistics`, so the UA of every weight can be computed from them without training
again. Two figures for each run:

- **UA by weight**, the mean over the run's folds. Reading the best weight off this table is choosing it on the test
  speakers: it is a curve to look at, not an estimate.
- **Nested (leave one fold out)**: each fold is scored with the weight that does best (mean UA) on the run's *other*
  folds, never on its own test speakers. Its mean is an estimate of what choosing the weight this way gives on
  speakers that the choice has not seen. The other folds' networks were trained with the held-out fold's speakers
  among their training speakers, but no fold's own labels choose its weight.

This is the computation `train.py --statistics_weight_grid` makes at the end of a run
(`msemoboost.statistics_fusion.choose_statistics_weight`); here it runs again on finished runs, with any grid.

With `--across_corpora`, the runs are `cross_corpus` runs of one `train.py --protocol leave_one_corpus_out` folder
(`OUTPUT_DIR/<corpus>`), and each is also scored at the weight that does best on the *other* runs' corpora
(`across_corpora`: `msemoboost.cross_validation.choose_corpus_weights`, what `--statistics_weight_grid` makes of
that protocol once all its runs have finished), which works on any subset of its corpora.

With `--speaker_centring`, the same studies again with each part centred over its speaker's test utterances (each
class's score minus its mean over the speaker's utterances: `speaker_centred`), a transductive correction of a
speaker's or corpus's bias towards some classes that reads no label; the speakers are the `speaker` column of each
fold's `predictions.csv`.

It also gives, for each part alone over every fold's test utterances pooled, its mean top probability, its accuracy
and its expected calibration error (`confidence`). A part far surer than it is right outvotes the other in the fusion.
"""

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def read_parts(run: Path) -> dict[str, dict[str, np.ndarray]]:
    """`{fold name: fusion_parts.npz's arrays}` of a train.py output folder, in the order of the fold names."""
    paths = sorted((run / "folds").glob("*/fusion_parts.npz"))
    if not paths:
        raise FileNotFoundError(
            f"{run} holds no folds/*/fusion_parts.npz: train.py writes them for models with "
            "utterance_statistics_classifier (runs before 2026-12-03 did not)."
        )
    return {path.parent.name: dict(np.load(path)) for path in paths}


def speaker_centred(run: Path, folds: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Each fold's parts with every class's scores (`network_logits`, `statistics_log_probabilities`) less their mean
    over the test utterances of the same speaker (`folds/<fold>/predictions.csv`'s `speaker` column, in the parts'
    order). The fusion is linear, so the fused logits are then the speaker-centred fused logits at any weight."""
    import pandas as pd

    centred = {}
    for name, parts in folds.items():
        table = pd.read_csv(run / "folds" / name / "predictions.csv")
        if "speaker" not in table.columns:
            raise ValueError(f"{run / 'folds' / name / 'predictions.csv'} has no speaker column: the run had no speakers to "
                             "centre over.")
        speakers = table["speaker"].astype(str).to_numpy()
        if len(speakers) != len(parts["labels"]):
            raise ValueError(f"{run / 'folds' / name / 'predictions.csv'} has {len(speakers)} rows for "
                             f"{len(parts['labels'])} utterances in its fusion_parts.npz.")
        centred[name] = {"labels": parts["labels"], "utterance_statistics_weight": parts["utterance_statistics_weight"]}
        for part in ("network_logits", "statistics_log_probabilities"):
            scores = parts[part].astype(np.float64)
            for speaker in np.unique(speakers):
                rows = speakers == speaker
                scores[rows] -= scores[rows].mean(0)
            centred[name][part] = scores
    return centred


def confidence(folds: dict[str, dict[str, np.ndarray]], part: str) -> dict:
    """How sure one part (`network_logits` or `statistics_log_probabilities`) is against how often it is right, over
    every fold's test utterances pooled: the mean of its top softmax probability, its accuracy, and its expected
    calibration error (`msemoboost.calibration.expected_calibration_error`). A part far more sure than right outvotes
    the other in the fusion."""
    import torch

    from msemoboost.calibration import expected_calibration_error

    logits = np.concatenate([parts[part] for parts in folds.values()])
    labels = np.concatenate([parts["labels"] for parts in folds.values()])
    probabilities = torch.from_numpy(logits).double().softmax(-1).numpy()
    return {"mean_top_probability": float(probabilities.max(-1).mean()),
            "accuracy": float((probabilities.argmax(-1) == labels).mean()),
            "ece": expected_calibration_error(probabilities, labels)}


def weight_study(folds: dict[str, dict[str, np.ndarray]], weights: tuple[float, ...]) -> dict:
    """`msemoboost.statistics_fusion.choose_statistics_weight` of one run, with the nested estimate's UA, the
    statistics classifier alone, the weight(s) the run was recorded with, and each part's [`confidence`]."""
    from msemoboost.reporting import mean_std
    from msemoboost.statistics_fusion import choose_statistics_weight, fused_logits
    from msemoboost.training import load_wa_ua

    study = choose_statistics_weight(folds, weights)
    metric = load_wa_ua()
    alone = [metric.compute(predictions=parts["statistics_log_probabilities"].argmax(-1), references=parts["labels"])["ua"]
             for parts in folds.values()]
    nested = {
        name: {"weight": weight, **metric.compute(predictions=fused_logits(folds[name], weight).argmax(-1),
                                                  references=folds[name]["labels"])}
        for name, weight in study["nested"].items()
    }
    return {
        **study,
        "recorded_weight": sorted({float(parts["utterance_statistics_weight"]) for parts in folds.values()}),
        "statistics_classifier_alone": float(np.mean(alone)),
        "confidence": {"network": confidence(folds, "network_logits"),
                       "statistics_classifier": confidence(folds, "statistics_log_probabilities")},
        "nested": {
            **({key: mean_std([fold[key] for fold in nested.values()]) for key in ("wa", "ua")} if nested else {}),
            "folds": nested,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="train.py output folders (each with folds/*/fusion_parts.npz)")
    parser.add_argument("--weights", nargs="+", type=float, help="the weights scored (default: the CPU preset's "
                        "statistics_weight_grid, configs/emodb_cpu.yaml)")
    parser.add_argument("--across_corpora", action="store_true", help="the runs are a leave_one_corpus_out folder's: "
                        "also score each at the weight best on the others")
    parser.add_argument("--speaker_centring", action="store_true", help="also score every part centred over each test "
                        "speaker's utterances (speaker_centred)")
    parser.add_argument("--output", type=Path, help="JSON file for the results (default: print only)")
    args = parser.parse_args()
    if args.across_corpora and (len(args.runs) < 2 or len({run.resolve().parent for run in args.runs}) > 1):
        parser.error("--across_corpora takes 2 or more runs of one leave_one_corpus_out folder (OUTPUT_DIR/<corpus>).")
    from msemoboost.training import read_arguments_file

    preset_grid = read_arguments_file(REPO / "configs" / "emodb_cpu.yaml")["statistics_weight_grid"]
    weights = tuple(sorted(set(args.weights or preset_grid)))
    folds_by_run = {run: read_parts(run) for run in args.runs}
    results = {str(run): weight_study(folds, weights) for run, folds in folds_by_run.items()}
    print_studies(results, weights)
    if args.across_corpora:
        from msemoboost.cross_validation import choose_corpus_weights

        summaries = {run.name: json.loads((run / "results.json").read_text()) for run in args.runs}
        choice = choose_corpus_weights(args.runs[0].resolve().parent, summaries, list(weights))
        results["across_corpora"] = choice
        print_across_corpora(choice)
    if args.speaker_centring:
        from msemoboost.cross_validation import corpus_weight_choice

        print("With every part centred over each test speaker's utterances:")
        centred = {run: speaker_centred(run, folds) for run, folds in folds_by_run.items()}
        results["speaker_centred"] = {str(run): weight_study(folds, weights) for run, folds in centred.items()}
        print_studies(results["speaker_centred"], weights)
        if args.across_corpora:
            parts = {run.name: next(iter(folds.values())) for run, folds in centred.items()}
            choice = corpus_weight_choice(parts, list(weights))
            results["speaker_centred"]["across_corpora"] = choice
            print_across_corpora(choice)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


def print_studies(results: dict, weights: tuple[float, ...]) -> None:
    header = "run".ljust(40) + "".join(f"{weight:>7g}" for weight in weights) + "  stats  nested"
    print("UA (%) by the statistics classifier's weight; 0 is the network alone, 'stats' the statistics classifier alone")
    print(header)
    for run, study in results.items():
        row = "".join(f"{100 * study['ua_by_weight'][f'{weight:g}']:7.1f}" for weight in weights)
        nested = study["nested"].get("ua")
        print(f"{run[-40:]:40s}{row}{100 * study['statistics_classifier_alone']:7.1f}"
              + (f"{100 * nested['mean']:8.1f}" if nested else "       —"))
    print("Mean top probability / accuracy (%) of each part alone, every fold's test utterances pooled")
    for run, study in results.items():
        print(f"{run[-40:]:40s}" + "".join(
            f"  {part} {100 * found['mean_top_probability']:.1f} / {100 * found['accuracy']:.1f}"
            for part, found in study["confidence"].items()))


def print_across_corpora(choice: dict) -> None:
    print("Each corpus at the weight chosen on the others: " + ", ".join(
        f"{name} {100 * found['ua']:.1f} (weight {found['statistics_weight']:g})" for name, found in choice["scores"].items())
        + f"; mean {100 * np.mean([found['ua'] for found in choice['scores'].values()]):.1f}; on all of them {choice['weight']:g}")


if __name__ == "__main__":
    main()
