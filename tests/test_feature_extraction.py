"""MSEmoBoostFeatureExtractor: padding, masks and per-utterance normalisation."""

import numpy as np
import torch

from msemoboost import MSEmoBoostFeatureExtractor
from tiny import speech_like


def test_pads_to_the_longest_and_returns_an_attention_mask_by_default():
    inputs = MSEmoBoostFeatureExtractor()([speech_like(1_000), speech_like(2_500, 1)], sampling_rate=16000, return_tensors="pt")
    assert inputs["input_values"].shape == (2, 2_500) and inputs["input_values"].dtype == torch.float32
    assert inputs["attention_mask"].sum(-1).tolist() == [1_000, 2_500]
    assert not inputs["input_values"][0, 1_000:].any()


def test_normalises_each_utterance_over_its_own_samples():
    waveforms = [3 * speech_like(1_000) + 0.5, speech_like(2_500, 1)]
    values = MSEmoBoostFeatureExtractor()(waveforms, sampling_rate=16000, return_tensors="np")["input_values"]
    for row, waveform in zip(values, waveforms):
        audio = row[: len(waveform)]
        np.testing.assert_allclose(audio.mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(audio.std(), 1.0, atol=1e-4)
        np.testing.assert_allclose(audio, (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7), atol=1e-5)


def test_without_normalisation_the_waveform_is_kept():
    waveform = speech_like(1_000)
    values = MSEmoBoostFeatureExtractor(do_normalize=False)(waveform, sampling_rate=16000)["input_values"][0]
    np.testing.assert_array_equal(values, waveform)


def test_accepts_torch_tensors_float64_and_lists():
    waveform = speech_like(1_000)
    extractor = MSEmoBoostFeatureExtractor()
    expected = extractor(waveform, sampling_rate=16000)["input_values"][0]
    for variant in (torch.from_numpy(waveform), waveform.astype(np.float64), waveform.tolist()):
        np.testing.assert_allclose(extractor(variant, sampling_rate=16000)["input_values"][0], expected, atol=1e-6)


def test_save_and_reload_keeps_the_settings(tmp_path):
    MSEmoBoostFeatureExtractor(do_normalize=False, sampling_rate=8000).save_pretrained(tmp_path)
    reloaded = MSEmoBoostFeatureExtractor.from_pretrained(tmp_path)
    assert (reloaded.do_normalize, reloaded.sampling_rate, reloaded.return_attention_mask) == (False, 8000, True)
