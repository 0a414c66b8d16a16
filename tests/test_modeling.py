"""MSEmoBoostModel and MSEmoBoostForSequenceClassification: the paper's computation and the Hugging Face surface."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModel, Wav2Vec2Config, Wav2Vec2Model, set_seed

from msemoboost import (
    SUPPORTED_BACKBONE_TYPES,
    MSEmoBoostFeatureExtractor,
    MSEmoBoostForSequenceClassification,
    MSEmoBoostModel,
    load_imagenet_alexnet,
)
from tiny import TINY_BACKBONE, speech_like, tiny_config, tiny_model

from msemoboost.acoustic_features import pre_emphasis

EXTRACTOR = MSEmoBoostFeatureExtractor()


def batch(waveforms):
    return EXTRACTOR(waveforms, sampling_rate=16000, return_tensors="pt")


def test_batched_utterances_match_single():
    model = tiny_model()
    # 0.5 s, 2 s, one segment exactly, 7.5 s (3 segments), and a 3 s + 100-sample tail that is dropped.
    waveforms = [speech_like(n, seed) for seed, n in enumerate((8_000, 32_000, 48_000, 120_000, 48_100))]
    with torch.no_grad():
        batched = model(**batch(waveforms)).logits
        single = torch.cat([model(**batch(waveform)).logits for waveform in waveforms])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_batched_real_speech_matches_single(emodb_utterances):
    model = tiny_model()
    with torch.no_grad():
        batched = model(**batch(emodb_utterances)).logits
        single = torch.cat([model(**batch(waveform)).logits for waveform in emodb_utterances])
    assert batched.shape == (len(emodb_utterances), 4)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_utterances_are_cut_into_3s_segments_the_last_one_overlapping():
    model = tiny_model().msemoboost
    waveform = torch.from_numpy(speech_like(120_000))[None]  # 7.5 s
    segments, lengths, per_utterance = model.split_into_segments(waveform, torch.tensor([120_000]))
    assert per_utterance.tolist() == [3]
    assert lengths.tolist() == [48_000, 48_000, 48_000]  # every segment is a full 3 s of audio
    assert torch.equal(segments[0], waveform[0, :48_000]) and torch.equal(segments[1], waveform[0, 48_000:96_000])
    assert torch.equal(segments[2], waveform[0, 72_000:])  # the final 3 s, overlapping the second segment


def test_only_an_utterance_shorter_than_a_segment_is_zero_padded():
    model = tiny_model().msemoboost
    waveform = torch.from_numpy(speech_like(30_000))[None]
    segments, lengths, per_utterance = model.split_into_segments(waveform, torch.tensor([30_000]))
    assert per_utterance.tolist() == [1] and lengths.tolist() == [30_000]
    assert torch.equal(segments[0, :30_000], waveform[0]) and not segments[0, 30_000:].any()


def test_the_graph_s_slot_grid_holds_the_eager_segments_then_silent_slots():
    # The ONNX graph cuts `ceil(num_samples / S)` slots per row; its real slots are the eager path's segments.
    model = tiny_model().msemoboost
    lengths = torch.tensor([120_000, 30_000, 48_100])
    waveforms = torch.from_numpy(np.stack([speech_like(120_000, seed) for seed in range(3)]))
    waveforms[1, 30_000:] = 7.0  # padding, never seen
    grid, grid_lengths, grid_per_utterance = model.segment_grid(waveforms, lengths)
    segments, segment_lengths, per_utterance = model.split_into_segments(waveforms, lengths)
    assert grid.shape == (3, 3, 48_000) and torch.equal(grid_per_utterance, per_utterance)
    # ceil(num_samples / S) slots: a row of exactly 2 S samples has 2, one sample more makes 3
    assert model.segment_grid(waveforms[:, :96_000], lengths.clamp(max=96_000))[0].shape == (3, 2, 48_000)
    assert model.segment_grid(waveforms[:, :96_001], lengths.clamp(max=96_001))[0].shape == (3, 3, 48_000)
    # the eager cut counts its slots the same way: a row of 2 S + 1 samples gives 3 segments
    longer, _, longer_count = model.split_into_segments(waveforms[:1, :96_001], torch.tensor([96_001]))
    assert longer_count.tolist() == [3] and torch.equal(longer[2], waveforms[0, 48_001:96_001])
    real = torch.arange(3)[None] < per_utterance[:, None]
    assert per_utterance.tolist() == [3, 1, 2]
    assert torch.equal(grid[real], segments) and torch.equal(grid_lengths[real], segment_lengths)
    assert not grid[~real].any() and grid_lengths[~real].tolist() == [48_000] * 3  # silent slots, masked by the graph


def test_padding_values_never_reach_the_model():
    model = tiny_model()
    inputs = batch([speech_like(20_000), speech_like(60_000, 1)])
    with torch.no_grad():
        reference = model(**inputs).logits
        inputs["input_values"][0, 20_000:] = 7.0
        assert torch.equal(model(**inputs).logits, reference)


def test_a_short_remainder_gets_no_scrap_segment_of_its_own():
    # 3.05 s: a 3 s segment and the final 3 s window, not a 50 ms scrap with a full vote.
    model = tiny_model().msemoboost
    lengths = torch.tensor([48_800, 48_000, 96_001, 799])
    starts, segment_lengths, per_utterance = model.segment_bounds(lengths)
    assert per_utterance.tolist() == [2, 1, 3, 1]
    assert starts.tolist() == [0, 800, 0, 0, 48_000, 48_001, 0]
    assert segment_lengths.tolist() == [48_000] * 6 + [799]


def test_utterance_logits_are_the_mean_of_segment_log_probabilities():
    model = tiny_model()
    inputs = batch([speech_like(120_000), speech_like(30_000, 1)])
    with torch.no_grad():
        outputs = model.msemoboost(**inputs)
        segment_log_probs = model.classifier(outputs.segment_features).log_softmax(-1)
        logits = model(**inputs).logits
    torch.testing.assert_close(logits[0], segment_log_probs[:3].mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(logits[1], segment_log_probs[3], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits.exp().sum(-1)[1], torch.tensor(1.0))


def test_loss_is_cross_entropy_of_every_segment_against_its_utterance_label():
    model = tiny_model()
    inputs = batch([speech_like(120_000), speech_like(30_000, 1)])
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        outputs = model(**inputs, labels=labels)
        segment_logits = model.classifier(model.msemoboost(**inputs).segment_features)
    expected = F.cross_entropy(segment_logits, torch.tensor([2, 2, 2, 0]))
    torch.testing.assert_close(outputs.loss, expected)


@pytest.mark.parametrize("frame_weighting", ["relu", "linear", "softmax", "mean_residual"])
def test_segment_feature_is_the_enhancement_weighted_sum_of_backbone_frames(frame_weighting):
    model = MSEmoBoostForSequenceClassification(tiny_config(frame_weighting=frame_weighting)).eval().msemoboost
    inputs = batch([speech_like(60_000), speech_like(20_000, 1)])
    lengths = torch.tensor([60_000, 20_000])
    segments, segment_lengths, _ = model.split_into_segments(inputs["input_values"], lengths)
    with torch.no_grad():
        outputs = model(**inputs)
        sample_mask = (torch.arange(48_000) < segment_lengths[:, None]).long()
        frames = model.backbone(segments, attention_mask=sample_mask).last_hidden_state
    weights = outputs.enhancement_weights
    assert weights.shape == (3, 149)
    assert outputs.frame_mask.sum(-1).tolist() == [149, 149, 62]  # (20,000 - 400) // 320 + 1 frames of audio
    assert not weights[2, 62:].any()  # no weight on frames of padding
    if frame_weighting in ("softmax", "mean_residual"):  # both are weights that sum to 1 over the audio
        torch.testing.assert_close(weights.sum(-1), torch.ones(3), rtol=0, atol=1e-5)
    if frame_weighting == "relu":
        assert (weights >= 0).all()
    expected = torch.einsum("st,std->sd", weights, frames)
    torch.testing.assert_close(outputs.segment_features, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs.utterance_features[0], outputs.segment_features[:2].mean(0), rtol=0, atol=1e-6)


def test_mean_residual_weighting_starts_as_the_masked_mean():
    model = MSEmoBoostForSequenceClassification(tiny_config(frame_weighting="mean_residual")).eval()
    baseline = MSEmoBoostForSequenceClassification(tiny_config(use_mfcc=False, use_spectrogram=False)).eval()
    baseline.msemoboost.backbone.load_state_dict(model.msemoboost.backbone.state_dict())
    inputs = batch([speech_like(60_000), speech_like(20_000, 1)])
    with torch.no_grad():
        torch.testing.assert_close(
            model.msemoboost(**inputs).segment_features, baseline.msemoboost(**inputs).segment_features, rtol=0, atol=1e-6
        )


def test_classifier_on_pooled_and_guidance_reads_both():
    model = MSEmoBoostForSequenceClassification(tiny_config(classifier_input="pooled_and_guidance")).eval()
    inputs = batch([speech_like(60_000)])
    with torch.no_grad():
        outputs = model.msemoboost(**inputs)
        segments, segment_lengths, _ = model.msemoboost.split_into_segments(inputs["input_values"], torch.tensor([60_000]))
        emphasised = pre_emphasis(segments, model.config.pre_emphasis)
        guidance = torch.cat([
            model.msemoboost.mfcc_encoder(emphasised, segment_lengths), model.msemoboost.spectrogram_encoder(emphasised)
        ], dim=-1)
        frames = model.msemoboost.backbone(segments).last_hidden_state
    hidden = model.config.backbone_config.hidden_size
    assert outputs.segment_features.shape == (2, hidden + 2 * model.config.guidance_hidden_size)
    pooled = torch.einsum("st,std->sd", outputs.enhancement_weights, frames)
    torch.testing.assert_close(outputs.segment_features[:, :hidden], pooled, rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs.segment_features[:, hidden:], guidance, rtol=0, atol=1e-6)
    assert model.classifier.in_features == hidden + 16


def test_batch_norm_standardises_the_pooled_feature_with_training_statistics(tmp_path):
    reference = MSEmoBoostForSequenceClassification(tiny_config(classifier_input="pooled_and_guidance"))
    model = MSEmoBoostForSequenceClassification(tiny_config(classifier_input="pooled_and_guidance",
                                                            pooled_normalization="batch_norm"))
    assert model.load_state_dict(reference.state_dict(), strict=False).missing_keys == [
        f"msemoboost.pooled_normalization.{name}" for name in ("running_mean", "running_var")]
    model.train(), reference.train()
    inputs = batch([speech_like(60_000, seed) for seed in range(3)])  # 6 segments
    hidden = model.config.backbone_config.hidden_size
    set_seed(0)  # the same dropout and SpecAugment masks (numpy) in both
    found = model.msemoboost(**inputs).segment_features
    set_seed(0)
    pooled = reference.msemoboost(**inputs).segment_features
    mean, variance = pooled[:, :hidden].mean(0), pooled[:, :hidden].var(0, unbiased=False)
    torch.testing.assert_close(found[:, :hidden], (pooled[:, :hidden] - mean) / torch.sqrt(variance + 1e-5))
    torch.testing.assert_close(found[:, hidden:], pooled[:, hidden:], rtol=0, atol=0)  # the guidance vectors as they were
    normalization = model.msemoboost.pooled_normalization
    torch.testing.assert_close(normalization.running_mean, 0.1 * mean.detach())  # momentum 0.1 from zero
    model.eval()
    with torch.no_grad():  # inference: the running statistics, whatever the batch
        alone = model.msemoboost(**batch([speech_like(60_000, 0)])).segment_features[:, :hidden]
        plain = reference.eval().msemoboost(**batch([speech_like(60_000, 0)])).segment_features[:, :hidden]
    expected = (plain - normalization.running_mean) / torch.sqrt(normalization.running_var + 1e-5)
    torch.testing.assert_close(alone, expected)
    model.train()
    one_segment = model.msemoboost(**batch([speech_like(30_000, 0)])).segment_features  # no batch statistics
    assert torch.isfinite(one_segment).all()
    model.save_pretrained(tmp_path)  # the running statistics are part of the checkpoint
    reloaded = MSEmoBoostForSequenceClassification.from_pretrained(tmp_path).msemoboost.pooled_normalization
    torch.testing.assert_close(reloaded.running_var, normalization.running_var, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^pooled_normalization must be one of \['none', 'batch_norm'\], got 'layer'"):
        tiny_config(pooled_normalization="layer")


def test_class_weights_weight_the_segment_cross_entropy():
    model = MSEmoBoostForSequenceClassification(tiny_config(class_weights=[1.0, 3.0, 0.5, 1.0])).eval()
    inputs = batch([speech_like(120_000), speech_like(30_000, 1)])
    labels = torch.tensor([2, 1])
    with torch.no_grad():
        outputs = model(**inputs, labels=labels)
        segment_logits = model.classifier(model.msemoboost(**inputs).segment_features)
    expected = F.cross_entropy(segment_logits, torch.tensor([2, 2, 2, 1]), weight=torch.tensor([1.0, 3.0, 0.5, 1.0]))
    torch.testing.assert_close(outputs.loss, expected)
    model.config.loss_level = "utterance"  # weighted too, on the utterance logits
    with torch.no_grad():
        expected = F.cross_entropy(outputs.logits, labels, weight=torch.tensor([1.0, 3.0, 0.5, 1.0]))
        torch.testing.assert_close(model(**inputs, labels=labels).loss, expected)
        model.config.class_weights = [1, 3, 1, 1]  # whole numbers, as a JSON file may give them
        expected = F.cross_entropy(outputs.logits, labels, weight=torch.tensor([1.0, 3.0, 1.0, 1.0]))
        torch.testing.assert_close(model(**inputs, labels=labels).loss, expected)
    with pytest.raises(ValueError, match=r"class_weights needs one weight per label \(4\), got 2."):
        tiny_config(class_weights=[1.0, 2.0])



def test_soft_labels_and_label_smoothing_in_the_cross_entropy():
    weights = [1.0, 3.0, 0.5, 1.0]
    model = MSEmoBoostForSequenceClassification(tiny_config(class_weights=weights, label_smoothing=0.1)).eval()
    inputs = batch([speech_like(120_000), speech_like(30_000, 1)])  # 3 segments and 1
    labels = torch.tensor([2, 1])
    with torch.no_grad():
        segment_logits = model.classifier(model.msemoboost(**inputs).segment_features)
        outputs = model(**inputs, labels=labels)
        one_hot = model(**inputs, labels=F.one_hot(labels, 4).float())
        soft = torch.tensor([[0.0, 0.25, 0.75, 0.0], [0.0, 1.0, 0.0, 0.0]])
        mixed = model(**inputs, labels=soft)
    segment_labels = torch.tensor([2, 2, 2, 1])
    expected = F.cross_entropy(segment_logits, segment_labels, weight=torch.tensor(weights), label_smoothing=0.1)
    torch.testing.assert_close(outputs.loss, expected)
    torch.testing.assert_close(one_hot.loss, expected)  # one-hot probabilities are their class indices
    # Soft targets: the class-weighted sum of each segment's smoothed cross-entropy, over the targets' summed weights.
    log_probs = segment_logits.log_softmax(-1)
    targets = soft[[0, 0, 0, 1]] * 0.9 + 0.1 / 4
    losses = -(targets * torch.tensor(weights) * log_probs).sum(-1)
    denominator = (soft[[0, 0, 0, 1]] @ torch.tensor(weights)).sum()
    torch.testing.assert_close(mixed.loss, losses.sum() / denominator)
    model.config.loss_level = "utterance"
    model.config.class_weights = None
    with torch.no_grad():
        utterance = model(**inputs, labels=soft).loss
    expected = -((soft * 0.9 + 0.1 / 4) * outputs.logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(utterance, expected)
    with pytest.raises(ValueError, match=r"^label_smoothing must be in \[0, 1\), got 1.0.$"):
        tiny_config(label_smoothing=1.0)


def test_a_class_mask_scores_each_utterance_over_its_own_classes_only():
    weights = [1.0, 3.0, 0.5, 1.0]
    model = MSEmoBoostForSequenceClassification(tiny_config(class_weights=weights)).eval()
    inputs = batch([speech_like(120_000), speech_like(30_000, 1)])  # 3 segments and 1
    labels = torch.tensor([2, 1])
    mask = torch.tensor([[True, False, True, True], [True, True, True, True]])  # the first corpus lacks class 1
    segment_logits = model.classifier(model.msemoboost(**inputs).segment_features).detach().requires_grad_()
    with torch.no_grad():
        outputs = model(**inputs, labels=labels, class_mask=mask)
        plain = model(**inputs, labels=labels)
    torch.testing.assert_close(outputs.logits, plain.logits)  # the mask changes the loss, never the logits
    # Parity with the cross-entropy of the allowed columns alone: segments 0-2 over classes 0, 2, 3 (label 2 is
    # their column 1), segment 3 over all four; class-weighted, over the summed weights of the targets.
    first = F.cross_entropy(segment_logits[:3, [0, 2, 3]], torch.tensor([1, 1, 1]), reduction="none") * weights[2]
    last = F.cross_entropy(segment_logits[3:], torch.tensor([1]), reduction="none") * weights[1]
    expected = (first.sum() + last.sum()) / (3 * weights[2] + weights[1])
    torch.testing.assert_close(outputs.loss, expected)
    loss = model.classification_loss(segment_logits, plain.logits, labels, torch.tensor([3, 1]), class_mask=mask)
    loss.backward()
    assert segment_logits.grad[:3, 1].abs().max() == 0 and segment_logits.grad[3, 1] != 0  # no push on a class it lacks
    soft = torch.tensor([[0.0, 0.0, 0.75, 0.25], [0.0, 1.0, 0.0, 0.0]])  # mixup's targets
    with torch.no_grad():
        mixed = model(**inputs, labels=soft, class_mask=mask).loss
    allowed = segment_logits[:3, [0, 2, 3]].log_softmax(-1)  # columns 0, 2, 3: targets 0, 0.75, 0.25
    numerator = -(0.75 * weights[2] * allowed[:, 1] + 0.25 * weights[3] * allowed[:, 2]).sum()
    numerator = numerator - weights[1] * segment_logits[3].log_softmax(-1)[1]
    torch.testing.assert_close(mixed, (numerator / (3 * (0.75 * weights[2] + 0.25 * weights[3]) + weights[1])).detach())
    with pytest.raises(ValueError, match=r"^class_mask leaves out the label of utterance\(s\) \[0\]: every utterance's label must"):
        model(**inputs, labels=torch.tensor([1, 1]), class_mask=mask)
    with pytest.raises(ValueError, match=r"^class_mask must have shape \(batch_size, num_labels\) = \(2, 4\), got \(2, 3\)."):
        model(**inputs, labels=labels, class_mask=mask[:, :3])
    model.config.label_smoothing = 0.1
    with pytest.raises(ValueError, match=r"^class_mask cannot be combined with label smoothing"):
        model(**inputs, labels=labels, class_mask=mask)


def test_the_former_label_mask_keyword_still_masks_with_a_future_warning():
    model = tiny_model()
    inputs = batch([speech_like(60_000), speech_like(30_000, 1)])
    labels = torch.tensor([2, 1])
    mask = torch.tensor([[True, False, True, True], [True, True, True, True]])
    with torch.no_grad():
        wanted = model(**inputs, labels=labels, class_mask=mask).loss
        with pytest.warns(FutureWarning, match=r"^label_mask is deprecated: pass class_mask instead.$"):
            former = model(**inputs, labels=labels, label_mask=mask).loss
    assert former.item() == wanted.item() != model(**inputs, labels=labels).loss.item()
    with pytest.raises(ValueError, match=r"^Give class_mask only: label_mask is its former name.$"):
        model(**inputs, labels=labels, class_mask=mask, label_mask=mask)


def test_gradients_reach_every_branch():
    model = tiny_model().train()
    inputs = batch([speech_like(60_000), speech_like(20_000, 1)])
    model(**inputs, labels=torch.tensor([1, 3])).loss.backward()
    branches = {
        "backbone feature encoder": model.msemoboost.backbone.feature_extractor,
        "backbone transformer": model.msemoboost.backbone.encoder,
        "MFCC Bi-LSTM": model.msemoboost.mfcc_encoder.lstm,
        "MFCC attention": model.msemoboost.mfcc_encoder.attention,
        "MFCC projection": model.msemoboost.mfcc_encoder.projection,
        "AlexNet features": model.msemoboost.spectrogram_encoder.features,
        "spectrogram attention": model.msemoboost.spectrogram_encoder.attention,
        "spectrogram projection": model.msemoboost.spectrogram_encoder.projection,
        "enhancement": model.msemoboost.enhancement,
        "classifier": model.classifier,
    }
    for name, module in branches.items():
        gradients = [p.grad for p in module.parameters() if p.requires_grad]
        assert gradients and all(g is not None for g in gradients), name
        assert sum(float(g.abs().sum()) for g in gradients) > 0, name


def parameter_groups(model: MSEmoBoostForSequenceClassification) -> set[str]:
    """Top-level parts of the bare model that own parameters, with each guidance branch's attention apart."""
    groups = set()
    for name, _ in model.msemoboost.named_parameters():
        part, child = name.split(".")[:2]
        groups.add(f"{part}.attention" if part != "backbone" and child == "attention" else part)
    return groups


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        ({}, {"backbone", "mfcc_encoder", "mfcc_encoder.attention", "spectrogram_encoder", "spectrogram_encoder.attention", "enhancement"}),
        ({"use_spectrogram": False}, {"backbone", "mfcc_encoder", "mfcc_encoder.attention", "enhancement"}),
        ({"use_mfcc": False}, {"backbone", "spectrogram_encoder", "spectrogram_encoder.attention", "enhancement"}),
        ({"use_attention": False}, {"backbone", "mfcc_encoder", "spectrogram_encoder", "enhancement"}),
        ({"use_mfcc": False, "use_spectrogram": False}, {"backbone"}),
        ({"use_backbone_features": False}, {"mfcc_encoder", "mfcc_encoder.attention", "spectrogram_encoder", "spectrogram_encoder.attention"}),
    ],
)
def test_ablation_switches_change_which_parameters_exist(switches, expected):
    model = tiny_model(**switches)
    assert parameter_groups(model) == expected
    with torch.no_grad():
        logits = model(**batch([speech_like(30_000)])).logits
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()


