"""`msemoboost export` of every backbone type and ablation, with parity, and the error that names an operator the
exporter cannot translate. In a file of their own so that the test workers (`--dist loadfile`) share the export tests."""

import numpy as np
import pytest
import torch.nn.functional as F

from msemoboost.export import ONNXClassifier, export
from msemoboost.modeling_msemoboost import MSEmoBoostSelfAttention
from onnx_models import FEWER_MFCC_FRAMES, pytorch_logits, save_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("variant", [{"model_type": "hubert"}, {"model_type": "wavlm"}, {"model_type": "data2vec-audio"},
                                     {"use_backbone_features": False, "mfcc_normalization": "standardize", "mfcc_statistics": True,
                                      "prosody_statistics": True, "classify_statistics": True,
                                      "utterance_statistics_classifier": True, "utterance_distribution_statistics": True},
                                     {"use_mfcc": False, "use_spectrogram": False}],
                         ids=["hubert", "wavlm", "data2vec-audio", "guidance only, MFCC and prosody statistics, classified, per utterance too, with their distributions", "backbone only"])
def test_every_backbone_and_ablation_exports_with_parity(variant, tmp_path, emodb_utterances):
    model_dir = save_model(tmp_path / "model", **FEWER_MFCC_FRAMES, **variant)
    export(model_dir, tmp_path / "onnx")
    waveforms = emodb_utterances[:3]
    logits, _ = ONNXClassifier(tmp_path / "onnx")(waveforms)
    np.testing.assert_allclose(logits, pytorch_logits(model_dir, waveforms), atol=1e-4, rtol=0)


def test_an_operator_the_exporter_cannot_translate_is_named(monkeypatch, tmp_path):
    def three_dimensional_attention(self, hidden_states):  # the exporter only translates 4-D attention
        return hidden_states + F.scaled_dot_product_attention(
            self.query(hidden_states), self.key(hidden_states), self.value(hidden_states))

    monkeypatch.setattr(MSEmoBoostSelfAttention, "forward", three_dimensional_attention)
    with pytest.raises(ValueError, match=r"^Cannot export this model \(wav2vec2 backbone\) to ONNX: operator "
                                         r"aten\.scaled_dot_product_attention\.default cannot be translated \(.*4D"):
        export(save_model(tmp_path / "model", **FEWER_MFCC_FRAMES), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
