"""A small synthetic emotional-speech corpus, generated deterministically, for the offline demo and the tests.

Six "speakers" (from low to high voices) utter voiced, syllable-like sounds in four "emotions" that differ the way
acted emotions tend to: pitch level and range, loudness, speaking rate and voice quality. It is no substitute for real
speech; it lets the whole pipeline run end to end without a hub, and is easy enough that a tiny model learns it.

The corpus is an `audiofolder` directory: 16-bit WAV files at 22,050 Hz (so loading exercises resampling) and a
`metadata.csv` with `file_name`, `speaker` and `emotion` columns.
"""

import csv
import wave
from pathlib import Path

import numpy as np

SAMPLING_RATE = 22_050
SPEAKERS = {"spk1": 100.0, "spk2": 112.0, "spk3": 125.0, "spk4": 140.0, "spk5": 155.0, "spk6": 170.0}  # base pitch, Hz
# pitch factor, pitch range (fraction), loudness, syllables per second, harmonic roll-off, pitch slope per second
EMOTIONS = {
    "angry": (1.50, 0.08, 0.80, 6.0, 0.3, 0.00),
    "happy": (1.60, 0.40, 0.55, 4.0, 0.8, 0.15),
    "neutral": (1.00, 0.03, 0.35, 3.0, 1.5, 0.00),
    "sad": (0.75, 0.03, 0.18, 1.8, 2.5, -0.15),
}


# Takes per speaker relative to `utterances_per_class`: the classes are imbalanced, as in real corpora, so that UA
# (mean per-class recall) and WA (accuracy) differ.
CLASS_IMBALANCE = {"angry": 1, "happy": 0, "neutral": 0, "sad": -1}


def synthesize(emotion: str, base_pitch: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """One utterance of `duration_s` seconds as float32 samples in [-1, 1]."""
    pitch_factor, pitch_range, loudness, syllable_rate, roll_off, slope = EMOTIONS[emotion]
    t = np.arange(int(duration_s * SAMPLING_RATE)) / SAMPLING_RATE
    wobble = rng.uniform(1.5, 3.0)
    pitch = base_pitch * pitch_factor * (1 + pitch_range * np.sin(2 * np.pi * wobble * t + rng.uniform(0, 6.28)))
    pitch *= 1 + slope * t
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLING_RATE
    voiced = sum(np.sin(k * phase) / k**roll_off for k in range(1, 12))
    rate = syllable_rate * rng.uniform(0.9, 1.1)
    envelope = np.clip(np.sin(np.pi * rate * t + rng.uniform(0, 3.14)), 0, None) ** 0.7
    signal = loudness * envelope * voiced / 3 + 0.01 * rng.standard_normal(len(t))
    return np.clip(signal, -1, 1).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> None:
    """A mono 16-bit PCM WAV file of `samples` in [-1, 1] (values outside are clipped)."""
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sampling_rate)
        file.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def make_demo_corpus(directory: str | Path, utterances_per_class: int = 4, seed: int = 0) -> Path:
    """Writes the corpus into `directory` (same files for the same arguments) and returns the directory.

    Each speaker has `utterances_per_class` takes of each emotion, plus `CLASS_IMBALANCE`'s offset (at least 1)."""
    directory = Path(directory)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for speaker, base_pitch in SPEAKERS.items():
        for emotion in EMOTIONS:
            for take in range(max(1, utterances_per_class + CLASS_IMBALANCE[emotion])):
                name = f"audio/{speaker}_{emotion}_{take:02d}.wav"
                write_wav(directory / name, synthesize(emotion, base_pitch, rng.uniform(1.5, 4.0), rng))
                rows.append({"file_name": name, "speaker": speaker, "emotion": emotion})
    with open(directory / "metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["file_name", "speaker", "emotion"])
        writer.writeheader()
        writer.writerows(rows)
    return directory
