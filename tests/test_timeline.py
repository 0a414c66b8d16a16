"""Timelines of long recordings: the windows (speech-only by Silero VAD, or sliding), the non-speech gaps, the merged
regions, and `msemoboost predict --timeline --vad / --hop_s`."""

import json
import subprocess
import sys

import numpy as np
import pytest
from tiny import save_tiny_classifier, speech_like

from msemoboost.cli import main
from msemoboost.demo import write_wav
from msemoboost.inference import Prediction, load_classifier, predict, read_audio
from msemoboost.timeline import (
    region_windows,
    regions,
    sliding_windows,
    speech_regions,
    speech_timeline,
    timeline_prediction,
)

LABELS = ["anger", "happiness", "neutral", "sadness"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("model"), LABELS)


@pytest.fixture(scope="module")
def talk(emodb):
    """Two EMO-DB utterances with silences around and between them: 2 s, speech, 1.5 s, speech, 1 s."""
    speech = read_audio(sorted((emodb / "audio").glob("*.flac"))[0], 16000)
    silence = [np.zeros(n, np.float32) for n in (32000, 24000, 16000)]
    return np.concatenate([silence[0], speech, silence[1], speech, speech, silence[2]]), len(speech)


def test_sliding_windows_end_on_every_hop_and_at_the_end():
    np.testing.assert_array_equal(sliding_windows(50000, 48000, 16000),
                                  [[0, 16000], [0, 32000], [0, 48000], [2000, 50000]])
    np.testing.assert_array_equal(sliding_windows(32000, 48000, 16000), [[0, 16000], [0, 32000]])
    with pytest.raises(ValueError, match="The hop must be at least one sample, got 0"):
        sliding_windows(100, 48, 0)


def test_a_speech_region_is_cut_as_the_model_cuts_an_utterance():
    np.testing.assert_array_equal(region_windows([(100, 60100), (70000, 71000)], 48000),
                                  [[100, 48100], [12100, 60100], [70000, 71000]])
    assert region_windows([], 48000).shape == (0, 2)


def test_gaps_become_non_speech_rows_and_equal_labels_merge_into_regions():
    windows = np.array([[16000, 64000], [40000, 88000], [96000, 104000]])
    probabilities = np.array([[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]])
    prediction = timeline_prediction("talk.wav", windows, probabilities, 112000, 16000, 4)
    np.testing.assert_array_equal(prediction.segment_bounds * 16000,
                                  [[0, 16000], [16000, 64000], [40000, 88000], [88000, 96000], [96000, 104000],
                                   [104000, 112000]])
    assert np.isnan(prediction.segment_probabilities[[0, 3, 5]]).all()
    np.testing.assert_allclose(prediction.probabilities, probabilities.mean(0))
    assert regions(prediction, LABELS) == [
        {"start": 0.0, "end": 1.0, "label": "non-speech"}, {"start": 1.0, "end": 5.5, "label": "anger"},
        {"start": 5.5, "end": 6.0, "label": "non-speech"}, {"start": 6.0, "end": 6.5, "label": "sadness"},
        {"start": 6.5, "end": 7.0, "label": "non-speech"}]
    # An overlapping window of another label starts where the one before it ends; below 0.65, "uncertain".
    other = Prediction("x", probabilities[0], probabilities[:2][::-1] * [[1, 1, 1, 1], [1, 1, 1, 1]],
                       np.array([[1.0, 4.0], [2.5, 5.5]]))
    assert regions(other, LABELS, min_confidence=0.65) == [{"start": 1.0, "end": 4.0, "label": "uncertain"},
                                                           {"start": 4.0, "end": 5.5, "label": "anger"}]


def test_silero_finds_the_speech_between_the_silences(talk):
    waveform, speech = talk
    found = speech_regions(waveform, 16000)
    assert len(found) == 2
    (first_start, first_end), (second_start, second_end) = found
    second = 32000 + speech + 24000
    assert 32000 - 1600 <= first_start < first_end <= 32000 + speech + 1600  # within 0.1 s of the speech
    assert second - 1600 <= second_start < second_end <= second + 2 * speech + 1600
    assert speech_regions(np.zeros(48000, np.float32), 16000) == []
    with pytest.raises(ValueError, match="Silero VAD takes 8 or 16 kHz audio; this model's rate is 22050 Hz"):
        speech_regions(waveform, 22050)


