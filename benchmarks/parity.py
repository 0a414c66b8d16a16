"""fp32 parity of the exported graph on trained models: ONNX Runtime's logits against PyTorch's, on every fold model of
a train.py run, each on its own held-out speaker's utterances, batched and one at a time.

    python benchmarks/parity.py RUN_DIR [--dataset_name ../shared/data/emodb] [--batch_size 8]

RUN_DIR is a cross-validation run with its fold models kept (as for benchmarks/quantization.py). Each fold model is
exported (`msemoboost export`, fp32, opset 23), and its test utterances are classified by PyTorch
(`model(**extractor(audio))`) and by ONNX Runtime (`ONNXClassifier`), in batches of `--batch_size` utterances and one
at a time, with one thread each (so that neither engine's thread split changes its sums). The bar is the logits
within 1e-4 (absolute).

Reported per fold and pooled: the largest and mean absolute difference of the utterance logits (log-probabilities)
batched and one at a time, how many utterances have a logit more than 1e-4 away, the largest |logit| (float32's
spacing at that size is its own resolution: 7.6e-6 from 64 to 128), PyTorch batched against PyTorch one at a time
(its own consistency), and whether the predicted classes agree. Results: benchmarks/results/parity_cpu.json.
"""

import argparse
import json
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from msemoboost import MSEmoBoostConfig  # noqa: E402
from msemoboost.export import export  # noqa: E402

from deploy import load_engine  # noqa: E402
from quantization import fold_dirs, test_utterances  # noqa: E402

TOLERANCE = 1e-4


def differences(found: np.ndarray, expected: np.ndarray) -> dict:
    difference = np.abs(found - expected)
    return {"max": float(difference.max()), "mean": float(difference.mean()),
            "utterances_over_tolerance": int((difference.max(-1) > TOLERANCE).sum())}


def fold_result(fold: Path, dataset: Path, batch_size: int, work: Path) -> dict:
    model_dir = fold / "model"
    config = MSEmoBoostConfig.from_pretrained(model_dir)
    audio, _ = test_utterances(fold, dataset, [config.id2label[i] for i in range(config.num_labels)])
    export(model_dir, work)
    batches = [audio[i : i + batch_size] for i in range(0, len(audio), batch_size)]
    logits = {}
    for engine in ("torch", "onnxruntime"):
        run = load_engine(f"{engine} fp32", model_dir, work, threads=1)
        logits[f"{engine} batched"] = np.concatenate([run(batch) for batch in batches])
        logits[f"{engine} one at a time"] = np.concatenate([run([waveform]) for waveform in audio])
    return {"utterances": len(audio), "logits": logits,
            "largest_abs_logit": float(np.abs(logits["torch batched"]).max()),
            "batched": differences(logits["onnxruntime batched"], logits["torch batched"]),
            "one_at_a_time": differences(logits["onnxruntime one at a time"], logits["torch one at a time"]),
            "torch_batched_against_one_at_a_time": differences(logits["torch batched"], logits["torch one at a time"]),
            "predictions_agree": float((logits["onnxruntime batched"].argmax(-1)
                                        == logits["torch batched"].argmax(-1)).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a train.py cross-validation run with its fold models")
    parser.add_argument("--dataset_name", type=Path, default=REPO.parent / "shared" / "data" / "emodb",
                        help="the audiofolder the run was trained on (its test utterances are read from it)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "parity_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"date": str(date.today()), "machine": platform.machine(), "torch": torch.__version__,
              "onnxruntime": onnxruntime.__version__, "run_dir": str(args.run_dir), "batch_size": args.batch_size,
              "tolerance": TOLERANCE, "per_fold": {}}
    pooled = {}
    print("| fold | utterances | largest abs. logit | batched: max / mean | one at a time: max / mean | utterances over "
          "1e-4 (batched, one at a time) | torch batched vs one at a time: max |\n|---|---|---|---|---|---|---|")
    for fold in fold_dirs(args.run_dir):
        with tempfile.TemporaryDirectory(prefix="msemoboost-parity-") as work:
            result = fold_result(fold, args.dataset_name, args.batch_size, Path(work))
        for name, values in result.pop("logits").items():
            pooled.setdefault(name, []).append(values)
        report["per_fold"][fold.name] = result
        args.results.write_text(json.dumps(report, indent=2) + "\n")  # what has run so far is kept
        print(f"| {fold.name} | {result['utterances']} | {result['largest_abs_logit']:.1f} "
              f"| {result['batched']['max']:.2e} / {result['batched']['mean']:.1e} "
              f"| {result['one_at_a_time']['max']:.2e} / {result['one_at_a_time']['mean']:.1e} "
              f"| {result['batched']['utterances_over_tolerance']}, {result['one_at_a_time']['utterances_over_tolerance']} "
              f"| {result['torch_batched_against_one_at_a_time']['max']:.1e} |", flush=True)
    pooled = {name: np.concatenate(values) for name, values in pooled.items()}
    report["pooled"] = {
        "utterances": len(pooled["torch batched"]), "largest_abs_logit": float(np.abs(pooled["torch batched"]).max()),
        "batched": differences(pooled["onnxruntime batched"], pooled["torch batched"]),
        "one_at_a_time": differences(pooled["onnxruntime one at a time"], pooled["torch one at a time"]),
        "torch_batched_against_one_at_a_time": differences(pooled["torch batched"], pooled["torch one at a time"]),
        "predictions_agree": float((pooled["onnxruntime batched"].argmax(-1) == pooled["torch batched"].argmax(-1)).mean())}
    values = report["pooled"]
    print(f"| **all** | {values['utterances']} | {values['largest_abs_logit']:.1f} "
          f"| {values['batched']['max']:.2e} / {values['batched']['mean']:.1e} "
          f"| {values['one_at_a_time']['max']:.2e} / {values['one_at_a_time']['mean']:.1e} "
          f"| {values['batched']['utterances_over_tolerance']}, {values['one_at_a_time']['utterances_over_tolerance']} "
          f"| {values['torch_batched_against_one_at_a_time']['max']:.1e} |\n\nPredictions agree on "
          f"{100 * values['predictions_agree']:.1f} %. Wrote {args.results}")
    args.results.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
