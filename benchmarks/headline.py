"""The headline rows from finished train.py runs of one preset, one run per seed: UA and WA over the seeds, each seed's
folds, the network alone, the statistics classifier alone and the weight chosen for it, and, from each run's log
under GNU time, its wall time and peak memory.

    for S in 0 1 2; do
        /usr/bin/time -v python train.py configs/emodb_cpu.yaml --dataset_name ../shared/data/emodb --seed $S \\
            --output_dir outputs/headline/seed$S > outputs/headline/seed$S.log 2>&1
    done
    python benchmarks/headline.py outputs/headline/seed{0,1,2} --logs outputs/headline/seed{0,1,2}.log \\
        --commit COMMIT --host "2-core AMD EPYC" --output benchmarks/results/headline_emodb_cpu.json \\
        --confusion_matrix benchmarks/emodb_cpu_confusion_matrix.png

UA is train.py's: the mean over folds of each fold's UA (the ± its standard deviation over folds); the seeds' spread
is the standard deviation of the seeds' UA. The confusion matrix figure is the first run's (its 8 folds pooled).
"""

import argparse
import json
import shutil
import sys
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from timed_run import read_log  # noqa: E402


def percent(value: float) -> float:
    return round(100 * value, 1)


def read_run(run: Path, log: Path | None) -> dict:
    """One seed's figures from its results.json (and its log, when given)."""
    path = run / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (is the run finished?)")
    results = json.loads(path.read_text())
    seed = {
        "seed": results["training"]["seed"],
        "run": str(run),
        "ua": percent(results["ua"]["mean"]), "ua_fold_std": percent(results["ua"]["std"]),
        "wa": percent(results["wa"]["mean"]),
        "pooled": {name: percent(value) for name, value in results["pooled"].items()},
        "ua_per_fold": {fold["fold"]: percent(fold["ua"]) for fold in results["folds"]},
    }
    for part in ("network", "statistics_classifier"):
        if results.get(part):
            seed[part] = {"ua": percent(results[part]["ua"]["mean"]), "wa": percent(results[part]["wa"]["mean"])}
    if results.get("statistics_weight"):
        weight = results["statistics_weight"]
        seed["statistics_weight"] = {"final_model": weight["weight"], "per_fold": weight.get("nested")}
    if log is not None:
        seed["time"] = read_log(log.read_text())
    return seed


def summarize(seeds: list[dict]) -> dict:
    """Means over the seeds, and the seeds' spread."""
    ua = np.array([seed["ua"] for seed in seeds])
    summary = {"seeds": [seed["seed"] for seed in seeds], "ua": round(float(ua.mean()), 1),
               "ua_seed_std": round(float(ua.std()), 1),
               "ua_fold_std": round(float(np.mean([seed["ua_fold_std"] for seed in seeds])), 1),
               "wa": round(float(np.mean([seed["wa"] for seed in seeds])), 1)}
    for part in ("network", "statistics_classifier"):
        if all(part in seed for seed in seeds):
            summary[part] = {"ua": round(float(np.mean([seed[part]["ua"] for seed in seeds])), 1)}
    return summary


def markdown_row(summary: dict, seeds: list[dict]) -> str:
    per_seed = ", ".join(f"{seed['ua']:.1f}" for seed in seeds)
    return (f"| MS-EmoBoost | {summary['ua']:.1f} ± {summary['ua_fold_std']:.1f} | {summary['wa']:.1f} | "
            f"{per_seed} (± {summary['ua_seed_std']:.1f} over seeds) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="train.py output directories, one per seed")
    parser.add_argument("--logs", type=Path, nargs="*", default=None, help="their logs under /usr/bin/time -v")
    parser.add_argument("--commit", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--date", default=date.today().isoformat())
    parser.add_argument("--command", default="python train.py configs/emodb_cpu.yaml --dataset_name "
                                              "../shared/data/emodb --seed S")
    parser.add_argument("--load", default="alone", help="what else ran on the machine meanwhile")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--confusion_matrix", type=Path, help="copy the first run's confusion matrix figure here")
    args = parser.parse_args()
    if args.logs and len(args.logs) != len(args.runs):
        parser.error(f"--logs: {len(args.logs)} logs for {len(args.runs)} runs")
    logs = args.logs or [None] * len(args.runs)
    seeds = [read_run(run, log) for run, log in zip(args.runs, logs)]
    result = {"command": args.command, "commit": args.commit, "date": args.date, "host": args.host,
              "load": args.load, **summarize(seeds), "per_seed": seeds}
    text = json.dumps(result, indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
    if args.confusion_matrix:
        shutil.copyfile(args.runs[0] / "confusion_matrix.png", args.confusion_matrix)
    print(text, end="")
    print(markdown_row(result, seeds))


if __name__ == "__main__":
    main()
