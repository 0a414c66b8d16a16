"""`msemoboost predict`, `explain` and `tsne` on a trained model directory."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from msemoboost import MSEmoBoostFeatureExtractor
from msemoboost.cli import main
from msemoboost.inference import enhancement_curve, load_classifier, read_audio
from tiny import read_csv, speech_like, tiny_model

LABELS = ["angry", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model")
    model = tiny_model(id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)})
    model.save_pretrained(directory)
    MSEmoBoostFeatureExtractor().save_pretrained(directory)
    return directory


def tone(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (180 + 20 * seed) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """WAV and FLAC at 8, 22.05 and 44.1 kHz, mono and stereo, in nested folders."""
    folder = tmp_path_factory.mktemp("recordings")
    (folder / "nested").mkdir()
    specs = [("a_8k_mono.wav", 8000, 1), ("b_22k_stereo.flac", 22050, 2), ("nested/c_44k_mono.flac", 44100, 1),
             ("nested/d_44k_stereo.wav", 44100, 2), ("e_16k_mono.wav", 16000, 1)]
    for seed, (name, rate, channels) in enumerate(specs):
        signal = tone(2.5 + seed, rate, seed)
        data = np.stack([signal, 0.5 * signal], axis=1) if channels == 2 else signal
        soundfile.write(folder / name, data, rate)
    return folder


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_audio_is_resampled_to_the_model_rate_and_downmixed(tmp_path):
    signal = tone(2.0, 16000)
    soundfile.write(tmp_path / "stereo.flac", np.stack([signal, 0.5 * signal], axis=1), 16000)
    np.testing.assert_allclose(read_audio(tmp_path / "stereo.flac", 16000), 0.75 * signal, atol=1e-4)
    soundfile.write(tmp_path / "high.wav", tone(2.0, 44100), 44100)
    resampled = read_audio(tmp_path / "high.wav", 16000)
    assert abs(len(resampled) - 32000) <= 1
    assert np.corrcoef(resampled[100:31900], signal[100:31900])[0, 1] > 0.999


def test_predict_gives_a_row_per_file_with_the_models_own_probabilities(model_dir, recordings, tmp_path):
    output = tmp_path / "predictions.csv"
    assert main(["predict", str(recordings), "--model", str(model_dir), "--output", str(output), "--batch_size", "2"]) == 0
    rows = read_csv(output)
    files = sorted(str(path) for path in recordings.rglob("*") if path.is_file())
    assert [row["file"] for row in rows] == files
    classifier, extractor = load_classifier(str(model_dir), "cpu")
    for row in rows:
        waveform = read_audio(row["file"], 16000)
        with torch.no_grad():
            expected = classifier(**extractor(waveform, sampling_rate=16000, return_tensors="pt")).logits.softmax(-1)[0]
        np.testing.assert_allclose([float(row[label]) for label in LABELS], expected.numpy(), rtol=0, atol=1e-5)
        assert row["prediction"] == LABELS[int(expected.argmax())]


def test_timeline_of_a_7_5_second_recording_has_three_segments_the_last_one_its_final_3s(model_dir, tmp_path):
    soundfile.write(tmp_path / "long.wav", speech_like(120_000), 16000)
    output = tmp_path / "out.json"
    assert main(["predict", str(tmp_path / "long.wav"), "--model", str(model_dir), "--timeline", "--output", str(output)]) == 0
    content = json.loads(output.read_text())
    assert [(s["segment"], s["start"], s["end"]) for s in content["segments"]] == [(0, 0.0, 3.0), (1, 3.0, 6.0), (2, 4.5, 7.5)]
    assert content["labels"] == LABELS and len(content["files"]) == 1
    for segment in content["segments"]:
        assert sum(segment[label] for label in LABELS) == pytest.approx(1.0, abs=1e-5)
    main(["predict", str(tmp_path / "long.wav"), "--model", str(model_dir), "--timeline", "--output", str(tmp_path / "out.csv")])
    assert len(read_csv(tmp_path / "out.timeline.csv")) == 3


def test_a_corrupt_file_is_named_and_the_rest_are_written(model_dir, recordings, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in list(recordings.glob("*.wav"))[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    output = tmp_path / "out.csv"
    assert main(["predict", str(folder), "--model", str(model_dir), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert "broken.wav: cannot be decoded" in error and "1 of 3 file(s) could not be read" in error
    assert sorted(Path(row["file"]).name for row in read_csv(output)) == sorted(p.name for p in list(recordings.glob("*.wav"))[:2])


def test_an_empty_folder_is_a_clear_error(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--model", str(model_dir)]) == 2
    assert f"No audio files in folder {tmp_path / 'empty'}" in capsys.readouterr().err


def test_predict_prints_a_table_and_runs_as_a_module(model_dir, recordings):
    result = subprocess.run(
        [sys.executable, "-m", "msemoboost", "predict", str(recordings / "a_8k_mono.wav"), "--model", str(model_dir)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.split() == ["file", "prediction", *LABELS]
    assert row.split()[0].endswith("a_8k_mono.wav")


def test_explain_writes_a_png_of_the_stated_size_with_one_weight_per_ssl_frame(model_dir, tmp_path):
    soundfile.write(tmp_path / "long.wav", speech_like(120_000), 16000)
    classifier, extractor = load_classifier(str(model_dir), "cpu")
    times, weights = enhancement_curve(classifier, extractor, read_audio(tmp_path / "long.wav", 16000))
    config = classifier.config
    expected_frames = 2 * config.num_backbone_frames(48_000) + config.num_backbone_frames(24_000)
    assert weights.shape == times.shape == (expected_frames,)
    assert times[0] == 0.0 and times[149] == 3.0 and np.all(np.diff(times) > 0)
    output = tmp_path / "explain.png"
    assert main(["explain", str(tmp_path / "long.wav"), "--model", str(model_dir), "--output", str(output), "--size", "900x600"]) == 0
    assert png_size(output) == (900, 600)


def test_tsne_writes_a_png_of_the_stated_size(model_dir, corpus_dir, tmp_path):
    output = tmp_path / "tsne.png"
    assert main(["tsne", "--model", str(model_dir), "--dataset", str(corpus_dir), "--label_column", "emotion",
                 "--compare-baseline", "--max_utterances", "24", "--output", str(output), "--size", "1000x500"]) == 0
    assert png_size(output) == (1000, 500)
    assert output.stat().st_size > 20_000
