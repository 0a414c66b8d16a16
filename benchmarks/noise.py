"""Noise robustness on real speech: EMO-DB leave-one-speaker-out, WA/UA clean and at 20/10/5/0 dB SNR.

    python benchmarks/noise.py --profile cpu --seeds 0 1 2   # 2 CPU cores: the accuracy benchmark's CPU budget
    python benchmarks/noise.py --profile gpu --seeds 0 1 2   # full-size wav2vec2-base on a GPU

Four rows, each adding to the one before: MS-EmoBoost; + noise augmentation; + staged unfreezing; + the joint
speech-enhancement head. Every row has the backbone, data, folds, budget and seed of the accuracy benchmark's
profile (`benchmarks/accuracy.py`), and is tested with white, pink and babble noise (babble from the fold's
training speakers) at each SNR; the table reports the mean over the three noise types and over seeds, and the JSON
each type and seed. Each row and seed is one train.py run in outputs/benchmarks/noise/<profile>/<row>/seed<seed>; a
finished run is reused. The table goes to benchmarks/results/noise_<profile>.json.
"""

import argparse
import json
import platform
import runpy
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

train_main = runpy.run_path(str(REPO / "train.py"))["main"]  # train.py, run as the script
from accuracy import PROFILES, slug  # noqa: E402

SNRS = ["20", "10", "5", "0"]
NOISY_EVALUATION = ["--eval_snr", *SNRS, "--eval_noise", "white", "pink", "babble"]
AUGMENTATION = ["--noise_augmentation_probability", "0.5", "--noise_augmentation_snr", "0", "20"]
STAGES = {  # the CPU backbone has 2 transformer blocks, wav2vec2-base 12
    "cpu": ["--unfreeze_stages", "epoch:1=top:1", "epoch:2=all", "epoch:3=feature_encoder"],
    "gpu": ["--unfreeze_stages", "epoch:2=top:4", "epoch:5=all", "epoch:10=feature_encoder"],
}


def rows(profile: str) -> dict[str, list[str]]:
    return {
        "MS-EmoBoost": [],
        "+ noise augmentation": AUGMENTATION,
        "+ staged unfreezing": AUGMENTATION + STAGES[profile],
        "+ enhancement head": AUGMENTATION + STAGES[profile] + ["--use_se_head", "true"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--dataset_name", default=str(REPO.parent / "shared" / "data" / "emodb"))
    parser.add_argument("--rows", nargs="+", default=None, help="row names to run (default: all)")
    args = parser.parse_args()

    table = {}
    for seed in args.seeds:  # one seed of every row first: a partial run still compares all rows
        for row, extra in rows(args.profile).items():
            if args.rows and row not in args.rows:
                continue
            output = REPO / "outputs" / "benchmarks" / "noise" / args.profile / slug(row) / f"seed{seed}"
            results = output / "results.json"
            if not results.exists():
                started = time.perf_counter()
                train_main([*PROFILES[args.profile], *NOISY_EVALUATION, *extra, "--dataset_name", args.dataset_name,
                            "--output_dir", str(output), "--seed", str(seed), "--final_model", "false",
                            "--save_fold_models", "false", "--resume_from_checkpoint", "true"])
                (output / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
            noise = json.loads(results.read_text())["noise"]
            seconds = float((output / "seconds.txt").read_text()) if (output / "seconds.txt").exists() else None
            table.setdefault(row, {"arguments": extra, "seeds": {}})["seeds"][seed] = {"seconds": seconds, **noise}

    report = {"profile": args.profile, "seeds": args.seeds, "date": date.today().isoformat(),
              "machine": platform.processor() or platform.machine(),
              "command": " ".join(["python", "benchmarks/noise.py", *sys.argv[1:]]), "rows": table}
    for metric in ("wa", "ua"):
        print(f"\n{metric.upper()} % (mean over 8 folds and {len(args.seeds)} seed(s); noisy columns: mean over white, "
              "pink and babble noise; ± is the standard deviation over seeds)")
        print("| row | clean | " + " | ".join(f"{snr} dB" for snr in SNRS) + " |")
        print("|---|---|" + "---|" * len(SNRS))
        for row, result in table.items():
            runs = list(result["seeds"].values())
            columns = [[run["clean"][metric]["mean"] for run in runs]]
            columns += [[run["mean_over_types"][snr][metric]["mean"] for run in runs] for snr in SNRS]
            cells = [f"{100 * np.mean(values):.1f}" + (f" ± {100 * np.std(values):.1f}" if len(values) > 1 else "")
                     for values in columns]
            print(f"| {row} | " + " | ".join(cells) + " |")
    destination = REPO / "benchmarks" / "results" / f"noise_{args.profile}.json"
    destination.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nWrote {destination}")


if __name__ == "__main__":
    main()
