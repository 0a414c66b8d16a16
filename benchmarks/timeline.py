"""Long recordings and streams: the speech-only timeline of a 1-hour recording (time, peak memory, how well the VAD
finds the speech), and `msemoboost stream`'s latency per hop and real-time factor, PyTorch against ONNX Runtime.

    python benchmarks/timeline.py --model outputs/emodb_cpu/model --speech ../shared/data/emodb \
        --output benchmarks/results/timeline_cpu.json

The recording: EMO-DB utterances drawn at random (seed 0) with 0.5–4 s of silence between them (low white noise at
−60 dBFS, so that the silence is not digital zero), until `--minutes`. The same run for a recording a sixth as long
shows whether memory stays bounded. Each `predict --timeline --vad` runs in a process of its own under GNU time.
The VAD score compares the speech/non-speech rows written with the truth the script built, per 10 ms; on the
shorter recording, Silero VAD (what `--vad` runs) is compared with WebRTC's VAD at its 4 aggressiveness levels
(`pip install webrtcvad-wheels`, the `bench` extra), both joined into regions alike.

Streaming: `--stream_s` seconds of the same recording through `msemoboost.streaming.WindowStream` (what `msemoboost
stream` runs), hop 1 s, in this process; per hop, the seconds from the hop's last sample to its line (the model's
compute, as the audio is already there), median and 95th percentile; the real-time factor is their sum over the
audio's duration. The ONNX model is exported from `--model` into a temporary folder first.
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from timed_run import read_log  # noqa: E402

RATE = 16000


def build_recording(speech_dir: Path, minutes: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The recording `(num_samples,)` and its truth, True on speech samples."""
    from msemoboost.inference import read_audio

    files = sorted((speech_dir / "audio").glob("*"))
    rng = np.random.default_rng(seed)
    parts, truth, total = [], [], 0
    target = int(minutes * 60 * RATE)
    while total < target:
        silence = (rng.standard_normal(int(rng.uniform(0.5, 4.0) * RATE)) * 1e-3).astype(np.float32)
        speech = read_audio(files[rng.integers(len(files))], RATE)
        parts += [silence, speech]
        truth += [np.zeros(len(silence), bool), np.ones(len(speech), bool)]
        total += len(silence) + len(speech)
    return np.concatenate(parts)[:target], np.concatenate(truth)[:target]


