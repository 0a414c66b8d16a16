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
from msemoboost.inference import (
    AUDIO_EXTENSIONS, default_device, enhancement_curve, find_audio_files, load_classifier, pad_batch, predictions,
    read_audio,
)
from tiny import read_csv, save_tiny_classifier, speech_like, tiny_model

LABELS = ["angry", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("model"), LABELS)


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


def bad_recordings(folder: Path) -> dict[str, str]:
    """Files that cannot be classified, each with the reason predict must give."""
    folder.mkdir(exist_ok=True)
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.flac").write_text("these are not audio samples\n")
    nan = tone(1.0, 16000)
    nan[100] = np.nan
    soundfile.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    soundfile.write(folder / "short.wav", tone(0.01, 16000), 16000)
    return {
        "broken.wav": "cannot be decoded: not an audio file FFmpeg can read (invalid data)",
        "empty.wav": "cannot be decoded: empty file (0 bytes)",
        "notes.flac": "cannot be decoded: no audio stream FFmpeg can read",
        "nan.wav": "contains NaN or Inf samples",
        "short.wav": "160 samples, shorter than one analysis frame (400 samples)",
    }


@pytest.mark.parametrize("output_name", ["out.csv", "out.json"])
def test_bad_files_are_skipped_one_line_each_and_every_good_file_is_written(model_dir, recordings, tmp_path, capsys, output_name):
    folder = tmp_path / "mixed"
    good = list(recordings.glob("*.wav"))[:2]
    reasons = bad_recordings(folder)
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    output = tmp_path / output_name
    assert main(["predict", str(folder), "--model", str(model_dir), "--output", str(output), "--batch_size", "3"]) == 1
    error = capsys.readouterr().err
    for name, reason in reasons.items():
        assert f"skipped {folder / name}: {reason}\n" in error
    assert f"{len(reasons)} of {len(reasons) + 2} recording(s) skipped:" in error
    assert ".cpp" not in error and "Decoder" not in error
    if output_name.endswith(".csv"):
        written = [Path(row["file"]).name for row in read_csv(output)]
    else:
        written = [Path(row["file"]).name for row in json.loads(output.read_text())["files"]]
    assert sorted(written) == sorted(path.name for path in good)
    assert [path.name for path in tmp_path.iterdir() if "partial" in path.name] == []


def test_a_recording_the_model_refuses_is_skipped_and_its_batch_mates_are_classified(model_dir, tmp_path, capsys, monkeypatch):
    from msemoboost.modeling_msemoboost import MSEmoBoostModel

    refused_length = 36_000  # decodes and passes every check of the audio; the model refuses it
    check = MSEmoBoostModel.utterance_lengths

    def refusing(self, input_values, attention_mask):
        lengths = check(self, input_values, attention_mask)
        if (lengths == refused_length).any():
            raise ValueError(f"utterance(s) {(lengths == refused_length).nonzero().flatten().tolist()} refused here.")
        return lengths

    monkeypatch.setattr(MSEmoBoostModel, "utterance_lengths", refusing)
    lengths = {"a.wav": 20_000, "b.wav": refused_length, "c.wav": 52_000, "d.wav": 30_000}
    for seed, (name, length) in enumerate(lengths.items()):
        soundfile.write(tmp_path / name, speech_like(length, seed), 16000, subtype="FLOAT")
    output = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path), "--model", str(model_dir), "--output", str(output), "--batch_size", "4"]) == 1

    error = capsys.readouterr().err
    assert f"skipped {tmp_path / 'b.wav'}: utterance(s) [0] refused here.\n" in error
    assert "1 of 4 recording(s) skipped:" in error
    rows = read_csv(output)
    assert [Path(row["file"]).name for row in rows] == ["a.wav", "c.wav", "d.wav"]
    classifier, extractor = load_classifier(str(model_dir), "cpu")
    for row in rows:
        with torch.no_grad():
            inputs = extractor(read_audio(row["file"], 16000), sampling_rate=16000, return_tensors="pt")
            expected = classifier(**inputs).logits.softmax(-1)[0]
        np.testing.assert_allclose([float(row[label]) for label in LABELS], expected.numpy(), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def normalizing_model_dir(tmp_path_factory) -> Path:
    """A model trained with speaker normalisation: its statistics classifier reads statistics standardised by group."""
    directory = tmp_path_factory.mktemp("normalizing")
    model = tiny_model(id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
                       mfcc_statistics=True, utterance_statistics_classifier=True, speaker_normalization=True)
    classifier = model.statistics_classifier
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=torch.Generator().manual_seed(0)))
        classifier.scale.fill_(3.0)
    model.save_pretrained(directory)
    MSEmoBoostFeatureExtractor().save_pretrained(directory)
    return directory


