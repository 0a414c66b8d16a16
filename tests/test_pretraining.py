"""EMS pretraining (`msemoboost pretrain`) and the emotion-intensity model (`msemoboost intensity`)."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file
from transformers import AutoModel, Wav2Vec2Model

from msemoboost import MSEmoBoostForSequenceClassification
from msemoboost.arguments import parse_arguments
from msemoboost.cli import main
from msemoboost.intensity import (
    MSEmoBoostIntensityConfig,
    MSEmoBoostIntensityModel,
    align_to_frames,
    intensity_rank,
    train_intensity,
)
from msemoboost.pretraining import (
    MSEmoBoostForPretraining,
    MSEmoBoostMaskingCollator,
    MSEmoBoostPretrainingConfig,
    assign_runs,
    choose_runs,
    deltas,
    fit_kmeans,
)
from tiny import TINY_BACKBONE, speech_like

BACKBONE = {"model_type": "wav2vec2", **TINY_BACKBONE, "mask_time_prob": 0.0}  # as the recipes fine-tune it
PRETRAIN = ["--backbone_config", json.dumps(BACKBONE), "--per_device_train_batch_size", "4", "--learning_rate",
            "5e-3", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
            "--dataloader_pin_memory", "false", "--max_seconds", "2"]


def config(**overrides) -> MSEmoBoostPretrainingConfig:
    return MSEmoBoostPretrainingConfig(backbone_config=BACKBONE, **overrides)


# --- Masking statistics on fixed inputs ------------------------------------------------------------------------


def test_random_runs_cover_the_ratio_in_disjoint_runs_of_the_span():
    runs = choose_runs(700, config(), torch.Generator().manual_seed(0))
    assert len(runs) == 15  # round(0.15 * 700 / 7)
    assert (runs % 7 == 0).all() and (runs.diff() >= 7).all() and runs.max() + 7 <= 700
    covered = torch.zeros(700, dtype=torch.bool)
    for start in runs:
        covered[start : start + 7] = True
    assert covered.sum() == 105  # exactly 15 % of the frames
    assert choose_runs(6, config(), torch.Generator()).numel() == 0  # shorter than one run: nothing to mask


def test_ems_takes_the_runs_above_the_threshold_first_and_fills_with_random_ones():
    intensity = torch.full((700,), 0.2)
    strong = torch.arange(0, 700, 7)[torch.randperm(100, generator=torch.Generator().manual_seed(1))[:20]]
    intensity[strong] = 0.9
    for seed in range(5):  # more strong starts than runs: every run starts on a strong frame
        runs = choose_runs(700, config(masking="random"), torch.Generator().manual_seed(seed), intensity)
        assert len(runs) == 15 and set(runs.tolist()) <= set(strong.tolist())
    few = strong[:5]
    intensity = torch.full((700,), 0.2)
    intensity[few] = 0.51
    runs = choose_runs(700, config(), torch.Generator().manual_seed(0), intensity)
    assert len(runs) == 15 and set(few.tolist()) <= set(runs.tolist())  # all 5 strong ones, and 10 random others
    intensity[few] = 0.5  # not above the threshold: no preference
    counts = sum(len(set(choose_runs(700, config(), torch.Generator().manual_seed(s), intensity).tolist())
                     & set(few.tolist())) for s in range(40))
    assert counts < 40 * 5 * 0.4  # about 15 % of 5 per draw by chance, far from all 5


def test_a_threshold_quantile_prefers_each_utterance_s_own_most_intense_runs():
    with pytest.raises(ValueError, match=r"^intensity_threshold_quantile must be in \(0, 1\), got 1\.5\.$"):
        config(intensity_threshold_quantile=1.5)
    # Every frame is above the fixed threshold 0.5, so only the quantile tells the runs apart: with 0.85 the frames
    # of the top 15 % (ranks 595-699, intensity above the 0.85 quantile 0.6 + 0.3 * 594.15 / 699) come first.
    intensity = 0.6 + 0.3 * torch.arange(700.0) / 699
    intensity = intensity[torch.randperm(700, generator=torch.Generator().manual_seed(2))]
    threshold = torch.quantile(intensity, 0.85)
    above = set(torch.nonzero(intensity > threshold)[:, 0].tolist())
    candidates_above = [start for start in range(0, 694, 7) if start in above]
    for seed in range(5):
        runs = choose_runs(700, config(intensity_threshold_quantile=0.85), torch.Generator().manual_seed(seed), intensity)
        assert len(runs) == 15 and set(candidates_above) <= set(runs.tolist())
        fixed = choose_runs(700, config(), torch.Generator().manual_seed(seed), intensity)
        assert torch.equal(fixed, choose_runs(700, config(), torch.Generator().manual_seed(seed)))  # all "strong"


def test_runs_are_masked_replaced_and_kept_80_10_10():
    kinds = assign_runs(torch.zeros(100_000), config(), torch.Generator().manual_seed(0))
    shares = torch.bincount(kinds, minlength=3).float() / len(kinds)
    torch.testing.assert_close(shares, torch.tensor([0.8, 0.1, 0.1]), atol=0.005, rtol=0)
    assert torch.bincount(assign_runs(torch.zeros(1000), config(mask_probability=1.0, replace_probability=0.0),
                                      torch.Generator()), minlength=3).tolist() == [1000, 0, 0]


def test_the_collator_masks_replaces_and_scores_exactly_the_chosen_runs():
    torch.manual_seed(0)
    collator = MSEmoBoostMaskingCollator(config(mask_probability=0.4, replace_probability=0.4))
    waveforms = [speech_like(64_000, seed) for seed in range(6)]
    batch = collator([{"waveform": waveform} for waveform in waveforms])
    geometry = collator.geometry
    assert batch["loss_mask"].shape == (6, geometry.num_backbone_frames(64_000))
    assert not (batch["mask_time_indices"] & ~batch["loss_mask"]).any()
    torch.testing.assert_close(batch["target_values"][:, :64_000], torch.from_numpy(np.stack(waveforms)))
    changed = (batch["input_values"] != batch["target_values"])
    replaced_frames = 0
    for row in range(6):
        starts = [t for t in range(batch["loss_mask"].shape[1]) if batch["loss_mask"][row, t]
                  and (t == 0 or not batch["loss_mask"][row, t - 1])]
        for start in starts:  # blocks of whole 7-frame runs on the 7-frame grid (adjacent runs join)
            length = int(batch["loss_mask"][row, start:].long().cumprod(0).sum())
            assert start % 7 == 0 and length % 7 == 0
        starts = [t for t in range(0, batch["loss_mask"].shape[1], 7) if batch["loss_mask"][row, t]]
        allowed = torch.zeros(changed.shape[1], dtype=torch.bool)
        for start in starts:  # the samples a run's frames see: [start * stride, (start + 6) * stride + field)
            if not batch["mask_time_indices"][row, start]:
                allowed[start * 320 : (start + 6) * 320 + 400] = True
        assert not (changed[row] & ~allowed).any()  # audio is replaced only under runs not given the mask embedding
        replaced_frames += int(changed[row].any())
    assert replaced_frames > 0


def test_ems_masking_needs_an_intensity_model_at_the_backbone_s_rate():
    with pytest.raises(ValueError, match=r"^masking='ems' needs an intensity model"):
        MSEmoBoostMaskingCollator(config(masking="ems"))
    other_rate = MSEmoBoostIntensityModel(MSEmoBoostIntensityConfig(sampling_rate=8000))
    with pytest.raises(ValueError, match=r"^The intensity model works at 8000 Hz but the backbone is pretrained at 16000 Hz"):
        MSEmoBoostMaskingCollator(config(masking="ems"), other_rate)


def test_ems_gives_the_intensity_aligned_to_the_backbone_frames_and_a_second_loss():
    torch.manual_seed(0)
    intensity_model = MSEmoBoostIntensityModel(MSEmoBoostIntensityConfig()).eval()
    collator = MSEmoBoostMaskingCollator(config(masking="ems"), intensity_model)
    waveforms = [speech_like(40_000, 0), speech_like(24_000, 1)]
    batch = collator([{"waveform": waveform} for waveform in waveforms])
    with torch.no_grad():
        scores = intensity_model(**{"input_values": torch.from_numpy(waveforms[1])[None]}).frame_scores
    frames = collator.geometry.num_backbone_frames(24_000)
    torch.testing.assert_close(batch["intensity"][1, :frames], align_to_frames(scores, frames)[0])
    assert (batch["intensity"][1, frames:] == 0).all()
    model = MSEmoBoostForPretraining(config(masking="ems"))
    output = model(**batch)
    assert output.intensity_loss is not None
    torch.testing.assert_close(output.loss, output.reconstruction_loss + output.intensity_loss)


def test_ems_without_intensity_conditioning_keeps_only_the_guided_masking():
    torch.manual_seed(0)
    collator = MSEmoBoostMaskingCollator(config(masking="ems"), MSEmoBoostIntensityModel(MSEmoBoostIntensityConfig()).eval())
    batch = collator([{"waveform": speech_like(40_000, 0)}, {"waveform": speech_like(24_000, 1)}])
    conditioned = MSEmoBoostForPretraining(config(masking="ems"))
    masking_only = MSEmoBoostForPretraining(config(masking="ems", intensity_conditioning=False))
    random = MSEmoBoostForPretraining(config(masking="random"))
    assert masking_only.state_dict().keys() == random.state_dict().keys() < conditioned.state_dict().keys()
    masking_only.load_state_dict(conditioned.state_dict(), strict=False)
    conditioned.eval(), masking_only.eval()  # no dropout: the outputs are compared exactly
    with torch.no_grad():
        conditioned.intensity_projection.weight.fill_(1.0)  # the intensity input now changes the backbone's output
        output = masking_only(**batch)
        reference = conditioned(**batch)
        without_intensity = masking_only(**{name: value for name, value in batch.items() if name != "intensity"})
    assert output.intensity_loss is None and output.loss == output.reconstruction_loss
    assert not torch.equal(output.reconstruction, reference.reconstruction)  # the intensity is not an input
    torch.testing.assert_close(output.reconstruction, without_intensity.reconstruction, rtol=0, atol=0)


# --- HuBERT-style cluster targets ------------------------------------------------------------------------------


def test_deltas_are_the_regression_slope_with_the_edges_repeated():
    ramp = torch.arange(10.0)[None, :, None] * torch.tensor([1.0, -3.0])  # (1, 10, 2): slopes 1 and -3
    velocity = deltas(ramp)
    torch.testing.assert_close(velocity[0, 2:-2], torch.tensor([1.0, -3.0]).expand(6, 2))
    # Frame 0 sees frames (0, 0, 0, 1, 2): (1 * (1 - 0) + 2 * (2 - 0)) / 10 = 0.5 of the slope.
    torch.testing.assert_close(velocity[0, 0], torch.tensor([0.5, -1.5]))
    torch.testing.assert_close(velocity[0, -1], torch.tensor([0.5, -1.5]))


def test_kmeans_finds_separated_clusters_and_is_seeded():
    generator = torch.Generator().manual_seed(0)
    truth = torch.arange(3).repeat_interleave(50)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = centres[truth] + 0.1 * torch.randn(150, 2, generator=generator)
    centroids = fit_kmeans(points, 3, seed=1)
    assignment = torch.cdist(points, centroids).argmin(1)
    assert len(set(zip(truth.tolist(), assignment.tolist()))) == 3  # the same partition, up to the labels' order
    for label in range(3):
        torch.testing.assert_close(centroids[assignment[truth == label][0]], points[truth == label].mean(0))
    torch.testing.assert_close(fit_kmeans(points, 3, seed=1), centroids, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^k-means needs at least num_clusters = 200 frames; the audio gave 150\.$"):
        fit_kmeans(points, 200)


def test_cluster_targets_replace_the_log_mel_head_and_score_the_chosen_frames_by_cross_entropy():
    with pytest.raises(ValueError, match=r"^target must be one of \['log_mel', 'clusters'\], got 'mfcc'\.$"):
        config(target="mfcc")
    torch.manual_seed(0)
    model = MSEmoBoostForPretraining(config(target="clusters", num_clusters=8)).eval()
    assert "cluster_centroids" in model.state_dict() and model.reconstruction_head is None
    assert not model.cluster_centroids.any()  # fitted on the pretraining audio, not at construction
    waveforms = [speech_like(40_000, 0), speech_like(24_000, 1)]
    model.fit_cluster_targets(waveforms, seed=0)
    assert model.cluster_centroids.shape == (8, 39) and model.cluster_centroids.any()
    refitted = MSEmoBoostForPretraining(config(target="clusters", num_clusters=8))
    refitted.fit_cluster_targets(waveforms, seed=0)
    torch.testing.assert_close(refitted.cluster_centroids, model.cluster_centroids, rtol=0, atol=0)

    batch = MSEmoBoostMaskingCollator(model.config)([{"waveform": waveform} for waveform in waveforms])
    with torch.no_grad():
        output = model(**batch)
        frames = output.cluster_logits.shape[1]
        log_mel = model.log_mel(batch["target_values"])[:, :frames]
        valid = model.frame_mask(batch["attention_mask"], batch["input_values"], frames)
        targets = model.assign_clusters(model.normalize(log_mel, valid))
    assert output.reconstruction is None and output.cluster_logits.shape == (2, frames, 8)
    assert len(targets.unique()) > 1
    selected = batch["loss_mask"][:, :frames] & valid
    expected = torch.nn.functional.cross_entropy(output.cluster_logits[selected], targets[selected])
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(output.loss, output.reconstruction_loss)


# --- Pretraining runs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(corpus_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("pretrained")
    assert main(["pretrain", "--dataset_name", str(corpus_dir), "--output_dir", str(output), "--max_steps", "40",
                 *PRETRAIN]) == 0
    return output


def test_a_tiny_pretraining_run_lowers_its_loss(pretrained):
    history = json.loads((pretrained / "pretraining_args.json").read_text())["loss_history"]
    losses = [entry["loss"] for entry in history]
    assert len(losses) == 40 and np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4])
    assert (pretrained / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tiny_cluster_target_run_lowers_its_loss_and_saves_a_plain_backbone(corpus_dir, tmp_path):
    assert main(["pretrain", "--dataset_name", str(corpus_dir), "--output_dir", str(tmp_path), "--max_steps", "30",
                 "--target", "clusters", "--num_clusters", "8", *PRETRAIN]) == 0
    details = json.loads((tmp_path / "pretraining_args.json").read_text())
    assert details["pretraining_config"]["target"] == "clusters"
    losses = [entry["loss"] for entry in details["loss_history"]]
    assert losses[0] > 1.5 and np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4])  # from about ln 8 = 2.08
    assert set(load_file(tmp_path / "model.safetensors")) == set(AutoModel.from_pretrained(tmp_path).state_dict())


def test_the_output_is_a_plain_backbone_that_automodel_and_msemoboost_load(pretrained):
    config = json.loads((pretrained / "config.json").read_text())
    assert config["model_type"] == "wav2vec2" and "auto_map" not in config
    assert not list(pretrained.glob("*.py"))
    backbone = AutoModel.from_pretrained(pretrained)  # no trust_remote_code
    assert type(backbone) is Wav2Vec2Model
    saved = load_file(pretrained / "model.safetensors")
    assert not [name for name in saved if "head" in name or "intensity" in name or "log_mel" in name]
    assert config["mask_time_prob"] == 0.0 and "masked_spec_embed" not in saved  # as the config it will be tuned with
    assert set(saved) == set(backbone.state_dict())
    for name, value in backbone.state_dict().items():
        if name in saved:
            torch.testing.assert_close(value, saved[name])
    model = MSEmoBoostForSequenceClassification.from_backbone(str(pretrained), num_labels=4)
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(model.msemoboost.backbone.state_dict()[name], value)


def test_a_killed_and_resumed_run_ends_with_the_weights_of_a_straight_run(corpus_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    arguments = ["pretrain", "--dataset_name", str(corpus_dir), "--max_steps", "6", "--save_steps", "3", *PRETRAIN]
    assert main([*arguments, "--output_dir", str(straight)]) == 0
    # What a run killed after step 4 leaves behind: its checkpoint of step 3.
    (resumed / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(straight / "checkpoints" / "checkpoint-3", resumed / "checkpoints" / "checkpoint-3")
    assert main([*arguments, "--output_dir", str(resumed), "--resume_from_checkpoint", "true"]) == 0
    expected, found = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == found.keys()
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], atol=0, rtol=0)


def test_silent_and_too_short_files_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "audio").mkdir(parents=True)
    rows = ["file_name,speaker,emotion"]
    for index in range(4):
        soundfile.write(folder / "audio" / f"good{index}.wav", speech_like(24_000, index), 16_000)
        rows.append(f"audio/good{index}.wav,s{index},neutral")
    soundfile.write(folder / "audio" / "silent.wav", np.zeros(24_000, np.float32), 16_000)
    soundfile.write(folder / "audio" / "short.wav", speech_like(300), 16_000)
    rows += ["audio/silent.wav,s9,neutral", "audio/short.wav,s9,neutral"]
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    output = tmp_path / "out"
    assert main(["pretrain", "--dataset_name", str(folder), "--output_dir", str(output), "--max_steps", "1",
                 *PRETRAIN]) == 0
    report = json.loads((output / "pretraining_args.json").read_text())
    assert report["utterances"] == 4
    assert sorted(line.split(": ", 1)[1] for line in report["skipped_files"]) == [
        "300 samples, shorter than one analysis frame (2800 samples)", "digitally silent"]
    assert sorted(Path(line.split(": ")[0]).name for line in report["skipped_files"]) == ["short.wav", "silent.wav"]


def test_pretrain_usage_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["pretrain", "--dataset_name", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o"), *PRETRAIN]) == 2
    assert f"msemoboost pretrain: error: {tmp_path / 'empty'}: no audio dataset there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--dataset_name", "x", "--output_dir", str(tmp_path / "o"), "--masking", "ems"])
    assert "--masking ems needs --intensity_model DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--dataset_name", "x", "--output_dir", str(tmp_path / "o"), "--target", "mfcc"])
    assert "--target must be one of ['log_mel', 'clusters'], got 'mfcc'" in capsys.readouterr().err
    assert main(["pretrain", "--dataset_name", "x", "--output_dir", str(tmp_path / "o"), "--masking", "ems",
                 "--intensity_model", str(tmp_path / "empty")]) == 2
    assert f"--intensity_model {tmp_path / 'empty'}: not an intensity model folder" in capsys.readouterr().err


# --- The intensity model ---------------------------------------------------------------------------------------


def test_intensity_ranks_and_the_ranking_loss():
    assert [intensity_rank("neutral", "normal"), intensity_rank("anger", "normal"), intensity_rank("anger", "strong"),
            intensity_rank("anger", "")] == [0, 1, 2, 1]
    model = MSEmoBoostIntensityModel(MSEmoBoostIntensityConfig(calibration_weight=0.0))
    scores = torch.tensor([0.2, 0.5, 0.8])
    logit = torch.logit(scores)
    pairs = [(1, 0), (2, 0), (2, 1)]
    expected = torch.stack([torch.nn.functional.softplus(-(logit[i] - logit[j])) for i, j in pairs]).mean()
    torch.testing.assert_close(model.ranking_loss(scores, torch.tensor([0, 1, 2])), expected)
    # Ordered right, the loss falls as the margin grows; reversed, it is larger.
    assert model.ranking_loss(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0, 1, 2])) < expected
    assert model.ranking_loss(torch.tensor([0.8, 0.5, 0.2]), torch.tensor([0, 1, 2])) > expected


def test_intensity_train_and_score(corpus_dir, tmp_path, capsys):
    report = train_intensity([str(corpus_dir)], str(tmp_path / "intensity"), eval_speakers=["spk5", "spk6"],
                             max_steps=4, batch_size=8)
    assert report["eval_speakers"] == ["spk5", "spk6"] and report["eval_utterances"] == 24
    assert report["train_utterances"] == 48 and len(report["loss_history"]) >= 1
    assert report["ranking_accuracy"]["emotional_vs_neutral"]["pairs"] == 2 * 9 * 3  # per speaker: 9 emotional × 3 neutral
    assert "strong_vs_normal" not in report["ranking_accuracy"]  # no intensity labels in this corpus
    model = MSEmoBoostIntensityModel.from_pretrained(tmp_path / "intensity")
    output = model(torch.from_numpy(speech_like(16_000))[None])
    assert output.frame_scores.shape == (1, 101) and 0 <= output.frame_scores.min() <= output.frame_scores.max() <= 1
    audio = sorted((corpus_dir / "audio").glob("*.wav"))[:2]
    assert main(["intensity", "score", "--model", str(tmp_path / "intensity"), *map(str, audio), "--output",
                 str(tmp_path / "scores.png")]) == 0
    out = capsys.readouterr().out
    assert all(f"{path}: mean " in out for path in audio)
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"


def test_train_py_takes_the_pretrained_backbone_in_place_of_the_preset_s_random_one(pretrained):
    from msemoboost.training import build_model

    model_args, *_ = parse_arguments(["configs/emodb_cpu_scratch.yaml", "--dataset_name", "x", "--output_dir", "o",
                                            "--backbone", str(pretrained)])
    assert model_args.backbone == str(pretrained) and model_args.backbone_config is None
    model = build_model(["anger", "neutral"], backbone=model_args.backbone, backbone_config=None,
                        freeze_feature_encoder=False, freeze_backbone=False)
    for name, value in AutoModel.from_pretrained(pretrained).state_dict().items():
        torch.testing.assert_close(model.msemoboost.backbone.state_dict()[name], value)


def test_a_recipe_s_backbone_is_pretrained_once_and_then_reused(pretrained, caplog):
    from msemoboost.pretraining import pretrain_if_missing

    before = (pretrained / "model.safetensors").read_bytes()
    with caplog.at_level(logging.WARNING, logger="msemoboost.pretraining"):
        assert pretrain_if_missing(str(pretrained), "no-such-config.yaml --dataset_name nowhere") is False
    assert f"Using the pretrained backbone in {pretrained} (delete the folder to pretrain it again)." in caplog.text
    assert (pretrained / "model.safetensors").read_bytes() == before


def test_a_recipe_s_pretraining_killed_before_its_model_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    import msemoboost.pretraining
    from msemoboost.pretraining import pretrain_if_missing

    commands = []
    monkeypatch.setattr(msemoboost.pretraining, "pretrain", commands.append)
    backbone = tmp_path / "backbone"
    assert pretrain_if_missing(str(backbone), "recipe.yaml --max_steps 9") is True
    (backbone / "checkpoints" / "checkpoint-500").mkdir(parents=True)
    (backbone / "checkpoints" / "checkpoint-1000").mkdir()
    assert pretrain_if_missing(str(backbone), "recipe.yaml --max_steps 9") is True
    assert commands == [
        ["recipe.yaml", "--max_steps", "9", "--output_dir", str(backbone)],
        ["recipe.yaml", "--max_steps", "9", "--output_dir", str(backbone), "--resume_from_checkpoint", "true"],
    ]


def test_continued_pretraining_starts_from_the_checkpoint(pretrained, corpus_dir, tmp_path):
    arguments = [word for word in PRETRAIN if word not in ("--backbone_config", json.dumps(BACKBONE))]
    assert main(["pretrain", "--dataset_name", str(corpus_dir), "--output_dir", str(tmp_path / "continued"),
                 "--model_name_or_path", str(pretrained), "--max_steps", "1", *arguments, "--learning_rate", "0"]) == 0
    expected, found = load_file(pretrained / "model.safetensors"), load_file(tmp_path / "continued" / "model.safetensors")
    assert expected.keys() == found.keys()
    for name in expected:  # a zero learning rate: the weights are the checkpoint's
        torch.testing.assert_close(found[name], expected[name], atol=0, rtol=0)


def test_a_missing_label_column_is_named_before_any_audio_is_decoded(corpus_dir, monkeypatch):
    import msemoboost.data
    from msemoboost.intensity import load_ranked

    def no_decoding(*args):
        raise AssertionError("decoded audio before checking the columns")

    monkeypatch.setattr(msemoboost.data, "decode_audio", no_decoding)
    with pytest.raises(ValueError, match=rf"^{corpus_dir} has no 'mood' column; its columns are \['emotion', 'speaker'\]\.$"):
        load_ranked(str(corpus_dir), 16_000, 400, label_column="mood")
