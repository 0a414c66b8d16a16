"""Accuracy on real speech, side by side: the openSMILE anchors, the recipe, its levers, the paper's ablations
(Tables 3-4) and extra training corpora, on EMO-DB leave-one-speaker-out, through train.py.

    python benchmarks/accuracy.py --profile cpu --rows anchors recipe "backbone only"   # what BENCHMARKS.md needs first
    python benchmarks/accuracy.py --profile cpu --seeds 0 1 2 --rows recipe            # the headline row, 3 seeds
    python benchmarks/accuracy.py --profile cpu_scratch --rows "guidance only"         # rows of the from-scratch recipe
    python benchmarks/accuracy.py --profile cpu                                         # every row (many hours on 2 cores)
    python benchmarks/accuracy.py --profile gpu --seeds 0 1 2                           # full-size wav2vec2-base on a GPU

Every model row is one train.py run of the profile's config (`configs/emodb_cpu.yaml` for `cpu`, the best CPU recipe,
whose backbone is pretrained on RAVDESS + TESS on its first run; `configs/emodb_cpu_scratch.yaml` for `cpu_scratch`,
the same recipe with a randomly initialised backbone) with the row's changes, on the same data, folds and seed; the anchors (benchmarks/anchors.py) use exactly those folds. Each run goes
to outputs/benchmarks/accuracy/<profile>/<row>/seed<seed>; a finished run is reused, so an interrupted benchmark
continues where it stopped, and rows can be run in separate processes. The `cpu` profile's preset trains 2 folds at
a time, one thread each (`parallel_folds: 2`), which fills a 2-core machine: run its rows one after another there. The table goes to benchmarks/results/accuracy_<profile>.json and is printed as
Markdown.
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
sys.path.insert(0, str(REPO / "benchmarks"))

train_main = runpy.run_path(str(REPO / "train.py"))["main"]  # train.py, run as the script
from msemoboost.training import read_arguments_file  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
# Rows: changes to the profile's recipe. "model": MSEmoBoostConfig overrides merged into model_config_overrides;
# "args": train.py arguments. Levers are switched off one at a time ("−") or on ("+").
ROWS = {
    "recipe": {},
    # The paper's ablations (Tables 3-4), under the recipe.
    "backbone only": {"args": ["--use_mfcc", "false", "--use_spectrogram", "false"]},
    "+MFCC": {"args": ["--use_spectrogram", "false"]},
    "+spectrogram": {"args": ["--use_mfcc", "false"]},
    "without attention": {"args": ["--use_attention", "false"]},
    "guidance only": {"args": ["--use_backbone_features", "false"]},
    # The recipe's levers.
    "− classifier on guidance (paper classifier)": {"model": {"classifier_input": "pooled"}},
    "− mean-residual frame weights (paper: linear)": {"model": {"frame_weighting": "linear"}},
    "− standardised MFCC (L2, as the paper)": {"model": {"mfcc_normalization": "l2"}},
    "− pooled MFCC projection": {"model": {"mfcc_pool_frames": None}},
    "− class-balanced loss": {"args": ["--class_balanced_loss", "false"]},
    "− speed perturbation and time masks": {"args": ["--speed_perturbation_probability", "0", "--time_masks", "0"]},
    "− warmup and cosine decay": {"args": ["--lr_scheduler_type", "constant", "--warmup_steps", "0"]},
    "+ per-part learning rates (backbone 3e-4)": {"args": ["--backbone_learning_rate", "3e-4"]},
    "+ longer training (40 epochs)": {"args": ["--num_train_epochs", "40", "--early_stopping_patience", "10"]},
    "+ pooled batch norm": {"model": {"pooled_normalization": "batch_norm"}},
    "+ MFCC statistics": {"model": {"mfcc_statistics": True}},
    "+ MFCC and prosody statistics": {"model": {"mfcc_statistics": True, "prosody_statistics": True}},
    "+ MFCC and prosody statistics, classified": {"model": {
        "mfcc_statistics": True, "prosody_statistics": True, "classify_statistics": True}},
    "+ mixup (alpha 0.2)": {"args": ["--mixup_alpha", "0.2"]},
    "+ label smoothing 0.1": {"args": ["--label_smoothing_factor", "0.1"]},
    "+ 30 epochs": {"args": ["--num_train_epochs", "30"]},
    "+ weight averaging (cosine to 25 %, last 8 epochs averaged)": {"args": [
        "--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr_rate": 0.25}',
        "--average_last_epochs", "8"]},
    # The CPU recipe's pretrained backbone: replaced by the from-scratch recipe's random one, or frozen.
    "− pretrained backbone (random, same fine-tuning)": {"args": [
        "--backbone_config", json.dumps(read_arguments_file(REPO / "configs" / "emodb_cpu_scratch.yaml")["backbone_config"])]},
    "frozen backbone": {"args": ["--freeze_backbone", "true"]},
    "+ frozen feature encoder": {"args": ["--freeze_feature_encoder", "true"]},
    "+ classifier learning rate 3e-3 (guidance 1e-3)": {"args": ["--learning_rate", "3e-3", "--guidance_learning_rate", "1e-3"]},
    "+ classifier learning rate 3e-3 (guidance 1e-3), statistics classifier per utterance": {
        "args": ["--learning_rate", "3e-3", "--guidance_learning_rate", "1e-3"],
        "model": {"utterance_statistics_classifier": True}},
    "− distribution statistics in the statistics classifier": {"model": {"utterance_distribution_statistics": False}},
    # Extra corpora.
    "+ RAVDESS and TESS in every fold": {
        "args": ["--extra_train_datasets", str(SHARED / "ravdess"), str(SHARED / "tess")]},
    # The same within about the recipe's steps on 2 cores (10 times the data, a tenth of the epochs); "one softmax":
    # without --mask_absent_classes (on by default), which scores each corpus's utterances over its own classes only
    # (EMO-DB's boredom is in neither RAVDESS nor TESS).
    "+ RAVDESS and TESS in every fold (3 epochs, one softmax)": {
        "args": ["--extra_train_datasets", str(SHARED / "ravdess"), str(SHARED / "tess"), "--num_train_epochs", "3",
                 "--average_last_epochs", "2", "--mask_absent_classes", "false"]},
    "+ RAVDESS in every fold (6 epochs, one softmax)": {
        "args": ["--extra_train_datasets", str(SHARED / "ravdess"), "--num_train_epochs", "6", "--average_last_epochs", "3",
                 "--mask_absent_classes", "false"]},
    "+ RAVDESS in every fold, classes masked per corpus (6 epochs)": {
        "args": ["--extra_train_datasets", str(SHARED / "ravdess"), "--mask_absent_classes", "true",
                 "--num_train_epochs", "6", "--average_last_epochs", "3"]},
    "+ RAVDESS in every fold, classes masked per corpus": {
        "args": ["--extra_train_datasets", str(SHARED / "ravdess"), "--mask_absent_classes", "true"]},
    "+ transfer from RAVDESS and TESS": {"transfer": True},
}
PRETRAINED = "cross-corpus RAVDESS+TESS → EMO-DB"
# Rows evaluated on another corpus than --dataset_name: (evaluated corpus, train.py arguments).
OTHER_CORPUS_ROWS = {
    "cross-corpus EMO-DB → RAVDESS": (str(SHARED / "ravdess"), [
        "--protocol", "cross_corpus", "--extra_train_datasets", str(SHARED / "emodb")]),
}
WAV2VEC2_BASE = {"model_type": "wav2vec2", "mask_time_prob": 0.0}  # Wav2Vec2Config() defaults are wav2vec2-base
PROFILES = {
    "cpu": [str(REPO / "configs" / "emodb_cpu.yaml")],
    "cpu_scratch": [str(REPO / "configs" / "emodb_cpu_scratch.yaml")],
    "gpu": [str(REPO / "configs" / "emodb_cpu_scratch.yaml"), "--backbone_config", json.dumps(WAV2VEC2_BASE),
            "--num_train_epochs", "40", "--learning_rate", "1e-4", "--bf16", "true"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def run_train(profile: str, arguments: list[str], output: Path, seed: int, dataset_name: str) -> dict:
    """One train.py run (reused when finished): its results.json, with the seconds it took."""
    results = output / "results.json"
    if not results.exists():
        started = time.perf_counter()
        train_main([*PROFILES[profile], *arguments, "--dataset_name", dataset_name, "--output_dir", str(output),
                    "--seed", str(seed), "--final_model", "false", "--resume_from_checkpoint", "true",
                    *(["--save_fold_models", "false"] if "cross_corpus" not in arguments else [])])
        (output / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    summary = json.loads(results.read_text())
    seconds = output / "seconds.txt"
    summary["seconds"] = float(seconds.read_text()) if seconds.exists() else None
    return summary


def row_arguments(profile: str, row: str, seed: int, dataset_name: str) -> list[str]:
    change = ROWS[row]
    arguments = list(change.get("args", []))
    if "model" in change:
        recipe = read_arguments_file(PROFILES[profile][0])
        overrides = {**recipe.get("model_config_overrides", {}), **change["model"]}
        arguments += ["--model_config_overrides", json.dumps({k: v for k, v in overrides.items() if v is not None})]
    if change.get("transfer"):
        source = output_root(profile) / slug(PRETRAINED) / f"seed{seed}"
        run_train(profile, cross_corpus_arguments(), source, seed, dataset_name)  # trained once, reused per seed
        arguments += ["--model_name_or_path", str(source / "model")]
    return arguments


def cross_corpus_arguments() -> list[str]:
    return ["--protocol", "cross_corpus", "--extra_train_datasets", str(SHARED / "ravdess"), str(SHARED / "tess"),
            "--num_train_epochs", "8", "--early_stopping_patience", "3"]


def output_root(profile: str) -> Path:
    return REPO / "outputs" / "benchmarks" / "accuracy" / profile


def summarize_runs(runs: list[dict]) -> dict:
    """Mean over seeds of the fold mean and fold std, and the spread of the fold means over seeds."""
    ua_means = [run["ua"]["mean"] for run in runs]
    return {
        "wa_mean": float(np.mean([run["wa"]["mean"] for run in runs])),
        "wa_fold_std": float(np.mean([run["wa"]["std"] for run in runs])),
        "ua_mean": float(np.mean(ua_means)),
        "ua_fold_std": float(np.mean([run["ua"]["std"] for run in runs])),
        "ua_seed_std": float(np.std(ua_means)) if len(runs) > 1 else None,
        "seeds": [run["seed"] for run in runs],
        "minutes_per_seed": float(np.mean([run["seconds"] for run in runs if run["seconds"]]) / 60)
        if any(run["seconds"] for run in runs) else None,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--dataset_name", default=str(SHARED / "emodb"))
    parser.add_argument("--rows", nargs="+", default=["anchors", *ROWS, PRETRAINED, *OTHER_CORPUS_ROWS],
                        help=f"rows to run: 'anchors', {[*ROWS, PRETRAINED, *OTHER_CORPUS_ROWS]} (default: all)".replace("%", "%%"))
    args = parser.parse_args()
    unknown = set(args.rows) - {"anchors", PRETRAINED, *ROWS, *OTHER_CORPUS_ROWS}
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}")

    destination = REPO / "benchmarks" / "results" / f"accuracy_{args.profile}.json"
    report = {"anchors": {}, "rows": {}}
    if "anchors" in args.rows:
        from anchors import run_anchors

        argv = ["--dataset_name", args.dataset_name, "--label_column", "emotion", "--speaker_column", "speaker",
                "--output_dir", "/tmp/unused"]
        # The folds' test sets do not depend on the seed; the validation speakers that choose C do: the first seed's.
        for name, result in run_anchors([*argv, "--seed", str(args.seeds[0])]).items():
            report["anchors"][name] = {"wa": result["wa"], "ua": result["ua"], "folds": result["folds"],
                                       "seed": args.seeds[0]}
    for row in [row for row in args.rows if row != "anchors"]:
        runs = []
        for seed in args.seeds:
            dataset_name = args.dataset_name
            if row == PRETRAINED:
                arguments = cross_corpus_arguments()
            elif row in OTHER_CORPUS_ROWS:
                dataset_name, arguments = OTHER_CORPUS_ROWS[row]
            else:
                arguments = row_arguments(args.profile, row, seed, args.dataset_name)
            summary = run_train(args.profile, arguments, output_root(args.profile) / slug(row) / f"seed{seed}", seed,
                                dataset_name)
            runs.append({"seed": seed, "wa": summary["wa"], "ua": summary["ua"], "seconds": summary["seconds"],
                         "folds": summary["folds"], "confusion_matrix": summary["confusion_matrix"],
                         "label_names": summary["label_names"], "arguments": arguments})
            print(f"{row} seed {seed}: WA {summary['wa']['mean']:.2%} ± {summary['wa']['std']:.2%}  "
                  f"UA {summary['ua']['mean']:.2%} ± {summary['ua']['std']:.2%}", flush=True)
        report["rows"][row] = summarize_runs(runs)
    # Merge into the table on disk, read only now: rows run by other invocations meanwhile are kept.
    merged = json.loads(destination.read_text()) if destination.exists() else {}
    for part in ("anchors", "rows"):
        merged[part] = {**merged.get(part, {}), **report[part]}
    merged.update({"profile": args.profile, "date": date.today().isoformat(), "dataset": args.dataset_name,
                   "machine": platform.processor() or platform.machine(), "protocol": "loso"})
    merged.setdefault("commands", [])
    merged["commands"].append(" ".join(["python", "benchmarks/accuracy.py", *sys.argv[1:]]))
    report = merged
    destination.write_text(json.dumps(report, indent=2) + "\n")

    print("\n| row | WA % (fold std) | UA % (fold std) | UA spread over seeds | seeds | minutes per seed |\n|---|---|---|---|---|---|")
    for name, anchor in report["anchors"].items():
        print(f"| {name} | {100 * anchor['wa']['mean']:.1f} ± {100 * anchor['wa']['std']:.1f} | "
              f"{100 * anchor['ua']['mean']:.1f} ± {100 * anchor['ua']['std']:.1f} | | | |")
    for name, row in report["rows"].items():
        spread = f"{100 * row['ua_seed_std']:.1f}" if row["ua_seed_std"] is not None else ""
        minutes = f"{row['minutes_per_seed']:.0f}" if row["minutes_per_seed"] else ""
        print(f"| {name} | {100 * row['wa_mean']:.1f} ± {100 * row['wa_fold_std']:.1f} | "
              f"{100 * row['ua_mean']:.1f} ± {100 * row['ua_fold_std']:.1f} | {spread} | {len(row['seeds'])} | {minutes} |")
    print(f"\nWrote {destination}")


if __name__ == "__main__":
    main()
