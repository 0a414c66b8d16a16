"""EMS benchmark: does self-supervised pretraining of the backbone, and intensity-guided masking, help SER?

    python benchmarks/pretraining.py --profile cpu                  # everything the CPU profile needs
    python benchmarks/pretraining.py --profile cpu --rows probe     # only the frozen-backbone probes
    python benchmarks/pretraining.py --profile gpu                  # wav2vec2-base size, longer (needs a GPU)

Data (cross-lingual, no evaluated audio in pretraining): the intensity model learns on RAVDESS (+ TESS for emotional >
neutral) with 4 RAVDESS actors held out (the last 4 in sorted string order: 6, 7, 8, 9); pretraining sees RAVDESS + TESS only (English, 3.1 h); everything is evaluated
on EMO-DB (German), 8-speaker leave-one-speaker-out, with train.py's folds. EMO-DB audio is never pretrained on.

Backbones, same architecture (the profile's), same data, steps and seed:
  (a) random: randomly initialised, not pretrained;
  (b) random masking: `msemoboost pretrain --masking random`;
  (c) EMS masking: `msemoboost pretrain --masking ems --intensity_model …`.

Rows:
  probe: SUPERB-style. The backbone frozen; each layer's output mean-pooled over the utterance's frames; a learned
         softmax-weighted sum of the layers and a linear head, trained per fold (Adam, full batch), the epoch chosen
         on the fold's validation speaker. Seeds change the probe's initialisation (and (a)'s backbone).
  msemoboost: train.py with the profile's recipe and `--backbone` (about 40 minutes per seed on 2 CPU cores).

Pretraining outputs go to outputs/benchmarks/pretraining/<profile>/ and are reused; results to
benchmarks/results/pretraining_<profile>.json and loss curves to benchmarks/pretraining_loss_<profile>.png.
"""

import argparse
import json
import platform
import shlex
import subprocess
import runpy
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

from msemoboost.data import decode_audio  # noqa: E402
from msemoboost.protocols import make_folds  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
PROFILES = {
    "cpu": {"config": REPO / "configs" / "pretrain_cpu.yaml", "recipe": REPO / "configs" / "emodb_cpu_scratch.yaml",
            "max_steps": 3000, "intensity_steps": 300},
    "gpu": {"config": REPO / "configs" / "pretrain_cpu.yaml", "recipe": REPO / "configs" / "emodb_cpu_scratch.yaml",
            "max_steps": 20000, "intensity_steps": 1000,
            "extra": ["--backbone_config", json.dumps({"model_type": "wav2vec2", "mask_time_prob": 0.0}),
                      "--learning_rate", "5e-4", "--bf16", "true", "--per_device_train_batch_size", "32"]},
}
PRETRAIN_DATA = [str(SHARED / "ravdess"), str(SHARED / "tess")]


def run(command: list[str], log: Path) -> None:
    print("$", " ".join(command), flush=True)
    with open(log, "w") as file:
        subprocess.run(command, stdout=file, stderr=subprocess.STDOUT, check=True, cwd=REPO)


def intensity_model(root: Path, profile: dict) -> Path:
    output = root / "intensity"
    if not (output / "intensity_results.json").exists():
        run([sys.executable, "-m", "msemoboost", "intensity", "train", "--dataset_name", *PRETRAIN_DATA,
             "--output_dir", str(output), "--max_steps", str(profile["intensity_steps"]), "--batch_size", "16"],
            root / "intensity.log")
    return output


