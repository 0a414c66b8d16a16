"""Calibration: the measures (ECE, log-loss, risk-coverage) on hand-computed cases and against scikit-learn, the
temperature fit, its cross-fitting over folds, and the fitted temperatures as the model, the handler and
`msemoboost predict --min_confidence` apply them."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sklearn_log_loss
from tiny import save_tiny_classifier, speech_like, tiny_model
from transformers import set_seed

from msemoboost import MSEmoBoostConfig
from msemoboost.calibration import (
    calibration_report,
    cross_fitted_temperatures,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    pooled_report,
    risk_coverage,
    softmax,
)
from msemoboost.handler import EndpointHandler, top_label

LABELS = ["anger", "happiness", "neutral", "sadness"]


def test_expected_calibration_error_by_hand():
    # top probabilities 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right): bins (13/15, 14/15] and (8/15, 9/15]
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.4 + 0.5 * (1 - 0.575), abs=1e-12)


def test_a_bin_holds_its_upper_edge_and_not_its_lower_one():
    # 0.6 = 9/15 is the upper edge of bin (8/15, 9/15]: with 0.58 (right) it makes one bin of accuracy 1/2
    probabilities = np.array([[0.6, 0.4], [0.58, 0.42]])
    assert expected_calibration_error(probabilities, np.array([1, 0])) == pytest.approx(abs(0.5 - 0.59), abs=1e-12)
    # with 0.62 instead, in the next bin: two bins, each |accuracy - confidence|
    probabilities = np.array([[0.6, 0.4], [0.62, 0.38]])
    assert expected_calibration_error(probabilities, np.array([1, 0])) == pytest.approx(0.5 * 0.6 + 0.5 * 0.38, abs=1e-12)


def test_log_loss_equals_scikit_learn_s():
    rng = np.random.default_rng(0)
    probabilities = softmax(rng.normal(size=(50, 5)) * 3)
    labels = rng.integers(0, 5, 50)
    assert log_loss(probabilities, labels) == pytest.approx(sklearn_log_loss(labels, probabilities, labels=range(5)),
                                                            abs=1e-12)


def test_risk_coverage_answers_the_most_confident_first():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0, 0])  # by confidence: 0.9 right, 0.8 wrong, 0.7 right, 0.6 right, 0.55 wrong
    table = risk_coverage(probabilities, labels, coverages=(1.0, 0.8, 0.6, 0.2))
    assert table == {
        "1": {"accuracy": 3 / 5, "threshold": 0.55, "answered": 5},
        "0.8": {"accuracy": 3 / 4, "threshold": 0.6, "answered": 4},
        "0.6": {"accuracy": 2 / 3, "threshold": 0.7, "answered": 3},
        "0.2": {"accuracy": 1.0, "threshold": 0.9, "answered": 1},
    }


def test_the_fitted_temperature_minimises_the_log_loss_and_recovers_a_known_one():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(size=(20000, 4)) * 2
    labels = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    temperature = fit_temperature(2.0 * true_logits, labels)  # twice as sharp as the truth: T = 2 calibrates it
    assert temperature == pytest.approx(2.0, abs=0.1)
    best = log_loss(softmax(2.0 * true_logits / temperature), labels)
    for other in (temperature * 0.99, temperature * 1.01, 1.0, 3.0):
        assert best <= log_loss(softmax(2.0 * true_logits / other), labels)


def test_temperature_never_changes_the_top_class_and_lowers_an_overconfident_model_s_ece():
    rng = np.random.default_rng(2)
    true_logits = rng.normal(size=(3000, 6)) * 1.5
    labels = np.array([rng.choice(6, p=p) for p in softmax(true_logits)])
    report = calibration_report(4.0 * true_logits, labels, fit_temperature(4.0 * true_logits, labels))
    assert report["ece_after"] < report["ece_before"] / 3
    assert report["log_loss_after"] < report["log_loss_before"]
    assert report["mean_confidence_after"] < report["mean_confidence_before"]
    np.testing.assert_array_equal(softmax(4.0 * true_logits).argmax(-1), softmax(true_logits).argmax(-1))


def test_cross_fitting_scores_each_fold_at_a_temperature_fitted_without_it():
    rng = np.random.default_rng(3)
    parts = {f"fold{i}": (rng.normal(size=(30, 3)) * (i + 1), rng.integers(0, 3, 30)) for i in range(3)}
    temperatures = cross_fitted_temperatures(parts)
    assert temperatures["all"] == fit_temperature(np.concatenate([p[0] for p in parts.values()]),
                                                  np.concatenate([p[1] for p in parts.values()]))
    assert temperatures["nested"]["fold1"] == fit_temperature(np.concatenate([parts["fold0"][0], parts["fold2"][0]]),
                                                              np.concatenate([parts["fold0"][1], parts["fold2"][1]]))
    with pytest.raises(ValueError, match="needs 2 folds or more, got 1"):
        cross_fitted_temperatures({"fold0": parts["fold0"]})


def test_the_pooled_report_scores_each_fold_at_its_own_temperature():
    rng = np.random.default_rng(4)
    parts = {f"fold{i}": (rng.normal(size=(40, 3)) * 3, rng.integers(0, 3, 40)) for i in range(2)}
    report = pooled_report(parts, {"fold0": 2.0, "fold1": 0.5})
    logits, labels = np.concatenate([parts["fold0"][0], parts["fold1"][0]]), np.concatenate([p[1] for p in parts.values()])
    after = softmax(np.concatenate([parts["fold0"][0] / 2.0, parts["fold1"][0] / 0.5]))
    assert report["num_items"] == 80
    assert report["ece_before"] == expected_calibration_error(softmax(logits), labels)
    assert report["ece_after"] == expected_calibration_error(after, labels)
    assert report["log_loss_after"] == log_loss(after, labels)
    assert report["risk_coverage"] == risk_coverage(after, labels)
    same = pooled_report(parts, {"fold0": 1.5, "fold1": 1.5})
    assert {k: v for k, v in same.items() if k not in ("num_items", "risk_coverage")} == {
        k: v for k, v in calibration_report(logits, labels, 1.5).items() if k != "temperature"}


@pytest.mark.parametrize("bad, message", [
    (lambda: fit_temperature(np.array([[np.nan, 0.0]]), np.array([0])), "NaN or infinite"),
    (lambda: log_loss(np.array([[0.5, 0.5]]), np.array([2])), "class indices in [0, 2)"),
    (lambda: expected_calibration_error(np.array([0.5, 0.5]), np.array([0])), "Expected probabilities (num_items"),
])
def test_bad_predictions_are_refused_with_what_is_wrong(bad, message):
    with pytest.raises(ValueError) as error:
        bad()
    assert message in str(error.value)


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_the_config_refuses_a_temperature_that_is_not_positive_and_finite(value):
    with pytest.raises(ValueError, match=f"calibration_temperature must be a positive, finite number, got {value!r}"):
        MSEmoBoostConfig(calibration_temperature=value)


def test_the_model_divides_its_logits_by_the_temperature_in_eval_mode_only():
    inputs = {"input_values": torch.from_numpy(speech_like(56000, seed=4))[None]}
    model = tiny_model()
    with torch.no_grad():
        plain = model(**inputs).logits
        model.config.calibration_temperature = 2.5
        calibrated = model(**inputs).logits
    torch.testing.assert_close(calibrated, plain / 2.5, rtol=0, atol=0)
    training = []
    for temperature in (1.0, 2.5):  # two identical models in training mode, the same dropout
        model = tiny_model(calibration_temperature=temperature).train()
        set_seed(0)  # dropout (torch) and the backbone's time masks (numpy)
        with torch.no_grad():
            training.append(model(**inputs).logits)
    torch.testing.assert_close(training[1], training[0], rtol=0, atol=0)


@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory):
    directory = save_tiny_classifier(tmp_path_factory.mktemp("calibrated"), LABELS)
    config = MSEmoBoostConfig.from_pretrained(directory)
    config.calibration_temperature, config.segment_calibration_temperature = 1.7, 0.6
    config.save_pretrained(directory)
    return directory


def test_the_handler_and_predict_give_calibrated_utterance_and_segment_probabilities(calibrated_dir):
    from msemoboost.inference import load_classifier, predict

    waveform = speech_like(120000, seed=5)
    classifier, extractor = load_classifier(str(calibrated_dir), "cpu")
    (prediction,) = predict(classifier, extractor, [waveform], ["speech.wav"])
    inputs = extractor([waveform], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        forward = classifier(**inputs).logits.softmax(-1)[0].numpy()
        base = classifier.msemoboost(**inputs)
        raw_segments = classifier.classifier(base.segment_features)
    np.testing.assert_allclose(prediction.probabilities, forward, rtol=0, atol=1e-6)
    np.testing.assert_allclose(prediction.segment_probabilities, (raw_segments / 0.6).softmax(-1).numpy(), rtol=0,
                               atol=1e-6)
    handler = EndpointHandler(str(calibrated_dir), device="cpu")
    answer = handler({"inputs": waveform.tolist(), "parameters": {"timeline": True}})
    np.testing.assert_allclose([entry["score"] for entry in answer], prediction.segment_probabilities.max(-1),
                               rtol=0, atol=1e-6)


def test_top_label_abstains_below_min_confidence():
    probabilities = np.array([0.2, 0.5, 0.3])
    assert top_label(["a", "b", "c"], probabilities) == "b"
    assert top_label(["a", "b", "c"], probabilities, 0.5) == "b"
    assert top_label(["a", "b", "c"], probabilities, 0.51) == "uncertain"


def test_predict_min_confidence_labels_uncertain_and_keeps_the_probabilities(calibrated_dir, tmp_path, capsys):
    from msemoboost.cli import main
    from msemoboost.demo import write_wav

    write_wav(tmp_path / "a.wav", speech_like(40000, seed=6), 16000)
    plain, abstaining = tmp_path / "plain.json", tmp_path / "abstaining.json"
    assert main(["predict", "--model", str(calibrated_dir), str(tmp_path / "a.wav"), "--timeline", "--output",
                 str(plain)]) == 0
    assert main(["predict", "--model", str(calibrated_dir), str(tmp_path / "a.wav"), "--timeline", "--output",
                 str(abstaining), "--min_confidence", "1"]) == 0
    plain, abstaining = json.loads(plain.read_text()), json.loads(abstaining.read_text())
    for kind in ("files", "segments"):
        assert [row["prediction"] for row in abstaining[kind]] == ["uncertain"] * len(plain[kind])
        assert [{k: v for k, v in row.items() if k != "prediction"} for row in abstaining[kind]] == [
            {k: v for k, v in row.items() if k != "prediction"} for row in plain[kind]]
    assert main(["predict", "--model", str(calibrated_dir), str(tmp_path / "a.wav"), "--min_confidence", "1.5"]) == 2
    assert "--min_confidence is a probability, from 0 to 1; got 1.5." in capsys.readouterr().err