def speakers_in_folders(root: Path) -> dict[str, list[Path]]:
    """Two folders, one speaker each, of 3 recordings: each folder is one group."""
    folders = {}
    for speaker, (pitch_seed, lengths) in {"anna": (0, (20_000, 36_000, 28_000)), "ben": (5, (30_000, 24_000, 41_000))}.items():
        (root / speaker).mkdir(parents=True)
        folders[speaker] = []
        for number, length in enumerate(lengths):
            path = root / speaker / f"{number}.wav"
            soundfile.write(path, speech_like(length, pitch_seed + number), 16000, subtype="FLOAT")
            folders[speaker].append(path)
    return folders


def grouped_probabilities(model_dir: Path, files: list[Path]) -> np.ndarray:
    """The model's probabilities of `files`, one group, each batch normalised by the group's statistics."""
    classifier, extractor = load_classifier(str(model_dir), "cpu")
    waveforms = [read_audio(path, 16000) for path in files]
    with torch.no_grad():
        statistics = torch.cat([classifier.utterance_statistics(**extractor([w], sampling_rate=16000, return_tensors="pt"))
                                for w in waveforms])
        mean, scale = classifier.group_normalization(statistics, torch.zeros(len(files), dtype=torch.long))
        return np.stack([
            classifier(**extractor([w], sampling_rate=16000, return_tensors="pt"), group_mean=mean[[row]],
                       group_scale=scale[[row]]).logits.softmax(-1)[0].numpy()
            for row, w in enumerate(waveforms)
        ])


def test_group_by_folder_normalises_each_folder_s_recordings_by_their_own_statistics(normalizing_model_dir, tmp_path, capsys):
    folders = speakers_in_folders(tmp_path / "audio")
    output = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "audio"), "--model", str(normalizing_model_dir), "--group_by", "folder",
                 "--output", str(output), "--batch_size", "2"]) == 0
    rows = {row["file"]: row for row in read_csv(output)}
    assert list(next(iter(rows.values())))[:3] == ["file", "group", "prediction"]
    for speaker, files in folders.items():
        expected = grouped_probabilities(normalizing_model_dir, files)
        for path, wanted in zip(files, expected):
            assert rows[str(path)]["group"] == str(tmp_path / "audio" / speaker)
            np.testing.assert_allclose([float(rows[str(path)][label]) for label in LABELS], wanted, rtol=0, atol=1e-5)
    main(["predict", str(tmp_path / "audio"), "--model", str(normalizing_model_dir), "--output", str(tmp_path / "plain.csv")])
    assert ("Note: this model was trained with speaker normalisation; without --group_by folder or --group_column, each "
            "recording is standardised by the training data's statistics") in capsys.readouterr().err
    plain = read_csv(tmp_path / "plain.csv")
    assert "group" not in plain[0]  # without grouping, predict is as it always was: the training data's statistics
    assert max(abs(float(row[label]) - float(rows[row["file"]][label])) for row in plain for label in LABELS) > 1e-3


