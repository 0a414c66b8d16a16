"""Calibration of a finished run's fold models, as train.py's `--calibrate` fits it: ECE and log-loss before and
after, and the risk-coverage table of the calibrated probabilities (abstention with `--min_confidence`).

    python benchmarks/calibration.py outputs/headline/seed0 [MORE RUNS] --output benchmarks/results/calibration.json

For runs recorded before train.py kept each fold's test logits and segment log-probabilities: the utterance logits
are rebuilt from `folds/<fold>/fusion_parts.npz` at the fold's recorded statistics weight (they must give the fold's
recorded UA, which the script checks), and the segments' from each fold's saved model on its test speakers. Then,
as `msemoboost.cross_validation.calibrate_run` does, each fold is scored at temperatures fitted on the other folds'
predictions (`cross_fitted_temperatures`); the measures are over all folds' test predictions pooled (15 bins) and,
per fold, their mean. Beside it, the alternative of a validation speaker: each fold's temperature fitted on one other
fold's predictions only.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from speaker_normalization import run_folds  # noqa: E402


def fold_parts(run: Path) -> tuple[dict, dict, dict]:
    """Per fold: `(logits, labels)` of its test utterances as the run scored them, `(segment log-probabilities,
    labels)` of their segments, and the fold's recorded UA."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from msemoboost.cross_validation import segment_log_probabilities
    from msemoboost.data import AudioCollator
    from msemoboost.statistics_fusion import fused_logits
    from msemoboost.training import load_wa_ua

    corpus, folds, summary = run_folds(run)
    metric = load_wa_ua()
    utterances, segments = {}, {}
    for fold in folds:
        directory = run / "folds" / fold.name
        result = json.loads((directory / "results.json").read_text())
        if (directory / "test_logits.npz").exists():
            recorded = np.load(directory / "test_logits.npz")
            logits = recorded["logits"]
        else:
            parts = dict(np.load(directory / "fusion_parts.npz"))
            logits = fused_logits(parts, result.get("statistics_weight", float(parts["utterance_statistics_weight"])))
        labels = corpus.labels[fold.test]
        ua = metric.compute(predictions=logits.argmax(-1), references=labels)["ua"]
        if abs(ua - result["ua"]) > 1e-9:
            raise ValueError(f"{directory}: the rebuilt logits score UA {ua:.4f}, the run recorded {result['ua']:.4f}.")
        utterances[fold.name] = (logits, labels)
        if (directory / "segment_log_probabilities.npz").exists():
            recorded = np.load(directory / "segment_log_probabilities.npz")
            segments[fold.name] = (recorded["log_probabilities"], recorded["labels"])
        else:
            model = AutoModelForAudioClassification.from_pretrained(directory / "model").eval()
            model.config.segment_calibration_temperature = 1.0
            collator = AudioCollator(AutoFeatureExtractor.from_pretrained(directory / "model"))
            log_probabilities, counts = segment_log_probabilities(model, corpus.dataset.select(fold.test), collator)
            segments[fold.name] = (log_probabilities, np.repeat(labels, counts))
        print(f"{run} {fold.name}: {len(labels)} utterances, {len(segments[fold.name][1])} segments", flush=True)
    return utterances, segments, summary


def calibrate(run: Path) -> dict:
    from msemoboost.calibration import (calibration_report, cross_fitted_temperatures, fit_temperature, mean_report,
                                        pooled_report)

    utterances, segments, summary = fold_parts(run)
    found = {"run": str(run), "seed": summary["training"]["seed"]}
    for kind, parts in (("utterances", utterances), ("segments", segments)):
        temperatures = cross_fitted_temperatures(parts)
        # The alternative: each fold's temperature fitted on one held-out speaker, as a validation speaker gives it
        # (the next fold's test speaker, whose predictions come from a model that never heard that speaker either).
        names = list(parts)
        one_speaker = {name: fit_temperature(*parts[names[(i + 1) % len(names)]]) for i, name in enumerate(names)}
        found[kind] = {
            "temperature_all_folds": temperatures["all"],
            "nested_temperatures": temperatures["nested"],
            "pooled": pooled_report(parts, temperatures["nested"]),
            "mean_over_folds": mean_report([calibration_report(*parts[name], temperatures["nested"][name])
                                            for name in parts]),
            "one_speaker_temperatures": one_speaker,
            "pooled_one_speaker": pooled_report(parts, one_speaker),
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="train.py output folders (with --save_fold_models)")
    parser.add_argument("--output", help="JSON file for the results (default: print only)")
    args = parser.parse_args()
    results = []
    for run in args.runs:
        found = calibrate(run)
        results.append(found)
        for kind in ("utterances", "segments"):
            pooled = found[kind]["pooled"]
            print(f"{run} (seed {found['seed']}) {kind}: temperature {found[kind]['temperature_all_folds']:.2f}; ECE "
                  f"{pooled['ece_before']:.3f} -> {pooled['ece_after']:.3f}, log-loss {pooled['log_loss_before']:.3f} "
                  f"-> {pooled['log_loss_after']:.3f}, mean top probability {pooled['mean_confidence_before']:.3f} -> "
                  f"{pooled['mean_confidence_after']:.3f} at accuracy {pooled['accuracy']:.3f}; answered accuracy by "
                  "coverage " + ", ".join(f"{c}: {row['accuracy']:.3f} (p >= {row['threshold']:.2f})"
                                          for c, row in pooled["risk_coverage"].items())
                  + f"; fitted on one other speaker instead: ECE {found[kind]['pooled_one_speaker']['ece_after']:.3f}, "
                    f"log-loss {found[kind]['pooled_one_speaker']['log_loss_after']:.3f}", flush=True)
    summary = {kind: {key: float(np.mean([found[kind]["pooled"][key] for found in results]))
                      for key in ("ece_before", "ece_after", "log_loss_before", "log_loss_after", "mean_confidence_before",
                                  "mean_confidence_after", "accuracy")}
               for kind in ("utterances", "segments")}
    for kind in ("utterances", "segments"):
        for key in ("ece_after", "log_loss_after"):
            summary[kind][f"{key}_one_speaker"] = float(np.mean([found[kind]["pooled_one_speaker"][key] for found in results]))
    summary["utterances"]["risk_coverage_accuracy"] = {
        coverage: float(np.mean([found["utterances"]["pooled"]["risk_coverage"][coverage]["accuracy"] for found in results]))
        for coverage in results[0]["utterances"]["pooled"]["risk_coverage"]}
    print("mean over runs:", json.dumps(summary), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps({"runs": results, "mean_over_runs": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
