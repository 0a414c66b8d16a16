"""The in-model torch features match the paper's librosa recipe on real speech."""

import librosa
import numpy as np
import pytest
import torch

from msemoboost import MSEmoBoostConfig
from msemoboost.acoustic_features import MSEmoBoostMFCC, MSEmoBoostProsody, MSEmoBoostSpectrogram, mel_bands, pre_emphasis

CONFIG = MSEmoBoostConfig()


def relative_error(output: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(output - reference) / np.linalg.norm(reference))


@pytest.fixture(scope="module")
def segments(emodb_utterances) -> list[np.ndarray]:
    """Real 3 s segments: each EMO-DB utterance (2 s) zero-padded to 48,000 samples, as the model pads them."""
    padded = []
    for utterance in emodb_utterances:
        segment = np.zeros(CONFIG.segment_samples, dtype=np.float32)
        segment[: len(utterance)] = utterance[: CONFIG.segment_samples]
        padded.append(segment)
    return padded


def librosa_mfcc(segment: np.ndarray) -> np.ndarray:
    emphasised = librosa.effects.preemphasis(segment)
    return librosa.feature.mfcc(y=emphasised, sr=16000, n_mfcc=40, hop_length=160, htk=True)


def librosa_spectrogram(segment: np.ndarray) -> np.ndarray:
    emphasised = librosa.effects.preemphasis(segment)
    magnitude = np.abs(librosa.stft(emphasised, n_fft=800, win_length=640, hop_length=160, window="hamming"))
    log_spec = librosa.amplitude_to_db(magnitude, ref=np.max)[:200]
    image = (log_spec - log_spec.min()) / (log_spec.max() - log_spec.min())
    return image[::-1]


def test_pre_emphasis_matches_librosa(segments):
    batch = torch.from_numpy(np.stack(segments))
    output = pre_emphasis(batch, 0.97).numpy()
    for row, segment in zip(output, segments):
        np.testing.assert_allclose(row, librosa.effects.preemphasis(segment), rtol=0, atol=1e-6)


def test_mfcc_matches_librosa_on_emodb(segments):
    mfcc = MSEmoBoostMFCC(CONFIG)
    output = mfcc(pre_emphasis(torch.from_numpy(np.stack(segments)), 0.97)).numpy()
    assert output.shape == (len(segments), CONFIG.num_mfcc_frames, 40) == (len(segments), 301, 40)
    for features, segment in zip(output, segments):
        assert relative_error(features.T, librosa_mfcc(segment)) <= 1e-4


def test_spectrogram_matches_librosa_on_emodb(segments):
    spectrogram = MSEmoBoostSpectrogram(CONFIG)
    output = spectrogram(pre_emphasis(torch.from_numpy(np.stack(segments)), 0.97)).numpy()
    assert output.shape == (len(segments), 200, 301)
    for image, segment in zip(output, segments):
        assert relative_error(image, librosa_spectrogram(segment)) <= 1e-4


