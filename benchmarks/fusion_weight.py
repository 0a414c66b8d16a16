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
fold's `predictions.csv`. With `--centring_strengths`, also each part less only that share of its speaker mean (0 is
no centring, 1 full centring), the share and the weight chosen together as the weight alone is chosen (each fold or
corpus at the pair best on the others: `strength_study`).

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


def fold_speakers(run: Path, folds: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each fold's test utterances' speakers, `{fold name: (num_utterances,)}`: the `speaker` column of
    `folds/<fold>/predictions.csv`, in the order of the fold's parts."""
    import pandas as pd

    speakers = {}
    for name, parts in folds.items():
        table = pd.read_csv(run / "folds" / name / "predictions.csv")
        if "speaker" not in table.columns:
            raise ValueError(f"{run / 'folds' / name / 'predictions.csv'} has no speaker column: the run had no speakers to "
                             "centre over.")
        speakers[name] = table["speaker"].astype(str).to_numpy()
        if len(speakers[name]) != len(parts["labels"]):
            raise ValueError(f"{run / 'folds' / name / 'predictions.csv'} has {len(speakers[name])} rows for "
                             f"{len(parts['labels'])} utterances in its fusion_parts.npz.")
    return speakers


def speaker_centred(folds: dict[str, dict[str, np.ndarray]], speakers: dict[str, np.ndarray],
                    strength: float = 1.0) -> dict[str, dict[str, np.ndarray]]:
    """Each fold's parts with every class's scores (`network_logits`, `statistics_log_probabilities`) less `strength`
    times their mean over the test utterances of the same speaker (`speakers`, from [`fold_speakers`]). The fusion is
    linear, so the fused logits are then the speaker-centred fused logits at any weight."""
    centred = {}
    for name, parts in folds.items():
        centred[name] = {"labels": parts["labels"], "utterance_statistics_weight": parts["utterance_statistics_weight"]}
        for part in ("network_logits", "statistics_log_probabilities"):
            scores = parts[part].astype(np.float64)
            for speaker in np.unique(speakers[name]):
                rows = speakers[name] == speaker
                scores[rows] -= strength * scores[rows].mean(0)
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


def strength_study(studies: dict[float, dict[str, dict[str, np.ndarray]]], weights: tuple[float, ...]) -> dict:
    """The centring strength and the statistics weight chosen together over folds (or corpora): `studies` maps each
    strength to the folds' parts centred at that strength ([`speaker_centred`]). Each pair is scored by the folds'
    mean UA; each fold is scored at the pair that does best on the *other* folds (ties to the weaker centring, then
    the smaller weight), never on its own utterances. Returns `{"ua_by_pair": {"strength/weight": mean UA},
    "nested": {fold: {"strength", "weight", "ua"}}, "ua": the nested folds' mean UA}`."""
    from msemoboost.statistics_fusion import choose_statistics_weight

    per_fold = {strength: choose_statistics_weight(folds, weights)["per_fold"] for strength, folds in studies.items()}
    pairs = [(strength, weight) for strength in sorted(studies) for weight in weights]
    names = list(next(iter(studies.values())))
    if len(names) < 2:
        raise ValueError(f"The centring strength is chosen on the other folds: {names} is a single fold (with one "
                         "leave_one_corpus_out run per corpus, give them all with --across_corpora).")

    def score(pair: tuple[float, float], folds: list[str]) -> float:
        return float(np.mean([per_fold[pair[0]][name][f"{pair[1]:g}"] for name in folds]))

    nested = {}
    for name in names:
        best = max(pairs, key=lambda pair: (score(pair, [other for other in names if other != name]), -pair[0], -pair[1]))
        nested[name] = {"strength": best[0], "weight": best[1], "ua": score(best, [name])}
    return {"ua_by_pair": {f"{strength:g}/{weight:g}": score((strength, weight), names) for strength, weight in pairs},
            "nested": nested, "ua": float(np.mean([found["ua"] for found in nested.values()]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="train.py output folders (each with folds/*/fusion_parts.npz)")
    parser.add_argument("--weights", nargs="+", type=float, help="the weights scored (default: the CPU preset's "
                        "statistics_weight_grid, configs/emodb_cpu.yaml)")
    parser.add_argument("--across_corpora", action="store_true", help="the runs are a leave_one_corpus_out folder's: "
                        "also score each at the weight best on the others")
    parser.add_argument("--speaker_centring", action="store_true", help="also score every part centred over each test "
                        "speaker's utterances (speaker_centred)")
    parser.add_argument("--centring_strengths", nargs="+", type=float, help="with --speaker_centring, also choose the "
                        "share of the speaker mean taken off (0 to 1) together with the weight (strength_study)")
    parser.add_argument("--output", type=Path, help="JSON file for the results (default: print only)")
    args = parser.parse_args()
    if args.centring_strengths and not args.speaker_centring:
        parser.error("--centring_strengths needs --speaker_centring.")
    if args.centring_strengths and any(not 0 <= strength <= 1 for strength in args.centring_strengths):
        parser.error(f"--centring_strengths are shares of the speaker mean, from 0 to 1: got {args.centring_strengths}.")
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
        speakers = {run: fold_speakers(run, folds) for run, folds in folds_by_run.items()}
        centred = {run: speaker_centred(folds, speakers[run]) for run, folds in folds_by_run.items()}
        results["speaker_centred"] = {str(run): weight_study(folds, weights) for run, folds in centred.items()}
        print_studies(results["speaker_centred"], weights)
        if args.across_corpora:
            parts = {run.name: next(iter(folds.values())) for run, folds in centred.items()}
            choice = corpus_weight_choice(parts, list(weights))
            results["speaker_centred"]["across_corpora"] = choice
            print_across_corpora(choice)
        if args.centring_strengths:
            strengths = sorted(set(args.centring_strengths))
            by_strength = {strength: {run: speaker_centred(folds, speakers[run], strength)
                                      for run, folds in folds_by_run.items()} for strength in strengths}
            if args.across_corpora:
                study = strength_study({strength: {run.name: next(iter(found[run].values())) for run in args.runs}
                                        for strength, found in by_strength.items()}, weights)
                results["speaker_centred"]["strengths_across_corpora"] = study
                print_strengths("across corpora", study)
            else:
                results["speaker_centred"]["strengths"] = {
                    str(run): strength_study({strength: found[run] for strength, found in by_strength.items()}, weights)
                    for run in args.runs}
                for run, study in results["speaker_centred"]["strengths"].items():
                    print_strengths(run, study)
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


def print_strengths(name: str, study: dict) -> None:
    print(f"{name}: each scored at the centring strength and weight chosen on the others: " + ", ".join(
        f"{fold} {100 * found['ua']:.1f} ({found['strength']:g}, {found['weight']:g})" for fold, found in study["nested"].items())
        + f"; mean {100 * study['ua']:.1f}")


if __name__ == "__main__":
    main()
