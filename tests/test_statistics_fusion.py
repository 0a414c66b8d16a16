"""The whole-utterance statistics classifier (`config.utterance_statistics_classifier`): its statistics, its fusion
with the network's log-probabilities, its fit against scikit-learn's, and train.py's use of it."""

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch
from transformers import set_seed

from msemoboost import MSEmoBoostForSequenceClassification
from msemoboost.acoustic_features import pre_emphasis
from msemoboost.modeling_statistics import MSEmoBoostStatisticsClassifier
from msemoboost.statistics_fusion import (
    ABSENT_CLASS_BIAS,
    C_GRID,
    classify_statistics,
    fit_statistics_classifier,
    statistics_classifier_off,
    utterance_statistics,
)
from tiny import speech_like, tiny_config, tiny_model

STATISTICS = dict(mfcc_statistics=True, prosody_statistics=True, use_spectrogram=False)


def padded(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    waveforms = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        waveforms[row, :length] = torch.from_numpy(speech_like(length, seed=row))
        mask[row, :length] = 1
    return waveforms, mask


def test_utterance_statistics_use_the_frames_inside_each_utterance_and_do_not_depend_on_the_batch():
    model = tiny_model(utterance_statistics_classifier=True, **STATISTICS)
    lengths = [20_000, 35_001, 56_000]
    waveforms, mask = padded(lengths)
    batched = model.utterance_statistics(waveforms, mask)
    assert batched.shape == (3, 3 * model.config.num_mfcc + 9)
    encoder = model.msemoboost.mfcc_encoder
    half_window = max(model.config.mfcc_n_fft, model.config.prosody_n_fft) // 2
    for row, length in enumerate(lengths):
        alone = model.utterance_statistics(waveforms[row : row + 1, :length])
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=1e-5, atol=1e-5)
        # The MFCC means are those of the frames whose windows end within the utterance: frame t while
        # t * hop + half a window <= length.
        mfcc = encoder.mfcc(pre_emphasis(waveforms[row : row + 1, :length], model.config.pre_emphasis))[0]
        inside = (length - half_window) // model.config.mfcc_hop_length + 1
        torch.testing.assert_close(batched[row, : model.config.num_mfcc], mfcc[:inside].mean(0), rtol=1e-5, atol=1e-5)
        # The last statistic, the audio fraction, is the utterance's length over one segment's.
        assert batched[row, -1].item() == pytest.approx(length / model.config.segment_samples, rel=1e-6)
    plain = tiny_model(**STATISTICS)
    with pytest.raises(ValueError, match=r"utterance_statistics\(\) needs config.mfcc_statistics or config.prosody_statistics"):
        tiny_model(use_spectrogram=False).utterance_statistics(waveforms)
    assert plain.statistics_classifier is None


def masked_rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """Skewed random values `(4, 30, 3)` and a mask `(4, 30, 1)` of scattered steps: 30, 17, 1 and 0 counted; with
    each row's counted values `(count, 3)` for the numpy references."""
    generator = np.random.default_rng(seed)
    values = generator.gamma(2.0, size=(4, 30, 3)) * np.array([1.0, 10.0, 100.0])
    mask = np.zeros((4, 30, 1))
    mask[0] = 1
    mask[1, generator.choice(30, size=17, replace=False)] = 1
    mask[2, 11] = 1
    counted = [values[row][mask[row, :, 0] == 1] for row in range(4)]
    return torch.tensor(values, dtype=torch.float64), torch.tensor(mask, dtype=torch.float64), counted


def test_distribution_functionals_match_scipy_and_numpy_over_the_counted_steps():
    from scipy.stats import kurtosis, skew

    from msemoboost.modeling_statistics import masked_quantiles, masked_skewness_kurtosis, masked_slope

    values, mask, counted = masked_rows()
    skewness, excess_kurtosis = masked_skewness_kurtosis(values, mask)
    quantiles = masked_quantiles(values, mask, (0.05, 0.1, 0.5, 0.9, 1.0))
    slopes = masked_slope(values, mask)
    for row in range(2):  # 30 and 17 steps counted
        rows = counted[row]
        np.testing.assert_allclose(skewness[row], skew(rows, axis=0), rtol=1e-10)
        np.testing.assert_allclose(excess_kurtosis[row], kurtosis(rows, axis=0), rtol=1e-10)
        for quantile, value in zip((0.05, 0.1, 0.5, 0.9, 1.0), quantiles):
            np.testing.assert_allclose(value[row], np.quantile(rows, quantile, axis=0), rtol=1e-12)
        # The slope against the counted steps' ranks, rescaled to [-1, 1]: polyfit's, per column.
        ranks = np.linspace(-1.0, 1.0, len(rows))
        np.testing.assert_allclose(slopes[row], [np.polyfit(ranks, rows[:, column], 1)[0] for column in range(3)], rtol=1e-10)
    # One step counted: no spread, no slope, every quantile that step; none counted: all 0 (not NaN or infinite).
    for row, expected in ((2, counted[2][0]), (3, np.zeros(3))):
        assert skewness[row].tolist() == excess_kurtosis[row].tolist() == slopes[row].tolist() == [0.0, 0.0, 0.0]
        for value in quantiles:
            assert value[row].tolist() == expected.tolist()
    # A constant has no spread either (scipy says NaN): 0, even with float32 rounding of its mean.
    constant = torch.full((1, 7, 2), -317.3)
    assert [part.tolist() for part in masked_skewness_kurtosis(constant, torch.ones(1, 7, 1))] == [[[0.0, 0.0]]] * 2


