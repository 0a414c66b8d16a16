"""Cost of MS-EmoBoost, measured side by side in one process: warm-up, then the median of repeats.

    python benchmarks/cost.py                 # CPU (all sections, about 10 minutes on 2 cores)
    python benchmarks/cost.py --device cuda   # the same on a GPU

Sections:
- overhead: MS-EmoBoost (wav2vec2-base backbone, the paper's guidance) against transformers'
  Wav2Vec2ForSequenceClassification with the identical backbone config, on one batch of real EMO-DB speech of
  2-10 s (utterances of one speaker joined end to end); inference and one training step (forward, backward, Adam).
- features: the in-model torch MFCC + spectrogram against librosa's computation of the same features, same segments,
  against the bare FFT floor (`torch.fft.rfft` of the same windowed frames, framed beforehand), all at once and in
  the model's groups of segments, and against the features' previous formulation; interleaved round by round.
- compiled_guidance (not in the default sections): inference on equal 3 s inputs of the reference, MS-EmoBoost, and
  MS-EmoBoost with its guidance branches under `torch.compile`, interleaved round by round.
- statistics_classifier (not in the default sections): inference of the CPU preset's architecture with and without
  its whole-utterance statistics classifier, on one batch of real speech.
- memory: peak memory of inference on recordings of 30 s to 10 min, each in a fresh process.
- scaling: time against audio length and against batch size, with PNG plots.

Results go to benchmarks/results/cost_<device>.json and the plots to benchmarks/.
"""

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
EMODB = REPO.parent / "shared" / "data" / "emodb"

from msemoboost import MSEmoBoostConfig, MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification  # noqa: E402
from msemoboost.acoustic_features import MSEmoBoostMFCC, MSEmoBoostSpectrogram, pre_emphasis  # noqa: E402
from msemoboost.data import decode_audio  # noqa: E402

# The small model of configs/emodb_cpu.yaml, for the memory and scaling curves (the base model is too slow on CPU
# for a 10-minute sweep); the overhead section uses the full wav2vec2-base configuration.
SMALL = {
    "backbone_config": {"model_type": "wav2vec2", "hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 192, "conv_dim": [64] * 7, "num_conv_pos_embeddings": 32,
                        "num_conv_pos_embedding_groups": 4},
    "lstm_hidden_size": 64, "spectrogram_image_size": 96, "spectrogram_conv_channels": [16, 32, 64, 64, 64],
    "spectrogram_pool_size": 3, "guidance_hidden_size": 64,
}