def test_enhancement_input_size_follows_the_active_branches():
    assert tiny_model().msemoboost.enhancement.projection.in_features == 16
    assert tiny_model(use_mfcc=False).msemoboost.enhancement.projection.in_features == 8
    assert tiny_model(use_backbone_features=False).classifier.in_features == 16


def test_baseline_is_masked_mean_pooling_of_backbone_frames():
    model = tiny_model(use_mfcc=False, use_spectrogram=False).msemoboost
    with torch.no_grad():
        outputs = model(**batch([speech_like(24_000)]))
        frames = model.backbone(
            F.pad(torch.from_numpy(EXTRACTOR(speech_like(24_000), sampling_rate=16000)["input_values"][0]), (0, 24_000))[None],
            attention_mask=(torch.arange(48_000) < 24_000).long()[None],
        ).last_hidden_state[0]
    valid = int(model.backbone._get_feat_extract_output_lengths(torch.tensor(24_000)))
    assert outputs.enhancement_weights is None
    torch.testing.assert_close(outputs.utterance_features[0], frames[:valid].mean(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model_type", SUPPORTED_BACKBONE_TYPES)
def test_every_supported_ssl_backbone_pools_its_own_frames_and_batches_like_single(model_type):
    model = tiny_model(model_type=model_type)
    assert model.msemoboost.backbone.config.model_type == model_type
    waveforms = [speech_like(50_000), speech_like(9_000, 1)]
    with torch.no_grad():
        outputs = model.msemoboost(**batch(waveforms))
        single = torch.cat([model.msemoboost(**batch([waveform])).utterance_features for waveform in waveforms])
        # The short utterance's padded segment, pooled from the backbone's own frames of its audio alone.
        segment = torch.zeros(1, 48_000)
        segment[0, :9_000] = batch([waveforms[1]])["input_values"][0]
        frames = model.msemoboost.backbone(segment, attention_mask=(torch.arange(48_000) < 9_000).long()[None])
    assert outputs.enhancement_weights.shape == (3, 149) and outputs.utterance_features.shape == (2, 32)
    torch.testing.assert_close(outputs.utterance_features, single, rtol=0, atol=1e-5)
    audio_frames = model.config.num_backbone_frames(9_000)
    assert outputs.frame_mask[2].sum() == audio_frames
    expected = outputs.enhancement_weights[2, :audio_frames] @ frames.last_hidden_state[0, :audio_frames]
    torch.testing.assert_close(outputs.segment_features[2], expected, rtol=0, atol=1e-5)


def test_chunking_bounds_the_segment_batch_without_changing_results():
    small = tiny_model(segment_chunk_size=2)
    large = MSEmoBoostForSequenceClassification(tiny_config(segment_chunk_size=64)).eval()
    large.load_state_dict(small.state_dict())
    seen = []
    small.msemoboost.backbone.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    inputs = batch([speech_like(16_000 * 20)])  # 20 s: 7 segments
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, large(**inputs).logits, rtol=0, atol=1e-5)
    assert seen == [2, 2, 2, 1]


def test_ten_minutes_of_audio_runs_in_segment_chunks():
    model = tiny_model(use_spectrogram=False)
    seen = []
    model.msemoboost.backbone.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    with torch.no_grad():
        outputs = model.msemoboost(**batch([speech_like(16_000 * 600)]))
    assert outputs.segments_per_utterance.tolist() == [200]
    assert max(seen) == model.config.segment_chunk_size and sum(seen) == 200
    assert torch.isfinite(outputs.utterance_features).all()


def test_output_hidden_states_are_the_backbone_layers_of_every_segment():
    model = tiny_model()
    with torch.no_grad():
        outputs = model(**batch([speech_like(60_000)]), output_hidden_states=True)
    assert len(outputs.hidden_states) == TINY_BACKBONE["num_hidden_layers"] + 1
    assert all(state.shape == (2, 149, 32) for state in outputs.hidden_states)
    segments, _, _ = model.msemoboost.split_into_segments(batch([speech_like(60_000)])["input_values"], torch.tensor([60_000]))
    with torch.no_grad():
        own = model.msemoboost.backbone(segments, output_hidden_states=True).hidden_states
    for state, reference in zip(outputs.hidden_states, own, strict=True):
        torch.testing.assert_close(state, reference, rtol=0, atol=1e-6)


def test_weighted_layer_sum_pools_the_softmax_weighted_backbone_layers():
    plain = tiny_model()
    weighted = tiny_model(use_weighted_layer_sum=True)
    missing = weighted.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["msemoboost.layer_weights"]
    num_layers = TINY_BACKBONE["num_hidden_layers"] + 1
    assert torch.equal(weighted.msemoboost.layer_weights, torch.full((num_layers,), 1 / num_layers))  # the mean
    inputs = batch([speech_like(60_000), speech_like(20_000, 1)])
    with torch.no_grad():
        weighted.msemoboost.layer_weights.copy_(torch.tensor([-1e4] * (num_layers - 1) + [0.0]))  # the last layer
        torch.testing.assert_close(weighted(**inputs).logits, plain(**inputs).logits, rtol=0, atol=1e-6)
        logits = torch.arange(num_layers, dtype=torch.float32) / 2
        weighted.msemoboost.layer_weights.copy_(logits)
        outputs = weighted.msemoboost(**inputs, output_hidden_states=True)
        expected = sum(w * layer for w, layer in zip(logits.softmax(0), outputs.hidden_states, strict=True))
        torch.testing.assert_close(outputs.last_hidden_state, expected, rtol=0, atol=1e-6)
        assert weighted.msemoboost(**inputs).hidden_states is None  # only given when asked for
    # LayerDrop would leave a training step with fewer hidden states than weights: it is turned off.
    dropping = MSEmoBoostForSequenceClassification(tiny_config(
        use_weighted_layer_sum=True, backbone_config={"model_type": "wav2vec2", **TINY_BACKBONE, "layerdrop": 0.99}))
    assert dropping.config.backbone_config.layerdrop == dropping.msemoboost.backbone.config.layerdrop == 0.0
    dropping.train()(**inputs, labels=torch.tensor([0, 1])).loss.backward()
    assert dropping.msemoboost.layer_weights.grad.abs().min() > 0
    with pytest.raises(ValueError, match="use_weighted_layer_sum=True needs use_backbone_features=True"):
        tiny_config(use_weighted_layer_sum=True, use_backbone_features=False)


def test_return_dict_false_gives_a_tuple():
    model = tiny_model()
    with torch.no_grad():
        outputs = model(**batch([speech_like(20_000)]), return_dict=False)
        assert type(outputs) is tuple
        assert torch.equal(outputs[0], model(**batch([speech_like(20_000)])).logits)


def test_the_bare_model_follows_the_config_s_output_defaults_unless_told():
    model = tiny_model(output_hidden_states=True, output_attentions=True, attn_implementation="eager").msemoboost
    inputs = batch([speech_like(20_000)])
    with torch.no_grad():
        assert len(model(**inputs).hidden_states) == TINY_BACKBONE["num_hidden_layers"] + 1
        assert len(model(**inputs).attentions) == TINY_BACKBONE["num_hidden_layers"]
        assert model(**inputs, output_attentions=False).attentions is None
        assert model(**inputs, output_hidden_states=False).hidden_states is None
        outputs = model(**inputs, return_dict=False)
    assert type(outputs) is tuple and torch.equal(outputs[0], model(**inputs).last_hidden_state)


def test_single_label_classification_named_is_the_default():
    inputs = batch([speech_like(120_000), speech_like(30_000, 1)])
    with torch.no_grad():
        named = tiny_model(problem_type="single_label_classification")(**inputs, labels=torch.tensor([0, 3]))
        default = tiny_model()(**inputs, labels=torch.tensor([0, 3]))
    torch.testing.assert_close(named.logits, default.logits, rtol=0, atol=0)
    torch.testing.assert_close(named.loss, default.loss, rtol=0, atol=0)


def test_freeze_feature_encoder_and_base_model():
    model = tiny_model()
    model.freeze_feature_encoder()
    assert not any(p.requires_grad for p in model.msemoboost.backbone.feature_extractor.parameters())
    assert all(p.requires_grad for p in model.msemoboost.backbone.encoder.parameters())
    model.freeze_base_model()
    assert not any(p.requires_grad for p in model.msemoboost.backbone.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if ".backbone." not in n)
    with pytest.raises(ValueError, match=r"freeze_base_model\(\) needs a backbone"):
        tiny_model(use_backbone_features=False).freeze_base_model()
    with pytest.raises(ValueError, match=r"^freeze_feature_encoder\(\) needs a backbone"):
        tiny_model(use_backbone_features=False).freeze_feature_encoder()


def test_activation_checkpointing_is_passed_to_the_backbone():
    model = tiny_model().train()
    model.config.backbone_config.layerdrop = 0.0
    model.msemoboost.backbone.config.mask_time_prob = 0.0
    inputs, labels = batch([speech_like(30_000)]), torch.tensor([1])
    torch.manual_seed(0)
    model(**inputs, labels=labels).loss.backward()
    reference = [p.grad.clone() for p in model.msemoboost.backbone.encoder.parameters()]
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the current API, not the deprecated one
        model.activation_checkpointing_enable()
    assert model.msemoboost.backbone.encoder.gradient_checkpointing is True
    torch.manual_seed(0)
    model(**inputs, labels=labels).loss.backward()
    for before, parameter in zip(reference, model.msemoboost.backbone.encoder.parameters()):
        torch.testing.assert_close(parameter.grad, before)


def test_from_backbone_keeps_the_pretrained_ssl_weights(tmp_path):
    torch.manual_seed(1)
    pretrained = Wav2Vec2Model(Wav2Vec2Config(**TINY_BACKBONE))
    pretrained.save_pretrained(tmp_path / "ssl")
    model = MSEmoBoostForSequenceClassification.from_backbone(tmp_path / "ssl", num_labels=7, use_spectrogram=False, lstm_hidden_size=8)
    assert model.config.num_labels == 7 and model.config.use_spectrogram is False
    assert model.msemoboost.spectrogram_encoder is None
    backbone_config = model.config.backbone_config
    assert {key: getattr(backbone_config, key) for key in TINY_BACKBONE} == {**TINY_BACKBONE, "conv_dim": [16] * 7}
    with torch.no_grad():
        assert model(**batch([speech_like(20_000)])).logits.shape == (1, 7)
    for name, tensor in pretrained.state_dict().items():
        assert torch.equal(model.msemoboost.backbone.state_dict()[name], tensor), name
    bare = MSEmoBoostModel.from_backbone(tmp_path / "ssl", use_mfcc=False, spectrogram_image_size=64)
    assert torch.equal(bare.backbone.encoder.layers[0].attention.q_proj.weight, pretrained.encoder.layers[0].attention.q_proj.weight)
    with pytest.raises(ValueError, match=r"^from_backbone needs use_backbone_features=True: the guidance-only model has no backbone\.$"):
        MSEmoBoostForSequenceClassification.from_backbone(tmp_path / "ssl", use_backbone_features=False)


def test_from_backbone_trains_in_float32_from_a_half_precision_checkpoint(tmp_path):
    # Hub checkpoints are often saved in half precision, and transformers loads a checkpoint in its own dtype.
    torch.manual_seed(1)
    Wav2Vec2Model(Wav2Vec2Config(**TINY_BACKBONE)).to(torch.bfloat16).save_pretrained(tmp_path / "ssl")
    model = MSEmoBoostForSequenceClassification.from_backbone(tmp_path / "ssl", num_labels=3, lstm_hidden_size=8,
                                                              spectrogram_image_size=64)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    with torch.no_grad():
        assert model(**batch([speech_like(20_000)])).logits.dtype == torch.float32


def test_alexnet_parameter_names_match_torchvision():
    import torchvision

    torch.manual_seed(2)
    alexnet = torchvision.models.alexnet(weights=None)
    model = MSEmoBoostForSequenceClassification(tiny_config(spectrogram_conv_channels=(64, 192, 384, 256, 256)))
    assert set(model.msemoboost.spectrogram_encoder.features.state_dict()) == set(alexnet.features.state_dict())
    load_imagenet_alexnet(model, alexnet)
    for name, tensor in alexnet.features.state_dict().items():
        assert torch.equal(model.msemoboost.spectrogram_encoder.features.state_dict()[name], tensor)
    image = torch.rand(2, 3, 96, 144, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the same network: layers, strides, paddings, activations and pools
        torch.testing.assert_close(model.msemoboost.spectrogram_encoder.features(image), alexnet.features(image),
                                   rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"does not have AlexNet's shape \(0.weight: \(8, 3, 11, 11\)\)"):
        load_imagenet_alexnet(tiny_model(), alexnet)
    with pytest.raises(ValueError, match="no spectrogram branch"):
        load_imagenet_alexnet(tiny_model(use_spectrogram=False), alexnet)


def test_save_pretrained_writes_config_code_and_safetensors_only(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    EXTRACTOR.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "acoustic_features.py",
        "config.json",
        "configuration_msemoboost.py",
        "feature_extraction_msemoboost.py",
        "handler.py",
        "model.safetensors",
        "modeling_enhancement.py",
        "modeling_msemoboost.py",
        "modeling_statistics.py",
        "preprocessor_config.json",
    ]
    assert model.config.auto_map == {
        "AutoConfig": "configuration_msemoboost.MSEmoBoostConfig",
        "AutoModel": "modeling_msemoboost.MSEmoBoostModel",
        "AutoModelForAudioClassification": "modeling_msemoboost.MSEmoBoostForSequenceClassification",
    }
    model.config.auto_map["AutoModelForCTC"] = "elsewhere.Model"  # entries of others are kept
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")  # transformers' own options pass through
    assert json.loads((tmp_path / "sharded" / "config.json").read_text())["auto_map"]["AutoModelForCTC"] == "elsewhere.Model"
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model.save_pretrained(tmp_path / "not_main", False)  # is_main_process, by position
    assert not (tmp_path / "not_main").exists() or not any((tmp_path / "not_main").iterdir())


def test_reloaded_model_rebuilds_its_feature_buffers(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    reloaded = MSEmoBoostForSequenceClassification.from_pretrained(tmp_path).eval()
    for name, buffer in model.named_buffers():
        assert torch.equal(dict(reloaded.named_buffers())[name], buffer), name
    inputs = batch([speech_like(70_000)])
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MSEmoBoostModel)


@pytest.mark.parametrize("cast", ["to_bfloat16", "half", "from_pretrained_bfloat16"])
def test_half_precision_keeps_the_feature_buffers_float32_and_the_features_identical(cast, tmp_path):
    model = tiny_model()
    segments = torch.from_numpy(np.stack([speech_like(48_000), speech_like(48_000, 1)]))
    emphasised = pre_emphasis(segments, 0.97)
    with torch.no_grad():
        reference = model(**batch([speech_like(60_000)])).logits
        mfcc = model.msemoboost.mfcc_encoder.mfcc(emphasised)
        image = model.msemoboost.spectrogram_encoder.spectrogram(emphasised)
    if cast == "to_bfloat16":
        model.to(torch.bfloat16)
    elif cast == "half":
        model.half()
    else:
        model.save_pretrained(tmp_path)
        model = MSEmoBoostForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    low = torch.float16 if cast == "half" else torch.bfloat16
    feature_modules = [model.msemoboost.mfcc_encoder.mfcc, model.msemoboost.spectrogram_encoder.spectrogram]
    assert all(buffer.dtype == torch.float32 for module in feature_modules for buffer in module.buffers())
    assert model.classifier.weight.dtype == low and model.msemoboost.mfcc_encoder.lstm.weight_ih_l0.dtype == low
    with torch.no_grad():
        assert torch.equal(model.msemoboost.mfcc_encoder.mfcc(emphasised), mfcc)
        assert torch.equal(model.msemoboost.spectrogram_encoder.spectrogram(emphasised), image)
        if cast != "half":  # fp16 convolutions are not implemented on CPU
            logits = model(**batch([speech_like(60_000)])).logits
            assert logits.dtype == low
            torch.testing.assert_close(logits.float(), reference, rtol=0, atol=0.05)


def test_a_checkpoint_saved_without_the_recipe_options_keeps_the_papers_behaviour(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("frame_weighting", "mfcc_normalization", "mfcc_pool_frames", "classifier_input", "class_weights"):
        config.pop(key)  # as written before these options existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = MSEmoBoostForSequenceClassification.from_pretrained(tmp_path).eval()
    assert (reloaded.config.frame_weighting, reloaded.config.classifier_input) == ("linear", "pooled")
    inputs = batch([speech_like(60_000), speech_like(20_000, 1)])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_output_attentions_are_the_backbones_for_every_segment_and_extra_kwargs_are_ignored():
    model = MSEmoBoostForSequenceClassification(tiny_config(attn_implementation="eager")).eval()
    inputs = batch([speech_like(60_000), speech_like(20_000, 1)])
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True, num_items_in_batch=torch.tensor(2))
        segments, lengths, _ = model.msemoboost.split_into_segments(inputs["input_values"], torch.tensor([60_000, 20_000]))
        own = model.msemoboost.backbone(
            segments, attention_mask=(torch.arange(48_000) < lengths[:, None]).long(), output_attentions=True
        ).attentions
    assert outputs.segments_per_utterance.tolist() == [2, 1]
    assert len(outputs.attentions) == TINY_BACKBONE["num_hidden_layers"]
    for attention, reference in zip(outputs.attentions, own, strict=True):
        assert attention.shape == (3, TINY_BACKBONE["num_attention_heads"], 149, 149)
        torch.testing.assert_close(attention, reference, rtol=0, atol=1e-6)
    assert model(**inputs).attentions is None


def test_utterance_level_loss_is_the_cross_entropy_of_the_returned_logits():
    model = tiny_model(loss_level="utterance")
    inputs, labels = batch([speech_like(120_000), speech_like(30_000, 1)]), torch.tensor([2, 0])
    with torch.no_grad():
        outputs = model(**inputs, labels=labels)
    torch.testing.assert_close(outputs.loss, F.cross_entropy(outputs.logits, labels))
    segment_level = tiny_model()  # same seed, same weights: only the loss differs
    with torch.no_grad():
        assert not torch.allclose(segment_level(**inputs, labels=labels).loss, outputs.loss)


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_multi_label_and_regression_use_transformers_losses_on_the_mean_segment_outputs(problem_type):
    model = tiny_model(problem_type=problem_type)
    inputs = batch([speech_like(120_000), speech_like(30_000, 1)])
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]) if problem_type != "regression" else torch.rand(2, 4)
    with torch.no_grad():
        outputs = model(**inputs, labels=labels)
        segment_outputs = model.classifier(model.msemoboost(**inputs).segment_features)
    expected_logits = torch.stack([segment_outputs[:3].mean(0), segment_outputs[3]])
    torch.testing.assert_close(outputs.logits, expected_logits, rtol=0, atol=1e-6)
    loss = F.binary_cross_entropy_with_logits if problem_type != "regression" else F.mse_loss
    torch.testing.assert_close(outputs.loss, loss(expected_logits, labels))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 4\), got \(2,\)"):
        model(**inputs, labels=torch.zeros(2) if problem_type != "regression" else torch.zeros(2))