def test_utterance_distribution_statistics_follow_the_utterance_statistics():
    model = tiny_model(utterance_statistics_classifier=True, utterance_distribution_statistics=True, **STATISTICS)
    plain = tiny_model(utterance_statistics_classifier=True, **STATISTICS)
    num_mfcc = model.config.num_mfcc
    assert model.statistics_classifier.mean.numel() == 3 * num_mfcc + 9 + 6 * num_mfcc + 11
    lengths = [20_000, 35_001, 56_000]
    waveforms, mask = padded(lengths)
    statistics = model.utterance_statistics(waveforms, mask)
    assert statistics.shape == (3, 9 * num_mfcc + 20)
    # The first part is exactly the plain option's statistics.
    torch.testing.assert_close(statistics[:, : 3 * num_mfcc + 9], plain.utterance_statistics(waveforms, mask), rtol=0, atol=0)
    encoder = model.msemoboost.mfcc_encoder
    half_window = max(model.config.mfcc_n_fft, model.config.prosody_n_fft) // 2
    for row, length in enumerate(lengths):
        alone = model.utterance_statistics(waveforms[row : row + 1, :length])
        torch.testing.assert_close(statistics[row : row + 1], alone, rtol=1e-5, atol=1e-4)
        # The MFCC's median per coefficient over the frames inside the utterance, then the pitch's median over the
        # voiced ones.
        emphasised = pre_emphasis(waveforms[row : row + 1, :length], model.config.pre_emphasis)
        inside = (length - half_window) // model.config.mfcc_hop_length + 1
        mfcc = encoder.mfcc(emphasised)[0, :inside].double().numpy()
        median = statistics[row, 3 * num_mfcc + 9 + 3 * num_mfcc : 3 * num_mfcc + 9 + 4 * num_mfcc]
        np.testing.assert_allclose(median, np.median(mfcc, axis=0), rtol=1e-5, atol=1e-5)
        frames = encoder.prosody(emphasised)[:, :inside]
        _, voiced = encoder.loud_and_voiced(frames, torch.ones(1, inside, 1))
        pitch = frames[0, :, 0][voiced[0, :, 0] == 1].double().numpy()
        assert len(pitch) > 10
        assert statistics[row, 9 * num_mfcc + 9 + 1].item() == pytest.approx(np.median(pitch), rel=1e-6)
    with pytest.raises(ValueError, match="utterance_distribution_statistics=True needs utterance_statistics_classifier=True"):
        tiny_config(utterance_distribution_statistics=True, **STATISTICS)


def test_utterance_log_mel_statistics_follow_the_other_statistics_from_the_raw_waveform():
    model = tiny_model(utterance_statistics_classifier=True, utterance_distribution_statistics=True,
                       utterance_log_mel_statistics=True, log_mel_num_bands=24, **STATISTICS)
    plain = tiny_model(utterance_statistics_classifier=True, utterance_distribution_statistics=True, **STATISTICS)
    num_plain = plain.statistics_classifier.mean.numel()
    assert model.statistics_classifier.mean.numel() == num_plain + 11 * 24
    lengths = [20_000, 35_001, 56_000]
    waveforms, mask = padded(lengths)
    statistics = model.utterance_statistics(waveforms, mask)
    assert statistics.shape == (3, num_plain + 11 * 24)
    torch.testing.assert_close(statistics[:, :num_plain], plain.utterance_statistics(waveforms, mask), rtol=0, atol=0)
    # Read from the waveform as given, not pre-emphasised as the MFCC's is.
    encoder = model.msemoboost.mfcc_encoder
    expected = encoder.log_mel_statistics(waveforms, torch.tensor(lengths))
    torch.testing.assert_close(statistics[:, num_plain:], expected, rtol=0, atol=0)
    emphasised = encoder.log_mel_statistics(pre_emphasis(waveforms, model.config.pre_emphasis), torch.tensor(lengths))
    assert not torch.allclose(emphasised, expected, rtol=0, atol=1e-2)
    for row, length in enumerate(lengths):  # whatever the batch's padding
        alone = model.utterance_statistics(waveforms[row : row + 1, :length])
        torch.testing.assert_close(statistics[row : row + 1, num_plain:], alone[:, num_plain:], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="utterance_log_mel_statistics=True needs utterance_statistics_classifier=True"):
        tiny_config(utterance_log_mel_statistics=True, **STATISTICS)
    with pytest.raises(ValueError, match=r"log_mel_win_length must be between 1 and log_mel_n_fft \(512\), got 600"):
        tiny_config(utterance_statistics_classifier=True, utterance_log_mel_statistics=True, log_mel_win_length=600,
                    **STATISTICS)


def test_unfitted_classifier_adds_a_uniform_distribution_at_inference_only():
    fused, plain = tiny_model(utterance_statistics_classifier=True, **STATISTICS), tiny_model(**STATISTICS)
    assert fused.statistics_classifier.weight.shape == (4, 3 * fused.config.num_mfcc + 9)
    assert not any(name.startswith("statistics_classifier") for name, _ in fused.named_parameters())
    waveforms, mask = padded([30_000, 52_000])
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        fused_out, plain_out = fused(waveforms, mask, labels=labels), plain(waveforms, mask, labels=labels)
        torch.testing.assert_close(fused_out.logits, plain_out.logits - math.log(4), rtol=0, atol=1e-6)
        assert torch.equal(fused_out.loss, plain_out.loss)  # the loss is the network's
        fused.train(), plain.train()
        set_seed(0)  # dropout, and the backbone's time masks (numpy)
        fused_out = fused(waveforms, mask, labels=labels)
        set_seed(0)
        plain_out = plain(waveforms, mask, labels=labels)
    assert torch.equal(fused_out.logits, plain_out.logits) and torch.equal(fused_out.loss, plain_out.loss)


