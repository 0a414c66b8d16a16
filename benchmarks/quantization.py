"""What int8 costs in accuracy: every fold model of a train.py run, each on its own held-out test speaker(s), pooled.

    python benchmarks/quantization.py RUN_DIR [--dataset_name ../shared/data/emodb]

RUN_DIR is a finished (or partly finished) cross-validation run with its fold models kept (`--save_fold_models`,
the default): `RUN_DIR/folds/<fold>/model` and that fold's `predictions.csv`, which names its test utterances. For
each fold, the model is exported once (`msemoboost export --quantize int8`, opset 23) and these engines classify the
fold's test utterances:

- torch fp32, the reference;
- ONNX Runtime fp32;
- ONNX Runtime int8: dynamic quantisation of MatMul, Gemm and LSTM (`--quantize int8`);
- ONNX Runtime int8, static conv: `--calibration` with 32 RAVDESS utterances, as `msemoboost export` writes it (the
  backbone's feature encoder stays float);
- ONNX Runtime int8, static conv with the feature encoder quantised too (`--quantize_feature_encoder`, the fastest
  graph; the default export before 2026-11-24).

Reported, pooled over the folds' test utterances: WA, UA (and the mean of the folds' UA), agreement of the predicted
class with torch fp32, and the mean and largest absolute difference of the utterance logits (log-probabilities) from
torch fp32. Results: benchmarks/results/quantization_cpu.json.
"""

import argparse
import csv
import json
import platform
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from msemoboost import MSEmoBoostConfig, MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification  # noqa: E402
from msemoboost.data import decode_audio  # noqa: E402
from msemoboost.export import DEFAULT_OPSET, INT8_SOURCE, quantize_int8, write_graph  # noqa: E402
from msemoboost.onnx_runtime import INT8_NAME, ONNX_NAME, ONNXClassifier  # noqa: E402

from deploy import accuracy, calibration_audio, load_engine  # noqa: E402

ENGINES = ["torch fp32", "onnxruntime fp32", "onnxruntime int8", "onnxruntime int8, static conv",
           "onnxruntime int8, static conv, feature encoder quantised too"]