# The key of the reference model, `Wav2Vec2ForSequenceClassification` with the same backbone, in the results.
REFERENCE = "wav2vec2_for_sequence_classification"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_of(function, device: str) -> float:
    """Wall time of one call of `function`, the device's queued work included."""
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def median_seconds(function, device: str, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    return statistics.median(seconds_of(function, device) for _ in range(repeats))


def emodb_speech(seconds: list[float]) -> list[np.ndarray]:
    """Real speech of the given lengths: EMO-DB utterances (2 s each) of one speaker joined end to end."""
    files = sorted((EMODB / "audio").glob("03*.flac"))
    pieces = [decode_audio({"path": str(path), "bytes": None}, 16_000) for path in files]
    stream = np.concatenate(pieces)
    out, start = [], 0
    for length in seconds:
        samples = int(length * 16_000)
        out.append(stream[start : start + samples])
        start += samples
    return out


def overhead(device: str, repeats: int) -> dict:
    """Mixed lengths as each model takes them (the reference pads the batch to its longest utterance), and equal
    3 s utterances, where both run the same backbone work and the difference is the guidance alone."""
    return {"mixed_2_to_10_s": overhead_on([2, 3, 4, 5, 6, 7, 8, 10], device, repeats),
            "equal_3_s": overhead_on([3] * 8, device, repeats)}


def overhead_models(lengths: list[float], device: str):
    """MS-EmoBoost at the paper's size and `Wav2Vec2ForSequenceClassification` with the same backbone weights, and
    one batch of real speech of the given lengths for both."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    backbone = Wav2Vec2Config(mask_time_prob=0.0, layerdrop=0.0)
    ours = MSEmoBoostForSequenceClassification(MSEmoBoostConfig(backbone_config=backbone.to_dict(), num_labels=7)).to(device)
    reference = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(mask_time_prob=0.0, layerdrop=0.0, num_labels=7)).to(device)
    ours.msemoboost.backbone.load_state_dict(reference.wav2vec2.state_dict())  # identical backbone weights too
    inputs = MSEmoBoostFeatureExtractor()(emodb_speech(lengths), sampling_rate=16_000, return_tensors="pt").to(device)
    return ours, reference, inputs


def overhead_on(lengths: list[float], device: str, repeats: int) -> dict:
    ours, reference, inputs = overhead_models(lengths, device)
    labels = torch.arange(len(lengths), device=device) % 7
    seconds_of_audio = float(sum(lengths))
    result = {"batch_seconds_of_audio": seconds_of_audio, "utterance_seconds": lengths}
    for name, model in (("msemoboost", ours), (REFERENCE, reference)):
        model.eval()

        def infer(model=model):
            with torch.no_grad():
                model(**inputs)

        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad()
            model(**inputs, labels=labels).loss.backward()
            optimizer.step()

        model.eval()
        inference = median_seconds(infer, device, repeats)
        model.train()
        training = median_seconds(step, device, repeats)
        result[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "inference_seconds": inference,
            "inference_seconds_per_audio_second": inference / seconds_of_audio,
            "training_step_seconds": training,
            "training_step_seconds_per_audio_second": training / seconds_of_audio,
        }
    for kind in ("inference_seconds", "training_step_seconds"):
        result[f"{kind}_ratio"] = result["msemoboost"][kind] / result[REFERENCE][kind]
    return result


def interleaved_seconds(functions: dict, device: str, repeats: int) -> dict[str, list[float]]:
    """Each of `functions` timed once per round, one after the other, for a warm-up round and `repeats` rounds, so
    that all of them see the same machine: the times of the `repeats` rounds, per name."""
    times = {name: [] for name in functions}
    for _ in range(repeats + 1):
        for name, function in functions.items():
            times[name].append(seconds_of(function, device))
    return {name: values[1:] for name, values in times.items()}


def median_round_ratio(values: list[float], reference: list[float]) -> float:
    """The median over rounds of each round's ratio of `values` to `reference`."""
    return statistics.median(value / base for value, base in zip(values, reference))


def compiled_guidance(device: str, repeats: int) -> dict:
    """Inference on equal 3 s utterances (8 x 3 s): the reference, MS-EmoBoost eager, and a copy of it whose two
    guidance branches run through `torch.compile` (inductor), interleaved round by round so that all three see the
    same machine; the median of `repeats` rounds each. The model's own eager path is unchanged."""
    lengths = [3] * 8
    ours, reference, inputs = overhead_models(lengths, device)
    ours.eval()
    reference.eval()
    compiled = copy.deepcopy(ours)
    compiled.msemoboost.mfcc_encoder.compile()
    compiled.msemoboost.spectrogram_encoder.compile()
    models = {REFERENCE: reference, "msemoboost": ours,
              "msemoboost_compiled_guidance": compiled}
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, ours(**inputs).logits, rtol=1e-4, atol=1e-4)
        times = interleaved_seconds({name: lambda model=model: model(**inputs) for name, model in models.items()},
                                    device, repeats)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    reference_seconds = seconds[REFERENCE]
    paired = {name: median_round_ratio(values, times[REFERENCE]) for name, values in times.items()}
    return {"batch_seconds_of_audio": float(sum(lengths)), "rounds": repeats, "inference_seconds": seconds,
            "round_seconds": times,
            "inference_seconds_ratio": {name: value / reference_seconds for name, value in seconds.items()},
            "median_of_round_ratios": paired}


def statistics_classifier(device: str, repeats: int) -> dict:
    """Inference of the CPU preset's model (configs/emodb_cpu.yaml's architecture, random weights: the cost does not
    depend on them) on one batch of real speech (8 utterances, 2-10 s), with its whole-utterance statistics classifier
    (`utterance_statistics_classifier`) and without it, interleaved round by round; the median of `repeats` rounds."""
    from msemoboost.training import read_arguments_file

    overrides = read_arguments_file(REPO / "configs" / "emodb_cpu.yaml")["model_config_overrides"]
    torch.manual_seed(0)
    fused = MSEmoBoostForSequenceClassification(
        MSEmoBoostConfig(backbone_config=SMALL["backbone_config"], num_labels=7, **overrides)).eval().to(device)
    network = copy.deepcopy(fused)
    network.statistics_classifier = None
    lengths = [2, 3, 4, 5, 6, 7, 8, 10]
    inputs = MSEmoBoostFeatureExtractor()(emodb_speech(lengths), sampling_rate=16_000, return_tensors="pt").to(device)
    with torch.no_grad():
        times = interleaved_seconds({"with_statistics_classifier": lambda: fused(**inputs),
                                     "without": lambda: network(**inputs),
                                     "statistics_alone": lambda: fused.utterance_statistics(**inputs)}, device, repeats)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {"model": "configs/emodb_cpu.yaml architecture", "batch_seconds_of_audio": float(sum(lengths)),
            "rounds": repeats, "inference_seconds": seconds, "round_seconds": times,
            "median_of_round_ratios": median_round_ratio(times["with_statistics_classifier"], times["without"])}


