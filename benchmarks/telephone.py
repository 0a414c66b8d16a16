"""EMO-DB leave-one-speaker-out on telephone audio: each fold's saved model tested on its test speakers clean and
through a narrowband telephone channel (8 kHz, 300–3,400 Hz, G.711 μ-law, back to 16 kHz:
`msemoboost.augmentation.telephone_band`).

    python benchmarks/telephone.py outputs/headline/seed0 [MORE RUNS] --output benchmarks/results/telephone.json

Each fold's model is run as `msemoboost predict` runs it, one recording at a time (its statistics classifier at the
fold's weight, its calibration). The clean column must reproduce the run's recorded UA (checked, within one
utterance's worth of float rounding in 1e-3; a speaker-normalised run's UA of each recording alone), so that the
telephone column differs from it by the channel alone.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from speaker_normalization import run_folds  # noqa: E402


def score(run: Path, batch_size: int = 8) -> dict:
    from msemoboost.augmentation import telephone_band
    from msemoboost.inference import load_classifier, predict, read_audio
    from msemoboost.reporting import mean_std
    from msemoboost.training import load_wa_ua

    corpus, folds, summary = run_folds(run)
    metric = load_wa_ua()
    per_fold = {}
    for fold in folds:
        classifier, extractor = load_classifier(str(run / "folds" / fold.name / "model"), "cpu")
        rate = extractor.sampling_rate
        clean = [read_audio(corpus.dataset[int(row)]["audio"], rate) for row in fold.test]
        conditions = {"clean": clean, "telephone": [telephone_band(waveform, rate) for waveform in clean]}
        labels = corpus.labels[fold.test]
        per_fold[fold.name] = {}
        for condition, waveforms in conditions.items():
            predicted = []
            for start in range(0, len(waveforms), batch_size):
                found = predict(classifier, extractor, waveforms[start : start + batch_size],
                                [str(i) for i in range(start, min(start + batch_size, len(waveforms)))])
                predicted += [int(p.probabilities.argmax()) for p in found]
            per_fold[fold.name][condition] = metric.compute(predictions=predicted, references=labels)
        results = json.loads((run / "folds" / fold.name / "results.json").read_text())
        recorded = results.get("ungrouped", results)["ua"]  # a speaker-normalised run's: each recording alone
        if abs(per_fold[fold.name]["clean"]["ua"] - recorded) > 1e-3:
            raise ValueError(f"{run} {fold.name}: clean UA {per_fold[fold.name]['clean']['ua']:.4f}, the run recorded "
                             f"{recorded:.4f}: the model is not run as the run tested it.")
        print(f"{run} {fold.name}: UA clean {per_fold[fold.name]['clean']['ua']:.3f}, telephone "
              f"{per_fold[fold.name]['telephone']['ua']:.3f}", flush=True)
    return {"run": str(run), "seed": summary["training"]["seed"], "per_fold": per_fold,
            **{condition: {key: mean_std([fold[condition][key] for fold in per_fold.values()]) for key in ("wa", "ua")}
               for condition in ("clean", "telephone")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="train.py output folders (with --save_fold_models)")
    parser.add_argument("--output", help="JSON file for the results (default: print only)")
    args = parser.parse_args()
    results = []
    for run in args.runs:
        found = score(run)
        results.append(found)
        print(f"{run} (seed {found['seed']}): UA clean {found['clean']['ua']['mean']:.2%}, telephone "
              f"{found['telephone']['ua']['mean']:.2%}", flush=True)
    summary = {condition: {key: float(np.mean([found[condition][key]["mean"] for found in results])) for key in ("wa", "ua")}
               for condition in ("clean", "telephone")}
    print("mean over runs:", json.dumps(summary), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps({"runs": results, "mean_over_runs": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