def vad_agreement(rows: list[dict], truth: np.ndarray) -> dict:
    """Per 10 ms: the share of true speech inside windows classified, and of true silence marked non-speech."""
    step = RATE // 100
    marked = np.zeros(len(truth) // step, bool)
    for row in rows:
        if row["prediction"] != "non-speech":
            marked[int(row["start"] * 100) : int(np.ceil(row["end"] * 100))] = True
    frames = truth[: len(marked) * step].reshape(-1, step).mean(1) > 0.5
    return {"speech_recall": float(marked[frames].mean()), "silence_marked_non_speech": float((~marked[~frames]).mean())}


def webrtc_regions(waveform: np.ndarray, aggressiveness: int, min_speech_s: float = 0.25,
                   min_silence_s: float = 0.3) -> list[tuple[int, int]]:
    """WebRTC's VAD (`webrtcvad-wheels`) on 30 ms frames, its decisions joined into regions as Silero's are:
    gaps shorter than `min_silence_s` bridged, regions shorter than `min_speech_s` dropped."""
    import webrtcvad

    vad, frame = webrtcvad.Vad(aggressiveness), RATE * 30 // 1000
    pcm = (np.clip(waveform, -1, 1) * 32767).astype("<i2")
    regions = []
    for start in range(0, len(pcm) - frame + 1, frame):
        if vad.is_speech(pcm[start : start + frame].tobytes(), RATE):
            if regions and start - regions[-1][1] < min_silence_s * RATE:
                regions[-1][1] = start + frame
            else:
                regions.append([start, start + frame])
    return [(start, end) for start, end in regions if end - start >= min_speech_s * RATE]


def compare_vads(recording: np.ndarray, truth: np.ndarray, snrs=(None, 20.0, 10.0)) -> dict:
    """Silero VAD (the one `--vad` runs) against WebRTC's at each aggressiveness, on the recording as built and with
    pink noise over all of it at each SNR (over the active speech): per 10 ms, the share of true speech found and of
    true silence left out, and the seconds per hour of audio."""
    from msemoboost.noise import NoiseBank, mix_at_snr
    from msemoboost.timeline import speech_regions

    candidates = {"silero": lambda w: speech_regions(w, RATE)}
    candidates.update({f"webrtc_{level}": (lambda w, level=level: webrtc_regions(w, level)) for level in range(4)})
    found = {}
    for snr in snrs:
        audio = recording
        if snr is not None:
            noise = NoiseBank(RATE).sample("pink", len(recording), np.random.default_rng(0))
            audio = mix_at_snr(recording, noise, snr, RATE)[0]
        condition = "as built" if snr is None else f"pink noise at {snr:g} dB"
        found[condition] = {}
        for name, regions_of in candidates.items():
            began = time.perf_counter()
            regions = regions_of(audio)
            seconds = time.perf_counter() - began
            rows = [{"start": start / RATE, "end": end / RATE, "prediction": "speech"} for start, end in regions]
            found[condition][name] = {**vad_agreement(rows, truth), "seconds_per_hour": seconds * 3600 * RATE / len(audio)}
    return found


def timed_vad_timeline(model: str, recording: np.ndarray, truth: np.ndarray, work: Path) -> dict:
    from msemoboost.demo import write_wav

    path, output, log = work / "long.wav", work / "long.json", work / "time.log"
    write_wav(path, recording, RATE)
    command = [sys.executable, "-m", "msemoboost", "predict", "--model", model, str(path), "--timeline", "--vad",
               "--output", str(output)]
    with open(log, "w") as file:
        subprocess.run(["/usr/bin/time", "-v", *command], stdout=file, stderr=subprocess.STDOUT, check=True)
    timing = read_log(log.read_text())
    rows = json.loads(output.read_text())["segments"]
    speech_rows = [row for row in rows if row["prediction"] != "non-speech"]
    return {"audio_minutes": len(recording) / RATE / 60, "wall_seconds": timing["wall_seconds"],
            "peak_rss_gib": timing["peak_rss_gib"], "windows_classified": len(speech_rows),
            "true_speech_share": float(truth.mean()), **vad_agreement(rows, truth)}


def stream_latency(run, config, recording: np.ndarray) -> dict:
    from msemoboost.streaming import WindowStream

    labels = [config.id2label[i] for i in range(config.num_labels)]
    stream = WindowStream(run, labels, RATE, config.segment_samples, RATE, config.min_input_samples)
    stream.push(recording[:RATE])  # warm-up: the first hop
    latencies = []
    for start in range(RATE, len(recording) - RATE + 1, RATE):
        began = time.perf_counter()
        lines = stream.push(recording[start : start + RATE])
        latencies.append(time.perf_counter() - began)
        assert len(lines) == 1
    latencies = np.asarray(latencies)
    return {"hops": len(latencies), "median_latency_s": float(np.median(latencies)),
            "p95_latency_s": float(np.percentile(latencies, 95)), "real_time_factor": float(latencies.sum() / len(latencies))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained model folder (the CPU preset's)")
    parser.add_argument("--speech", type=Path, required=True, help="an audiofolder of speech (EMO-DB)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--stream_s", type=float, default=120.0)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--host", default=platform.processor() or platform.machine())
    parser.add_argument("--sections", nargs="+", choices=["vad_comparison", "timeline", "stream"],
                        default=["vad_comparison", "timeline", "stream"])
    parser.add_argument("--output", type=Path, help="JSON file; its other sections are kept")
    args = parser.parse_args()
    import torch

    sections = {
        "vad_comparison": lambda: compare_vads(*build_recording(args.speech, args.minutes / 6)),
        "timeline": lambda: {f"{minutes:g}_min": timed_vad_timeline(args.model, *build_recording(args.speech, minutes), work)
                             for minutes in (args.minutes / 6, args.minutes)},
        "stream": lambda: stream_latencies(args.model, build_recording(args.speech, args.stream_s / 60, seed=1)[0], work),
    }
    result = json.loads(args.output.read_text()) if args.output and args.output.exists() else {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for section in args.sections:
            result[section] = {"date": str(date.today()), "commit": args.commit, "host": args.host,
                               "threads": torch.get_num_threads(), "model": args.model,
                               "command": " ".join(["python", "benchmarks/timeline.py", *sys.argv[1:]]),
                               **sections[section]()}
            print(json.dumps({section: result[section]}), flush=True)
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


def stream_latencies(model: str, recording: np.ndarray, work: Path) -> dict:
    """[`stream_latency`] with PyTorch and with ONNX Runtime (the model exported into `work/onnx` first)."""
    from msemoboost.export import export
    from msemoboost.inference import load_classifier, predict
    from msemoboost.onnx_runtime import ONNXClassifier

    classifier, extractor = load_classifier(model, "cpu")
    torch_latency = stream_latency(lambda w, n: predict(classifier, extractor, w, n), classifier.config, recording)
    export(model, work / "onnx")
    engine = ONNXClassifier(work / "onnx")
    return {"torch": torch_latency, "onnx": stream_latency(engine.predict, engine.config, recording)}


if __name__ == "__main__":
    main()
