"""The optional speech-enhancement (SE) head: configuration, the frame-aligned STFT, joint training, resynthesis,
the clean targets the collator gives it, and the `msemoboost enhance` listening check."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from torch.nn import functional as F
from transformers import AutoModelForAudioClassification

from msemoboost import MSEmoBoostConfig, MSEmoBoostFeatureExtractor
from msemoboost.acoustic_features import MSEmoBoostFrameSTFT
from msemoboost.cli import main
from msemoboost.data import AudioCollator, decode_audio
from msemoboost.noise import FixedNoise, NoiseBank
from tiny import speech_like, tiny_config, tiny_model


def noisy_batch(seed: int = 0):
    """Two utterances (3.75 s and 2.5 s, right-padded) with white noise, and their clean versions."""
    clean = torch.zeros(2, 60000)
    clean[0] = torch.from_numpy(speech_like(60000, 1))
    clean[1, :40000] = torch.from_numpy(speech_like(40000, 2))
    mask = torch.zeros(2, 60000, dtype=torch.long)
    mask[0] = 1
    mask[1, :40000] = 1
    noisy = (clean + 0.1 * torch.randn(2, 60000, generator=torch.Generator().manual_seed(seed))) * mask
    return noisy, clean, mask


def test_se_configuration_is_checked():
    assert tiny_config().use_se_head is False
    with pytest.raises(ValueError, match="use_se_head=True needs use_backbone_features=True"):
        tiny_config(use_se_head=True, use_backbone_features=False)
    with pytest.raises(ValueError, match="se_target must be 'mask' or 'magnitude', got 'wiener'"):
        tiny_config(se_target="wiener")
    with pytest.raises(ValueError, match=r"se_compression must be in \(0, 1\], got 0"):
        tiny_config(se_compression=0)
    with pytest.raises(ValueError, match="se_loss_weight must be a non-negative number"):
        tiny_config(se_loss_weight=float("nan"))


def test_frame_stft_is_aligned_with_the_backbone_and_inverts_exactly():
    config = MSEmoBoostConfig()
    stft = MSEmoBoostFrameSTFT(config)
    waveform = torch.from_numpy(np.stack([speech_like(48000, 0), speech_like(48000, 1)]))
    spectrum = stft(waveform)
    assert spectrum.shape == (2, config.num_backbone_frames(48000), 201) == (2, 149, 201)
    window = np.sin(np.pi * np.arange(400) / 400) ** 2  # periodic Hann
    frames = np.stack([waveform[:, t * 320 : t * 320 + 400].numpy() * window for t in range(149)], axis=1)
    np.testing.assert_allclose(spectrum.numpy(), np.fft.rfft(frames, axis=-1), rtol=0, atol=2e-5)
    torch.testing.assert_close(stft.inverse(spectrum, waveform), waveform, atol=1e-5, rtol=0)
    # Samples that no frame covers with weight keep the fallback's values: sample 0, where the Hann window is 0,
    # and the tail after the last whole frame (148 * 320 + 400 = 47,760 samples are covered).
    fallback = torch.full_like(waveform, 5.0)
    rebuilt = stft.inverse(spectrum, fallback)
    weight = np.zeros(48000)
    for frame in range(149):
        weight[frame * 320 : frame * 320 + 400] += window**2
    covered = torch.from_numpy(weight > 1e-3)
    assert covered.sum().item() > 0.99 * 47_760 and not covered[0] and not covered[47_760:].any()
    torch.testing.assert_close(rebuilt[:, covered], waveform[:, covered], atol=1e-5, rtol=0)
    assert (rebuilt[:, ~covered] == 5.0).all()


@pytest.mark.parametrize("target", ["mask", "magnitude"])
def test_se_head_gets_gradients_and_its_loss_goes_down(target):
    model = tiny_model(use_se_head=True, se_target=target, se_loss_weight=0.5).train()
    noisy, clean, mask = noisy_batch()
    labels = torch.tensor([0, 1])
    outputs = model(noisy, attention_mask=mask, labels=labels, clean_input_values=clean)
    assert outputs.loss.item() == pytest.approx(outputs.classification_loss.item() + 0.5 * outputs.se_loss.item(), rel=1e-6)
    outputs.loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("se_head.") or name.startswith("msemoboost.backbone.encoder.layers.1."):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        outputs = model(noisy, attention_mask=mask, labels=labels, clean_input_values=clean)
        losses.append(outputs.se_loss.item())
        outputs.se_loss.backward()
        optimizer.step()
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("target", ["mask", "magnitude"])
def test_se_head_estimates_a_masked_or_a_decompressed_magnitude(target):
    model = tiny_model(use_se_head=True, se_target=target, se_compression=0.3)
    head = model.se_head
    with torch.no_grad():
        head.output.weight.zero_()
        head.output.bias.copy_(torch.linspace(-2.0, 2.0, 201))
        noisy = torch.rand(3, 149, 201)
        estimate = head(torch.randn(3, 149, 32), noisy)
    bias = torch.linspace(-2.0, 2.0, 201)
    expected = torch.sigmoid(bias) * noisy if target == "mask" else (F.softplus(bias) ** (1 / 0.3)).expand(3, 149, 201)
    torch.testing.assert_close(estimate, expected, rtol=1e-6, atol=1e-7)


def test_se_loss_is_the_compressed_magnitude_error_over_the_frames_that_hold_audio():
    model = tiny_model(use_se_head=True, se_target="magnitude", se_compression=0.3)
    noisy, clean, mask = noisy_batch()
    with torch.no_grad():
        loss = model(noisy, attention_mask=mask, labels=torch.tensor([0, 1]), clean_input_values=clean).se_loss
        base = model.msemoboost(noisy, attention_mask=mask)
        noisy_spectra, clean_spectra = (model._segment_spectra(values, mask)[1] for values in (noisy, clean))
        estimate = model.se_head(base.last_hidden_state, noisy_spectra.abs())
    # 2 + 1 segments of 149 frames (201 bins); the 2.5 s utterance's last 25 frames hold only padding
    assert estimate.shape == clean_spectra.shape == (3, 149, 201) and base.frame_mask.sum().item() == 3 * 149 - 25
    squared = (estimate.clamp(min=1e-8).double() ** 0.3 - clean_spectra.abs().clamp(min=1e-8).double() ** 0.3) ** 2
    expected = squared.mean(-1)[base.frame_mask].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_without_clean_targets_or_head_the_model_is_the_classifier():
    noisy, clean, mask = noisy_batch()
    plain = tiny_model()
    assert not hasattr(plain, "se_head") or plain.se_head is None
    with torch.no_grad():
        ignored = plain(noisy, attention_mask=mask, labels=torch.tensor([0, 1]), clean_input_values=clean)
        reference = plain(noisy, attention_mask=mask, labels=torch.tensor([0, 1]))
    assert ignored.se_loss is None and ignored.classification_loss is None
    torch.testing.assert_close(ignored.loss, reference.loss)
    with_head = tiny_model(use_se_head=True)
    with torch.no_grad():
        evaluation = with_head(noisy, attention_mask=mask, labels=torch.tensor([0, 1]))
    # What Trainer.predict keeps during validation: everything but the config's keys_to_ignore_at_inference.
    assert set(evaluation.keys()) - set(with_head.config.keys_to_ignore_at_inference) == {"loss", "logits"}
    with pytest.raises(ValueError, match=r"clean_input_values has shape \(2, 100\) but input_values has shape \(2, 60000\)"):
        with_head(noisy, attention_mask=mask, clean_input_values=clean[:, :100])


def test_enhance_with_a_pass_through_mask_returns_the_input():
    """A mask of 1 everywhere keeps the noisy magnitude and phase: resynthesis must give the input back."""
    model = tiny_model(use_se_head=True, se_target="mask")
    with torch.no_grad():
        model.se_head.output.weight.zero_()
        model.se_head.output.bias.fill_(40.0)
    noisy, _, mask = noisy_batch()
    enhanced = model.enhance(noisy, attention_mask=mask)
    assert enhanced.shape == noisy.shape
    assert torch.equal(enhanced[1, 40000:], torch.zeros(20000))
    torch.testing.assert_close(enhanced, noisy, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"enhance\(\) needs a model with a speech-enhancement head"):
        tiny_model().enhance(noisy, attention_mask=mask)


def test_se_head_survives_save_and_remote_code_loading(tmp_path):
    model = tiny_model(use_se_head=True, se_target="magnitude")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    noisy, _, mask = noisy_batch()
    torch.testing.assert_close(loaded.enhance(noisy, mask), model.enhance(noisy, mask), atol=1e-6, rtol=0)
    assert torch.equal(loaded.se_stft.window, model.se_stft.window)


def test_collator_gives_clean_targets_on_the_noisy_scale(emodb_utterances, tmp_path):
    extractor = MSEmoBoostFeatureExtractor()
    rows = []
    for index, utterance in enumerate(emodb_utterances[:3]):
        soundfile.write(tmp_path / f"u{index}.wav", utterance, 16000, subtype="FLOAT")
        rows.append({"audio": {"path": str(tmp_path / f"u{index}.wav"), "bytes": None}, "labels": index, "utterance_id": f"u{index}"})

    quiet = AudioCollator(extractor, return_clean=True)(rows)
    torch.testing.assert_close(quiet["clean_input_values"], quiet["input_values"], atol=1e-4, rtol=0)
    noise = FixedNoise(NoiseBank(16000), "white", 5, seed=0)
    batch = AudioCollator(extractor, noise, return_clean=True)(rows)
    for index, row in enumerate(rows):
        speech = decode_audio(row["audio"], 16000)
        mixture = noise(speech, row).astype(np.float64)
        mean, std = mixture.mean(), np.sqrt(mixture.var() + 1e-7)
        length = len(speech)
        np.testing.assert_allclose(batch["input_values"][index, :length].numpy(), (mixture - mean) / std, atol=1e-4)
        np.testing.assert_allclose(batch["clean_input_values"][index, :length].numpy(), (speech - mean) / std, atol=1e-4)
        assert torch.equal(batch["clean_input_values"][index, length:], torch.zeros(batch["input_values"].shape[1] - length))


def test_enhance_command_writes_noisy_and_enhanced_wavs(tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_model(use_se_head=True).save_pretrained(model_dir)
    MSEmoBoostFeatureExtractor().save_pretrained(model_dir)
    soundfile.write(tmp_path / "talk.wav", speech_like(44100, 3) * 0.5, 22050)  # 2 s at 22.05 kHz
    assert main(["enhance", str(tmp_path / "talk.wav"), "--model", str(model_dir), "--output_dir",
                 str(tmp_path / "out"), "--noise", "white", "--snr", "5", "--device", "cpu"]) == 0
    from msemoboost.cli import peak_limited
    from msemoboost.inference import enhance, load_classifier, read_audio
    from msemoboost.noise import NoiseBank, mix_at_snr, utterance_rng

    classifier, extractor = load_classifier(str(model_dir), "cpu")
    clean = read_audio(tmp_path / "talk.wav", 16000)
    noise = NoiseBank(16000).sample("white", len(clean), utterance_rng(0, "talk.wav", "white"))
    noisy, _ = mix_at_snr(clean, noise, 5.0, 16000)
    expected = {"talk.noisy.wav": peak_limited(noisy), "talk.enhanced.wav": peak_limited(enhance(classifier, extractor, noisy))}
    for name, reference in expected.items():
        audio, rate = soundfile.read(tmp_path / "out" / name)
        assert rate == 16000 and len(audio) == 32000 and np.abs(audio).max() <= 0.99 + 1e-4
        np.testing.assert_allclose(audio, reference, rtol=0, atol=1e-4)  # 16-bit quantisation

    plain = tmp_path / "plain"
    tiny_model().save_pretrained(plain)
    MSEmoBoostFeatureExtractor().save_pretrained(plain)
    result = subprocess.run([sys.executable, "-m", "msemoboost", "enhance", str(tmp_path / "talk.wav"), "--model",
                             str(plain), "--output_dir", str(tmp_path / "out2"), "--device", "cpu"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "has no speech-enhancement head: train it with --use_se_head true" in result.stderr
    assert main(["enhance", str(tmp_path / "talk.wav"), "--model", str(model_dir), "--output_dir", str(tmp_path),
                 "--noise", "pink", "--snr", "nan"]) == 2
    assert "--snr: an SNR must be a finite number of dB" in capsys.readouterr().err
