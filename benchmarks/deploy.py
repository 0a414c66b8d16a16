"""Deployment on CPU: torch fp32, torch int8, ONNX Runtime fp32 and ONNX Runtime int8, side by side in one run.

    python benchmarks/deploy.py                       # the trained CPU-recipe model, then the paper-size model
    python benchmarks/deploy.py --sizes recipe        # only the trained model
    python benchmarks/deploy.py --model DIR --eval_speakers 03 --eval_dataset ../shared/data/emodb
    python benchmarks/deploy.py --profile             # per-part milliseconds, torch and ONNX Runtime, paper size

For each engine: latency of one 3 s segment (batch 1), throughput on a batch of 8 × 3 s, time and peak memory of one
10-minute recording (each engine in a fresh process), size on disk, and, for a trained model, WA/UA on held-out
speech and agreement with torch fp32's predictions.

- torch int8 is `torch.ao.quantization.quantize_dynamic` of every `nn.Linear` and `nn.LSTM`;
- ONNX Runtime int8 is `msemoboost export --quantize int8` (dynamic quantisation of MatMul, Gemm and LSTM);
- ONNX Runtime int8, static conv adds `--calibration` with 32 RAVDESS utterances: the convolutions but the backbone's
  feature encoder as QLinearConv;
- ONNX Runtime int8, static conv + feature encoder adds `--quantize_feature_encoder`: the feature encoder's
  convolutions too.

The default trained model is the from-scratch CPU recipe trained on RAVDESS + TESS only (benchmarks/accuracy.py
--profile cpu_scratch, row "cross-corpus RAVDESS+TESS → EMO-DB"), so all of EMO-DB is held out; it is scored on EMO-DB's utterances of
the labels it knows. The paper-size model (wav2vec2-base backbone, the paper's guidance) is randomly initialised:
timings only. Threads: 2 for every engine (`--threads`). Results: benchmarks/results/deploy_cpu.json.
"""

import argparse
import atexit
import csv
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from msemoboost import MSEmoBoostConfig, MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification  # noqa: E402
from msemoboost.data import decode_audio  # noqa: E402
from msemoboost.export import export, graph_nodes  # noqa: E402
from msemoboost.onnx_runtime import INT8_NAME, ONNX_NAME, ONNXClassifier  # noqa: E402

from cost import median_seconds  # noqa: E402  (warm-up, then the median of repeats)

SHARED = REPO.parent / "shared" / "data"
STATIC = "onnxruntime int8, static conv"
STATIC_ALL = "onnxruntime int8, static conv + feature encoder"
TRAINED = REPO / "outputs" / "benchmarks" / "accuracy" / "cpu_scratch" / "cross_corpus_ravdess_tess___emo_db" / "seed0" / "model"
ENGINES = ["torch fp32", "torch int8", "onnxruntime fp32", "onnxruntime int8", STATIC, STATIC_ALL]


def engine_folder(name: str, export_dir: Path) -> Path:
    """The export an ONNX Runtime engine runs: each static-convolution int8 graph has its own folder."""
    return export_dir.with_name(export_dir.name + {STATIC: "-static", STATIC_ALL: "-static-all"}.get(name, ""))


def calibration_audio() -> list[np.ndarray]:
    """The static int8 convolutions' calibration recordings: 32 RAVDESS utterances (every 45th), never EMO-DB, on
    which every model here is evaluated."""
    with open(SHARED / "ravdess" / "metadata.csv", newline="") as file:
        rows = list(csv.DictReader(file))[::45]
    return [decode_audio({"path": str(SHARED / "ravdess" / row["file_name"]), "bytes": None}, 16_000) for row in rows]


def export_all(model_dir: Path, export_dir: Path) -> float:
    """`msemoboost export --quantize int8` into `export_dir`, and with `--calibration` (32 RAVDESS utterances) into
    the static-convolution folders, with the feature encoder float and in int8. Returns the seconds of the first
    export."""
    started = time.perf_counter()
    export(model_dir, export_dir, quantize="int8")
    seconds = time.perf_counter() - started
    calibration = calibration_audio()
    for name, feature_encoder in ((STATIC, False), (STATIC_ALL, True)):
        export(model_dir, engine_folder(name, export_dir), quantize="int8", calibration=calibration,
               quantize_feature_encoder=feature_encoder)
    return seconds