def test_utterances(fold: Path, dataset: Path, labels: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """The fold's test utterances (named in its predictions.csv, found in the audiofolder's metadata.csv) and their
    label indices in the model's label order."""
    with open(fold / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows or not {"utterance_id", "label"} <= set(rows[0]):
        raise ValueError(f"{fold / 'predictions.csv'}: expected the columns utterance_id and label, as train.py writes them.")
    with open(dataset / "metadata.csv", newline="") as file:
        files = {Path(row["file_name"]).name: row["file_name"] for row in csv.DictReader(file)}
    missing = [row["utterance_id"] for row in rows if row["utterance_id"] not in files]
    if missing:
        raise ValueError(f"{fold / 'predictions.csv'}: {len(missing)} utterance(s) not in {dataset / 'metadata.csv'}, "
                         f"e.g. {missing[0]}: pass the dataset the run was trained on (--dataset_name).")
    audio = [decode_audio({"path": str(dataset / files[row["utterance_id"]]), "bytes": None}, 16_000) for row in rows]
    return audio, np.array([labels.index(row["label"]) for row in rows])


def fold_logits(model_dir: Path, audio: list[np.ndarray], work: Path, calibration: list[np.ndarray]) -> dict:
    """Utterance logits `(num_utterances, num_labels)` of every engine for one fold's model. The model is exported
    once (`write_graph`, as `msemoboost export` writes it), and the three int8 graphs are quantised from the same
    int8 source graph as `msemoboost export --quantize int8` quantises."""
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    write_graph(model, MSEmoBoostFeatureExtractor.from_pretrained(model_dir), work / "fp32" / ONNX_NAME, DEFAULT_OPSET,
                int8_source=work / INT8_SOURCE)
    segment_samples = model.config.segment_samples
    for folder, calibrated, static_feature_encoder in (("fp32", None, False), ("dynamic", None, False),
                                                       ("static", calibration, False), ("static-all", calibration, True)):
        (work / folder).mkdir(exist_ok=True)
        for name in ("config.json", "preprocessor_config.json"):
            shutil.copyfile(model_dir / name, work / folder / name)
        if folder != "fp32":
            quantize_int8(work / INT8_SOURCE, work / folder / INT8_NAME, calibrated, segment_samples,
                          static_feature_encoder=static_feature_encoder)
    runners = {"torch fp32": load_engine("torch fp32", model_dir, work, threads=torch.get_num_threads())}
    for name, folder, int8 in [("onnxruntime fp32", "fp32", False), ("onnxruntime int8", "dynamic", True),
                               (ENGINES[3], "static", True), (ENGINES[4], "static-all", True)]:
        session = ONNXClassifier(work / folder, int8=int8)
        runners[name] = lambda waveforms, session=session: session(waveforms)[0]
    return {name: np.concatenate([run(audio[i : i + 8]) for i in range(0, len(audio), 8)])
            for name, run in runners.items()}


def fold_dirs(run_dir: Path) -> list[Path]:
    """The folds of a train.py run that kept their model and predictions.csv; exits with a message when none did."""
    folds = sorted(path.parent.parent for path in run_dir.glob("folds/*/model/model.safetensors"))
    folds = [fold for fold in folds if (fold / "predictions.csv").is_file()]
    if not folds:
        sys.exit(f"{run_dir}: no fold with a saved model and predictions.csv (train.py --save_fold_models true).")
    return folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a train.py cross-validation run with its fold models")
    parser.add_argument("--dataset_name", type=Path, default=REPO.parent / "shared" / "data" / "emodb",
                        help="the audiofolder the run was trained on (its test utterances are read from it)")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "quantization_cpu.json")
    args = parser.parse_args()
    folds = fold_dirs(args.run_dir)
    calibration = calibration_audio()
    truth, logits, per_fold = [], {name: [] for name in ENGINES}, {}
    for fold in folds:
        config = MSEmoBoostConfig.from_pretrained(fold / "model")
        labels = [config.id2label[i] for i in range(config.num_labels)]
        audio, fold_truth = test_utterances(fold, args.dataset_name, labels)
        with tempfile.TemporaryDirectory(prefix="msemoboost-quantization-") as work:
            fold_result = fold_logits(fold / "model", audio, Path(work), calibration)
        truth.append(fold_truth)
        for name in ENGINES:
            logits[name].append(fold_result[name])
        per_fold[fold.name] = {name: accuracy(fold_result[name].argmax(-1), fold_truth, len(labels)) for name in ENGINES}
        print(fold.name, json.dumps(per_fold[fold.name]), flush=True)
    truth = np.concatenate(truth)
    reference = np.concatenate(logits["torch fp32"])
    report = {"date": str(date.today()), "machine": platform.machine(), "torch": torch.__version__,
              "run_dir": str(args.run_dir), "folds": [fold.name for fold in folds], "utterances": len(truth),
              "calibration": "32 RAVDESS utterances (every 45th)", "engines": {}, "per_fold": per_fold}
    print(f"\n{len(folds)} folds, {len(truth)} held-out utterances\n\n| engine | WA % | UA % | mean of the folds' UA % "
          "| agrees with torch fp32 % | mean abs. logit difference | largest |\n|---|---|---|---|---|---|---|")
    for name in ENGINES:
        pooled = np.concatenate(logits[name])
        difference = np.abs(pooled - reference)
        row = {**accuracy(pooled.argmax(-1), truth, int(truth.max()) + 1),
               "fold_mean_ua": float(np.mean([fold[name]["ua"] for fold in per_fold.values()])),
               "agreement_with_torch_fp32": float((pooled.argmax(-1) == reference.argmax(-1)).mean()),
               "mean_abs_logit_difference": float(difference.mean()), "max_abs_logit_difference": float(difference.max())}
        report["engines"][name] = row
        print(f"| {name} | {100 * row['wa']:.1f} | {100 * row['ua']:.1f} | {100 * row['fold_mean_ua']:.1f} "
              f"| {100 * row['agreement_with_torch_fp32']:.1f} "
              f"| {row['mean_abs_logit_difference']:.3f} | {row['max_abs_logit_difference']:.2f} |")
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nWrote {args.results}")


if __name__ == "__main__":
    main()
