"""`msemoboost export` of every backbone type and ablation, with parity, and the error that names an operator the
exporter cannot translate. In a file of their own so that the test workers (`--dist loadfile`) share the export tests."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msemoboost import MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification
from msemoboost.export import export
from msemoboost.onnx_runtime import ONNXClassifier
from msemoboost.modeling_msemoboost import MSEmoBoostSelfAttention
from onnx_models import FEWER_MFCC_FRAMES, pytorch_logits, save_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("variant", [{"model_type": "hubert"}, {"model_type": "wavlm"}, {"model_type": "data2vec-audio"},
                                     {"use_mfcc": False, "use_spectrogram": False}],
                         ids=["hubert", "wavlm", "data2vec-audio", "backbone only"])
def test_every_backbone_and_ablation_exports_with_parity(variant, tmp_path, emodb_utterances):
    model_dir = save_model(tmp_path / "model", **FEWER_MFCC_FRAMES, **variant)
    export(model_dir, tmp_path / "onnx")
    waveforms = emodb_utterances[:3]
    logits, _ = ONNXClassifier(tmp_path / "onnx")(waveforms)
    np.testing.assert_allclose(logits, pytorch_logits(model_dir, waveforms), atol=1e-4, rtol=0)


def test_the_statistics_export_with_parity_under_a_classifier_as_steep_as_a_trained_one(tmp_path, emodb_utterances):
    """Guidance only, with the MFCC and prosody statistics, classified, and per utterance too with their
    distributions and the log-mel functionals. The statistics classifier is fitted as steeply as a trained one (a
    CPU-preset fold's reads up to 25 logits per unit of a statistic): standardised by the statistics' own spread over the utterances, weight 3. The
    whole-utterance MFCC's STFT runs in float64 in both paths (`UTTERANCE_FFT_DTYPE`); in float32 this model's two
    paths were 2.9e-4 apart, and 3.6e-5 in float64."""
    model_dir = save_model(tmp_path / "model", **FEWER_MFCC_FRAMES, use_backbone_features=False,
                           mfcc_normalization="standardize", mfcc_statistics=True, prosody_statistics=True,
                           classify_statistics=True, utterance_statistics_classifier=True,
                           utterance_distribution_statistics=True, utterance_log_mel_statistics=True,
                           utterance_statistics_weight=3.0)
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir).eval()
    extractor = MSEmoBoostFeatureExtractor.from_pretrained(model_dir)
    with torch.no_grad():
        statistics = model.utterance_statistics(**extractor(emodb_utterances, sampling_rate=16000, return_tensors="pt"))
        classifier = model.statistics_classifier
        classifier.mean.copy_(statistics.mean(0))
        classifier.scale.copy_(statistics.std(0).clamp(min=1e-3))
        classifier.weight.normal_(0.0, 0.15, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(model_dir)
    export(model_dir, tmp_path / "onnx")
    engine = ONNXClassifier(tmp_path / "onnx")
    expected = pytorch_logits(model_dir, emodb_utterances)
    assert np.abs(expected).max() > 20
    np.testing.assert_allclose(engine(emodb_utterances)[0], expected, atol=1e-4, rtol=0)
    for waveform, row in zip(emodb_utterances, expected):
        np.testing.assert_allclose(engine([waveform])[0][0], row, atol=1e-4, rtol=0)


def test_a_speaker_normalised_model_exports_its_regression_for_recordings_without_a_group(tmp_path, emodb_utterances):
    """The graph takes no groups: it classifies each recording alone, with the ungrouped regression at its own weight
    (`ungrouped_statistics_weight`), as PyTorch does without `group_ids`."""
    model_dir = save_model(tmp_path / "model", **FEWER_MFCC_FRAMES, use_backbone_features=False, mfcc_statistics=True,
                           utterance_statistics_classifier=True, speaker_normalization=True,
                           utterance_statistics_weight=3.0, ungrouped_statistics_weight=2.0)
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir).eval()
    inputs = MSEmoBoostFeatureExtractor.from_pretrained(model_dir)(emodb_utterances, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():  # two regressions as steep as fitted ones, on statistics standardised by their own spread
        classifier, statistics = model.statistics_classifier, model.utterance_statistics(**inputs)
        classifier.mean.copy_(statistics.mean(0))
        classifier.scale.copy_(statistics.std(0).clamp(min=1e-3))
        classifier.ungrouped_weight.normal_(0.0, 0.15, generator=torch.Generator().manual_seed(1))
        classifier.weight.normal_(0.0, 0.15, generator=torch.Generator().manual_seed(2))
    model.save_pretrained(model_dir)
    export(model_dir, tmp_path / "onnx")
    expected = pytorch_logits(model_dir, emodb_utterances)
    with torch.no_grad():
        alone = model.statistics_classifier(model.utterance_statistics(**inputs)).numpy()
        network = expected - model.statistics_logits(**inputs).numpy()
    np.testing.assert_allclose(expected, network + 2.0 * alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ONNXClassifier(tmp_path / "onnx")(emodb_utterances)[0], expected, atol=1e-4, rtol=0)


def test_an_operator_the_exporter_cannot_translate_is_named(monkeypatch, tmp_path):
    def three_dimensional_attention(self, hidden_states):  # the exporter only translates 4-D attention
        return hidden_states + F.scaled_dot_product_attention(
            self.query(hidden_states), self.key(hidden_states), self.value(hidden_states))

    monkeypatch.setattr(MSEmoBoostSelfAttention, "forward", three_dimensional_attention)
    with pytest.raises(ValueError, match=r"^Cannot export this model \(wav2vec2 backbone\) to ONNX: operator "
                                         r"aten\.scaled_dot_product_attention\.default cannot be translated \(.*4D"):
        export(save_model(tmp_path / "model", **FEWER_MFCC_FRAMES), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
