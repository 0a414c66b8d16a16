"""The Inference Endpoints handler that every saved model directory carries (`handler.py`, `EndpointHandler`)."""

import base64
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import save_tiny_classifier, speech_like

import msemoboost
from msemoboost.handler import float_wav
from msemoboost.inference import load_classifier, predict

LABELS = ["anger", "happiness", "neutral", "sadness"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("model"), LABELS)


@pytest.fixture(scope="module")
def handler(model_dir):
    """The handler as Inference Endpoints loads it: `handler.py` imported from the model directory itself."""
    spec = importlib.util.spec_from_file_location("endpoint_handler", model_dir / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def reference(model_dir):
    """What `msemoboost predict` computes for the same 7.5 s recording."""
    waveform = speech_like(120000, seed=3)
    classifier, extractor = load_classifier(str(model_dir), "cpu")
    return waveform, predict(classifier, extractor, [waveform], ["speech.wav"])[0]


def test_save_pretrained_writes_the_handler_beside_the_model(model_dir):
    assert (model_dir / "handler.py").read_bytes() == (Path(msemoboost.__file__).parent / "handler.py").read_bytes()


def test_audio_bytes_base64_and_samples_give_the_predict_command_s_scores(handler, reference):
    waveform, expected = reference
    order = np.argsort(-expected.probabilities, kind="stable")
    wav = float_wav(waveform, 16000)
    for inputs in (wav, base64.b64encode(wav).decode(), waveform.tolist(), {"array": waveform, "sampling_rate": 16000}):
        answer = handler({"inputs": inputs})
        assert [item["label"] for item in answer] == [LABELS[i] for i in order]
        np.testing.assert_allclose([item["score"] for item in answer], expected.probabilities[order], rtol=0, atol=1e-6)
        json.dumps(answer)


def test_top_k_and_min_confidence(handler, reference):
    waveform, expected = reference
    top = float(expected.probabilities.max())
    answer = handler({"inputs": waveform.tolist(), "parameters": {"top_k": 2}})
    assert len(answer) == 2 and answer[0]["score"] >= answer[1]["score"]
    unsure = handler({"inputs": waveform.tolist(), "parameters": {"min_confidence": 1.0, "top_k": 1}})
    assert unsure[0] == {"label": "uncertain", "score": pytest.approx(top, abs=1e-6)}
    assert unsure[1]["label"] == LABELS[int(expected.probabilities.argmax())]
    sure = handler({"inputs": waveform.tolist(), "parameters": {"min_confidence": 0.0}})
    assert sure[0]["label"] != "uncertain" and len(sure) == len(LABELS)


def test_timeline_gives_each_segment_s_scores_and_bounds(handler, reference):
    waveform, expected = reference
    timeline = handler({"inputs": waveform.tolist(), "parameters": {"timeline": True, "min_confidence": 1.0}})
    assert [(entry["start"], entry["end"]) for entry in timeline] == [tuple(b) for b in expected.segment_bounds.tolist()]
    for entry, row in zip(timeline, expected.segment_probabilities, strict=True):
        assert entry["label"] == "uncertain" and entry["score"] == pytest.approx(float(row.max()), abs=1e-6)
        assert [item["label"] for item in entry["scores"]] == [LABELS[i] for i in np.argsort(-row, kind="stable")]
    json.dumps(timeline)


def test_samples_at_another_rate_are_resampled_by_ffmpeg_as_a_file_would_be(handler):
    waveform = speech_like(40000, seed=1)[::2].copy()  # 2.5 s at 8 kHz
    as_samples = handler({"inputs": waveform.tolist(), "parameters": {"sampling_rate": 8000}})
    as_file = handler({"inputs": float_wav(waveform, 8000)})
    assert as_samples == as_file


@pytest.mark.parametrize("data, message", [
    ({"audio": b"RIFF"}, 'The request needs "inputs"'),
    ({"inputs": b""}, "the audio is empty (0 bytes)"),
    ({"inputs": b"this is not audio at all" * 10}, "FFmpeg cannot read this audio"),
    ({"inputs": "not base64!"}, "a string must be the base64 text of an audio file"),
    ({"inputs": [[0.1, 0.2], [0.3, 0.4]]}, "samples must be one channel"),
    ({"inputs": [0.1, float("nan")] * 8000}, "NaN or infinite samples"),
    ({"inputs": [0.1] * 10}, "too short for this model"),
    ({"inputs": {"sampling_rate": 16000}}, 'a dict needs "array"'),
    ({"inputs": [0.1] * 16000, "parameters": {"top_k": 0}}, "top_k must be a positive integer, got 0"),
    ({"inputs": [0.1] * 16000, "parameters": {"min_confidence": 2}}, "min_confidence must be a number from 0 to 1"),
    ({"inputs": [0.1] * 16000, "parameters": {"language": "de"}}, "Unknown parameters ['language']"),
])
def test_bad_requests_get_a_message_saying_what_is_wrong(handler, data, message):
    with pytest.raises(ValueError) as error:
        handler(data)
    assert message in str(error.value)


def test_the_handler_runs_the_model_as_its_forward_does(handler, reference):
    waveform, expected = reference
    inputs = handler.extractor([waveform], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = handler.model(**inputs).logits
    np.testing.assert_allclose(logits.softmax(-1)[0].numpy(), expected.probabilities, rtol=0, atol=1e-6)


def test_a_model_whose_own_code_predates_calibration_is_run_as_it_was(model_dir, reference):
    """A checkpoint saved before calibration, loaded with its own remote code, has no `calibrated`: the package's
    `predict` and handler run it as that code's forward does."""
    from transformers import AutoFeatureExtractor

    from msemoboost import MSEmoBoostForSequenceClassification
    from msemoboost.handler import log_probabilities

    class Old(MSEmoBoostForSequenceClassification):
        calibrated = None

    Old.__module__ = MSEmoBoostForSequenceClassification.__module__
    waveform, expected = reference
    old = Old.from_pretrained(model_dir).eval()
    old.config.calibration_temperature = 3.0  # ignored: the old code knows no temperature
    extractor = AutoFeatureExtractor.from_pretrained(model_dir, trust_remote_code=True)
    utterance, segments, _ = log_probabilities(old, extractor, [waveform])
    np.testing.assert_allclose(utterance[0].exp().numpy(), expected.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(segments.exp().numpy(), expected.segment_probabilities, rtol=0, atol=1e-6)

