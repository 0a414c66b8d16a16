"""Quantisation-aware fine-tuning for the int8 feature encoder: does `msemoboost export --quantize_feature_encoder
--finetune` win back what the int8 feature encoder costs?

    python benchmarks/quantization_aware.py RUN_DIR [--dataset_name ../shared/data/emodb] [--epochs 3]

RUN_DIR is a finished train.py cross-validation run with its fold models (as for benchmarks/quantization.py). For
each fold:

1. the fold model is exported with every convolution in static int8 (`msemoboost export --quantize int8
   --calibration` 32 RAVDESS utterances `--quantize_feature_encoder`), and scored on the fold's test utterances;
2. it is exported again the same way with quantisation-aware fine-tuning (`--finetune`, here
   `export(..., fine_tuning=QuantizationAwareFineTuning(...))`) on the fold's training utterances: every utterance
   of the dataset that the fold's predictions.csv does not name. The package's defaults: `--epochs` of AdamW at a
   constant `--learning_rate`, batches of 8 whole utterances, the feature encoder and the fitted statistics
   classifier frozen (see `msemoboost.quantization_aware`);
3. that export is scored in ONNX Runtime int8 and, as the fine-tuned PyTorch model it also is, in torch fp32.

Reported, pooled over the folds' test utterances and as the mean of the folds' UA (train.py's headline): torch fp32
(the fold model as trained), ONNX Runtime int8 with the feature encoder quantised before and after the fine-tuning,
and the fine-tuned model in torch fp32. Results: benchmarks/results/quantization_aware_cpu.json.
"""

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from msemoboost import MSEmoBoostConfig  # noqa: E402
from msemoboost.data import EmotionCorpus, load_corpus  # noqa: E402
from msemoboost.export import export  # noqa: E402
from msemoboost.quantization_aware import QuantizationAwareFineTuning  # noqa: E402

from deploy import accuracy, calibration_audio, load_engine  # noqa: E402
from quantization import fold_dirs, test_utterances  # noqa: E402

ROWS = ["torch fp32", "onnxruntime int8, every convolution", "onnxruntime int8, every convolution, after fine-tuning",
        "torch fp32, after fine-tuning"]


def training_corpus(fold: Path, corpus: EmotionCorpus) -> EmotionCorpus:
    """The utterances of `corpus` that the fold's predictions.csv does not name: the fold's training speakers."""
    with open(fold / "predictions.csv", newline="") as file:
        tested = {row["utterance_id"] for row in csv.DictReader(file)}
    keep = [i for i, utterance in enumerate(corpus.dataset["utterance_id"]) if utterance not in tested]
    return EmotionCorpus(dataset=corpus.dataset.select(keep), label_names=corpus.label_names,
                         sampling_rate=corpus.sampling_rate)


def logits_of(run, audio: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([run(audio[i : i + 8]) for i in range(0, len(audio), 8)])


def fold_result(fold: Path, args, corpus: EmotionCorpus, calibration: list[np.ndarray], work: Path) -> dict:
    model_dir = fold / "model"
    config = MSEmoBoostConfig.from_pretrained(model_dir)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    test_audio, truth = test_utterances(fold, args.dataset_name, labels)
    int8 = dict(quantize="int8", calibration=calibration, quantize_feature_encoder=True)
    export(model_dir, work / "before", **int8)
    threads = torch.get_num_threads()
    logits = {ROWS[0]: logits_of(load_engine("torch fp32", model_dir, work, threads), test_audio),
              ROWS[1]: logits_of(load_engine("onnxruntime int8", model_dir, work / "before", threads), test_audio)}
    fine_tuning = QuantizationAwareFineTuning(training_corpus(fold, corpus), epochs=args.epochs,
                                              learning_rate=args.learning_rate, seed=args.seed)
    started = time.perf_counter()
    export(model_dir, work / "after", **int8, fine_tuning=fine_tuning)
    seconds = time.perf_counter() - started
    report = json.loads((work / "after" / "export.json").read_text())["quantization_aware_fine_tuning"]
    logits[ROWS[2]] = logits_of(load_engine("onnxruntime int8", work / "after", work / "after", threads), test_audio)
    logits[ROWS[3]] = logits_of(load_engine("torch fp32", work / "after", work / "after", threads), test_audio)  # fine-tuned
    return {"truth": truth, "logits": logits, "losses": report["epoch_losses"], "export_seconds": seconds,
            "training_utterances": report["utterances"], "num_labels": len(labels)}


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
    config = MSEmoBoostConfig.from_pretrained(folds[0] / "model")
    corpus = load_corpus(str(args.dataset_name), config.sampling_rate, config.min_input_samples,
                         label_column=args.label_column, speaker_column=None)
    report = {"date": str(date.today()), "machine": platform.machine(), "torch": torch.__version__,
              "command": " ".join(["python", "benchmarks/quantization_aware.py", *sys.argv[1:]]),
              "calibration": "32 RAVDESS utterances (every 45th)", "epochs": args.epochs,
              "learning_rate": args.learning_rate, "seed": args.seed, "per_fold": {}, "rows": {}}
    truth, logits = [], {row: [] for row in ROWS}
    for fold in folds:
        with tempfile.TemporaryDirectory(prefix="msemoboost-qat-") as work:
            result = fold_result(fold, args, corpus, calibration, Path(work))
        truth.append(result["truth"])
        for row in ROWS:
            logits[row].append(result["logits"][row])
        report["per_fold"][fold.name] = {
            **{row: accuracy(result["logits"][row].argmax(-1), result["truth"], result["num_labels"]) for row in ROWS},
            "losses": result["losses"], "export_seconds": result["export_seconds"],
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