def load_engine(name: str, model_dir: Path, export_dir: Path, threads: int):
    """A function from a list of raw 16 kHz waveforms to utterance logits `(batch_size, num_labels)`."""
    torch.set_num_threads(threads)
    if name.startswith("onnxruntime"):
        engine = ONNXClassifier(engine_folder(name, export_dir), int8="int8" in name, threads=threads)
        return lambda waveforms: engine(waveforms)[0]
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir).eval()
    if name == "torch int8":
        model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
    extractor = MSEmoBoostFeatureExtractor.from_pretrained(model_dir)

    def run(waveforms):
        with torch.inference_mode():
            return model(**extractor(waveforms, sampling_rate=16_000, return_tensors="pt")).logits.numpy()

    return run


def disk_size(name: str, model_dir: Path, export_dir: Path) -> int:
    if name == "torch fp32":
        return (model_dir / "model.safetensors").stat().st_size
    if name == "torch int8":
        model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir).eval()
        model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
        with tempfile.TemporaryDirectory() as folder:
            torch.save(model.state_dict(), Path(folder) / "int8.pt")
            return (Path(folder) / "int8.pt").stat().st_size
    return (engine_folder(name, export_dir) / (INT8_NAME if "int8" in name else ONNX_NAME)).stat().st_size


def speech(seconds: float, offset: int = 0) -> np.ndarray:
    """Real speech of the given length: EMO-DB utterances of speaker 03 joined end to end, looped if needed."""
    files = sorted((SHARED / "emodb" / "audio").glob("03*.flac"))
    stream = np.concatenate([decode_audio({"path": str(path), "bytes": None}, 16_000) for path in files])
    samples = int(seconds * 16_000)
    return np.resize(np.roll(stream, -offset * 48_000), samples).astype(np.float32)


LONG_PROBE = """
import sys, time
sys.path.insert(0, {benchmarks!r})
from pathlib import Path
from deploy import load_engine, speech
engine = load_engine({name!r}, Path({model_dir!r}), Path({export_dir!r}), {threads})
audio = speech({seconds})
engine([audio[:48000]])
def peak_mib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
open("/proc/self/clear_refs", "w").write("5")  # restart the peak from the current resident memory
before = peak_mib()
started = time.perf_counter()
engine([audio])
print(time.perf_counter() - started, peak_mib(), peak_mib() - before)
"""


def long_recording(name: str, model_dir: Path, export_dir: Path, threads: int, seconds: float) -> dict:
    script = LONG_PROBE.format(benchmarks=str(REPO / "benchmarks"), name=name, model_dir=str(model_dir),
                               export_dir=str(export_dir), threads=threads, seconds=seconds)
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if output.returncode:
        return {"error": output.stderr.strip().splitlines()[-1][:300]}
    elapsed, peak, growth = map(float, output.stdout.split()[-3:])
    return {"seconds": elapsed, "peak_rss_mib": peak, "rss_growth_mib": growth}


