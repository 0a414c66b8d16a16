"""Quantisation-aware fine-tuning for the int8 feature encoder: does it win back what `--quantize_feature_encoder` costs?

    python benchmarks/quantization_aware.py RUN_DIR [--dataset_name ../shared/data/emodb] [--epochs 3]

RUN_DIR is a finished train.py cross-validation run with its fold models (as for benchmarks/quantization.py). For
each fold:

1. the fold model is exported with every convolution in static int8 (`msemoboost export --quantize int8
   --calibration` 32 RAVDESS utterances `--quantize_feature_encoder`), and scored on the fold's test utterances;
2. a copy is fine-tuned for `--epochs` on the fold's training utterances (every utterance of the dataset that the
   fold's predictions.csv does not name) while its feature encoder computes as the int8 graph's does
   (`msemoboost.export.simulated_int8_feature_encoder`, with the ranges ONNX Runtime calibrated in step 1). The
   feature encoder stays frozen, as the CPU recipe trains it, so its ranges do not move; so does the fitted
   statistics classifier. Everything else trains: AdamW at `--learning_rate`, batches of 8 whole utterances;
3. the fine-tuned model is exported the same way (same calibration, so the feature encoder gets the same ranges) and
   scored.

Reported, pooled over the folds' test utterances and as the mean of the folds' UA (train.py's headline): torch fp32
(the fold model as trained), ONNX Runtime int8 with the feature encoder quantised before and after the fine-tuning,
and the fine-tuned model in torch fp32. Results: benchmarks/results/quantization_aware_cpu.json.

An experiment, not a command yet: the fine-tuning is a plain loop here, on the fold's training speakers.
"""

import argparse
import csv
import json
import platform
import random
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from msemoboost import MSEmoBoostConfig, MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification  # noqa: E402
from msemoboost.data import decode_audio  # noqa: E402
from msemoboost.export import (INT8_NAME, ONNXClassifier, export, int8_feature_encoder,  # noqa: E402
                               simulated_int8_feature_encoder)

from deploy import accuracy, calibration_audio  # noqa: E402
from quantization import fold_dirs, test_utterances  # noqa: E402

ROWS = ["torch fp32", "onnxruntime int8, every convolution", "onnxruntime int8, every convolution, after fine-tuning",
        "torch fp32, after fine-tuning"]


