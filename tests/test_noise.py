"""Noise for robustness: the SNR definition, the noise sources, babble from training speakers only, determinism,
augmentation, and bad input."""

import logging

import numpy as np
import pytest
import soundfile

from msemoboost.data import decode_audio, load_corpus
from msemoboost.noise import (
    SILENCE_FLOOR_DBFS,
    FixedNoise,
    NoiseAugmentation,
    NoiseBank,
    NoiseDataset,
    check_snrs,
    fold_noise_bank,
    mix_at_snr,
    pink_noise,
    utterance_rng,
)
from msemoboost.protocols import make_folds

RATE = 16000


def reference_snr(speech: np.ndarray, mixture: np.ndarray) -> float:
    """The documented definition, written out independently: active speech power (20 ms frames within 40 dB of
    the loudest) over the mean power of what was added."""
    frame = 320
    frames = speech[: len(speech) // frame * frame].astype(np.float64).reshape(-1, frame)
    energy = (frames**2).mean(1)
    active = energy[energy >= energy.max() / 1e4].mean()
    added = (mixture.astype(np.float64) - speech) ** 2
    return 10 * np.log10(active / added.mean())


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory, emodb_utterances):
    """A user noise collection: a 0.1 s hum (shorter than any utterance) and a longer band of noise."""
    folder = tmp_path_factory.mktemp("noise")
    t = np.arange(1600) / RATE
    soundfile.write(folder / "hum.wav", (0.2 * np.sin(2 * np.pi * 100 * t)).astype(np.float32), RATE)
    soundfile.write(folder / "hiss.wav", (0.05 * np.random.default_rng(1).standard_normal(5 * RATE)).astype(np.float32), RATE)
    return folder


@pytest.mark.parametrize("kind", ["white", "pink", "babble", "dataset"])
def test_mixed_signal_has_the_requested_snr_within_0_1_db(kind, emodb_utterances, noise_folder):
    bank = NoiseBank(RATE, babble_pool=emodb_utterances[3:], noise_dataset=NoiseDataset(str(noise_folder), RATE))
    for index, speech in enumerate(emodb_utterances[:3]):
        for snr in (20, 10, 5, 0, -5):
            noise = bank.sample(kind, len(speech), utterance_rng(0, f"utt{index}", kind))
            mixture, silent = mix_at_snr(speech, noise, snr, RATE)
            assert not silent
            assert reference_snr(speech, mixture) == pytest.approx(snr, abs=0.1)


def test_active_level_ignores_pauses():
    """Silence appended to an utterance does not change its SNR: only active speech counts."""
    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(np.arange(RATE) / 7)).astype(np.float32)
    padded = np.concatenate([speech, np.zeros(3 * RATE, np.float32)])
    noise = rng.standard_normal(len(padded)).astype(np.float32)
    mixture, _ = mix_at_snr(padded, noise, 10, RATE)
    added = mixture - padded
    assert 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2)) == pytest.approx(10, abs=0.01)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_snr_that_is_not_finite_is_an_error(bad):
    with pytest.raises(ValueError, match=r"--eval_snr: an SNR must be a finite number of dB, got (nan|inf|-inf)"):
        check_snrs([10, bad], "--eval_snr")
    with pytest.raises(ValueError, match="an SNR must be a finite number of dB"):
        mix_at_snr(np.ones(400, np.float32), np.ones(400, np.float32), bad, RATE)
    with pytest.raises(ValueError, match="--noise_augmentation_snr: an SNR must be a finite number"):
        NoiseAugmentation(NoiseBank(RATE), ["white"], 0.5, [0, bad], seed=0)


def test_short_noise_is_looped_not_truncated(tmp_path):
    t = np.arange(1600) / RATE
    hum = (0.2 * np.sin(2 * np.pi * 100 * t) * (1 + t)).astype(np.float32)  # 0.1 s, no two samples alike
    soundfile.write(tmp_path / "hum.wav", hum, RATE, subtype="FLOAT")
    bank = NoiseBank(RATE, noise_dataset=NoiseDataset(str(tmp_path), RATE))
    noise = bank.sample("dataset", 3 * RATE + 123, utterance_rng(0, "u", "dataset"))
    assert len(noise) == 3 * RATE + 123
    start = int(np.argmin(np.abs(hum - noise[0])))
    np.testing.assert_allclose(noise, np.resize(np.roll(hum, -start), len(noise)), atol=1e-6)
    assert np.abs(noise[-1600:]).max() > 0.2  # the end is noise, not zeros


def test_silent_utterance_is_reported_and_mixed_at_the_floor(caplog):
    silence = np.zeros(2 * RATE, np.float32)
    noise = np.random.default_rng(0).standard_normal(len(silence)).astype(np.float32)
    mixture, silent = mix_at_snr(silence, noise, 10, RATE)
    assert silent and np.isfinite(mixture).all()
    assert 10 * np.log10(np.mean(mixture.astype(np.float64) ** 2)) == pytest.approx(SILENCE_FLOOR_DBFS - 10, abs=0.1)
    with caplog.at_level(logging.WARNING, logger="msemoboost.noise"):
        mixed = FixedNoise(NoiseBank(RATE), "pink", 5, seed=0)(silence, {"utterance_id": "quiet.wav"})
    assert np.isfinite(mixed).all() and np.any(mixed)
    assert "quiet.wav is silent" in caplog.text and f"mixed at {SILENCE_FLOOR_DBFS - 5:.0f} dBFS" in caplog.text