def test_without_groups_a_model_with_the_ungrouped_regression_classifies_each_recording_by_it(tmp_path, capsys):
    model = tiny_model(id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
                       mfcc_statistics=True, utterance_statistics_classifier=True, speaker_normalization=True,
                       ungrouped_statistics_weight=2.0)
    classifier = model.statistics_classifier
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=torch.Generator().manual_seed(0)))
        classifier.ungrouped_weight.copy_(torch.randn(classifier.weight.shape, generator=torch.Generator().manual_seed(1)))
        classifier.scale.fill_(3.0)
    model.save_pretrained(tmp_path / "model")
    MSEmoBoostFeatureExtractor().save_pretrained(tmp_path / "model")
    files = speakers_in_folders(tmp_path / "audio")["anna"]
    assert main(["predict", *map(str, files), "--model", str(tmp_path / "model"), "--output", str(tmp_path / "out.csv")]) == 0
    assert ("without --group_by folder or --group_column, each recording is classified alone, by the statistics regression "
            "fitted for recordings without a group (README, Speaker normalisation).") in capsys.readouterr().err
    rows = read_csv(tmp_path / "out.csv")
    model.eval()
    extractor = MSEmoBoostFeatureExtractor()
    for path, row in zip(files, rows):
        inputs = extractor([read_audio(path, 16000)], sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            network = model(**inputs).logits - model.statistics_logits(**inputs)
            wanted = (network + 2.0 * classifier(model.utterance_statistics(**inputs))).softmax(-1)[0].numpy()
        np.testing.assert_allclose([float(row[label]) for label in LABELS], wanted, rtol=0, atol=1e-5)


def test_group_column_groups_the_rows_of_a_dataset(normalizing_model_dir, tmp_path):
    folders = speakers_in_folders(tmp_path / "corpus" / "audio")
    with open(tmp_path / "corpus" / "metadata.csv", "w") as file:
        file.write("file_name,speaker\n")
        for speaker, files in folders.items():
            file.writelines(f"audio/{speaker}/{path.name},{speaker}\n" for path in files)
    output = tmp_path / "out.json"
    assert main(["predict", "--dataset_name", str(tmp_path / "corpus"), "--group_column", "speaker", "--model",
                 str(normalizing_model_dir), "--output", str(output)]) == 0
    rows = json.loads(output.read_text())["files"]
    for speaker, files in folders.items():
        found = [row for row in rows if row["group"] == speaker]
        assert sorted(Path(row["file"]).name for row in found) == [path.name for path in files]
        expected = grouped_probabilities(normalizing_model_dir, [folders[speaker][int(Path(r["file"]).stem)] for r in found])
        np.testing.assert_allclose([[row[label] for label in LABELS] for row in found], expected, rtol=0, atol=1e-5)


def test_grouping_is_refused_where_it_cannot_normalise(model_dir, normalizing_model_dir, tmp_path, capsys):
    speakers_in_folders(tmp_path / "audio")
    assert main(["predict", str(tmp_path / "audio"), "--model", str(model_dir), "--group_by", "folder"]) == 2
    assert ("error: This model does not normalise by group (speaker): it was trained without --speaker_normalization"
            in capsys.readouterr().err)
    for arguments, message in [
        (["--group_column", "speaker"], "--group_column names a column of --dataset_name; for files and folders use --group_by folder"),
        (["--group_by", "folder", "--dataset_name", str(tmp_path)], "--group_by folder groups files and folders; for --dataset_name use --group_column"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", str(tmp_path / "audio"), "--model", str(normalizing_model_dir), *arguments])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "audio"), "--onnx", str(tmp_path), "--group_by", "folder"])
    assert "--group_column and --group_by need --model: the ONNX graph takes no group statistics" in capsys.readouterr().err


def test_when_no_file_can_be_classified_nothing_is_written(model_dir, tmp_path, capsys):
    bad_recordings(tmp_path / "bad")
    output = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "bad"), "--model", str(model_dir), "--output", str(output)]) == 1
    assert "No recording could be classified; nothing was written." in capsys.readouterr().err
    assert not output.exists()


