"""Accuracy on real speech: the paper's ablations (Tables 3-4) on EMO-DB, leave-one-speaker-out, through train.py.

    python benchmarks/accuracy.py --profile cpu                 # 2 CPU cores, about an hour per seed
    python benchmarks/accuracy.py --profile gpu --seeds 0 1 2   # full-size wav2vec2-base on a GPU

Every row uses the same randomly initialised backbone (same seed, built first), data, folds and budget. Each row
is one train.py run in outputs/benchmarks/accuracy/<profile>/<row>/seed<seed>; a finished run is reused, so an
interrupted benchmark continues where it stopped. The table goes to benchmarks/results/accuracy_<profile>.json.
"""

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402

ROWS = {
    "backbone only (masked mean)": ["--use_mfcc", "false", "--use_spectrogram", "false"],
    "+MFCC": ["--use_spectrogram", "false"],
    "+spectrogram": ["--use_mfcc", "false"],
    "+both (MS-EmoBoost)": [],
    "MS-EmoBoost without attention": ["--use_attention", "false"],
    "guidance only (no SSL features)": ["--use_backbone_features", "false"],
}
WAV2VEC2_BASE = {"model_type": "wav2vec2", "mask_time_prob": 0.0}  # Wav2Vec2Config() defaults are wav2vec2-base
PROFILES = {
    "cpu": [str(REPO / "configs" / "emodb_cpu.yaml")],
    "gpu": [str(REPO / "configs" / "emodb.yaml"), "--backbone", "", "--backbone_config", json.dumps(WAV2VEC2_BASE),
            "--imagenet_alexnet", "false", "--freeze_feature_encoder", "false", "--learning_rate", "1e-4",
            "--num_train_epochs", "30", "--early_stopping_patience", "5", "--bf16", "true"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--dataset_name", default=str(REPO.parent / "shared" / "data" / "emodb"))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help="row names to run (default: all)")
    args = parser.parse_args()

    table = {}
    for row in args.rows:
        for seed in args.seeds:
            output = REPO / "outputs" / "benchmarks" / "accuracy" / args.profile / slug(row) / f"seed{seed}"
            results = output / "results.json"
            if not results.exists():
                started = time.perf_counter()
                train.main([*PROFILES[args.profile], *ROWS[row], "--dataset_name", args.dataset_name,
                            "--output_dir", str(output), "--seed", str(seed), "--final_model", "false",
                            "--save_fold_models", "false", "--resume_from_checkpoint", "true"])
                (output / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
            summary = json.loads(results.read_text())
            seconds = float((output / "seconds.txt").read_text()) if (output / "seconds.txt").exists() else None
            table.setdefault(row, []).append({"seed": seed, "wa": summary["wa"], "ua": summary["ua"], "seconds": seconds,
                                              "folds": summary["folds"]})
            print(f"{row} seed {seed}: WA {summary['wa']['mean']:.2%} ± {summary['wa']['std']:.2%}  "
                  f"UA {summary['ua']['mean']:.2%} ± {summary['ua']['std']:.2%}", flush=True)

    report = {"profile": args.profile, "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "command": " ".join(["python", "benchmarks/accuracy.py", *sys.argv[1:]]), "rows": {}}
    print("\n| row | WA (mean ± std over folds) | UA (mean ± std over folds) | seeds | minutes per seed |\n|---|---|---|---|---|")
    for row, runs in table.items():
        wa = np.mean([run["wa"]["mean"] for run in runs]), np.mean([run["wa"]["std"] for run in runs])
        ua = np.mean([run["ua"]["mean"] for run in runs]), np.mean([run["ua"]["std"] for run in runs])
        spread = np.std([run["ua"]["mean"] for run in runs]) if len(runs) > 1 else None
        minutes = np.mean([run["seconds"] for run in runs if run["seconds"]]) / 60 if any(r["seconds"] for r in runs) else float("nan")
        report["rows"][row] = {"runs": runs, "wa_mean": wa[0], "ua_mean": ua[0], "ua_spread_over_seeds": spread}
        print(f"| {row} | {100 * wa[0]:.1f} ± {100 * wa[1]:.1f} | {100 * ua[0]:.1f} ± {100 * ua[1]:.1f} | {len(runs)} | {minutes:.1f} |")
    destination = REPO / "benchmarks" / "results" / f"accuracy_{args.profile}.json"
    destination.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nWrote {destination}")


if __name__ == "__main__":
    main()
