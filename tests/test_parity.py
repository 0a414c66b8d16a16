"""What transformers checks of every model (in the spirit of its `ModelTesterMixin`), for each backbone family."""

import pytest
import torch
from tiny import speech_like, tiny_config
from transformers import AutoModelForAudioClassification, set_seed

from msemoboost import MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification

BACKBONES = ["wav2vec2", "hubert", "wavlm", "data2vec-audio"]
EXTRACTOR = MSEmoBoostFeatureExtractor()


def batch(waveforms):
    return EXTRACTOR(waveforms, sampling_rate=16000, return_tensors="pt")


def model_for(model_type: str, **overrides) -> MSEmoBoostForSequenceClassification:
    torch.manual_seed(0)
    return MSEmoBoostForSequenceClassification(tiny_config(model_type, **overrides)).eval()


WAVEFORMS = [speech_like(56_000), speech_like(20_000, 1), speech_like(48_000, 2)]


@pytest.mark.parametrize("model_type", BACKBONES)
def test_save_and_load_give_equal_outputs(model_type, tmp_path):
    model = model_for(model_type)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    inputs = batch(WAVEFORMS)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    assert loaded.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("model_type", BACKBONES)
def test_a_batch_gives_what_each_utterance_gives_alone(model_type):
    model = model_for(model_type)
    with torch.no_grad():
        batched = model(**batch(WAVEFORMS)).logits
        alone = torch.cat([model(**batch([waveform])).logits for waveform in WAVEFORMS])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", BACKBONES)
def test_every_trainable_parameter_gets_a_gradient(model_type):
    model = model_for(model_type, backbone_config={"model_type": model_type, "layerdrop": 0.0, "mask_time_prob": 0.0,
                                                   **_tiny_backbone(model_type)}).train()
    model(**batch(WAVEFORMS), labels=torch.tensor([0, 1, 2])).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    # WavLM's relative-position bias of layers above the first is unused by design (it is computed in layer 0).
    missing = [name for name in missing if not (model_type == "wavlm" and "rel_attn_embed" in name)]
    assert missing == []


@pytest.mark.parametrize("model_type", BACKBONES)
def test_training_mode_is_deterministic_under_a_seed(model_type):
    model = model_for(model_type).train()
    inputs, labels = batch(WAVEFORMS), torch.tensor([0, 1, 2])
    losses = []
    for _ in range(2):
        set_seed(123)  # python, numpy (SpecAugment masks are drawn with numpy) and torch
        losses.append(model(**inputs, labels=labels).loss)
    assert torch.equal(losses[0], losses[1])
    set_seed(7)
    assert not torch.equal(model(**inputs, labels=labels).loss, losses[0])  # dropout does act in training mode


@pytest.mark.slow  # inductor compiles C++: about a minute on 2 cores
@pytest.mark.parametrize("model_type", ["wav2vec2"])
def test_compiled_inference_gives_the_eager_logits(model_type):
    model = model_for(model_type)
    inputs = batch([speech_like(30_000)])
    with torch.no_grad():
        eager = model(**inputs).logits
        compiled = torch.compile(model)(**inputs).logits
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", BACKBONES)
def test_a_new_head_loads_with_ignore_mismatched_sizes(model_type, tmp_path):
    model = model_for(model_type)
    model.save_pretrained(tmp_path)
    labels = ["anger", "boredom", "disgust", "fear", "happiness", "sadness"]
    relabelled = MSEmoBoostForSequenceClassification.from_pretrained(
        tmp_path, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    assert relabelled.classifier.weight.shape == (6, model.classifier.in_features)
    for name, tensor in model.msemoboost.state_dict().items():
        assert torch.equal(relabelled.msemoboost.state_dict()[name], tensor), name
    with torch.no_grad():
        assert relabelled.eval()(**batch(WAVEFORMS[:1])).logits.shape == (1, 6)


def _tiny_backbone(model_type: str) -> dict:
    from tiny import TINY_BACKBONE

    backbone = dict(TINY_BACKBONE)
    if model_type == "data2vec-audio":
        backbone.pop("num_conv_pos_embedding_groups")
    return backbone