def test_a_missing_or_non_model_model_is_a_usage_error(recordings, tmp_path, capsys):
    wav = str(recordings / "a_8k_mono.wav")
    assert main(["predict", wav, "--model", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert (f"msemoboost predict: error: --model {tmp_path / 'nowhere'}: cannot load an audio classifier from this model "
            "folder or reachable Hub model id (") in error
    assert "Traceback" not in error
    (tmp_path / "folder").mkdir()
    assert main(["predict", wav, "--model", str(tmp_path / "folder")]) == 2
    assert f"--model {tmp_path / 'folder'}: not a model folder (it has no config.json)." in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "not_a_model_type"}')
    assert main(["predict", wav, "--model", str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    prefix = f"msemoboost predict: error: --model {tmp_path / 'other'}: cannot load an audio classifier from this model folder ("
    assert error.startswith(prefix) and error.endswith(")")
    reason = error[len(prefix) : -1]  # transformers' own reason, on one line, at most 300 characters
    from transformers import AutoModelForAudioClassification

    with pytest.raises(ValueError) as raised:
        AutoModelForAudioClassification.from_pretrained(tmp_path / "other")
    assert reason == " ".join(str(raised.value).split())[:300] and "`not_a_model_type`" in reason


def test_explain_and_enhance_skip_a_bad_file_and_write_nothing_for_it(model_dir, tmp_path, capsys):
    bad_recordings(tmp_path / "bad")
    output = tmp_path / "explain.png"
    assert main(["explain", str(tmp_path / "bad" / "nan.wav"), "--model", str(model_dir), "--output", str(output)]) == 1
    assert f"msemoboost explain: skipped {tmp_path / 'bad' / 'nan.wav'}: contains NaN or Inf samples; nothing was written." in capsys.readouterr().err
    assert not output.exists()


def test_an_interrupted_write_leaves_no_file(tmp_path):
    from msemoboost.cli import write_atomically

    def fails_halfway(path):
        path.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "out.csv", fails_halfway)
    assert list(tmp_path.iterdir()) == []


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


def test_tsne_plots_the_models_pooled_features_in_a_png_of_the_stated_size(model_dir, corpus_dir, tmp_path, monkeypatch):
    import msemoboost.analysis
    from msemoboost.data import load_corpus
    from msemoboost.inference import pooled_features

    plotted = {}
    plot = msemoboost.analysis.plot_tsne
    monkeypatch.setattr(msemoboost.analysis, "plot_tsne", lambda path, features, labels, *rest: (
        plotted.update(features=features, labels=labels), plot(path, features, labels, *rest)))
    output = tmp_path / "tsne.png"
    assert main(["tsne", "--model", str(model_dir), "--dataset_name", str(corpus_dir), "--label_column", "emotion",
                 "--compare_baseline", "--max_utterances", "24", "--output", str(output), "--size", "1000x500"]) == 0
    assert png_size(output) == (1000, 500)
    classifier, extractor = load_classifier(str(model_dir), "cpu")
    corpus = load_corpus(str(corpus_dir), 16000, 400, label_column="emotion", speaker_column=None)
    rows = np.sort(np.random.default_rng(0).choice(len(corpus.dataset), 24, replace=False))
    expected = pooled_features(classifier, extractor, [read_audio(corpus.dataset[int(r)]["audio"], 16000) for r in rows], True)
    assert plotted["labels"] == [corpus.label_names[corpus.labels[r]] for r in rows]
    np.testing.assert_allclose(plotted["features"]["MS-EmoBoost pooled features"], expected["msemoboost"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(plotted["features"]["backbone masked mean (baseline)"], expected["baseline"], rtol=0, atol=1e-5)


def test_utterance_probabilities_stay_finite_when_confident_segments_disagree():
    # Two segments, each sure of its own class: the mean log-probabilities are about -1000 for both classes.
    segments = np.array([[0.0, -2000.0], [-2000.0, -0.5]])
    config = tiny_model().config
    found = predictions(["a.wav"], [np.zeros(96_000)], segments.mean(0, keepdims=True), [segments], config)
    np.testing.assert_allclose(found[0].probabilities, [1 / (1 + np.exp(-0.25)), 1 / (1 + np.exp(0.25))], rtol=1e-12)
    np.testing.assert_array_equal(found[0].segment_bounds, [[0.0, 3.0], [3.0, 6.0]])
    with pytest.raises(ValueError, match="zip"):  # one name per recording, or an error
        predictions(["a.wav", "b.wav"], [np.zeros(96_000)], segments.mean(0, keepdims=True), [segments], config)


def test_the_default_device_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"


def test_pad_batch_right_pads_with_zeros_and_an_int64_mask():
    padded = pad_batch([np.array([0.5, -0.25, 1.0], dtype=np.float32), np.array([2.0], dtype=np.float32)])
    assert padded["input_values"].tolist() == [[0.5, -0.25, 1.0], [2.0, 0.0, 0.0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert padded["input_values"].dtype == torch.float32 and padded["attention_mask"].dtype == torch.long


def test_find_audio_files_takes_files_as_given_and_audio_under_folders_sorted(tmp_path):
    for name in ("one/b.wav", "one/a.FLAC", "one/notes.txt", "one/take.wav/c.mp3", "two/d.ogg", "given.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_audio_files([str(tmp_path / "one"), str(tmp_path / "given.txt"), str(tmp_path / "two")])
    assert found == [tmp_path / "one/a.FLAC", tmp_path / "one/b.wav", tmp_path / "one/take.wav/c.mp3",
                     tmp_path / "given.txt", tmp_path / "two/d.ogg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=rf"^No audio files in folder {tmp_path / 'empty'} \(looked for "
                                         rf"{', '.join(AUDIO_EXTENSIONS)}\)\.$"):
        find_audio_files([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'missing.wav'}: no such file or folder\.$"):
        find_audio_files([str(tmp_path / "missing.wav")])


def test_read_audio_takes_any_non_empty_recording_unless_told_a_minimum(tmp_path):
    soundfile.write(tmp_path / "one.wav", np.array([0.25], dtype=np.float32), 16000, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(tmp_path / "one.wav", 16000), [0.25])
    with pytest.raises(ValueError, match=r"one\.wav: 1 samples, shorter than one analysis frame \(400 samples\)$"):
        read_audio(tmp_path / "one.wav", 16000, min_samples=400)


@pytest.mark.parametrize("old, new, expected", [
    (["predict", "a.wav", "--onnx", "o", "--int8"], "--quantize int8", {"quantize": "int8"}),
    (["predict", "--model", "m", "--dataset", "d"], "--dataset_name", {"dataset_name": "d"}),
    (["tsne", "--model", "m", "--dataset", "d"], "--dataset_name", {"dataset_name": "d"}),
    (["tsne", "--model", "m", "--dataset_name", "d", "--compare-baseline"], "--compare_baseline", {"compare_baseline": True}),
    (["export", "m", "--output_dir", "o"], "--model m", {"model": "m", "output_dir": "o"}),
    (["export", "--model", "m", "--output", "o"], "--output_dir", {"model": "m", "output_dir": "o"}),
    (["intensity", "score", "m", "a.wav"], "--model m", {"model": "m", "inputs": ["a.wav"]}),
    (["intensity", "score", "--model", "m", "a.wav", "--plot", "p.png"], "--output", {"output": "p.png"}),
])
def test_an_old_spelling_still_works_with_a_warning_naming_the_new_one(old, new, expected):
    from msemoboost.cli import build_parser, check_arguments

    parser = build_parser()
    with pytest.warns(FutureWarning, match=f"deprecated and will be removed; use {new}\\.$"):
        args = parser.parse_args(old)
        check_arguments(parser, args)
    assert {key: getattr(args, key) for key in expected} == expected


def test_every_command_spells_yes_no_options_one_way_and_shows_the_convention(capsys):
    from msemoboost.cli import CONVENTION, build_parser, check_arguments

    parser = build_parser()
    for words, value in ((["--timeline"], True), (["--timeline", "true"], True), (["--timeline", "false"], False), ([], False)):
        assert parser.parse_args(["predict", "a.wav", "--model", "m", *words]).timeline is value
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "a.wav", "--model", "m", "--timeline", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err
    for command in (["predict"], ["explain"], ["tsne"], ["enhance"], ["export"], ["intensity", "train"], ["intensity", "score"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--help"])
        assert " ".join(CONVENTION.split()) in " ".join(capsys.readouterr().out.split())
    from msemoboost.arguments import parse_arguments
    from msemoboost.pretraining import parse_pretraining_arguments

    for parse in (parse_arguments, parse_pretraining_arguments):  # train.py and msemoboost pretrain
        with pytest.raises(SystemExit):
            parse(["--help"])
        assert " ".join(CONVENTION.split()) in " ".join(capsys.readouterr().out.split())
    assert parse_pretraining_arguments(["--dataset_name", "d", "--output_dir", "o", "--model", "m"])[0].model_name_or_path == "m"
    args = parser.parse_args(["export", "m", "--model", "n", "--output_dir", "o"])
    with pytest.raises(SystemExit):
        check_arguments(parser, args)
    assert "give the model once: --model n, and not also m" in capsys.readouterr().err