def training_utterances(fold: Path, dataset: Path, label_column: str, labels: list[str]):
    """The dataset's utterances that the fold's predictions.csv does not name, with a label the model knows."""
    with open(fold / "predictions.csv", newline="") as file:
        tested = {row["utterance_id"] for row in csv.DictReader(file)}
    with open(dataset / "metadata.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if Path(row["file_name"]).name not in tested]
    if rows and label_column not in rows[0]:
        raise ValueError(f"{dataset / 'metadata.csv'}: no column {label_column!r} (--label_column).")
    rows = [row for row in rows if row[label_column] in labels]
    audio = [decode_audio({"path": str(dataset / row["file_name"]), "bytes": None}, 16_000) for row in rows]
    return audio, [labels.index(row[label_column]) for row in rows]


def logits_of(run, audio: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([run(audio[i : i + 8]) for i in range(0, len(audio), 8)])


def torch_runner(model, extractor):
    def run(waveforms):
        model.eval()
        with torch.inference_mode():
            return model(**extractor(waveforms, sampling_rate=16_000, return_tensors="pt")).logits.numpy()
    return run


def fine_tune(model, extractor, audio, labels, epochs: int, learning_rate: float, seed: int) -> list[float]:
    """Trains `model` in place (its feature encoder and statistics classifier frozen); returns each epoch's mean loss."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = not (".feature_extractor." in name or "statistics_classifier" in name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate, weight_decay=0.0)
    order, generator, losses = list(range(len(audio))), random.Random(seed), []
    torch.manual_seed(seed)
    for _ in range(epochs):
        generator.shuffle(order)
        model.train()
        total = 0.0
        for start in range(0, len(order), 8):
            batch = order[start : start + 8]
            inputs = extractor([audio[i] for i in batch], sampling_rate=16_000, return_tensors="pt")
            loss = model(**inputs, labels=torch.tensor([labels[i] for i in batch])).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(order))
    model.eval()
    return losses


def fold_result(fold: Path, args, calibration: list[np.ndarray], work: Path) -> dict:
    model_dir = fold / "model"
    config = MSEmoBoostConfig.from_pretrained(model_dir)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    test_audio, truth = test_utterances(fold, args.dataset_name, labels)
    train_audio, train_labels = training_utterances(fold, args.dataset_name, args.label_column, labels)
    int8 = dict(quantize="int8", calibration=calibration, quantize_feature_encoder=True)
    export(model_dir, work / "before", **int8)
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir).eval()
    extractor = MSEmoBoostFeatureExtractor.from_pretrained(model_dir)
    logits = {ROWS[0]: logits_of(torch_runner(model, extractor), test_audio),
              ROWS[1]: logits_of(lambda w, s=ONNXClassifier(work / "before", int8=True): s(w)[0], test_audio)}
    started = time.perf_counter()
    with simulated_int8_feature_encoder(model, int8_feature_encoder(work / "before" / INT8_NAME, model)):
        losses = fine_tune(model, extractor, train_audio, train_labels, args.epochs, args.learning_rate, args.seed)
    seconds = time.perf_counter() - started
    model.save_pretrained(work / "fine-tuned")
    extractor.save_pretrained(work / "fine-tuned")
    export(work / "fine-tuned", work / "after", **int8)
    logits[ROWS[2]] = logits_of(lambda w, s=ONNXClassifier(work / "after", int8=True): s(w)[0], test_audio)
    logits[ROWS[3]] = logits_of(torch_runner(model, extractor), test_audio)
    return {"truth": truth, "logits": logits, "losses": losses, "fine_tuning_seconds": seconds,
            "training_utterances": len(train_audio), "num_labels": len(labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a train.py cross-validation run with its fold models")
    parser.add_argument("--dataset_name", type=Path, default=REPO.parent / "shared" / "data" / "emodb",
                        help="the audiofolder the run was trained on")
    parser.add_argument("--label_column", default="emotion", help="the label column of its metadata.csv")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "quantization_aware_cpu.json")
    args = parser.parse_args()
    folds = fold_dirs(args.run_dir)
    calibration = calibration_audio()
    report = {"date": str(date.today()), "machine": platform.machine(), "torch": torch.__version__,
              "command": " ".join(["python", "benchmarks/quantization_aware.py", *sys.argv[1:]]),
              "calibration": "32 RAVDESS utterances (every 45th)", "epochs": args.epochs,
              "learning_rate": args.learning_rate, "seed": args.seed, "per_fold": {}, "rows": {}}
    truth, logits = [], {row: [] for row in ROWS}
    for fold in folds:
        with tempfile.TemporaryDirectory(prefix="msemoboost-qat-") as work:
            result = fold_result(fold, args, calibration, Path(work))
        truth.append(result["truth"])
        for row in ROWS:
            logits[row].append(result["logits"][row])
        report["per_fold"][fold.name] = {
            **{row: accuracy(result["logits"][row].argmax(-1), result["truth"], result["num_labels"]) for row in ROWS},
            "losses": result["losses"], "fine_tuning_seconds": result["fine_tuning_seconds"],
            "training_utterances": result["training_utterances"]}
        print(fold.name, json.dumps(report["per_fold"][fold.name]), flush=True)
        args.results.write_text(json.dumps(report, indent=2) + "\n")  # what has run so far is kept
    pooled_truth = np.concatenate(truth)
    reference = np.concatenate(logits[ROWS[0]]).argmax(-1)
    print(f"\n{len(folds)} folds, {len(pooled_truth)} held-out utterances\n\n| | pooled WA % | pooled UA % | "
          "mean of the folds' UA % | agrees with torch fp32 % |\n|---|---|---|---|---|")
    for row in ROWS:
        predicted = np.concatenate(logits[row]).argmax(-1)
        report["rows"][row] = {**accuracy(predicted, pooled_truth, int(pooled_truth.max()) + 1),
                               "fold_mean_ua": float(np.mean([fold[row]["ua"] for fold in report["per_fold"].values()])),
                               "agreement_with_torch_fp32": float((predicted == reference).mean())}
        values = report["rows"][row]
        print(f"| {row} | {100 * values['wa']:.1f} | {100 * values['ua']:.1f} | {100 * values['fold_mean_ua']:.1f} | "
              f"{100 * values['agreement_with_torch_fp32']:.1f} |")
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nWrote {args.results}")


if __name__ == "__main__":
    main()
