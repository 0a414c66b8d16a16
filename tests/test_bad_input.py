"""Bad input gets a clear error that names the problem, never a silent wrong answer."""

import numpy as np
import pytest
import torch

from msemoboost import MSEmoBoostFeatureExtractor
from tiny import speech_like, tiny_model

EXTRACTOR = MSEmoBoostFeatureExtractor()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_empty_audio_is_refused():
    with pytest.raises(ValueError, match="utterance 1 is empty: it holds no audio samples"):
        EXTRACTOR([speech_like(16_000), np.zeros(0, np.float32)], sampling_rate=16000)
    with pytest.raises(ValueError, match="empty list"):
        EXTRACTOR([], sampling_rate=16000)


def test_audio_shorter_than_one_analysis_frame_is_refused(model):
    inputs = EXTRACTOR([speech_like(16_000), speech_like(300)], sampling_rate=16000, return_tensors="pt")
    with pytest.raises(ValueError, match=r"Utterance\(s\) \[1\] have \[300\] samples, fewer than one analysis frame "
                                         r"of the backbone \(400 samples = 25.0 ms at 16000 Hz\)"):
        model(**inputs)
    with pytest.raises(ValueError, match=r"\[0\] samples"):
        model(torch.zeros(1, 800), attention_mask=torch.zeros(1, 800, dtype=torch.long))
    with torch.no_grad():  # exactly one analysis frame is enough
        assert model(torch.from_numpy(speech_like(400))[None]).logits.shape == (1, 4)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_samples_are_refused(model, bad_value):
    waveform = speech_like(16_000)
    waveform[123] = bad_value
    with pytest.raises(ValueError, match="utterance 0 contains NaN or Inf samples"):
        EXTRACTOR(waveform, sampling_rate=16000)
    with pytest.raises(ValueError, match=r"NaN or Inf samples in utterance\(s\) \[1\]"):
        model(torch.stack([torch.zeros(16_000), torch.from_numpy(waveform)]))


def test_wrong_sampling_rate_names_both_rates():
    with pytest.raises(ValueError, match="sampled at 22050 Hz but this model expects 16000 Hz"):
        EXTRACTOR(speech_like(16_000), sampling_rate=22050)


def test_stereo_input_says_which_shape_was_expected(model):
    stereo = np.stack([speech_like(16_000), speech_like(16_000, 1)])
    with pytest.raises(ValueError, match=r"one mono waveform of shape \(num_samples,\), got an array of shape \(2, 16000\).*downmix"):
        EXTRACTOR(stereo, sampling_rate=16000)
    with pytest.raises(ValueError, match=r"utterance 0: expected a mono waveform of shape \(num_samples,\), got shape \(16000, 2\)"):
        EXTRACTOR([stereo.T], sampling_rate=16000)
    with pytest.raises(ValueError, match=r"shape \(batch_size, num_samples\), got shape \(1, 2, 16000\). Downmix"):
        model(torch.from_numpy(stereo)[None])


def test_integer_pcm_is_refused_with_the_conversion(model):
    pcm = (speech_like(16_000) * 32767).astype(np.int16)
    with pytest.raises(ValueError, match=r"got dtype int16. Convert integer PCM first, e.g. pcm.astype\(np.float32\) / 32768"):
        EXTRACTOR(pcm, sampling_rate=16000)
    with pytest.raises(ValueError, match=r"got dtype torch.int16. Convert integer PCM first"):
        model(torch.from_numpy(pcm)[None])


def test_labels_outside_num_labels_are_refused(model):
    inputs = EXTRACTOR([speech_like(16_000), speech_like(16_000, 1)], sampling_rate=16000, return_tensors="pt")
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\) for num_labels=4, got \[4\]"):
        model(**inputs, labels=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        model(**inputs, labels=torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match=r"one class index per utterance, shape \(2,\), or class probabilities, float "
                                         r"of shape \(2, 4\); got shape \(2, 3\)"):
        model(**inputs, labels=torch.full((2, 3), 1 / 3))  # probabilities over the wrong number of classes
    with pytest.raises(ValueError, match=r"one class index per utterance, shape \(2,\), or class probabilities, float "
                                         r"of shape \(2, 4\); got shape \(2,\) of dtype torch.float32\.$"):
        model(**inputs, labels=torch.tensor([0.0, 1.0]))  # the right shape, but not class indices
    with pytest.raises(ValueError, match=r"soft labels of shape \(2, 4\) must be class probabilities: non-negative, "
                                         r"each row summing to 1; got row sums \[0.0, 0.0\] and minimum 0.0\."):
        model(**inputs, labels=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"got row sums \[1.0, 1.0\] and minimum -0.5\."):
        model(**inputs, labels=torch.tensor([[1.5, -0.5, 0.0, 0.0], [0.25] * 4]))


def test_left_padding_mask_is_refused(model):
    mask = torch.ones(1, 16_000, dtype=torch.long)
    mask[0, :1000] = 0
    with pytest.raises(ValueError) as error:
        model(torch.randn(1, 16_000), attention_mask=mask)
    assert str(error.value) == ("attention_mask must mark one block of audio at the start of each row (right padding), "
                                "as MSEmoBoostFeatureExtractor pads.")
    with pytest.raises(ValueError) as error:
        model(torch.randn(2, 16_000), attention_mask=torch.ones(2, 8_000, dtype=torch.long))
    assert str(error.value) == "attention_mask has shape (2, 8000) but input_values has shape (2, 16000)."


@pytest.mark.parametrize("shape, hint", [
    ((16_000,), " Add a batch dimension: input_values[None]."),
    ((1, 2, 16_000), " Downmix multi-channel audio to mono first."),
    ((1, 1, 2, 16_000), ""),
])
def test_the_model_names_the_shape_it_needs(model, shape, hint):
    with pytest.raises(ValueError) as error:
        model(torch.zeros(shape))
    assert str(error.value) == ("input_values must be a batch of mono waveforms of shape (batch_size, num_samples), "
                                f"got shape {shape}.{hint}")


def test_nan_in_the_padding_is_never_read(model):
    inputs = EXTRACTOR([speech_like(16_000), speech_like(8_000, 1)], sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        reference = model(**inputs).logits
        inputs["input_values"][1, 8_000:] = float("nan")  # from the first padded sample on
        torch.testing.assert_close(model(**inputs).logits, reference, rtol=0, atol=0)