def features(device: str, repeats: int) -> dict:
    """The in-model features of 32 segments of 3 s against librosa, the bare FFT floor and the features' previous
    formulation, interleaved round by round (`interleaved_seconds`): medians of the times and of per-round ratios."""
    import librosa

    config = MSEmoBoostConfig()
    mfcc, spectrogram = MSEmoBoostMFCC(config).to(device), MSEmoBoostSpectrogram(config).to(device)
    segments = np.stack([np.pad(x, (0, 48_000 - len(x))) for x in emodb_speech([2.0] * 32)]).astype(np.float32)
    batch = torch.from_numpy(segments).to(device)
    # The previous formulation, for the speed-up in the same run: all segments at once, and the mel filter bank as
    # one product over every bin (a single run of filters spanning all of them).
    whole_mfcc, whole_spectrogram = copy.deepcopy(mfcc), copy.deepcopy(spectrogram)
    whole_mfcc.eager_rows_per_step = whole_spectrogram.eager_rows_per_step = len(segments)
    whole_mfcc.mel_bands = ((0, config.mfcc_num_mel_bins, 0, config.mfcc_n_fft // 2 + 1),)

    def in_model(mfcc=mfcc, spectrogram=spectrogram):
        emphasised = pre_emphasis(batch, 0.97)
        mfcc(emphasised)
        spectrogram(emphasised)

    def with_librosa():
        for segment in segments:
            emphasised = librosa.effects.preemphasis(segment)
            librosa.feature.mfcc(y=emphasised, sr=16_000, n_mfcc=40, hop_length=160, htk=True)
            magnitude = np.abs(librosa.stft(emphasised, n_fft=800, win_length=640, hop_length=160, window="hamming"))
            log_spec = librosa.amplitude_to_db(magnitude, ref=np.max)[:200]
            ((log_spec - log_spec.min()) / (log_spec.max() - log_spec.min()))[::-1]

    # The floor: torch.fft.rfft of exactly the frames both features transform (centred, zero-padded, windowed),
    # framed beforehand, so nothing but the FFTs is timed; all at once, and in the groups of segments that the model
    # computes them in (`eager_rows_per_step`), which keeps a group's frames in cache.
    emphasised = pre_emphasis(batch, 0.97)
    frames = []
    for module in (mfcc, spectrogram):
        padded = torch.nn.functional.pad(emphasised, (module.n_fft // 2, module.n_fft // 2))
        frames.append((padded.unfold(1, module.n_fft, module.hop_length) * module.window).contiguous())
    rows = mfcc.eager_rows_per_step

    def fft_floor(rows=len(segments)):
        for framed in frames:
            for group in framed.split(rows):
                torch.fft.rfft(group)

    with torch.no_grad():
        for ours, theirs in zip((mfcc, spectrogram), (whole_mfcc, whole_spectrogram)):
            torch.testing.assert_close(ours(emphasised), theirs(emphasised), rtol=1e-5, atol=1e-4)
        times = interleaved_seconds({
            "torch": in_model, "torch_previous": lambda: in_model(whole_mfcc, whole_spectrogram),
            "librosa": with_librosa, "fft_floor": fft_floor, "grouped_fft_floor": lambda: fft_floor(rows),
        }, device, repeats)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {"segments": len(segments), "rounds": repeats, "rows_per_group": rows,
            "torch_seconds": seconds["torch"], "torch_previous_seconds": seconds["torch_previous"],
            "librosa_seconds": seconds["librosa"], "fft_floor_seconds": seconds["fft_floor"],
            "grouped_fft_floor_seconds": seconds["grouped_fft_floor"],
            "speedup": median_round_ratio(times["librosa"], times["torch"]),
            "speedup_over_previous": median_round_ratio(times["torch_previous"], times["torch"]),
            "ratio_to_fft_floor": median_round_ratio(times["torch"], times["fft_floor"]),
            "ratio_to_grouped_fft_floor": median_round_ratio(times["torch"], times["grouped_fft_floor"]),
            "round_seconds": times,
            "fft_frames": {"mfcc": list(frames[0].shape), "spectrogram": list(frames[1].shape)}}


MEMORY_PROBE = """
import sys, torch
sys.path.insert(0, {benchmarks!r})
from cost import SMALL
from msemoboost import MSEmoBoostConfig, MSEmoBoostForSequenceClassification
torch.manual_seed(0)
model = MSEmoBoostForSequenceClassification(MSEmoBoostConfig(**SMALL, num_labels=7)).eval().to({device!r})
audio = torch.randn(1, int({seconds} * 16000), device={device!r}) * 0.1
def peak_rss_kib():
    # VmHWM is this process's own peak (ru_maxrss would carry the parent's peak across fork and exec).
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
with torch.no_grad():
    model(audio[:, :48000])
open("/proc/self/clear_refs", "w").write("5")  # restart the peak from the current RSS
before = peak_rss_kib()
if {device!r}.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
with torch.no_grad():
    model(audio)
after = peak_rss_kib()
gpu = torch.cuda.max_memory_allocated() / 2**20 if {device!r}.startswith("cuda") else None
print(after / 1024, (after - before) / 1024, gpu)
"""


def memory(device: str) -> dict:
    rows = []
    for seconds in (30, 60, 120, 300, 600):
        script = MEMORY_PROBE.format(benchmarks=str(REPO / "benchmarks"), device=device, seconds=seconds)
        output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
        peak, growth, gpu = float(output[0]), float(output[1]), None if output[2] == "None" else float(output[2])
        rows.append({"seconds": seconds, "peak_rss_mib": peak, "rss_growth_over_one_segment_mib": growth, "peak_gpu_mib": gpu})
        print(f"  memory {seconds:>4} s: peak RSS {peak:.0f} MiB (+{growth:.0f} MiB over a 3 s input)", flush=True)
    return {"model": "configs/emodb_cpu.yaml size", "segment_chunk_size": MSEmoBoostConfig().segment_chunk_size, "rows": rows}


def scaling(device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = MSEmoBoostForSequenceClassification(MSEmoBoostConfig(**SMALL, num_labels=7)).eval().to(device)
    lengths = [1, 3, 10, 30, 60, 180, 600]
    by_length = []
    for seconds in lengths:
        audio = torch.randn(1, int(seconds * 16_000), device=device) * 0.1

        def infer(audio=audio):
            with torch.no_grad():
                model(audio)

        elapsed = median_seconds(infer, device, repeats if seconds <= 60 else 1)
        by_length.append({"seconds": seconds, "inference_seconds": elapsed, "real_time_factor": elapsed / seconds})
        print(f"  length {seconds:>4} s: {elapsed:.3f} s", flush=True)
    by_batch = []
    for batch_size in (1, 2, 4, 8, 16, 32):
        audio = torch.randn(batch_size, 48_000, device=device) * 0.1

        def infer(audio=audio):
            with torch.no_grad():
                model(audio)

        elapsed = median_seconds(infer, device, repeats)
        by_batch.append({"batch_size": batch_size, "inference_seconds": elapsed, "seconds_per_utterance": elapsed / batch_size})
        print(f"  batch {batch_size:>3} x 3 s: {elapsed:.3f} s", flush=True)
    return {"model": "configs/emodb_cpu.yaml size", "by_length": by_length, "by_batch": by_batch}


def plot_scaling(result: dict, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    lengths = [row["seconds"] for row in result["by_length"]]
    left.loglog(lengths, [row["inference_seconds"] for row in result["by_length"]], "o-", label="MS-EmoBoost")
    per_second = result["by_length"][1]["real_time_factor"]  # measured at 3 s: one full segment
    left.loglog(lengths, [seconds * per_second for seconds in lengths], "--", color="gray", label="linear in length")
    left.set(xlabel="audio length (s)", ylabel="inference time (s)", title=f"time against length ({device}, batch 1)")
    left.legend()
    batches = [row["batch_size"] for row in result["by_batch"]]
    right.plot(batches, [1000 * row["seconds_per_utterance"] for row in result["by_batch"]], "o-")
    right.set(xscale="log", xlabel="batch size (3 s utterances)", ylabel="ms per utterance", title="time per utterance against batch size")
    figure.tight_layout()
    figure.savefig(REPO / "benchmarks" / f"scaling_{device.split(':')[0]}.png")
    plt.close(figure)


def cpu_name() -> str:
    """The CPU's model name (for example "AMD EPYC"): the guidance overhead differs between CPU makes."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", nargs="+", default=["overhead", "features", "memory", "scaling"])
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    report = {"device": args.device, "hardware": device_name, "threads": torch.get_num_threads(), "date": date.today().isoformat(),
              "torch": torch.__version__, "command": " ".join(["python", "benchmarks/cost.py", *sys.argv[1:]])}
    destination = REPO / "benchmarks" / "results" / f"cost_{args.device.split(':')[0]}.json"
    if destination.exists():
        report = {**json.loads(destination.read_text()), **report}
    for section in args.sections:
        print(f"{section} …", flush=True)
        report[section] = {"overhead": lambda: overhead(args.device, args.repeats),
                           "compiled_guidance": lambda: compiled_guidance(args.device, args.repeats),
                           "statistics_classifier": lambda: statistics_classifier(args.device, args.repeats),
                           "features": lambda: features(args.device, args.repeats),
                           "memory": lambda: memory(args.device), "scaling": lambda: scaling(args.device, args.repeats)}[section]()
        report[section]["measured"] = {key: report[key] for key in ("date", "command", "hardware", "threads", "torch")}
        if section == "scaling":
            plot_scaling(report[section], args.device)
        print(json.dumps(report[section], indent=2)[:2000], flush=True)
        destination.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {destination}  (peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