def test_regression_with_one_output_takes_a_label_per_utterance():
    model = tiny_model(problem_type="regression", num_labels=1)
    inputs = batch([speech_like(120_000), speech_like(30_000, 1)])
    labels = torch.tensor([0.25, -1.5])
    with torch.no_grad():
        outputs = model(**inputs, labels=labels)
        assert outputs.logits.shape == (2, 1)
        torch.testing.assert_close(outputs.loss, F.mse_loss(outputs.logits[:, 0], labels))
        torch.testing.assert_close(model(**inputs, labels=labels[:, None]).loss, outputs.loss)


def test_from_backbone_loads_the_backbone_once_and_passes_the_loading_options(tmp_path, monkeypatch):
    import transformers

    torch.manual_seed(1)
    pretrained = Wav2Vec2Model(Wav2Vec2Config(**TINY_BACKBONE))
    pretrained.save_pretrained(tmp_path / "ssl")

    def no_second_copy(*args, **kwargs):
        raise AssertionError("from_backbone built a second, random backbone")

    monkeypatch.setattr(transformers.AutoModel, "from_config", no_second_copy)
    loaded_with, from_pretrained = [], transformers.AutoModel.from_pretrained

    def recorded(*args, **kwargs):
        loaded_with.append(kwargs)
        return from_pretrained(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", recorded)
    model = MSEmoBoostForSequenceClassification.from_backbone(
        tmp_path / "ssl", num_labels=3, dtype=torch.bfloat16, attn_implementation="eager", revision="main",
        token="hf_unused", cache_dir=tmp_path / "cache", lstm_hidden_size=8, spectrogram_image_size=64,
    )
    assert loaded_with == [{"revision": "main", "token": "hf_unused", "cache_dir": tmp_path / "cache",
                            "dtype": torch.bfloat16, "attn_implementation": "eager"}]
    assert model.msemoboost.backbone.config._attn_implementation == "eager"
    assert model.msemoboost.backbone.encoder.layers[0].attention.q_proj.weight.dtype == torch.bfloat16
    assert model.classifier.weight.dtype == torch.bfloat16
    assert all(buffer.dtype == torch.float32 for buffer in model.msemoboost.mfcc_encoder.mfcc.buffers())
    torch.testing.assert_close(
        model.msemoboost.backbone.encoder.layers[0].attention.q_proj.weight,
        pretrained.encoder.layers[0].attention.q_proj.weight.to(torch.bfloat16), rtol=0, atol=0,
    )


def test_bare_model_returns_last_hidden_state_and_pooler_output_like_transformers_models():
    model = tiny_model().msemoboost
    inputs = batch([speech_like(60_000), speech_like(20_000, 1)])
    with torch.no_grad():
        outputs = model(**inputs)
        segments, lengths, _ = model.split_into_segments(inputs["input_values"], torch.tensor([60_000, 20_000]))
        frames = model.backbone(segments, attention_mask=(torch.arange(48_000) < lengths[:, None]).long()).last_hidden_state
    assert outputs.last_hidden_state.shape == (3, 149, 32)
    torch.testing.assert_close(outputs.last_hidden_state, frames, rtol=0, atol=1e-6)
    assert outputs.pooler_output is outputs.utterance_features and outputs.pooler_output.shape == (2, 32)
    assert outputs.segments_per_utterance.tolist() == [2, 1]


@pytest.mark.parametrize("segment_length_s", [3.0, 1.0])  # 301 frames x 200 bins, and 101 frames: taller than wide
def test_the_image_is_resized_like_torchvision_resize_of_its_short_side(segment_length_s):
    import torchvision.transforms.functional as TF

    from msemoboost.modeling_msemoboost import MSEmoBoostSpectrogramEncoder

    config = tiny_config(segment_length_s=segment_length_s, spectrogram_image_size=64, spectrogram_pool_size=3)
    height, width = config.spectrogram_num_bins, config.num_spectrogram_frames
    expected = TF.resize(torch.zeros(1, height, width), 64, antialias=True).shape[1:]
    encoder = MSEmoBoostSpectrogramEncoder(config).eval()
    assert encoder.image_size == tuple(expected)
    with torch.no_grad():  # 3 x 3 pooled cells of 16 channels are projected to the guidance vector
        assert encoder(torch.from_numpy(speech_like(config.segment_samples))[None]).shape == (1, 8)
    assert encoder.projection.in_features == 9 * 16


def test_the_pooled_mfcc_branch_projects_time_averages_of_the_bilstm_output():
    # mfcc_pool_frames=10: the 301 Bi-LSTM steps are averaged over 10 spans (adaptive pooling) before the projection.
    model = tiny_model(mfcc_pool_frames=10, use_spectrogram=False)
    encoder = model.msemoboost.mfcc_encoder
    seen = []
    encoder.projection.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    segment = torch.from_numpy(speech_like(48_000))[None]
    with torch.no_grad():
        encoder(segment, torch.tensor([48_000]))
        mfcc = encoder.mfcc(segment)
        steps = encoder.attention(encoder.lstm(encoder.normalize(mfcc, encoder.frame_mask(mfcc, torch.tensor([48_000]))))[0])
    assert steps.shape == (1, 301, 32) and encoder.projection.in_features == 10 * 32
    spans = [(i * 301 // 10, -(-(i + 1) * 301 // 10)) for i in range(10)]  # floor(i L / n) to ceil((i + 1) L / n)
    expected = torch.stack([steps[0, start:end].mean(0) for start, end in spans])
    torch.testing.assert_close(seen[0].view(10, 32), expected, rtol=0, atol=1e-6)


def test_standardised_mfccs_of_digital_silence_stay_finite():
    # Every coefficient is constant over silent frames: a variance of 0, guarded by its epsilon.
    model = tiny_model(mfcc_normalization="standardize")
    with torch.no_grad():
        encoder = model.msemoboost.mfcc_encoder
        mfcc = torch.ones(1, 301, 40)
        normalized = encoder.normalize(mfcc, encoder.frame_mask(mfcc, torch.tensor([48_000])))
        assert torch.equal(normalized, torch.zeros(1, 301, 40))
        assert torch.isfinite(model(torch.zeros(1, 48_000)).logits).all()


def test_mfcc_statistics_are_the_mean_std_and_delta_std_of_the_frames_that_hold_audio():
    # Centred frames hold audio while t * 160 < length: 300 of the 301 frames of a 3 s segment, 150 of a 1.5 s one.
    model = tiny_model(mfcc_normalization="standardize", mfcc_statistics=True, use_spectrogram=False)
    encoder = model.msemoboost.mfcc_encoder
    torch.manual_seed(0)
    mfcc = torch.randn(2, 301, 40, dtype=torch.float64)
    mfcc[1, 150:] = 1e6  # padding must not count
    mask = encoder.frame_mask(mfcc, torch.tensor([48_000, 24_000]))
    statistics = encoder.statistics(mfcc, mask)
    assert statistics.shape == (2, 120)
    for row, frames in ((0, 300), (1, 150)):
        audio = mfcc[row, :frames].numpy()
        expected = np.concatenate([
            audio.mean(0), np.sqrt(audio.var(0) + 1e-5), np.sqrt(np.diff(audio, axis=0).var(0) + 1e-5)])
        np.testing.assert_allclose(statistics[row].numpy(), expected, rtol=1e-9, atol=1e-12)


def test_prosody_statistics_count_voiced_and_loud_frames_of_the_audio():
    model = tiny_model(prosody_statistics=True, use_spectrogram=False)
    encoder = model.msemoboost.mfcc_encoder
    torch.manual_seed(0)
    frames = torch.stack([80 + 5 * torch.randn(2, 301), torch.rand(2, 301), -20 - 30 * torch.rand(2, 301)], -1).double()
    frames[1, 150:] = 1e6  # padding must not count
    lengths = torch.tensor([48_000, 24_000])
    mask = encoder.frame_mask(frames, lengths)
    statistics = encoder.prosody_statistics(frames, mask, lengths)
    assert statistics.shape == (2, 9)
    for row, count in ((0, 300), (1, 150)):
        pitch, strength, energy = frames[row, :count].numpy().T
        loudest = energy.max()
        loud = energy > loudest - 60
        voiced = (strength > 0.45) & (energy > loudest - 30)
        pairs = voiced[1:] & voiced[:-1]
        assert 0 < pairs.sum() < voiced.sum() < loud.sum() == count  # all loud: energies span 30 dB
        expected = [pitch[voiced].mean(), np.sqrt(pitch[voiced].var() + 1e-5), np.sqrt(np.diff(pitch)[pairs].var() + 1e-5),
                    strength[voiced].mean(), voiced.mean(), energy.mean(), np.sqrt(energy.var() + 1e-5),
                    np.sqrt(np.diff(energy).var() + 1e-5), count * 160 / 48_000]
        np.testing.assert_allclose(statistics[row].numpy(), expected, rtol=1e-9, atol=1e-12)
    # Frames quieter than the floors leave the voiced and the loud sets; a segment with no voiced frame gets zeros.
    quiet = frames.clone()
    quiet[0, :, 1] = 0.0  # no frame voiced
    quiet[0, 100:, 2] = -200.0  # 200 of 300 audio frames more than 60 dB down
    statistics = encoder.prosody_statistics(quiet, mask, lengths)[0]
    np.testing.assert_array_equal(statistics[:5].numpy(), [0, 0, 0, 0, 0])
    energy = quiet[0, :100, 2].numpy()
    np.testing.assert_allclose(statistics[5:8].numpy(), [energy.mean(), np.sqrt(energy.var() + 1e-5),
                                                          np.sqrt(np.diff(energy).var() + 1e-5)], rtol=1e-9)


@pytest.mark.parametrize("mfcc_statistics, prosody_statistics", [(True, False), (False, True), (True, True)])
def test_mfcc_statistics_join_the_mfcc_projection_batch_standardised(mfcc_statistics, prosody_statistics):
    model = tiny_model(mfcc_normalization="standardize", mfcc_statistics=mfcc_statistics,
                       prosody_statistics=prosody_statistics, use_spectrogram=False)
    encoder = model.msemoboost.mfcc_encoder
    steps = model.config.mfcc_pool_frames or model.config.num_mfcc_frames
    num_statistics = 3 * model.config.num_mfcc * mfcc_statistics + 9 * prosody_statistics
    assert encoder.projection.in_features == steps * 2 * model.config.lstm_hidden_size + num_statistics
    assert not tiny_model(mfcc_normalization="standardize").msemoboost.mfcc_encoder.statistics_normalization
    assert (encoder.prosody is not None) == prosody_statistics
    seen = {}
    encoder.statistics_normalization.register_forward_hook(
        lambda module, args, output: seen.update(statistics=args[0], output=output))
    # Different levels: three equally loud segments' energy means differ by ~1e-3 dB, whose float32 variance over
    # the batch would be rounding error.
    segments = torch.from_numpy(np.stack([speech_like(48_000, seed) * 0.5**seed for seed in range(3)]))
    model.train()
    model(segments)
    # Training: each of the 3 segments' statistics standardised over the batch (no learned scale or shift).
    statistics = seen["statistics"].double()
    assert statistics.shape == (3, num_statistics)
    expected = (statistics - statistics.mean(0)) / torch.sqrt(statistics.var(0, unbiased=False) + 1e-5)
    # float32 batch norm of values such as MFCC means of about -27 that vary by about 0.1 across the batch: its
    # rounding (about 27 * 6e-8 relative to a spread of 0.1) reaches 2e-5 of the standardised values.
    torch.testing.assert_close(seen["output"].double(), expected, rtol=0, atol=1e-4)
    # Inference: the running statistics, so one segment alone gives the same answer as within a batch.
    model.eval()
    with torch.no_grad():
        together = model(segments).logits
        alone = model(segments[:1]).logits
    torch.testing.assert_close(alone, together[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_backbone_features", [True, False])
def test_classify_statistics_adds_a_linear_classifier_on_the_statistics_with_its_own_loss(use_backbone_features):
    overrides = dict(mfcc_normalization="standardize", mfcc_statistics=True, prosody_statistics=True,
                     classifier_input="pooled_and_guidance", use_backbone_features=use_backbone_features)
    plain, model = tiny_model(**overrides), tiny_model(classify_statistics=True, statistics_loss_weight=0.25, **overrides)
    num_statistics = 3 * model.config.num_mfcc + 9
    assert model.msemoboost.num_classified_statistics == num_statistics
    assert model.classifier.in_features == plain.classifier.in_features + num_statistics
    seen = {}
    model.msemoboost.mfcc_encoder.statistics_normalization.register_forward_hook(
        lambda module, args, output: seen.update(statistics=output))
    waveforms = torch.from_numpy(np.stack([speech_like(64_000, seed) for seed in range(3)]))  # 2 segments each
    labels = torch.tensor([0, 2, 3])
    model.train()
    torch.manual_seed(0)
    outputs = model(waveforms, labels=labels, output_hidden_states=False)
    features = model.msemoboost(waveforms).segment_features  # training mode: the same batch statistics
    # The standardised statistics end every segment's features, as they joined the MFCC projection.
    torch.testing.assert_close(features[:, -num_statistics:], seen["statistics"], rtol=0, atol=0)
    # Their own logits: the classifier's columns for them and its bias, scored like the classifier's logits.
    statistics_logits = features[:, -num_statistics:] @ model.classifier.weight[:, -num_statistics:].T + model.classifier.bias
    targets = labels.repeat_interleave(2)
    torch.testing.assert_close(outputs.statistics_loss, F.cross_entropy(statistics_logits, targets), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs.loss, outputs.classification_loss + 0.25 * outputs.statistics_loss, rtol=1e-6, atol=0)
    outputs.statistics_loss.backward()  # it trains the statistics' columns and the bias, and nothing else
    assert model.classifier.weight.grad[:, :-num_statistics].abs().max() == 0
    assert model.classifier.weight.grad[:, -num_statistics:].abs().max() > 0
    assert model.classifier.bias.grad.abs().max() > 0
    others = [parameter.grad for name, parameter in model.named_parameters() if not name.startswith("classifier.")]
    assert all(grad is None or not grad.any() for grad in others)
    # Weight 0: the statistics stay in the classifier without a loss of their own.
    model.config.statistics_loss_weight = 0.0
    outputs = model(waveforms, labels=labels)
    assert outputs.statistics_loss is None and outputs.classification_loss is None
    with pytest.raises(ValueError, match="classify_statistics=True needs mfcc_statistics=True or prosody_statistics=True"):
        tiny_config(classify_statistics=True)
    with pytest.raises(ValueError, match="statistics_loss_weight must be a non-negative number, got -1"):
        tiny_config(mfcc_statistics=True, classify_statistics=True, statistics_loss_weight=-1)


def test_guidance_self_attention_is_residual_scaled_dot_product_attention():
    from msemoboost.modeling_msemoboost import MSEmoBoostSelfAttention

    torch.manual_seed(0)
    attention = MSEmoBoostSelfAttention(16)
    tokens = torch.randn(2, 5, 16)
    with torch.no_grad():
        query, key, value = attention.query(tokens), attention.key(tokens), attention.value(tokens)
        expected = tokens + (query @ key.transpose(1, 2) / 16**0.5).softmax(-1) @ value  # X + softmax(Q K^T / sqrt(d)) V
        torch.testing.assert_close(attention(tokens), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("frame_weighting", ["linear", "relu", "softmax", "mean_residual"])
def test_frame_weights_follow_their_formula_from_the_guidance(frame_weighting):
    enhancement = tiny_model(frame_weighting=frame_weighting).msemoboost.enhancement
    torch.manual_seed(0)
    with torch.no_grad():
        enhancement.projection.weight.normal_()  # away from mean_residual's zero start
        enhancement.projection.bias.normal_()
        guidance = torch.randn(2, enhancement.projection.in_features)
        mask = torch.arange(149)[None] < torch.tensor([[149], [62]])
        weights = enhancement(guidance, mask)
        scores = guidance @ enhancement.projection.weight.T + enhancement.projection.bias
    expected = {
        "linear": scores * mask,
        "relu": scores.clamp(min=0) * mask,
        "softmax": scores.masked_fill(~mask, -torch.inf).softmax(-1),
        "mean_residual": (1 + scores) * mask / torch.tensor([[149.0], [62.0]]),
    }[frame_weighting]
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-6)


def test_the_backbone_sees_exactly_each_segment_s_samples_as_audio():
    model = tiny_model()
    masks = []
    model.msemoboost.backbone.register_forward_hook(
        lambda module, args, kwargs, output: masks.append(kwargs["attention_mask"]), with_kwargs=True)
    with torch.no_grad():
        model(**batch([speech_like(60_000), speech_like(20_001, 1)]))
    assert masks[0].sum(-1).tolist() == [48_000, 48_000, 20_001]
    assert masks[0][2, :20_001].all() and not masks[0][2, 20_001:].any()


def test_bilstm_dropout_applies_between_layers_only():
    two_layers = tiny_model(lstm_num_layers=2, lstm_dropout=0.3).msemoboost.mfcc_encoder.lstm
    assert two_layers.num_layers == 2 and two_layers.dropout == 0.3 and two_layers.bidirectional
    assert tiny_model(lstm_num_layers=1, lstm_dropout=0.3).msemoboost.mfcc_encoder.lstm.dropout == 0.0  # no warning


@pytest.mark.parametrize("frame_weighting", ["linear", "relu", "softmax", "mean_residual"])
def test_only_the_reference_code_s_relu_weighting_has_dropout_on_the_guidance(frame_weighting):
    # ReLU(Linear(Dropout(g))) is CA-MSER's; eq. 11 and the recipe options have no dropout there.
    dropout = tiny_model(frame_weighting=frame_weighting, guidance_dropout=0.2).msemoboost.enhancement.dropout
    if frame_weighting == "relu":
        assert isinstance(dropout, torch.nn.Dropout) and dropout.p == 0.2
    else:
        assert isinstance(dropout, torch.nn.Identity)


@pytest.mark.parametrize("branches, feature_size", [({}, 32 + 2 * 8), ({"use_spectrogram": False}, 32 + 8),
                                                     ({"use_spectrogram": False, "use_mfcc": False}, 32)])
def test_the_classifier_reads_x_w_and_each_guidance_vector_there_is(branches, feature_size):
    model = tiny_model(classifier_input="pooled_and_guidance", **branches)
    with torch.no_grad():
        outputs = model.msemoboost(**batch([speech_like(20_000)]))
    assert model.msemoboost.feature_size == feature_size == outputs.segment_features.shape[-1]


def test_use_weighted_layer_sum_says_that_it_turns_layerdrop_off(caplog):
    with caplog.at_level("WARNING"):
        config = tiny_config(use_weighted_layer_sum=True,
                             backbone_config={"model_type": "wav2vec2", **TINY_BACKBONE, "layerdrop": 0.05})
        MSEmoBoostForSequenceClassification(config)
    assert "use_weighted_layer_sum turns the backbone's LayerDrop off (layerdrop was 0.05)." in caplog.messages


def test_the_feature_buffers_are_rebuilt_from_the_config_not_saved():
    from msemoboost.acoustic_features import MSEmoBoostPowerSpectrogram

    model = tiny_model(use_se_head=True, prosody_statistics=True)
    buffers = {f"{name}.{buffer}" for name, module in model.named_modules()
               if isinstance(module, MSEmoBoostPowerSpectrogram) for buffer, _ in module.named_buffers()}
    prosody = {f"msemoboost.mfcc_encoder.prosody.{name}" for name in
               ("window", "pitch_semitones", "autocorrelation", "window_autocorrelation", "octave_penalty")}
    assert buffers == {"msemoboost.mfcc_encoder.mfcc.window", "msemoboost.mfcc_encoder.mfcc.mel_filters",
                       "msemoboost.mfcc_encoder.mfcc.dct", "msemoboost.spectrogram_encoder.spectrogram.window",
                       "se_stft.window"} | prosody
    assert not buffers & set(model.state_dict())