def test_evaluation_noise_depends_only_on_seed_utterance_and_type(emodb_utterances):
    speech = emodb_utterances[0]
    bank = NoiseBank(RATE, babble_pool=emodb_utterances[1:])
    row = {"utterance_id": "a.wav"}
    for kind in ("white", "pink", "babble"):
        first = FixedNoise(bank, kind, 5, seed=0)(speech, row)
        np.testing.assert_array_equal(first, FixedNoise(bank, kind, 5, seed=0)(speech, row))
        assert not np.allclose(first, FixedNoise(bank, kind, 5, seed=1)(speech, row))
        assert not np.allclose(first, FixedNoise(bank, kind, 5, seed=0)(speech, {"utterance_id": "b.wav"}))
        # the same noise at every SNR, only scaled: 20 dB adds noise 15 dB weaker than 5 dB
        strong, weak = first - speech, FixedNoise(bank, kind, 20, seed=0)(speech, row) - speech
        large = np.abs(strong) > 0.1 * np.abs(strong).max()  # away from float32 rounding of small differences
        np.testing.assert_allclose(weak[large] / strong[large], 10 ** (-15 / 20), rtol=1e-3)


def test_pink_noise_falls_3_db_per_octave():
    noise = pink_noise(2**18, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(noise)) ** 2
    frequencies = np.fft.rfftfreq(len(noise), 1 / RATE)
    octaves = [power[(frequencies >= f) & (frequencies < 2 * f)].mean() for f in (100, 200, 400, 800, 1600, 3200)]
    slopes = 10 * np.log10(np.array(octaves[1:]) / np.array(octaves[:-1]))
    np.testing.assert_allclose(slopes, -3.01, atol=0.3)
    assert np.mean(noise.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)


def test_babble_of_a_fold_has_no_audio_of_its_test_speaker(corpus_dir):
    corpus = load_corpus(str(corpus_dir), 16000, 400, label_column="emotion")
    folds = make_folds("loso", corpus.labels, corpus.speakers, corpus.splits, None, 0.15, 0)
    test_audio = {}
    for fold in folds:
        bank = fold_noise_bank(corpus, fold.train, fold.test_speakers, pool_size=1000, seed=0)
        speakers = {speaker for _, speaker in bank.babble_sources}
        assert speakers == set(corpus.speakers[fold.train])  # every training speaker may talk in the babble
        assert fold.test_speakers[0] not in speakers
        # and by content: no test utterance's samples are in the babble pool
        test_audio = [decode_audio(corpus.dataset[int(row)]["audio"], 16000) for row in fold.test]
        for utterance in bank.babble_pool:
            assert not any(len(t) == len(utterance) and np.array_equal(t, utterance) for t in test_audio)
    # even when the rows given include the test speaker, the exclusion holds
    everyone = np.arange(len(corpus.dataset))
    bank = fold_noise_bank(corpus, everyone, ["spk1"], pool_size=1000, seed=0)
    assert "spk1" not in {speaker for _, speaker in bank.babble_sources} and len(bank.babble_pool) == 60


def test_augmentation_follows_probability_and_snr_range(emodb_utterances):
    speech = emodb_utterances[0]
    bank = NoiseBank(RATE, babble_pool=emodb_utterances[1:])
    never = NoiseAugmentation(bank, ["white", "babble"], 0.0, [0, 20], seed=0)
    assert all(never(speech, {}) is speech for _ in range(5))
    always = NoiseAugmentation(bank, ["white", "pink", "babble"], 1.0, [5, 15], seed=0)
    snrs = [reference_snr(speech, always(speech, {})) for _ in range(30)]
    assert min(snrs) >= 5 - 0.1 and max(snrs) <= 15 + 0.1 and max(snrs) - min(snrs) > 3
    half = NoiseAugmentation(bank, ["white"], 0.5, [0, 20], seed=0)
    augmented = sum(half(speech, {}) is not speech for _ in range(200))
    assert 70 < augmented < 130


def test_noise_bad_input_is_named(tmp_path):
    soundfile.write(tmp_path / "silent.wav", np.zeros(800, np.float32), RATE)
    dataset = NoiseDataset(str(tmp_path), RATE)
    with pytest.raises(ValueError, match=r"silent\.wav .* is empty, silent or holds NaN/Inf samples"):
        dataset.clip(0)
    with pytest.raises(ValueError, match=r"unknown noise type 'traffic'; choose from \['white', 'pink', 'babble', 'dataset'\]"):
        NoiseBank(RATE).check_kinds(["traffic"], "--eval_noise")
    with pytest.raises(ValueError, match="the noise type 'dataset' needs --noise_dataset"):
        NoiseBank(RATE).check_kinds(["dataset"], "--eval_noise")
    with pytest.raises(ValueError, match="The noise is silent"):
        mix_at_snr(np.ones(400, np.float32), np.zeros(400, np.float32), 0, RATE)
    with pytest.raises(ValueError, match=r"two values LOW HIGH with LOW <= HIGH, got \[20.0, 0.0\]"):
        NoiseAugmentation(NoiseBank(RATE), ["white"], 0.5, [20, 0], seed=0)