def test_filters_and_windows_equal_librosa():
    mfcc, spectrogram = MSEmoBoostMFCC(CONFIG), MSEmoBoostSpectrogram(CONFIG)
    reference_filters = librosa.filters.mel(sr=16000, n_fft=2048, n_mels=128, htk=True)
    np.testing.assert_allclose(mfcc.mel_filters.numpy().T, reference_filters, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(mfcc.window.numpy(), librosa.filters.get_window("hann", 2048), atol=1e-7)
    hamming = librosa.util.pad_center(librosa.filters.get_window("hamming", 640), size=800)
    np.testing.assert_allclose(spectrogram.window.numpy(), hamming, atol=1e-7)


def test_mel_bands_hold_every_non_zero_weight_of_the_filter_bank():
    filters = MSEmoBoostMFCC(CONFIG).filter_bank()
    bands = mel_bands(filters)
    assert [(start, stop) for start, stop, _, _ in bands] == [(16 * i, 16 * (i + 1)) for i in range(8)]
    rebuilt = np.zeros_like(filters)
    for start, stop, low, high in bands:
        rebuilt[low:high, start:stop] = filters[low:high, start:stop]
    np.testing.assert_array_equal(rebuilt, filters)
    assert sum((high - low) * (stop - start) for start, stop, low, high in bands) / filters.size < 0.14
    # A filter bank whose first filters are all zero (too many mel filters for the bins): their run spans no bins.
    sparse = np.zeros((5, 4), dtype=np.float32)
    sparse[3, 2], sparse[4, 3] = 1.0, 2.0
    assert mel_bands(sparse, num_bands=2) == ((0, 2, 0, 0), (2, 4, 3, 5))
    mfcc = MSEmoBoostMFCC(CONFIG)
    mfcc.mel_bands = ((0, 2, 0, 0), (2, 4, 3, 5))
    mfcc.mel_filters = torch.from_numpy(sparse)
    power = torch.rand(3, 7, 5)
    torch.testing.assert_close(mfcc.mel_power(power), power @ torch.from_numpy(sparse), rtol=0, atol=0)


def test_mel_power_by_bands_equals_the_whole_product(segments):
    mfcc = MSEmoBoostMFCC(CONFIG)
    power = mfcc.power_spectrogram(pre_emphasis(torch.from_numpy(np.stack(segments)), 0.97)).transpose(1, 2)
    torch.testing.assert_close(mfcc.mel_power(power), power @ mfcc.mel_filters, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("module_class", [MSEmoBoostMFCC, MSEmoBoostSpectrogram])
def test_eager_groups_of_segments_give_the_features_of_each_segment_alone(segments, module_class):
    module = module_class(CONFIG)
    batch = pre_emphasis(torch.from_numpy(np.stack((segments * 4)[:9])), 0.97)  # groups of 4, 4 and 1
    assert module.eager_rows_per_step == 4
    grouped = module(batch)
    assert grouped.shape[0] == 9
    for row, features in zip(batch, grouped):
        torch.testing.assert_close(features, module.features(row[None])[0], rtol=0, atol=0)


def test_digital_silence_gives_finite_features():
    silence = torch.zeros(2, CONFIG.segment_samples)
    mfcc = MSEmoBoostMFCC(CONFIG)(pre_emphasis(silence, 0.97))
    image = MSEmoBoostSpectrogram(CONFIG)(pre_emphasis(silence, 0.97))
    assert torch.isfinite(mfcc).all()
    assert torch.equal(image, torch.zeros_like(image))


@pytest.mark.parametrize("center, n_fft, hop_length, num_mel_bins", [(True, 400, 160, 64), (False, 400, 320, 80)])
def test_log_mel_matches_librosa_on_emodb(segments, center, n_fft, hop_length, num_mel_bins):
    # The intensity model's input (centred 10 ms frames) and the pretraining target (the backbone's frames).
    from msemoboost.acoustic_features import MSEmoBoostLogMel

    log_mel = MSEmoBoostLogMel(n_fft, hop_length, 16000, num_mel_bins, center=center)
    output = log_mel(torch.from_numpy(np.stack(segments))).numpy()
    for features, segment in zip(output, segments):
        mel = librosa.feature.melspectrogram(y=segment, sr=16000, n_fft=n_fft, hop_length=hop_length, window="hann",
                                             center=center, pad_mode="constant", power=2.0, n_mels=num_mel_bins,
                                             fmin=0.0, fmax=8000.0, htk=False, norm="slaney")
        assert features.shape == mel.T.shape
        assert relative_error(np.exp(features.T), mel + 1e-6) <= 1e-5


def transformers_log_mel_functionals(waveform: np.ndarray) -> np.ndarray:
    """`config.utterance_log_mel_statistics` of one utterance by `transformers.audio_utils` and numpy/scipy."""
    from scipy.stats import kurtosis, skew
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    filters = mel_filter_bank(num_frequency_bins=257, num_mel_filters=40, min_frequency=0, max_frequency=8000,
                              sampling_rate=16000, norm="slaney", mel_scale="slaney")
    bands = spectrogram(waveform, window_function(400, "hann"), frame_length=400, hop_length=160, fft_length=512,
                        power=2.0, center=False, mel_filters=filters, log_mel="log10", mel_floor=1e-10)
    time = np.arange(bands.shape[1], dtype=np.float64)
    time = (time - time.mean()) / time.std()
    change = np.diff(bands, axis=1)
    low, median, high = np.percentile(bands, [10, 50, 90], axis=1)
    return np.concatenate([bands.mean(1), bands.std(1), low, median, high, bands.max(1) - bands.min(1),
                           (bands * time).mean(1), skew(bands, axis=1), kurtosis(bands, axis=1), change.std(1),
                           np.abs(change).mean(1)])


@pytest.mark.parametrize("four_step", [False, True], ids=["torch.stft", "four-step FFT"])
def test_utterance_log_mel_functionals_match_transformers_spectrogram_on_emodb(emodb_utterances, four_step):
    from msemoboost.modeling_msemoboost import MSEmoBoostMFCCEncoder

    config = MSEmoBoostConfig(mfcc_statistics=True, utterance_statistics_classifier=True, utterance_log_mel_statistics=True)
    encoder = MSEmoBoostMFCCEncoder(config)
    if four_step:  # the exported graph's FFT
        encoder.log_mel.use_matmul_fft(rows_per_step=4)
    lengths = torch.tensor([len(waveform) for waveform in emodb_utterances])
    batch = torch.zeros(len(emodb_utterances), int(lengths.max()))
    for row, waveform in enumerate(emodb_utterances):
        batch[row, : len(waveform)] = torch.from_numpy(waveform)
    found = encoder.log_mel_statistics(batch, lengths)
    assert found.dtype == torch.float32 and found.shape == (len(emodb_utterances), 11 * 40)
    for row, waveform in enumerate(emodb_utterances):  # right-padded in the batch: only its own frames count
        expected = transformers_log_mel_functionals(waveform)
        assert np.isfinite(expected).all()
        np.testing.assert_allclose(found[row].numpy(), expected, rtol=0, atol=1e-5)
    # Shorter than one window: the one frame there is (the reference has none), its level, and no spread.
    short = encoder.log_mel_statistics(batch[:1, :300], torch.tensor([300])).reshape(11, 40)
    for block in (2, 3, 4):  # the percentiles of one frame are that frame
        assert torch.equal(short[block], short[0])
    assert torch.equal(short[[1, *range(5, 11)]], torch.zeros(7, 40))


def test_each_spectrogram_image_is_scaled_on_its_own_whatever_its_level(segments):
    spectrogram = MSEmoBoostSpectrogram(CONFIG)
    quiet_and_loud = torch.from_numpy(np.stack([segments[0] * 1e-3, segments[1], segments[2] * 30]))
    images = spectrogram(quiet_and_loud)
    for image, segment in zip(images, quiet_and_loud):
        torch.testing.assert_close(image, spectrogram(segment[None])[0], rtol=0, atol=1e-6)
        assert image.min().item() == 0.0 and image.max().item() == 1.0


def test_a_spectrogram_of_small_dynamic_range_still_spans_zero_to_one(monkeypatch):
    spectrogram = MSEmoBoostSpectrogram(CONFIG)
    power = 1.0 + 0.1 * torch.rand(1, 401, 301, generator=torch.Generator().manual_seed(0))  # under 0.5 dB of range
    monkeypatch.setattr(spectrogram, "power_spectrogram", lambda waveform, fft_dtype: power)
    image = spectrogram(torch.zeros(1, 48_000))
    expected = 10 * torch.log10(power[:, :200])
    expected = ((expected - expected.amin()) / (expected.amax() - expected.amin())).flip(1)
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-5)
    silent = torch.ones(1, 401, 301)  # no range at all: an all-zero image, not 0 / 0
    monkeypatch.setattr(spectrogram, "power_spectrogram", lambda waveform, fft_dtype: silent)
    assert torch.equal(spectrogram(torch.zeros(1, 48_000)), torch.zeros(1, 200, 301))


@pytest.mark.parametrize("four_step", [False, True], ids=["torch.stft", "four-step FFT"])
@pytest.mark.parametrize("module_class", [MSEmoBoostMFCC, MSEmoBoostProsody])
def test_a_float64_stft_gives_every_bin_its_exact_power_rounded_to_float32(segments, module_class, four_step):
    module = module_class(CONFIG)
    if four_step:  # the exported graph's FFT
        module.use_matmul_fft()
    waveform = pre_emphasis(torch.from_numpy(np.stack(segments)), 0.97)
    exact = np.abs(librosa.stft(waveform.double().numpy(), n_fft=module.n_fft, hop_length=module.hop_length,
                                window=module.window.double().numpy(), center=True, pad_mode="constant")) ** 2
    peak = exact.max(axis=1, keepdims=True)  # each frame's strongest bin
    found = module.power_spectrogram(waveform, torch.float64)
    assert found.dtype == torch.float32 and found.shape == exact.shape
    # Within one unit in the last place of each bin's own power (the float64 FFT's error is 1e-16 of the frame's peak).
    assert (np.abs(found.numpy() - exact) <= 2.0**-23 * exact + 1e-12 * peak).all()
    # A float32 FFT is good to about 1e-6 of the frame's peak: its weak bins miss that bound by orders of magnitude.
    error = np.abs(module.power_spectrogram(waveform).numpy() - exact)
    assert (error <= 1e-5 * peak).all() and not (error <= 2.0**-23 * exact + 1e-12 * peak).all()


def test_prosody_finds_the_pitch_of_periodic_sound_and_no_voice_in_noise():
    prosody = MSEmoBoostProsody(CONFIG)
    assert prosody.pitch_semitones.shape == (368,)  # 500 Hz down to 60 Hz in tenths of a semitone
    time = np.arange(16_000) / 16_000
    for f0 in (80, 110, 147, 220, 330, 450):  # 330 Hz: a period of 48.5 samples, between two whole lags
        voice = sum(np.sin(2 * np.pi * f0 * h * time + h) / h for h in range(1, 11) if f0 * h < 7_000)
        frames = prosody(torch.from_numpy(voice.astype(np.float32))[None])[0, 5:-5]  # away from the edges
        np.testing.assert_allclose(frames[:, 0].numpy(), 12 * np.log2(f0), atol=0.06)  # the step's half
        assert frames[:, 1].min() > 0.99
    torch.manual_seed(0)
    noise = torch.randn(1, 16_000)
    frames, louder = prosody(noise)[0], prosody(10 * noise)[0]
    assert frames[5:-5, 1].max() < CONFIG.voicing_threshold
    torch.testing.assert_close(louder[:, 2] - frames[:, 2], torch.full((101,), 20.0), rtol=0, atol=1e-4)
