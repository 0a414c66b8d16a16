"""`msemoboost stream`: a JSON line per hop from stdin PCM or a growing WAV file, each equal to what
`msemoboost predict --timeline --hop_s` gives for the same window of the file; bad streams get a message."""

import io
import json
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
from tiny import save_tiny_classifier, speech_like

from msemoboost.cli import main
from msemoboost.demo import write_wav

LABELS = ["anger", "happiness", "neutral", "sadness"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("model"), LABELS)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A 5.3 s WAV file and its 16-bit samples as raw PCM bytes."""
    path = tmp_path_factory.mktemp("audio") / "talk.wav"
    write_wav(path, speech_like(84800, seed=7), 16000)
    return path, path.read_bytes()[44:]


def stream(argv: list[str], stdin: bytes, monkeypatch, capsys) -> tuple[int, list[dict], str]:
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(stdin)))
    code = main(["stream", *argv])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def timeline(model_dir, path, tmp_path, hop: str) -> list[dict]:
    output = tmp_path / "timeline.json"
    assert main(["predict", "--model", str(model_dir), str(path), "--timeline", "--hop_s", hop, "--output",
                 str(output)]) == 0
    return json.loads(output.read_text())["segments"]


def assert_same_windows(lines: list[dict], rows: list[dict]) -> None:
    assert [(line["start"], line["end"], line["time"]) for line in lines] == [(row["start"], row["end"], row["end"])
                                                                             for row in rows]
    assert [line["label"] for line in lines] == [row["prediction"] for row in rows]
    for line, row in zip(lines, rows):
        np.testing.assert_allclose([line["probabilities"][label] for label in LABELS], [row[label] for label in LABELS],
                                   rtol=0, atol=1e-5)
        assert line["score"] == max(line["probabilities"].values())


@pytest.mark.parametrize("hop", ["1", "0.75"])
def test_every_line_equals_predict_timeline_on_the_same_window(model_dir, recording, tmp_path, monkeypatch, capsys, hop):
    path, pcm = recording
    rows = timeline(model_dir, path, tmp_path, hop)
    capsys.readouterr()
    code, lines, _ = stream(["--model", str(model_dir), "--hop_s", hop], pcm, monkeypatch, capsys)
    assert code == 0 and len(lines) == len(rows) == (6 if hop == "1" else 8)
    assert_same_windows(lines, rows)


def test_float_pcm_and_a_wav_file_growing_while_it_is_read_give_the_same_lines(model_dir, recording, tmp_path,
                                                                             monkeypatch, capsys):
    path, pcm = recording
    _, expected, _ = stream(["--model", str(model_dir)], pcm, monkeypatch, capsys)
    floats = (np.frombuffer(pcm, "<i2").astype(np.float32) / 32768).astype("<f4").tobytes()
    _, lines, _ = stream(["--model", str(model_dir), "--format", "f32le"], floats, monkeypatch, capsys)
    assert lines == expected
    growing = tmp_path / "growing.wav"
    growing.write_bytes(path.read_bytes()[:44])

    def write_slowly():
        with open(growing, "ab") as file:
            for start in range(0, len(pcm), 8000):
                file.write(pcm[start : start + 8000])
                file.flush()
                time.sleep(0.05)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    _, lines, _ = stream(["--model", str(model_dir), "--input", str(growing), "--follow_s", "1"], b"", monkeypatch, capsys)
    writer.join()
    assert lines == expected


def test_a_stream_ending_mid_sample_keeps_its_lines_and_says_so(model_dir, recording, monkeypatch, capsys):
    _, pcm = recording
    code, lines, err = stream(["--model", str(model_dir)], pcm[: 2 * 40000 + 1], monkeypatch, capsys)
    assert code == 1 and [line["end"] for line in lines] == [1.0, 2.0, 2.5]
    assert ("the stream ended mid-sample: 1 byte(s) of a 2-byte s16le sample left over. The 3 line(s) before it "
            "were written.") in err


@pytest.mark.parametrize("argv, stdin, code, message", [
    (["--sampling_rate", "8000"], b"", 2, "the stream is at 8000 Hz and the model takes 16000 Hz: resample it first"),
    ([], b"", 1, "the stream held no audio; nothing was written."),
    ([], bytes(64000), 0, "the stream held only silence (2.0 s of zeros); its 2 line(s) classify silence."),
    (["--hop_s", "0"], b"", 2, "--hop_s must be a positive number of seconds, got 0.0."),
    (["--min_confidence", "2"], b"", 2, "--min_confidence is a probability, from 0 to 1; got 2.0."),
    (["--format", "f32le"], np.array([0.1, np.nan], "<f4").tobytes(), 1, "the stream holds NaN or infinite samples"),
])
def test_bad_streams_get_a_message_and_no_traceback(model_dir, monkeypatch, capsys, argv, stdin, code, message):
    got, _, err = stream(["--model", str(model_dir), *argv], stdin, monkeypatch, capsys)
    assert got == code and message in err and "Traceback" not in err


def test_a_wav_input_at_another_rate_or_not_a_wav_is_named(model_dir, tmp_path, monkeypatch, capsys):
    write_wav(tmp_path / "a.wav", speech_like(22050), 22050)
    code, _, err = stream(["--model", str(model_dir), "--input", str(tmp_path / "a.wav")], b"", monkeypatch, capsys)
    assert code == 2 and f"{tmp_path / 'a.wav'} is at 22050 Hz and the model takes 16000 Hz" in err
    (tmp_path / "b.wav").write_bytes(b"not audio at all" * 10)
    code, _, err = stream(["--model", str(model_dir), "--input", str(tmp_path / "b.wav")], b"", monkeypatch, capsys)
    assert code == 2 and f"{tmp_path / 'b.wav'}: not a WAV file (no RIFF/WAVE header)" in err


def test_the_microphone_without_sounddevice_names_the_extra(model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    code, _, err = stream(["--model", str(model_dir), "--microphone"], b"", monkeypatch, capsys)
    assert code == 2 and "--microphone needs sounddevice and PortAudio: pip install 'msemoboost[stream]'" in err


def test_the_package_imports_without_the_stream_and_vad_extras():
    script = ("import sys; sys.modules['silero_vad'] = None; sys.modules['sounddevice'] = None; "
              "import msemoboost, msemoboost.cli, msemoboost.timeline, msemoboost.streaming; print('ok')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