def test_the_vad_timeline_classifies_each_speech_window_on_its_own(talk, model_dir):
    waveform, _ = talk
    classifier, extractor = load_classifier(str(model_dir), "cpu")

    def run(waveforms, names):
        return predict(classifier, extractor, waveforms, names)

    timeline = speech_timeline(run, waveform, "talk.wav", classifier.config)
    speech_rows = ~np.isnan(timeline.segment_probabilities).all(1)
    windows = region_windows(speech_regions(waveform, 16000), classifier.config.segment_samples)
    np.testing.assert_allclose(timeline.segment_bounds[speech_rows] * 16000, windows, atol=1e-6)
    for (start, end), row in zip(windows, timeline.segment_probabilities[speech_rows]):
        (alone,) = run([waveform[start:end]], ["window"])
        np.testing.assert_allclose(row, alone.segment_probabilities[0], rtol=0, atol=1e-6)
    assert timeline.segment_bounds[0, 0] == 0 and np.isnan(timeline.segment_probabilities[0]).all()


def test_predict_timeline_vad_writes_windows_gaps_and_regions(talk, model_dir, tmp_path, capsys):
    waveform, _ = talk
    write_wav(tmp_path / "talk.wav", waveform, 16000)
    write_wav(tmp_path / "silence.wav", np.zeros(40000), 16000)
    output = tmp_path / "out.json"
    assert main(["predict", "--model", str(model_dir), str(tmp_path / "talk.wav"), str(tmp_path / "silence.wav"),
                 "--timeline", "--vad", "--output", str(output)]) == 0
    content = json.loads(output.read_text())
    talk_rows = [row for row in content["segments"] if row["file"].endswith("talk.wav")]
    assert [row["prediction"] == "non-speech" for row in talk_rows][:2] == [True, False]
    assert all(row[label] is None for row in talk_rows if row["prediction"] == "non-speech" for label in LABELS)
    assert talk_rows[-1]["end"] == pytest.approx(len(waveform) / 16000)
    assert f"{tmp_path / 'silence.wav'}: no speech found; its rows are all non-speech." in capsys.readouterr().err
    silence = [row for row in content["files"] if row["file"].endswith("silence.wav")][0]
    assert silence["prediction"] == "non-speech" and all(silence[label] is None for label in LABELS)
    assert [(r["start"], r["end"], r["label"]) for r in content["regions"] if r["file"].endswith("silence.wav")] == [
        (0.0, 2.5, "non-speech")]
    assert main(["predict", "--model", str(model_dir), str(tmp_path / "talk.wav"), "--timeline", "--vad", "--output",
                 str(tmp_path / "out.csv")]) == 0
    assert (tmp_path / "out.regions.csv").read_text().splitlines()[0] == "file,start,end,label"


def test_predict_timeline_hop_s_gives_sliding_windows(model_dir, tmp_path):
    write_wav(tmp_path / "a.wav", speech_like(56000, seed=2), 16000)
    output = tmp_path / "out.json"
    assert main(["predict", "--model", str(model_dir), str(tmp_path / "a.wav"), "--timeline", "--hop_s", "1",
                 "--output", str(output)]) == 0
    assert [(row["start"], row["end"]) for row in json.loads(output.read_text())["segments"]] == [
        (0.0, 1.0), (0.0, 2.0), (0.0, 3.0), (0.5, 3.5)]


@pytest.mark.parametrize("words, message", [
    (["--vad"], "--vad and --hop_s choose the windows of a timeline: add --timeline"),
    (["--timeline", "--vad", "--hop_s", "1"], "--vad classifies speech regions in the model's segments, --hop_s"),
    (["--timeline", "--vad", "--group_by", "folder"], "--vad and --hop_s classify windows on their own"),
])
def test_contradictory_timeline_options_are_refused(model_dir, words, message, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(model_dir), "a.wav", *words])
    assert message in capsys.readouterr().err


def test_voice_activity_detection_leaves_torch_s_threads_as_they_were():
    script = ("import torch; torch.set_num_threads(2); import numpy as np; from msemoboost.timeline import speech_regions; "
              "speech_regions(np.zeros(16000, np.float32), 16000); print(torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "2", result.stderr


def test_without_silero_vad_the_error_names_the_extra(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "silero_vad", None)
    write_wav(tmp_path / "a.wav", speech_like(16000), 16000)
    assert main(["predict", "--model", str(model_dir), str(tmp_path / "a.wav"), "--timeline", "--vad"]) == 2
    assert "Voice activity detection (--vad) needs silero-vad: pip install 'msemoboost[vad]'." in capsys.readouterr().err
