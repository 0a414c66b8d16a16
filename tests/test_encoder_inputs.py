"""Golden values: what the guidance encoders receive inside the model equals an independent librosa/numpy/torchvision
computation of the recipe, on real EMO-DB speech.

The feature modules are compared with librosa on their own in test_acoustic_features.py; these tests pin the values
where the model uses them (pre-emphasis coefficient from the config, normalisation axis, image scaling, resize and
per-channel ImageNet normalisation), by capturing the inputs of the Bi-LSTM and of AlexNet's `features`.
"""

import librosa
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from tiny import tiny_config

from msemoboost import MSEmoBoostForSequenceClassification

PRE_EMPHASIS = 0.9  # not the default 0.97, so that a model ignoring the config's coefficient fails


@pytest.fixture(scope="module")
def segments(emodb_utterances) -> torch.Tensor:
    """Four real segments: the first 3 s of the two longest utterances, and two shorter ones zero-padded to 3 s."""
    by_length = sorted(emodb_utterances, key=len)
    chosen = [by_length[-1], by_length[-2], by_length[0], by_length[1]]
    batch = torch.zeros(len(chosen), 48_000)
    for row, utterance in enumerate(chosen):
        batch[row, : min(len(utterance), 48_000)] = torch.from_numpy(utterance[:48_000])
    return batch


def capture_input(module: torch.nn.Module, run) -> torch.Tensor:
    captured = []
    handle = module.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0].detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return captured[0]


def model_for(**overrides) -> MSEmoBoostForSequenceClassification:
    return MSEmoBoostForSequenceClassification(tiny_config(pre_emphasis=PRE_EMPHASIS, **overrides)).eval()


def encode(model, segments: torch.Tensor, lengths: list[int]):
    with torch.no_grad():
        model.msemoboost.encode_segments(segments, torch.tensor(lengths))


def reference_mfcc(segment: np.ndarray) -> np.ndarray:
    """`(301, 40)`: librosa MFCC of the pre-emphasised segment, each frame L2-normalised over its coefficients."""
    emphasised = librosa.effects.preemphasis(segment, coef=PRE_EMPHASIS)
    mfcc = librosa.feature.mfcc(y=emphasised, sr=16000, n_mfcc=40, hop_length=160, htk=True).T.astype(np.float64)
    return mfcc / np.linalg.norm(mfcc, axis=1, keepdims=True)


def reference_image(segment: np.ndarray, image_size: int) -> torch.Tensor:
    """`(3, image_size, W)`: the spectrogram image of the recipe, min-max scaled, flipped, resized (short side), grey
    copied to RGB and normalised with ImageNet's per-channel mean and std."""
    emphasised = librosa.effects.preemphasis(segment, coef=PRE_EMPHASIS)
    magnitude = np.abs(librosa.stft(emphasised, n_fft=800, win_length=640, hop_length=160, window="hamming"))
    log_spec = librosa.amplitude_to_db(magnitude, ref=np.max)[:200]
    image = ((log_spec - log_spec.min()) / (log_spec.max() - log_spec.min()))[::-1].copy()
    image = TF.resize(torch.from_numpy(image)[None].float(), image_size, antialias=True)
    return TF.normalize(image.expand(3, -1, -1), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def test_bilstm_receives_l2_normalised_mfcc_of_the_pre_emphasised_segment(segments):
    model = model_for(use_spectrogram=False)
    lstm_input = capture_input(model.msemoboost.mfcc_encoder.lstm, lambda: encode(model, segments, [48_000] * 4))
    assert lstm_input.shape == (4, 301, 40)
    for row, segment in enumerate(segments.numpy()):
        reference = reference_mfcc(segment)
        np.testing.assert_allclose(lstm_input[row].numpy(), reference, rtol=0, atol=2e-5)
        np.testing.assert_allclose(np.linalg.norm(lstm_input[row].numpy(), axis=1), 1.0, atol=1e-5)


def test_bilstm_receives_mfcc_standardised_over_the_frames_holding_audio(segments, emodb_utterances):
    model = model_for(use_spectrogram=False, mfcc_normalization="standardize")
    short = sorted(len(utterance) for utterance in emodb_utterances)[0]
    lengths = [48_000, 48_000, short, 48_000]
    lstm_input = capture_input(model.msemoboost.mfcc_encoder.lstm, lambda: encode(model, segments, lengths))
    for row, segment in enumerate(segments.numpy()):
        emphasised = librosa.effects.preemphasis(segment, coef=PRE_EMPHASIS)
        mfcc = librosa.feature.mfcc(y=emphasised, sr=16000, n_mfcc=40, hop_length=160, htk=True).T.astype(np.float64)
        audio_frames = int(np.ceil(lengths[row] / 160))  # centred frames whose centre lies on audio
        held = mfcc[:audio_frames]
        expected = np.zeros_like(mfcc)
        expected[:audio_frames] = (held - held.mean(0)) / np.sqrt(held.var(0) + 1e-5)
        np.testing.assert_allclose(lstm_input[row].numpy(), expected, rtol=0, atol=2e-3)
        assert not lstm_input[row, audio_frames:].any()


def test_alexnet_receives_the_resized_imagenet_normalised_spectrogram_image(segments):
    model = model_for(use_mfcc=False, spectrogram_image_size=64)
    image = capture_input(model.msemoboost.spectrogram_encoder.features, lambda: encode(model, segments, [48_000] * 4))
    assert image.shape == (4, 3, 64, 96)  # 200 x 301 resized so that the short side is 64
    for row, segment in enumerate(segments.numpy()):
        np.testing.assert_allclose(image[row].numpy(), reference_image(segment, 64).numpy(), rtol=0, atol=2e-4)
    # Each channel has its own ImageNet statistics: the three channels differ exactly by them.
    grey = image[:, 0] * 0.229 + 0.485
    torch.testing.assert_close(image[:, 2], (grey - 0.406) / 0.225, rtol=0, atol=1e-5)