def pretrained(root: Path, profile: dict, masking: str, max_steps: int) -> Path:
    output = root / f"{masking}_masking"
    if not (output / "pretraining_args.json").exists():
        command = [sys.executable, "-m", "msemoboost", "pretrain", str(profile["config"]), "--dataset_name",
                   *PRETRAIN_DATA, "--output_dir", str(output), "--masking", masking, "--max_steps", str(max_steps),
                   "--resume_from_checkpoint", "true", "--disable_tqdm", "true", *profile.get("extra", [])]
        if masking == "ems":
            command += ["--intensity_model", str(intensity_model(root, profile))]
        started = time.perf_counter()
        run(command, root / f"{masking}_masking.log")
        (output / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return output


def emodb() -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[str]]:
    import csv

    with open(SHARED / "emodb" / "metadata.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    names = sorted({row["emotion"] for row in rows})
    audio = [decode_audio({"path": str(SHARED / "emodb" / row["file_name"]), "bytes": None}, 16_000) for row in rows]
    return audio, np.array([names.index(row["emotion"]) for row in rows]), np.array([row["speaker"] for row in rows]), names


@torch.no_grad()
def layer_features(backbone, audio: list[np.ndarray]) -> torch.Tensor:
    """Each layer's output (the CNN projection's and every transformer layer's), mean-pooled over the frames:
    `(num_utterances, num_layers + 1, hidden_size)`."""
    backbone.eval()
    pooled = []
    for waveform in audio:
        waveform = (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
        states = backbone(torch.from_numpy(waveform)[None], output_hidden_states=True).hidden_states
        pooled.append(torch.stack([state[0].mean(0) for state in states]))
    return torch.stack(pooled)


def probe_fold(features, labels, fold, num_labels: int, seed: int, epochs: int = 300) -> dict:
    """A softmax-weighted sum of the layers and a linear head, trained on the fold's training rows; the epoch with
    the best validation UA is kept and scored on the test rows."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    torch.manual_seed(seed)
    train, validation, test = (torch.as_tensor(part) for part in (fold.train, fold.validation, fold.test))
    mean, std = features[train].mean(0), features[train].std(0) + 1e-5  # standardised with training statistics
    x = (features - mean) / std
    y = torch.as_tensor(labels)
    layer_weights = torch.zeros(features.shape[1], requires_grad=True)
    head = torch.nn.Linear(features.shape[2], num_labels)
    optimizer = torch.optim.Adam([layer_weights, *head.parameters()], lr=1e-2, weight_decay=1e-3)

    def logits(rows):
        return head((layer_weights.softmax(0)[None, :, None] * x[rows]).sum(1))

    best = (-1.0, None)
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(logits(train), y[train]).backward()
        optimizer.step()
        with torch.no_grad():
            ua = balanced_accuracy_score(y[validation], logits(validation).argmax(-1))
            if ua > best[0]:
                best = (ua, logits(test).argmax(-1).numpy())
    predicted = best[1]
    return {"wa": float(accuracy_score(y[test], predicted)), "ua": float(balanced_accuracy_score(y[test], predicted)),
            "layer_weights": layer_weights.softmax(0).tolist()}


def backbone_for(name: str, directory: Path | None, recipe: Path, seed: int):
    from transformers import AutoConfig, AutoModel

    if directory is not None:
        return AutoModel.from_pretrained(directory)
    config = yaml.safe_load(recipe.read_text())["backbone_config"]
    torch.manual_seed(seed)
    model_type = config.pop("model_type")
    return AutoModel.from_config(AutoConfig.for_model(model_type, **config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=["probe", "msemoboost"], default=["probe"])
    parser.add_argument("--max_steps", type=int, default=None, help="pretraining steps (default: the profile's)")
    parser.add_argument("--probe_backbone", nargs=2, action="append", metavar=("LABEL", "DIR"),
                        help="probe this backbone (a pretraining output, e.g. an ablation's) instead of (a)-(c), as "
                             "row 'probe (LABEL)'; repeatable")
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    root = REPO / "outputs" / "benchmarks" / "pretraining" / args.profile
    root.mkdir(parents=True, exist_ok=True)
    steps = args.max_steps or profile["max_steps"]
    directories = {"(a) random": None, "(b) random masking": pretrained(root, profile, "random", steps),
                   "(c) EMS masking": pretrained(root, profile, "ems", steps)}
    report = {"profile": args.profile, "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "pretraining_steps": steps, "seeds": args.seeds, "rows": {},
              "commands": [shlex.join(["python", "benchmarks/pretraining.py", *sys.argv[1:]])]}
    intensity = json.loads((intensity_model(root, profile) / "intensity_results.json").read_text())
    report["intensity_ranking_accuracy"] = intensity["ranking_accuracy"]
    report["pretraining"] = {}
    probed = {f"({label})": Path(folder) for label, folder in args.probe_backbone} if args.probe_backbone else directories
    for name, directory in {**directories, **probed}.items():
        if directory is not None:
            details = json.loads((directory / "pretraining_args.json").read_text())
            seconds = directory / "seconds.txt"
            report["pretraining"][name] = {
                "loss_history": [(entry["step"], entry["loss"]) for entry in details["loss_history"]],
                "minutes": (float(seconds.read_text()) if seconds.exists() else details.get("train_runtime_seconds") or 0) / 60,
                "utterances": details["utterances"], "target": details.get("target", "log_mel")}

    audio, labels, speakers, names = emodb()
    folds = make_folds("loso", labels, speakers, np.array(["train"] * len(labels)), seed=0)
    if "probe" in args.rows:
        for name, directory in probed.items():
            runs, features = [], None
            for seed in args.seeds:
                if features is None or directory is None:  # a pretrained backbone's features do not depend on the seed
                    features = layer_features(backbone_for(name, directory, profile["recipe"], seed), audio)
                results = [probe_fold(features, labels, fold, len(names), seed) for fold in folds]
                uas = [result["ua"] for result in results]
                runs.append({"seed": seed, "ua": float(np.mean(uas)), "ua_fold_std": float(np.std(uas)),
                             "wa": float(np.mean([result["wa"] for result in results])), "folds": results})
                print(f"probe {name} seed {seed}: UA {np.mean(uas):.1%} ± {np.std(uas):.1%}", flush=True)
            report["rows"][f"probe {name}"] = {
                "ua_mean": float(np.mean([r["ua"] for r in runs])), "ua_seed_std": float(np.std([r["ua"] for r in runs])),
                "ua_fold_std": float(np.mean([r["ua_fold_std"] for r in runs])),
                "wa_mean": float(np.mean([r["wa"] for r in runs])), "runs": runs}
    if "msemoboost" in args.rows:
        train_main = runpy.run_path(str(REPO / "train.py"))["main"]  # train.py, run as the script

        for name, directory in directories.items():
            runs = []
            for seed in args.seeds:
                output = root / "msemoboost" / name.split()[0].strip("()") / f"seed{seed}"
                if not (output / "results.json").exists():
                    train_main([str(profile["recipe"]), "--dataset_name", str(SHARED / "emodb"), "--output_dir",
                                str(output), "--seed", str(seed), "--final_model", "false", "--save_fold_models", "false",
                                *(["--backbone", str(directory)] if directory else [])])
                result = json.loads((output / "results.json").read_text())
                runs.append({"seed": seed, "ua": result["ua"]["mean"], "ua_fold_std": result["ua"]["std"],
                             "wa": result["wa"]["mean"]})
            report["rows"][f"MS-EmoBoost {name}"] = {
                "ua_mean": float(np.mean([r["ua"] for r in runs])), "ua_seed_std": float(np.std([r["ua"] for r in runs])),
                "ua_fold_std": float(np.mean([r["ua_fold_std"] for r in runs])),
                "wa_mean": float(np.mean([r["wa"] for r in runs])), "runs": runs}

    destination = REPO / "benchmarks" / "results" / f"pretraining_{args.profile}.json"
    if destination.exists():
        previous = json.loads(destination.read_text())
        report["rows"] = {**previous.get("rows", {}), **report["rows"]}  # each row keeps its own seeds
        report["pretraining"] = {**previous.get("pretraining", {}), **report["pretraining"]}
        report["seeds"] = sorted({*previous.get("seeds", []), *report["seeds"]})
        earlier = previous.get("commands", [previous["command"]] if "command" in previous else [])
        report["commands"] = [*earlier, *[c for c in report["commands"] if c not in earlier]]
    destination.write_text(json.dumps(report, indent=2) + "\n")
    plot_losses(report["pretraining"], REPO / "benchmarks" / f"pretraining_loss_{args.profile}.png")
    print("\n| row | UA % (mean over seeds) | fold std | seed std | WA % |\n|---|---|---|---|---|")
    for name, row in report["rows"].items():
        print(f"| {name} | {100 * row['ua_mean']:.1f} | {100 * row.get('ua_fold_std', 0):.1f} | "
              f"{100 * row.get('ua_seed_std', 0):.1f} | {100 * row.get('wa_mean', 0):.1f} |")
    print(f"\nintensity ranking accuracy: {json.dumps(report['intensity_ranking_accuracy'])}\nWrote {destination}")


def plot_losses(pretraining: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"log_mel": "training loss (log-mel L1; EMS + intensity L1)",
              "clusters": "training loss (cluster cross-entropy; EMS + intensity L1)"}
    targets = [target for target in labels if any(d.get("target", "log_mel") == target for d in pretraining.values())]
    figure, axes = plt.subplots(1, len(targets), figsize=(7 * len(targets), 4), dpi=100, squeeze=False)
    for axis, target in zip(axes[0], targets):  # the two targets' losses are on different scales
        for name, details in pretraining.items():
            if details.get("target", "log_mel") == target:
                steps, losses = zip(*details["loss_history"])
                axis.plot(steps, losses, label=name)
        axis.set(xlabel="step", ylabel=labels[target], title="Pretraining on RAVDESS + TESS")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