def separable_statistics(num_statistics: int, labels: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Gaussian statistics with a mean per class and an offset per speaker, on scales far from 1."""
    rng = np.random.default_rng(seed)
    class_means = rng.normal(size=(labels.max() + 1, num_statistics))
    group_offsets = rng.normal(scale=0.5, size=(groups.max() + 1, num_statistics))
    scales = np.geomspace(0.01, 100, num_statistics)
    noise = rng.normal(size=(len(labels), num_statistics))
    return (class_means[labels] + group_offsets[groups] + noise) * scales + 3.0


def test_fit_is_scikit_learn_s_logistic_regression_with_c_chosen_by_speaker_cross_validation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = tiny_model(utterance_statistics_classifier=True, **STATISTICS)
    num_statistics = model.statistics_classifier.mean.numel()
    groups = np.repeat(np.arange(4), 30)
    labels = np.tile(np.arange(3), 40)  # classes 0-2 of the model's 4: class 3 is absent
    statistics = separable_statistics(num_statistics, labels, groups)
    fit = fit_statistics_classifier(model, statistics, labels, groups)

    def reference(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))

    # With 4 speakers the cross-validation holds out one speaker at a time; its score is the UA (balanced accuracy).
    expected = {
        f"{c:g}": balanced_accuracy_score(labels, cross_val_predict(reference(c), statistics, labels, groups=groups,
                                                                    cv=LeaveOneGroupOut()))
        for c in C_GRID
    }
    assert fit["cross_validated_ua"] == pytest.approx(expected, abs=1e-12)
    assert fit["c"] == max(C_GRID, key=lambda c: expected[f"{c:g}"])
    log_probabilities = model.statistics_classifier(torch.from_numpy(statistics).float())
    wanted = reference(fit["c"]).fit(statistics, labels).predict_log_proba(statistics)
    torch.testing.assert_close(log_probabilities[:, :3].double(), torch.from_numpy(wanted), rtol=0, atol=1e-4)
    # The absent class: weight 0, a bias that gives it probability 0.
    assert model.statistics_classifier.bias[3].item() == ABSENT_CLASS_BIAS
    assert not model.statistics_classifier.weight[3].any() and log_probabilities[:, 3].exp().max() == 0


def test_the_penalty_with_the_best_cross_validated_ua_is_chosen_the_strongest_among_ties():
    # One weak cue among 60 noisy statistics, 48 utterances: the penalty matters. Cross-validated UA by C:
    # 1e-4 and 1e-3 20/48, 1e-2 and 0.1 21/48 (the best, tied), 1 18/48, 10 15/48.
    model = tiny_model(utterance_statistics_classifier=True, **STATISTICS)
    rng = np.random.default_rng(3)
    groups, labels = np.repeat(np.arange(4), 12), np.tile(np.arange(3), 16)
    statistics = rng.standard_normal((48, 60))
    statistics[:, 0] += 0.8 * labels
    statistics[:, 1] += 0.6 * (labels == 2)
    model.statistics_classifier = MSEmoBoostStatisticsClassifier(60, 4)
    fit = fit_statistics_classifier(model, statistics, labels, groups)
    scores = {c: round(ua * 48) for c, ua in fit["cross_validated_ua"].items()}
    assert scores == {"0.0001": 20, "0.001": 20, "0.01": 21, "0.1": 21, "1": 18, "10": 15}
    assert fit["c"] == 0.01
    assert fit["cross_validated_ua"]["0.01"] == pytest.approx(21 / 48, abs=1e-12)  # equal classes: UA is WA


def test_a_two_class_fit_gives_scikit_learn_s_binary_probabilities():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = tiny_model(utterance_statistics_classifier=True, **STATISTICS)
    groups = np.repeat(np.arange(3), 20)
    labels = np.tile([1, 2], 30)
    statistics = separable_statistics(model.statistics_classifier.mean.numel(), labels, groups, seed=1)
    fit = fit_statistics_classifier(model, statistics, labels, groups, c_grid=(0.1,))
    assert fit["c"] == 0.1
    wanted = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000)).fit(
        statistics, labels).predict_log_proba(statistics)
    log_probabilities = model.statistics_classifier(torch.from_numpy(statistics).float()).double()
    torch.testing.assert_close(log_probabilities[:, 1:3], torch.from_numpy(wanted), rtol=0, atol=1e-4)
    assert log_probabilities[:, [0, 3]].exp().max() == 0


def test_fitted_classifier_joins_the_logits_saves_with_the_model_and_can_be_switched_off(tmp_path):
    model = tiny_model(utterance_statistics_classifier=True, utterance_statistics_weight=0.5, **STATISTICS)
    plain = tiny_model(**STATISTICS)
    waveforms, mask = padded([24_000, 40_000, 50_000, 33_000])
    labels = np.array([0, 1, 2, 3])
    with torch.no_grad():
        statistics = model.utterance_statistics(waveforms, mask).double().numpy()
    fit_statistics_classifier(model, np.repeat(statistics, 2, axis=0), np.repeat(labels, 2), np.tile([0, 1], 4),
                              c_grid=(1.0,))
    with torch.no_grad():
        fused = model(waveforms, mask).logits
        network = plain(waveforms, mask).logits
        expected = network + 0.5 * model.statistics_classifier(model.utterance_statistics(waveforms, mask))
        torch.testing.assert_close(fused, expected, rtol=0, atol=1e-6)
        output = model(waveforms, mask)  # the output says what the logits hold besides the network's
        torch.testing.assert_close(output.statistics_logits, expected - network, rtol=0, atol=1e-6)
        assert torch.equal(output.logits, output.statistics_logits + network)
        training = copy.deepcopy(model).train()(waveforms, mask)  # (a copy: training updates batch-norm statistics)
        assert training.statistics_logits is None and training.logits.shape == network.shape  # the network's alone
        with statistics_classifier_off(model):
            assert torch.equal(model(waveforms, mask).logits, network)
            assert model(waveforms, mask).statistics_logits is None
        assert model.config.utterance_statistics_weight == 0.5
        model.save_pretrained(tmp_path)
        loaded = MSEmoBoostForSequenceClassification.from_pretrained(tmp_path).eval()
        assert torch.equal(loaded.statistics_classifier.weight, model.statistics_classifier.weight)
        torch.testing.assert_close(loaded(waveforms, mask).logits, fused, rtol=0, atol=0)


def test_the_statistics_classifier_s_settings_and_fit_inputs_are_checked():
    with pytest.raises(ValueError, match="utterance_statistics_classifier=True needs mfcc_statistics=True or "
                                         "prosody_statistics=True"):
        tiny_config(utterance_statistics_classifier=True)
    with pytest.raises(ValueError, match="utterance_statistics_weight must be a non-negative number, got -1"):
        tiny_config(utterance_statistics_classifier=True, utterance_statistics_weight=-1, **STATISTICS)
    with pytest.raises(ValueError, match="utterance_statistics_classifier=True is for single-label classification"):
        tiny_config(utterance_statistics_classifier=True, problem_type="regression", **STATISTICS)
    with pytest.raises(ValueError, match=r"fit_statistics_classifier\(\) needs a model with "
                                         r"config.utterance_statistics_classifier=True"):
        fit_statistics_classifier(tiny_model(**STATISTICS), np.zeros((4, 129)), np.arange(4), np.arange(4))
    model = tiny_model(utterance_statistics_classifier=True, **STATISTICS)
    with pytest.raises(ValueError, match=r"statistics has shape \(4, 3\); expected \(4, 129\)"):
        fit_statistics_classifier(model, np.zeros((4, 3)), np.arange(4), np.arange(4))
    with pytest.raises(ValueError, match="needs at least 2 classes in its training data, got 1"):
        fit_statistics_classifier(model, np.zeros((4, 129)), np.zeros(4, dtype=int), np.arange(4))


def test_without_speakers_the_penalty_is_chosen_on_folds_of_utterances():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from msemoboost.statistics_fusion import cross_validated_ua

    def reference(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))

    labels = np.array([0, 1, 2] * 9 + [3])  # class 3 has one utterance: no stratified folds
    statistics = separable_statistics(12, labels, np.zeros(28, dtype=int), seed=2)
    one_speaker = np.zeros(28, dtype=int)
    for c in (0.01, 1.0):
        folds = KFold(n_splits=5, shuffle=True, random_state=0)
        expected = balanced_accuracy_score(labels, cross_val_predict(reference(c), statistics, labels, cv=folds))
        assert cross_validated_ua(statistics, labels, one_speaker, c) == pytest.approx(expected, abs=1e-12)
    labels, statistics = labels[:27], statistics[:27]  # 9 of each class: 5 stratified folds
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=3)
    expected = balanced_accuracy_score(labels, cross_val_predict(reference(0.1), statistics, labels, cv=folds))
    assert cross_validated_ua(statistics, labels, one_speaker[:27], 0.1, seed=3) == pytest.approx(expected, abs=1e-12)


def test_utterance_statistics_of_a_dataset_come_batched_through_the_collator(tmp_path):
    import soundfile

    from msemoboost.data import AudioCollator
    from msemoboost.feature_extraction_msemoboost import MSEmoBoostFeatureExtractor

    model = tiny_model(utterance_statistics_classifier=True, **STATISTICS)
    rows = []
    for seed, length in enumerate([18_000, 41_000, 30_000]):
        soundfile.write(tmp_path / f"{seed}.wav", speech_like(length, seed), 16000)
        rows.append({"audio": {"path": str(tmp_path / f"{seed}.wav"), "bytes": None}, "labels": 0})
    collator = AudioCollator(MSEmoBoostFeatureExtractor())
    statistics = utterance_statistics(model, rows, collator, batch_size=2)
    with torch.no_grad():
        alone = [model.utterance_statistics(collator([row])["input_values"]) for row in rows]
    assert statistics.dtype == np.float64 and statistics.shape == (3, 129)
    torch.testing.assert_close(torch.from_numpy(statistics).float(), torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_predict_gives_the_fused_probabilities_and_the_network_s_segments():
    from msemoboost import MSEmoBoostFeatureExtractor
    from msemoboost.inference import predict

    model = tiny_model(utterance_statistics_classifier=True, **STATISTICS)
    waveforms, mask = padded([24_000, 40_000, 50_000, 33_000])
    with torch.no_grad():
        statistics = model.utterance_statistics(waveforms, mask).double().numpy()
    fit_statistics_classifier(model, np.repeat(statistics, 2, axis=0), np.tile([0, 1, 2, 3], 2), np.repeat([0, 1], 4),
                              c_grid=(1.0,))
    recordings = [waveforms[row, :length].numpy() for row, length in enumerate(mask.sum(-1).tolist())]
    extractor = MSEmoBoostFeatureExtractor()
    found = predict(model, extractor, recordings, ["a", "b", "c", "d"])
    with torch.no_grad():
        inputs = extractor(recordings, sampling_rate=16000, return_tensors="pt")
        outputs = model(**inputs)
        with statistics_classifier_off(model):
            network = model(**inputs).logits
    assert not torch.allclose(outputs.logits.softmax(-1), network.softmax(-1), atol=1e-3)
    torch.testing.assert_close(torch.from_numpy(np.stack([p.probabilities for p in found])).float(),
                               outputs.logits.softmax(-1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"statistics_logits\(\) needs config.utterance_statistics_classifier=True"):
        tiny_model(**STATISTICS).statistics_logits(waveforms, mask)


def test_transfer_to_other_labels_starts_an_unfitted_statistics_classifier_for_them(tmp_path):
    from msemoboost.training import load_for_transfer

    model = tiny_model(utterance_statistics_classifier=True, id2label={0: "anger", 1: "sadness"}, **STATISTICS)
    with torch.no_grad():
        model.statistics_classifier.weight.normal_()
    model.save_pretrained(tmp_path)
    transferred = load_for_transfer(str(tmp_path), ["sadness", "neutral", "anger"])
    classifier = transferred.statistics_classifier
    assert classifier.weight.shape == (3, 129) and classifier.bias.shape == (3,)
    assert not classifier.weight.any() and not classifier.bias.any() and not classifier.mean.any()
    assert torch.equal(classifier.scale, torch.ones(129))


def three_folds() -> dict[str, dict[str, np.ndarray]]:
    """Two utterances per fold. By weight 0 / 0.5 / 2, fold a scores UA 0.5 / 0.5 / 1, fold b the same, fold c
    1 / 1 / 0; the statistics alone 1, 1, 0."""
    parts = {
        "a": ([[2.0, 0.0], [2.0, 0.0]], [[0.0, -1.0], [-3.0, 0.0]]),
        "b": ([[0.0, 1.0], [0.0, 1.0]], [[0.0, -1.0], [-1.0, 0.0]]),
        "c": ([[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]),
    }
    return {name: {"network_logits": np.array(network), "statistics_log_probabilities": np.array(statistics),
                   "labels": np.array([0, 1]), "utterance_statistics_weight": np.array(1.0)}
            for name, (network, statistics) in parts.items()}


def test_the_statistics_weight_is_chosen_on_all_folds_and_each_fold_s_on_the_other_folds():
    from msemoboost.statistics_fusion import choose_statistics_weight, fused_logits

    folds = three_folds()
    np.testing.assert_array_equal(fused_logits(folds["a"], 2.0), [[2.0, -2.0], [-4.0, 0.0]])
    choice = choose_statistics_weight(folds, (2.0, 0.5, 0.0))
    assert choice["grid"] == [0.0, 0.5, 2.0]
    assert choice["per_fold"] == {"a": {"0": 0.5, "0.5": 0.5, "2": 1.0}, "b": {"0": 0.5, "0.5": 0.5, "2": 1.0},
                                  "c": {"0": 1.0, "0.5": 1.0, "2": 0.0}}
    assert choice["ua_by_weight"] == pytest.approx({"0": 2 / 3, "0.5": 2 / 3, "2": 2 / 3}, abs=1e-12)
    # Every weight ties on all folds: the smallest wins. Folds a and b get 0 (tied with 0.5 on the other folds), fold
    # c gets 2: scored at those weights the folds give 1/3, where every fixed weight gives 2/3.
    assert choice["weight"] == 0.0
    assert choice["nested"] == {"a": 0.0, "b": 0.0, "c": 2.0}
    assert choose_statistics_weight({"a": folds["a"]}, (0.0, 2.0))["nested"] == {}
    assert choose_statistics_weight({"a": folds["a"]}, (0.0, 2.0))["weight"] == 2.0
    with pytest.raises(ValueError, match=r"The statistics weights must be finite and non-negative, got \[-1.0, 1.0\]\."):
        choose_statistics_weight(folds, (1.0, -1.0))
    with pytest.raises(ValueError, match=r"needs the parts of at least one fold"):
        choose_statistics_weight({}, (1.0,))


def test_fusion_weight_reads_train_py_s_parts_and_scores_the_nested_choice(tmp_path, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fusion_weight.py"
    spec = importlib.util.spec_from_file_location("fusion_weight", path)
    fusion_weight = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fusion_weight)
    for name, parts in three_folds().items():
        (tmp_path / "folds" / name).mkdir(parents=True)
        np.savez(tmp_path / "folds" / name / "fusion_parts.npz", **parts)
    study = fusion_weight.weight_study(fusion_weight.read_parts(tmp_path), (0.0, 0.5, 2.0))
    assert study["recorded_weight"] == [1.0]
    assert study["statistics_classifier_alone"] == pytest.approx(2 / 3, abs=1e-12)
    assert study["nested"]["folds"] == {"a": {"weight": 0.0, "wa": 0.5, "ua": 0.5}, "b": {"weight": 0.0, "wa": 0.5, "ua": 0.5},
                                        "c": {"weight": 2.0, "wa": 0.0, "ua": 0.0}}
    assert study["nested"]["ua"] == pytest.approx({"mean": 1 / 3, "std": math.sqrt(2) / 6}, abs=1e-12)
    # The network's top probabilities: sigmoid(2) for fold a's two utterances (one right), sigmoid(1) for the four of
    # b and c (three right); 15 bins put them in two bins.
    high, low = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))
    assert study["confidence"]["network"] == pytest.approx(
        {"mean_top_probability": (2 * high + 4 * low) / 6, "accuracy": 4 / 6,
         "ece": (2 * abs(0.5 - high) + 4 * abs(0.75 - low)) / 6}, abs=1e-12)
    # The statistics' top probabilities: sigmoid(1) for a's first and b's and c's utterances, sigmoid(3) for a's
    # second; right on a and b, wrong on c.
    assert study["confidence"]["statistics_classifier"]["accuracy"] == pytest.approx(4 / 6, abs=1e-12)
    assert study["confidence"]["statistics_classifier"]["mean_top_probability"] == pytest.approx(
        (5 * low + 1 / (1 + math.exp(-3))) / 6, abs=1e-12)
    with pytest.raises(FileNotFoundError, match=r"holds no folds/\*/fusion_parts.npz: train.py writes them for models "
                                                r"with utterance_statistics_classifier"):
        fusion_weight.read_parts(tmp_path / "folds" / "a")
    # --across_corpora: three cross_corpus runs of one leave_one_corpus_out folder, each the parts of one fold above,
    # are scored at the weight best on the other two, as the nested choice over those folds.
    loco = tmp_path / "loco"
    for name, parts in three_folds().items():
        (loco / name / "folds" / "cross_corpus").mkdir(parents=True)
        np.savez(loco / name / "folds" / "cross_corpus" / "fusion_parts.npz", **parts)
        (loco / name / "results.json").write_text(json.dumps({"architecture": {"utterance_statistics_classifier": True}}))
    output = tmp_path / "across.json"
    monkeypatch.setattr(sys, "argv", ["fusion_weight.py", *(str(loco / name) for name in "abc"), "--across_corpora",
                                      "--weights", "0", "0.5", "2", "--output", str(output)])
    fusion_weight.main()
    across = json.loads(output.read_text())["across_corpora"]
    assert across["nested"] == {"a": 0.0, "b": 0.0, "c": 2.0}
    assert {name: found["ua"] for name, found in across["scores"].items()} == {"a": 0.5, "b": 0.5, "c": 0.0}
    monkeypatch.setattr(sys, "argv", ["fusion_weight.py", str(loco / "a"), "--across_corpora"])
    with pytest.raises(SystemExit):
        fusion_weight.main()
    assert "--across_corpora takes 2 or more runs of one leave_one_corpus_out folder" in capsys.readouterr().err
    def centre(run, strength=1.0):
        folds = fusion_weight.read_parts(run)
        return fusion_weight.speaker_centred(folds, fusion_weight.fold_speakers(run, folds), strength)

    # --speaker_centring: each part less its mean over the speaker's test utterances. Fold a's two utterances are one
    # speaker's: its network part becomes 0, its statistics [[1.5, -0.5], [-1.5, 0.5]].
    for name in "abc":
        (tmp_path / "folds" / name / "predictions.csv").write_text("utterance_id,speaker\nx,7\ny,7\n")
    centred = centre(tmp_path)
    np.testing.assert_array_equal(centred["a"]["network_logits"], [[0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(centred["a"]["statistics_log_probabilities"], [[1.5, -0.5], [-1.5, 0.5]])
    np.testing.assert_array_equal(centred["c"]["network_logits"], [[0.5, -0.5], [-0.5, 0.5]])
    # a and b: UA 0.5 at weight 0 (all ties, class 0), 1 above; c: 1 at 0 and 0.5, 0 at 2 (statistics [[-.5, .5], ..]).
    assert fusion_weight.weight_study(centred, (0.0, 0.5, 2.0))["per_fold"] == {
        "a": {"0": 0.5, "0.5": 1.0, "2": 1.0}, "b": {"0": 0.5, "0.5": 1.0, "2": 1.0}, "c": {"0": 1.0, "0.5": 1.0, "2": 0.0}}
    # Two speakers of one utterance each: every score is its own speaker's mean, so every part is 0.
    (tmp_path / "folds" / "a" / "predictions.csv").write_text("utterance_id,speaker\nx,7\ny,8\n")
    centred = centre(tmp_path)
    assert not centred["a"]["network_logits"].any() and not centred["a"]["statistics_log_probabilities"].any()
    (tmp_path / "folds" / "a" / "predictions.csv").write_text("utterance_id,speaker\nx,7\n")
    with pytest.raises(ValueError, match=r"predictions.csv has 1 rows for 2 utterances in its fusion_parts.npz"):
        centre(tmp_path)
    (tmp_path / "folds" / "a" / "predictions.csv").write_text("utterance_id,label\nx,0\ny,1\n")
    with pytest.raises(ValueError, match=r"a/predictions.csv has no speaker column: the run had no speakers to centre over"):
        centre(tmp_path)
    # With --across_corpora, the centred corpora are chosen over as well.
    for name in "abc":
        (loco / name / "folds" / "cross_corpus" / "predictions.csv").write_text("utterance_id,speaker\nx,7\ny,7\n")
    monkeypatch.setattr(sys, "argv", ["fusion_weight.py", *(str(loco / name) for name in "abc"), "--across_corpora",
                                      "--speaker_centring", "--weights", "0", "0.5", "2", "--output", str(output)])
    fusion_weight.main()
    across = json.loads(output.read_text())["speaker_centred"]["across_corpora"]
    # a and b are best at 0.5 on the others (c ties 0 and 0.5; a or b: 0.5); c at 0.5 too (a and b at 0.5 and 2).
    assert across["nested"] == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert {name: found["ua"] for name, found in across["scores"].items()} == {"a": 1.0, "b": 1.0, "c": 1.0}
    # --centring_strengths: a share of the speaker mean taken off; fold a's network [[2, 0], [2, 0]] at a half.
    half = centre(loco / "a", strength=0.5)
    np.testing.assert_array_equal(half["cross_corpus"]["network_logits"], [[1.0, 0.0], [1.0, 0.0]])
    monkeypatch.setattr(sys, "argv", ["fusion_weight.py", *(str(loco / name) for name in "abc"), "--across_corpora",
                                      "--speaker_centring", "--centring_strengths", "1", "0", "--weights", "0", "0.5", "2",
                                      "--output", str(output)])
    fusion_weight.main()
    study = json.loads(output.read_text())["speaker_centred"]["strengths_across_corpora"]
    # Uncentred, a and b score 0.5 / 0.5 / 1 by weight and c 1 / 1 / 0; centred, a and b 0.5 / 1 / 1 and c the same.
    # a's others (b, c) are best at strength 1 and weight 0.5 (both 1), as are b's; c's others tie at 1 on (0, 2),
    # (1, 0.5) and (1, 2): the weaker centring wins, (0, 2), where c scores 0.
    assert study["nested"] == {"a": {"strength": 1.0, "weight": 0.5, "ua": 1.0},
                               "b": {"strength": 1.0, "weight": 0.5, "ua": 1.0},
                               "c": {"strength": 0.0, "weight": 2.0, "ua": 0.0}}
    assert study["ua"] == pytest.approx(2 / 3, abs=1e-12)
    assert study["ua_by_pair"]["1/0.5"] == 1.0 and study["ua_by_pair"]["0/0"] == pytest.approx(2 / 3, abs=1e-12)
    with pytest.raises(ValueError, match=r"chosen on the other folds: \['cross_corpus'\] is a single fold"):
        fusion_weight.strength_study({0.0: fusion_weight.read_parts(loco / "a")}, (0.0, 1.0))
    for arguments, message in ((["--centring_strengths", "0.5"], "--centring_strengths needs --speaker_centring."),
                               (["--speaker_centring", "--centring_strengths", "0", "1.5"],
                                "--centring_strengths are shares of the speaker mean, from 0 to 1: got [0.0, 1.5].")):
        monkeypatch.setattr(sys, "argv", ["fusion_weight.py", str(loco / "a"), *arguments])
        with pytest.raises(SystemExit):
            fusion_weight.main()
        assert message in capsys.readouterr().err


def test_embedding_classifier_fits_the_statistics_classifier_s_regression_on_the_training_utterances_only():
    import importlib.util
    from pathlib import Path

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from msemoboost.statistics_fusion import cross_validated_ua

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "embedding_classifier.py"
    spec = importlib.util.spec_from_file_location("embedding_classifier", path)
    embedding_classifier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(embedding_classifier)
    speakers = np.repeat(np.array(["s1", "s2", "s3", "s4", "t1"]), 30)
    labels = np.tile(np.arange(3), 50)  # classes 0-2 of 4: class 3 is absent
    features = separable_statistics(6, labels, np.repeat(np.arange(5), 30))
    test = speakers == "t1"
    found = {"features": features, "labels": labels, "speakers": speakers, "test": test}
    log_probabilities, c = embedding_classifier.regression_log_probabilities(found, features, 4)
    scores = {grid_c: cross_validated_ua(features[~test], labels[~test], speakers[~test], grid_c) for grid_c in C_GRID}
    assert c == max(C_GRID, key=lambda grid_c: scores[grid_c])
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
    wanted = reference.fit(features[~test], labels[~test]).predict_log_proba(features[test])
    np.testing.assert_allclose(log_probabilities[:, :3], wanted, rtol=0, atol=1e-12)
    assert log_probabilities.shape == (30, 4) and np.isneginf(log_probabilities[:, 3]).all()


def test_speaker_normalization_fits_the_regression_on_each_speaker_s_own_standardised_statistics():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = tiny_model(utterance_statistics_classifier=True, speaker_normalization=True, **STATISTICS)
    groups = np.repeat(np.array(["s1", "s2", "s3", "s4"]), 30)
    labels = np.tile(np.arange(3), 40)
    statistics = separable_statistics(model.statistics_classifier.mean.numel(), labels, np.repeat(np.arange(4), 30))
    fit = fit_statistics_classifier(model, statistics, labels, groups, c_grid=(0.1,))

    by_speaker = np.empty_like(statistics)
    for speaker in np.unique(groups):
        rows = groups == speaker
        by_speaker[rows] = (statistics[rows] - statistics[rows].mean(0)) / statistics[rows].std(0)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000))
    wanted = reference.fit(by_speaker, labels).predict_log_proba(by_speaker)
    classifier = model.statistics_classifier
    np.testing.assert_allclose(classifier.mean.numpy(), statistics.mean(0), rtol=1e-6)  # the fallback: all of them (float32)
    np.testing.assert_allclose(classifier.scale.numpy(), statistics.std(0), rtol=1e-6)
    got = classify_statistics(model, statistics, groups)
    np.testing.assert_allclose(got[:, :3], wanted, rtol=0, atol=1e-4)
    assert fit["c"] == 0.1
    # Without groups, every utterance is standardised by the training data's statistics instead: other answers.
    assert np.abs(classify_statistics(model, statistics)[:, :3] - wanted).max() > 0.1


def test_the_ungrouped_regression_is_fitted_on_the_training_data_s_standardisation_and_classifies_recordings_alone():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = tiny_model(utterance_statistics_classifier=True, speaker_normalization=True, ungrouped_statistics_weight=0.5,
                       **STATISTICS)
    groups = np.repeat(np.array(["s1", "s2", "s3", "s4"]), 30)
    labels = np.tile(np.arange(3), 40)
    statistics = separable_statistics(model.statistics_classifier.mean.numel(), labels, np.repeat(np.arange(4), 30))
    fit = fit_statistics_classifier(model, statistics, labels, groups, c_grid=(0.1,))

    def reference(features):
        fitted = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000))
        return fitted.fit(features, labels).predict_log_proba(features)

    by_speaker = np.empty_like(statistics)
    for speaker in np.unique(groups):
        rows = groups == speaker
        by_speaker[rows] = (statistics[rows] - statistics[rows].mean(0)) / statistics[rows].std(0)
    # Grouped: the speaker-normalised regression, as without the second one; alone: the plain regression's answers.
    np.testing.assert_allclose(classify_statistics(model, statistics, groups)[:, :3], reference(by_speaker), atol=1e-4)
    np.testing.assert_allclose(classify_statistics(model, statistics)[:, :3], reference(statistics), atol=1e-4)
    assert fit["ungrouped"]["c"] == 0.1 and set(fit["ungrouped"]["cross_validated_ua"]) == {"0.1"}
    assert model.statistics_classifier.ungrouped_bias[3:].eq(ABSENT_CLASS_BIAS).all()  # classes no utterance has

    # In forward: the rows of a group at utterance_statistics_weight, the rows without one at the ungrouped weight.
    waveforms, mask = padded([24_000, 40_000, 50_000, 33_000, 45_000])
    group_ids = torch.tensor([0, 0, 0, -1, 1])  # group 1 has one utterance: too small, so alone too
    with torch.no_grad():
        utterance = model.utterance_statistics(waveforms, mask)
        network = model.eval()(waveforms, mask, group_ids=group_ids).logits - model.statistics_logits(
            waveforms, mask, group_ids=group_ids)
        grouped = model.statistics_classifier(utterance, *model.group_normalization(utterance, group_ids))
        alone = model.statistics_classifier(utterance)
        expected = torch.cat([network[:3] + grouped[:3], network[3:] + 0.5 * alone[3:]])
        torch.testing.assert_close(model(waveforms, mask, group_ids=group_ids).logits, expected)
        torch.testing.assert_close(model(waveforms, mask).logits, network + 0.5 * alone)
        assert not torch.allclose(grouped[:3], alone[:3], atol=1e-3)
    with pytest.raises(ValueError, match=r"^ungrouped_statistics_weight is the weight of the regression for utterances "
                                         r"without a group, which only speaker_normalization=True has"):
        tiny_config(utterance_statistics_classifier=True, ungrouped_statistics_weight=1.0, **STATISTICS)
    with pytest.raises(ValueError, match=r"^ungrouped_statistics_weight must be None or a non-negative number, got -1"):
        tiny_config(utterance_statistics_classifier=True, speaker_normalization=True, ungrouped_statistics_weight=-1,
                    **STATISTICS)


def test_group_ids_standardise_each_utterance_by_its_group_in_the_batch_and_small_groups_by_the_training_data():
    model = tiny_model(utterance_statistics_classifier=True, speaker_normalization=True, **STATISTICS)
    classifier = model.statistics_classifier
    waveforms, mask = padded([24_000, 40_000, 50_000, 33_000, 45_000, 30_000])
    with torch.no_grad():
        statistics = model.utterance_statistics(waveforms, mask)
        classifier.mean.copy_(statistics.mean(0) + 1.0)
        classifier.scale.copy_(statistics.std(0) + 2.0)
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=torch.Generator().manual_seed(0)))
        group_ids = torch.tensor([0, 1, 0, 1, 0, -1])  # 3 of group 0, 2 of group 1, one without a group
        mean, scale = model.group_normalization(statistics, group_ids)
        expected_mean = torch.stack([statistics[[0, 2, 4]].mean(0), statistics[[1, 3]].mean(0)])
        expected_scale = torch.stack([statistics[[0, 2, 4]].std(0, correction=0), statistics[[1, 3]].std(0, correction=0)])
        torch.testing.assert_close(mean[[0, 2, 4]], expected_mean[0].expand(3, -1))
        torch.testing.assert_close(scale[[1, 3]], expected_scale[1].expand(2, -1))
        assert torch.equal(mean[5], classifier.mean) and torch.equal(scale[5], classifier.scale)
        # A group of one is standardised by the training data's statistics, as one without a group.
        small_mean, small_scale = model.group_normalization(statistics, torch.tensor([0, 1, 0, 1, 0, 2]))
        assert torch.equal(small_mean[5], classifier.mean) and torch.equal(small_scale[5], classifier.scale)

        network = tiny_model(utterance_statistics_classifier=True, speaker_normalization=True,
                             utterance_statistics_weight=0.0, **STATISTICS)(waveforms, mask).logits
        grouped = model(waveforms, mask, group_ids=group_ids).logits
        torch.testing.assert_close(grouped, network + classifier(statistics, mean, scale))
        # The same statistics computed beforehand over the whole group: the same logits.
        torch.testing.assert_close(model(waveforms, mask, group_mean=mean, group_scale=scale).logits, grouped)
        # Batch by batch with the group's statistics of every batch, as for a group larger than a batch.
        halves = [model(waveforms[rows], mask[rows], group_mean=mean[rows], group_scale=scale[rows]).logits
                  for rows in (slice(0, 3), slice(3, 6))]
        torch.testing.assert_close(torch.cat(halves), grouped)
        ungrouped = model(waveforms, mask).logits
        torch.testing.assert_close(ungrouped, network + classifier(statistics))
        assert not torch.allclose(ungrouped[:5], grouped[:5])


def test_group_inputs_are_checked_against_the_model_and_the_batch():
    waveforms, mask = padded([24_000, 40_000])
    plain = tiny_model(utterance_statistics_classifier=True, **STATISTICS)
    with pytest.raises(ValueError, match=r"^group_ids given, but this model does not normalise by group: it was built "
                                         r"without config.speaker_normalization \(train it with --speaker_normalization true\).$"):
        plain(waveforms, mask, group_ids=torch.tensor([0, 0]))
    model = tiny_model(utterance_statistics_classifier=True, speaker_normalization=True, **STATISTICS)
    num_statistics = model.statistics_classifier.mean.numel()
    with pytest.raises(ValueError, match=r"^group_ids must hold one integer id per utterance, shape \(2,\); got shape \(3,\)"):
        model(waveforms, mask, group_ids=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"^Give group_ids, or group_mean and group_scale computed beforehand, not both.$"):
        model(waveforms, mask, group_ids=torch.tensor([0, 0]), group_mean=torch.zeros(2, num_statistics))
    with pytest.raises(ValueError, match=rf"^group_mean and group_scale go together, each of shape \(batch_size, "
                                         rf"num_statistics\) = \(2, {num_statistics}\); got \(2, {num_statistics}\) and None.$"):
        model(waveforms, mask, group_mean=torch.zeros(2, num_statistics))
    with pytest.raises(ValueError, match=r"^speaker_normalization=True needs utterance_statistics_classifier=True"):
        tiny_config(speaker_normalization=True, **STATISTICS)
    with pytest.raises(ValueError, match=r"^speaker_normalization_min_utterances must be at least 2"):
        tiny_config(utterance_statistics_classifier=True, speaker_normalization=True,
                    speaker_normalization_min_utterances=1, **STATISTICS)