def held_out(dataset: Path, labels: list[str], speakers: list[str] | None) -> tuple[list[np.ndarray], np.ndarray]:
    """Utterances of `dataset` (an audiofolder) whose label the model knows, of `speakers` if given."""
    with open(dataset / "metadata.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["emotion"] in labels]
    if speakers:
        rows = [row for row in rows if row["speaker"] in speakers]
    audio = [decode_audio({"path": str(dataset / row["file_name"]), "bytes": None}, 16_000) for row in rows]
    return audio, np.array([labels.index(row["emotion"]) for row in rows])


def accuracy(predicted: np.ndarray, truth: np.ndarray, num_labels: int) -> dict:
    recalls = [float((predicted[truth == label] == label).mean()) for label in range(num_labels) if (truth == label).any()]
    return {"wa": float((predicted == truth).mean()), "ua": float(np.mean(recalls))}


def benchmark_size(label: str, model_dir: Path, export_dir: Path, args, evaluation) -> dict:
    segments = [speech(3.0, offset) for offset in range(8)]
    result = {"model": str(model_dir), "parameters": sum(p.numel() for p in
              MSEmoBoostForSequenceClassification.from_pretrained(model_dir).parameters()), "engines": {}}
    reference = None
    for name in ENGINES:
        print(f"{label}: {name} …", flush=True)
        engine = load_engine(name, model_dir, export_dir, args.threads)
        latency = median_seconds(lambda: engine(segments[:1]), "cpu", args.repeats)
        batch = median_seconds(lambda: engine(segments), "cpu", max(3, args.repeats // 4))
        row = {"latency_3s_seconds": latency, "batch_8x3s_seconds": batch, "throughput_audio_seconds_per_second": 24 / batch,
               "disk_bytes": disk_size(name, model_dir, export_dir)}
        if args.long_seconds:
            row["long_recording"] = long_recording(name, model_dir, export_dir, args.threads, args.long_seconds)
        if evaluation is not None:
            audio, truth = evaluation
            predicted = np.concatenate([engine(audio[i : i + 8]).argmax(-1) for i in range(0, len(audio), 8)])
            row.update(accuracy(predicted, truth, int(truth.max()) + 1))
            reference = predicted if reference is None else reference
            row["agreement_with_torch_fp32"] = float((predicted == reference).mean())
        result["engines"][name] = row
        print(json.dumps(row), flush=True)
    base = result["engines"]["torch fp32"]
    for row in result["engines"].values():
        row["throughput_vs_torch_fp32"] = row["throughput_audio_seconds_per_second"] / base["throughput_audio_seconds_per_second"]
        row["latency_vs_torch_fp32"] = row["latency_3s_seconds"] / base["latency_3s_seconds"]
        row["disk_vs_torch_fp32"] = row["disk_bytes"] / base["disk_bytes"]
    return result


# Parts of the model timed on their own, innermost first: a part's time excludes the parts listed inside it.
PARTS = ["msemoboost.mfcc_encoder.mfcc", "msemoboost.mfcc_encoder.lstm", "msemoboost.mfcc_encoder.attention",
         "msemoboost.mfcc_encoder", "msemoboost.spectrogram_encoder.spectrogram", "msemoboost.spectrogram_encoder.features",
         "msemoboost.spectrogram_encoder.attention", "msemoboost.spectrogram_encoder", "msemoboost.backbone",
         "msemoboost.enhancement", "classifier"]
PART_NAMES = {"msemoboost.mfcc_encoder.mfcc": "MFCC (STFT, mel, DCT)", "msemoboost.mfcc_encoder.lstm": "Bi-LSTM",
              "msemoboost.mfcc_encoder.attention": "MFCC self-attention",
              "msemoboost.mfcc_encoder": "MFCC normalisation, pooling, projection",
              "msemoboost.spectrogram_encoder.spectrogram": "spectrogram image (STFT, dB, scaling)",
              "msemoboost.spectrogram_encoder.features": "AlexNet", "msemoboost.spectrogram_encoder.attention":
              "spectrogram self-attention", "msemoboost.spectrogram_encoder": "image resize, normalisation, projection",
              "msemoboost.backbone": "backbone", "msemoboost.enhancement": "frame weighting X_enh",
              "classifier": "classifier", "rest": "segmenting, pooling and the rest"}


def torch_profile(model_dir: Path, segments: list[np.ndarray], repeats: int) -> dict:
    """Milliseconds per part of one inference of `segments`, with forward hooks (median over repeats)."""
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir).eval()
    extractor = MSEmoBoostFeatureExtractor.from_pretrained(model_dir)
    inputs = extractor(segments, sampling_rate=16_000, return_tensors="pt")
    modules = {name: module for name, module in model.named_modules() if name in PARTS}
    spans, starts = {name: 0.0 for name in modules}, {}
    for name, module in modules.items():
        module.register_forward_pre_hook(lambda _m, _i, name=name: starts.__setitem__(name, time.perf_counter()))
        module.register_forward_hook(
            lambda _m, _i, _o, name=name: spans.__setitem__(name, spans[name] + time.perf_counter() - starts[name]))
    runs = []
    for repeat in range(repeats + 1):
        for name in spans:
            spans[name] = 0.0
        started = time.perf_counter()
        with torch.inference_mode():
            model(**inputs)
        total = time.perf_counter() - started
        if repeat:  # the first is a warm-up
            runs.append({**exclusive(spans), "total": total})
    result = {name: 1000 * statistics.median(run[name] for run in runs) for name in runs[0]}
    result["rest"] = result["total"] - sum(value for name, value in result.items() if name not in ("total", "rest"))
    return result


def exclusive(spans: dict[str, float]) -> dict[str, float]:
    """Each part's time without the listed parts nested inside it."""
    own = dict(spans)
    for name in spans:
        parent = next((other for other in PARTS if other != name and name.startswith(other + ".") and other in spans), None)
        if parent:
            own[parent] -= spans[name]
    return own


def onnx_profile(path: Path, reference: Path, segments: list[np.ndarray], threads: int, repeats: int) -> dict:
    """Milliseconds per part of one ONNX Runtime inference, from its profiler, grouped by the torch module each node
    came from. The exporter writes that module into each node of `reference` (the fp32 graph:
    `pkg.torch.onnx.name_scopes`); nodes that quantisation or ONNX Runtime's optimiser made are matched by name, or
    else take the part of the node that feeds them."""
    import onnx
    import onnxruntime

    from msemoboost.inference import pad_batch

    known = {node.name: part_of(node) for node in onnx.load(str(reference), load_external_data=False).graph.node}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.optimized_model_filepath = str(path.with_name(path.stem + ".optimized.onnx"))
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    Path(options.optimized_model_filepath).unlink()
    # A Scan's time includes its body's nodes, which the profiler also reports one by one: count those once, in the Scan.
    inside_subgraphs = {node.name for node in graph_nodes(optimized)} - {node.name for node in optimized.node}
    scopes, producer = {}, {}
    for node in optimized.node:  # topological order
        name = node.name.removesuffix("_quant").removesuffix("_QuantizeLinear")
        part = part_of(node) or known.get(name) or known.get(name.split("/")[0])
        part = part or next((scopes[producer[i]] for i in node.input if i in producer), "rest")
        scopes[node.name] = part
        producer.update({output: node.name for output in node.output})

    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {name: tensor.numpy() for name, tensor in pad_batch(segments).items()}
    session.run(None, feed)  # warm-up
    for _ in range(repeats):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    result, rest, nodes = {}, {}, {}
    for event in events:
        name = event["name"].removesuffix("_kernel_time")
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and name not in inside_subgraphs:
            part, milliseconds = scopes.get(name, "rest"), event["dur"] / 1000 / repeats
            result[part] = result.get(part, 0.0) + milliseconds
            operator = event.get("args", {}).get("op_name", "?")
            if part == "rest":  # what the profile cannot place, by operator; "not in the graph": made at session start
                key = operator + ("" if name in scopes else " (not in the optimised graph)")
                rest[key] = rest.get(key, 0.0) + milliseconds
            nodes[name] = {"operator": operator, "part": part, "ms": nodes.get(name, {}).get("ms", 0.0) + milliseconds}
    result["total"] = sum(result.values())
    result["rest_by_operator"] = dict(sorted(rest.items(), key=lambda item: -item[1]))
    result["slowest_nodes"] = dict(sorted(nodes.items(), key=lambda item: -item[1]["ms"])[:25])
    return result


def part_of(node) -> str | None:
    """The innermost of PARTS that the exporter recorded for an ONNX node, if it recorded one."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            paths = [name.removeprefix("model.") for name in json.loads(prop.value.replace("'", '"'))]
            return next((part for part in reversed(paths) if part in PARTS), "rest")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=TRAINED, help="trained model folder (default: see above)")
    parser.add_argument("--eval_dataset", type=Path, default=SHARED / "emodb")
    parser.add_argument("--eval_speakers", nargs="*", default=None, help="held-out speakers (default: all)")
    parser.add_argument("--sizes", nargs="+", choices=["recipe", "paper"], default=["recipe", "paper"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--long_seconds", type=float, default=600.0, help="the long recording (0: skip)")
    parser.add_argument("--profile", action="store_true", help="only the per-part profile of the paper-size model")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "deploy_cpu.json")
    args = parser.parse_args()
    report = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "torch": torch.__version__,
              "command": " ".join(["python", "benchmarks/deploy.py", *sys.argv[1:]]), "sizes": {}}
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    work = Path(tempfile.mkdtemp(prefix="msemoboost-deploy-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the models and exports: 1.7 GB at the paper's size
    if args.profile:
        return profile_main(args, report, work)
    for size in args.sizes:
        if size == "recipe":
            if not (args.model / "config.json").is_file():
                sys.exit(f"{args.model}: no trained model. Run: python benchmarks/accuracy.py --profile cpu_scratch --rows "
                         "'cross-corpus RAVDESS+TESS → EMO-DB', or pass --model.")
            model_dir = args.model
            labels = [MSEmoBoostConfig.from_pretrained(model_dir).id2label[i]
                      for i in range(MSEmoBoostConfig.from_pretrained(model_dir).num_labels)]
            evaluation = held_out(args.eval_dataset, labels, args.eval_speakers)
            long_seconds = args.long_seconds
        else:  # the paper's size, randomly initialised: timings only (a 10-minute graph would need GiBs)
            model_dir = paper_size_model(work / "paper")
            evaluation, long_seconds = None, 0
        export_dir = work / f"{size}-onnx"
        export_seconds = export_all(model_dir, export_dir)
        size_args = argparse.Namespace(**{**vars(args), "long_seconds": long_seconds})
        report["sizes"][size] = {**benchmark_size(size, model_dir, export_dir, size_args, evaluation),
                                 "export_seconds": export_seconds,
                                 "held_out_utterances": None if evaluation is None else len(evaluation[1])}
    destination = args.results
    destination.write_text(json.dumps(report, indent=2) + "\n")
    for size, result in report["sizes"].items():
        print(f"\n{size} ({result['parameters'] / 1e6:.2f} M parameters)\n")
        print("| engine | 3 s latency ms | batch 8×3 s: s of audio per s | vs torch fp32 | 10 min s | 10 min peak MiB "
              "| disk MB | vs fp32 | WA % | UA % | agreement % |\n|---|---|---|---|---|---|---|---|---|---|---|")
        for name, row in result["engines"].items():
            long = row.get("long_recording", {})
            cells = [f"{1000 * row['latency_3s_seconds']:.0f}", f"{row['throughput_audio_seconds_per_second']:.1f}",
                     f"{row['throughput_vs_torch_fp32']:.2f}×", f"{long['seconds']:.1f}" if "seconds" in long else "",
                     f"{long['peak_rss_mib']:.0f}" if "seconds" in long else "", f"{row['disk_bytes'] / 1e6:.1f}",
                     f"{100 * row['disk_vs_torch_fp32']:.0f} %",
                     *([f"{100 * row[k]:.1f}" for k in ("wa", "ua", "agreement_with_torch_fp32")] if "ua" in row else ["", "", ""])]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nWrote {destination}")


def paper_size_model(directory: Path) -> Path:
    """The paper's size, randomly initialised: a wav2vec2-base backbone and the paper's guidance branches."""
    torch.manual_seed(0)
    MSEmoBoostForSequenceClassification(MSEmoBoostConfig(
        backbone_config={"model_type": "wav2vec2", "mask_time_prob": 0.0}, num_labels=7)).save_pretrained(directory)
    MSEmoBoostFeatureExtractor().save_pretrained(directory)
    return directory


def profile_main(args, report: dict, work: Path) -> None:
    """Where an inference of 8 × 3 s spends its time, per part, in torch fp32 and ONNX Runtime fp32/int8."""
    torch.set_num_threads(args.threads)
    model_dir = paper_size_model(work / "paper")
    export_all(model_dir, work / "onnx")
    segments = [speech(3.0, offset) for offset in range(8)]
    repeats = max(3, args.repeats // 4)
    profile = {"batch": "8 x 3 s", "torch fp32": torch_profile(model_dir, segments, repeats),
               "onnxruntime fp32": onnx_profile(work / "onnx" / ONNX_NAME, work / "onnx" / ONNX_NAME, segments,
                                                args.threads, repeats),
               "onnxruntime int8": onnx_profile(work / "onnx" / INT8_NAME, work / "onnx" / ONNX_NAME, segments,
                                                args.threads, repeats),
               **{name: onnx_profile(engine_folder(name, work / "onnx") / INT8_NAME, work / "onnx" / ONNX_NAME,
                                     segments, args.threads, repeats) for name in (STATIC, STATIC_ALL)}}
    destination = args.results.with_name(args.results.stem + "_profile.json")
    destination.write_text(json.dumps({**report, "profile": profile}, indent=2) + "\n")
    engines = ["torch fp32", "onnxruntime fp32", "onnxruntime int8", STATIC, STATIC_ALL]
    print("| part | " + " | ".join(f"{engine} ms" for engine in engines) + " |\n|" + "---|" * (len(engines) + 1))
    for part in [*PARTS, "rest", "total"]:
        print(f"| {PART_NAMES.get(part, part)} | " + " | ".join(f"{profile[e].get(part, 0.0):.1f}" for e in engines) + " |")
    for engine in engines[1:]:
        print(f"\n{engine}, the rest by operator (ms): " + ", ".join(
            f"{operator} {ms:.1f}" for operator, ms in profile[engine]["rest_by_operator"].items() if ms >= 0.5))
    print(f"\nWrote {destination}")


if __name__ == "__main__":
    main()
