"""train.py end to end on a small generated corpus, its outputs, and its handling of bad input."""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from transformers import TrainerCallback, TrainingArguments

from tiny import TINY_TRAIN_ARGS, read_csv, run_train

from msemoboost.arguments import parse_arguments
from msemoboost.cross_validation import model_config
from msemoboost.reporting import MODEL_CARD_TEMPLATE

REPO = Path(__file__).resolve().parents[1]
def run(corpus: Path, output: Path, *extra: str, callbacks=()) -> dict:
    return run_train(["--dataset_name", str(corpus), "--output_dir", str(output), *TINY_TRAIN_ARGS, *extra], callbacks=callbacks)


@pytest.fixture(scope="session")
def finished_run(corpus_dir, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("run") / "out"
    return output, run(corpus_dir, output, "--folds", "0", "1")


def test_run_writes_per_fold_and_overall_results(finished_run):
    output, summary = finished_run
    results = json.loads((output / "results.json").read_text())
    assert results["protocol"] == "loso" and results["num_folds"] == 2 and results["num_processes"] == 1
    assert [fold["fold"] for fold in results["folds"]] == ["speaker_spk1", "speaker_spk2"]
    assert [fold["test_speakers"] for fold in results["folds"]] == [["spk1"], ["spk2"]]
    was = [fold["wa"] for fold in results["folds"]]
    assert results["wa"]["mean"] == pytest.approx(sum(was) / 2)
    assert results["wa"]["std"] == pytest.approx(abs(was[0] - was[1]) / 2)
    assert results["num_utterances"] == 24 and results["class_counts"] == {"angry": 24, "happy": 18, "neutral": 18, "sad": 12}
    assert results["label_names"] == ["angry", "happy", "neutral", "sad"]
    assert results["training"]["learning_rate"] == 0.001 and results["model"]["use_mfcc"] is True
    for fold in ("speaker_spk1", "speaker_spk2"):
        directory = output / "folds" / fold
        fold_results = json.loads((directory / "results.json").read_text())
        assert fold_results["num_test"] == 12 and sum(map(sum, fold_results["confusion_matrix"])) == 12
        assert fold_results["validation_speakers"] and fold.split("_")[1] not in fold_results["validation_speakers"]
        assert (directory / "confusion_matrix.png").stat().st_size > 10_000
        assert "UA (mean class recall)" in (directory / "classification_report.txt").read_text()
        assert (directory / "model" / "model.safetensors").exists()
        assert not (directory / "checkpoints").exists()
    assert (output / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_each_fold_is_calibrated_on_the_other_folds_and_the_final_model_on_all(finished_run):
    from msemoboost.calibration import calibration_report, fit_temperature, pooled_report

    output, summary = finished_run
    parts = {}
    for fold in ("speaker_spk1", "speaker_spk2"):
        logits = np.load(output / "folds" / fold / "test_logits.npz")
        segments = np.load(output / "folds" / fold / "segment_log_probabilities.npz")
        parts[fold] = (logits["logits"], logits["labels"], segments["log_probabilities"], segments["labels"])
        assert len(segments["labels"]) >= len(logits["labels"]) == 12
    calibration = summary["calibration"]
    for fold, other in (("speaker_spk1", "speaker_spk2"), ("speaker_spk2", "speaker_spk1")):
        result = json.loads((output / "folds" / fold / "results.json").read_text())
        temperature = fit_temperature(*parts[other][:2])
        assert result["calibration"] == calibration_report(*parts[fold][:2], temperature)
        assert result["segment_calibration"]["temperature"] == fit_temperature(*parts[other][2:])
        rows = list(csv.DictReader(open(output / "folds" / fold / "predictions.csv")))
        calibrated = torch.from_numpy(parts[fold][0] / temperature).softmax(-1).numpy()
        np.testing.assert_allclose([[float(row[label]) for label in summary["label_names"]] for row in rows], calibrated,
                                   rtol=0, atol=1e-6)
    everything = [np.concatenate([parts[fold][i] for fold in parts]) for i in range(4)]
    assert calibration["calibration_temperature"] == fit_temperature(*everything[:2])
    assert calibration["segment_calibration_temperature"] == fit_temperature(*everything[2:])
    nested = {fold: json.loads((output / "folds" / fold / "results.json").read_text())["calibration"]["temperature"]
              for fold in parts}
    assert calibration["utterances"] == pooled_report({fold: parts[fold][:2] for fold in parts}, nested)
    config = json.loads((output / "model" / "config.json").read_text())
    assert config["calibration_temperature"] == calibration["calibration_temperature"]
    assert config["segment_calibration_temperature"] == calibration["segment_calibration_temperature"]


def test_reported_wa_and_ua_are_accuracy_and_balanced_accuracy_of_the_predictions(finished_run):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    output, summary = finished_run
    rows = read_csv(output / "predictions.csv")
    for fold in summary["folds"]:
        speaker = fold["test_speakers"][0]
        labels = [row["label"] for row in rows if row["speaker"] == speaker]
        predictions = [row["prediction"] for row in rows if row["speaker"] == speaker]
        assert fold["wa"] == pytest.approx(accuracy_score(labels, predictions), abs=1e-12)
        assert fold["ua"] == pytest.approx(balanced_accuracy_score(labels, predictions), abs=1e-12)
    labels, predictions = [row["label"] for row in rows], [row["prediction"] for row in rows]
    assert summary["pooled"]["ua"] == pytest.approx(balanced_accuracy_score(labels, predictions), abs=1e-12)
    # The demo corpus is imbalanced (4 angry, 3 happy, 3 neutral, 2 sad per speaker): UA and WA differ.
    assert summary["pooled"]["ua"] != pytest.approx(summary["pooled"]["wa"], abs=1e-6)


def test_every_test_utterance_is_predicted_exactly_once(finished_run, corpus_dir):
    output, _ = finished_run
    rows = read_csv(output / "predictions.csv")
    expected = sorted(row["file_name"].split("/")[-1] for row in read_csv(corpus_dir / "metadata.csv") if row["speaker"] in ("spk1", "spk2"))
    assert sorted(row["utterance_id"] for row in rows) == expected
    for row in rows:
        probabilities = [float(row[name]) for name in ("angry", "happy", "neutral", "sad")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert row["prediction"] == ["angry", "happy", "neutral", "sad"][probabilities.index(max(probabilities))]
        assert row["label"] == row["utterance_id"].split("_")[1]


def test_final_model_directory_has_a_card_and_loads_in_a_fresh_process(finished_run):
    output, summary = finished_run
    model_dir = output / "model"
    card = (model_dir / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "audio-classification"
    assert metadata["datasets"] == ["demo"]
    assert "Early stopping and checkpoint selection use\n  validation speakers drawn from each fold's training speakers" in card
    default_optimizer = TrainingArguments(output_dir=str(output), report_to="none").optim.value  # e.g. "adamw_torch"
    assert f"optimizer `{default_optimizer}`" in card and summary["training"]["lr_scheduler_type"] == "linear"
    metrics = metadata["model-index"][0]["results"][0]["metrics"]
    assert [m["type"] for m in metrics] == ["accuracy", "recall"]
    assert metrics[0]["value"] == round(100 * summary["wa"]["mean"], 2)
    assert metrics[1]["value"] == round(100 * summary["ua"]["mean"], 2)
    assert 'pipeline("audio-classification", model="path/to/this/model"' in card and '"None"' not in card
    for section in ("## How to use", "## Intended use", "## Training data and protocol", "## Limitations", "speaker_spk2"):
        assert section in card
    script = (
        "import sys; from transformers import AutoModelForAudioClassification; "
        "m = AutoModelForAudioClassification.from_pretrained(sys.argv[1], trust_remote_code=True); "
        "import json; print(type(m).__name__, json.dumps([m.config.id2label[i] for i in range(m.config.num_labels)]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(model_dir)], capture_output=True, text=True, timeout=300,
        cwd=model_dir.parent, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    name, labels = result.stdout.strip().split(" ", 1)
    assert name == "MSEmoBoostForSequenceClassification"
    assert json.loads(labels) == ["angry", "happy", "neutral", "sad"]  # class index order: sorted label names


def test_a_finished_run_is_not_overwritten_unless_asked(finished_run, corpus_dir):
    output, _ = finished_run
    before = (output / "results.json").read_text()
    with pytest.raises(FileExistsError, match=r"already holds a finished run .*--overwrite_output_dir"):
        run(corpus_dir, output, "--folds", "0")
    assert (output / "results.json").read_text() == before


def test_overwrite_output_dir_replaces_a_finished_run(corpus_dir, tmp_path):
    output = tmp_path / "out"
    run(corpus_dir, output, "--folds", "0", "--final_model", "false")
    (output / "marker").write_text("old run")
    summary = run(corpus_dir, output, "--folds", "1", "--final_model", "false", "--overwrite_output_dir", "true")
    assert [fold["fold"] for fold in summary["folds"]] == ["speaker_spk2"]
    assert not (output / "marker").exists() and not (output / "folds" / "speaker_spk1").exists()


def test_missing_column_error_lists_the_columns(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match=r"Column 'mood' \(--label_column\) is not in split 'train' .* Its columns are: audio, speaker, emotion"):
        run(corpus_dir, tmp_path / "out", "--label_column", "mood")
    with pytest.raises(ValueError, match=r"Column 'talker' \(--speaker_column\) .* Its columns are"):
        run(corpus_dir, tmp_path / "out", "--speaker_column", "talker")


@pytest.fixture
def corpus_with_a_corrupt_file(corpus_dir, tmp_path) -> Path:
    copy = shutil.copytree(corpus_dir, tmp_path / "corrupt")
    (copy / "audio" / "spk3_sad_01.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    return copy


def test_corrupt_audio_is_named_in_the_error(corpus_with_a_corrupt_file, tmp_path):
    with pytest.raises(ValueError, match=r"1 audio file\(s\) cannot be used: spk3_sad_01.wav: .*--skip_bad_audio"):
        run(corpus_with_a_corrupt_file, tmp_path / "out")


def test_audio_shorter_than_one_analysis_frame_is_named(corpus_dir, tmp_path):
    import soundfile

    from msemoboost.data import load_corpus

    copy = shutil.copytree(corpus_dir, tmp_path / "short")
    soundfile.write(copy / "audio" / "spk1_sad_00.wav", [0.0] * 200, 22050)  # 146 samples at 16 kHz
    with pytest.raises(ValueError, match=r"spk1_sad_00.wav: 146 samples, shorter than one analysis frame \(400 samples\)"):
        load_corpus(str(copy), 16_000, 400, label_column="emotion")
    corpus = load_corpus(str(copy), 16_000, 400, label_column="emotion", skip_bad_audio=True)
    assert corpus.num_skipped == 1 and len(corpus.dataset) == len(read_csv(copy / "metadata.csv")) - 1


def test_skip_bad_audio_skips_and_reports(corpus_with_a_corrupt_file, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        summary = run(corpus_with_a_corrupt_file, tmp_path / "out", "--skip_bad_audio", "true", "--folds", "2", "--final_model", "false")
    assert "Skipping 1 unusable audio file(s): spk3_sad_01.wav" in caplog.text
    assert summary["num_skipped_audio"] == 1 and summary["folds"][0]["num_test"] == 11


def test_a_class_missing_from_a_training_fold_warns_and_stays_in_the_label_space(corpus_dir, tmp_path, caplog):
    copy = shutil.copytree(corpus_dir, tmp_path / "no_sad")
    rows = [row for row in read_csv(copy / "metadata.csv") if not (row["emotion"] == "sad" and row["speaker"] != "spk1")]
    with open(copy / "metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["file_name", "speaker", "emotion"])
        writer.writeheader()
        writer.writerows(rows)
    with caplog.at_level(logging.WARNING):
        summary = run(copy, tmp_path / "out", "--folds", "0", "--final_model", "false", "--validation_fraction", "0.3")
    assert "Fold speaker_spk1: no training utterances of class(es) ['sad']; they stay in the label space." in caplog.text
    assert summary["label_names"] == ["angry", "happy", "neutral", "sad"]


def test_loso_with_one_speaker_is_refused(corpus_dir, tmp_path):
    copy = shutil.copytree(corpus_dir, tmp_path / "one_speaker")
    rows = read_csv(copy / "metadata.csv")
    with open(copy / "metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["file_name", "speaker", "emotion"])
        writer.writeheader()
        writer.writerows({**row, "speaker": "only"} for row in rows)
    with pytest.raises(ValueError, match=r"protocol 'loso' needs at least 3 speakers .*; the dataset has 1: \['only'\]"):
        run(copy, tmp_path / "out")


class RecordWeights(TrainerCallback):
    """Keeps a copy of the model's weights at the end of every epoch."""

    def __init__(self):
        self.weights = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.weights.append({name: value.detach().clone() for name, value in model.state_dict().items()})


def test_without_validation_a_fold_trains_on_every_training_speaker_and_averages_its_last_epochs(corpus_dir, tmp_path):
    from transformers import AutoModelForAudioClassification

    recorder = RecordWeights()
    summary = run(corpus_dir, tmp_path / "out", "--folds", "0", "--final_model", "false", "--validation_fraction", "0",
                  "--average_last_epochs", "2", "--num_train_epochs", "3", callbacks=[recorder])
    (name,) = [fold["fold"] for fold in summary["folds"]]
    fold = json.loads((tmp_path / "out" / "folds" / name / "results.json").read_text())
    speakers = {row["speaker"] for row in read_csv(corpus_dir / "metadata.csv")}
    assert fold["num_validation"] == 0 and fold["validation_speakers"] == [] and fold["best_checkpoint"] is None
    assert fold["num_train"] + fold["num_test"] == len(read_csv(corpus_dir / "metadata.csv")) and len(speakers) > 2
    assert fold["averaged_epochs"] == [2, 3] and fold["epochs_trained"] == 3.0 and len(recorder.weights) == 3
    saved = AutoModelForAudioClassification.from_pretrained(tmp_path / "out" / "folds" / name / "model").state_dict()
    weight = "classifier.weight"
    expected = (recorder.weights[1][weight].double() + recorder.weights[2][weight].double()) / 2
    assert torch.equal(saved[weight], expected.float()) and not torch.equal(saved[weight], recorder.weights[2][weight])
    from msemoboost.reporting import render_model_card

    card = render_model_card(MODEL_CARD_TEMPLATE, json.loads((tmp_path / "out" / "results.json").read_text()),
                             "corpus", None, "model")
    assert ("No speaker was held out for model selection: each fold trained on all of its training speakers for the "
            "whole schedule and kept the average of its weights after each of its last 2 epochs;") in card
    assert "Early stopping and checkpoint selection use" not in card



class FirstTrainingBatch(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.batch = next(iter(train_dataloader))
        self.label_smoothing, self.trainer_smoothing = model.config.label_smoothing, args.label_smoothing_factor


def test_mixup_and_label_smoothing_through_train_py(corpus_dir, tmp_path):
    from transformers import AutoConfig

    recorder = FirstTrainingBatch()
    summary = run(corpus_dir, tmp_path / "out", "--folds", "0", "--final_model", "false", "--mixup_alpha", "0.4",
                  "--label_smoothing_factor", "0.1", "--telephone_augmentation", "1", callbacks=[recorder])
    labels = recorder.batch["labels"]
    num_labels = len(summary["class_counts"])
    assert labels.dtype == torch.float32 and labels.shape == (len(recorder.batch["input_values"]), num_labels)
    torch.testing.assert_close(labels.sum(-1), torch.ones(len(labels)))
    assert (labels.max(-1).values < 1).any()  # mixed, not one-hot
    # Every training utterance went through the telephone channel: nothing above its 4 kHz Nyquist frequency.
    row = recorder.batch["input_values"][0][recorder.batch["attention_mask"][0].bool()].numpy()
    power = np.abs(np.fft.rfft(row)) ** 2
    assert power[np.fft.rfftfreq(len(row), 1 / 16000) > 4200].sum() < 1e-4 * power.sum()
    # The model's loss smooths (with its class weights and segments); the Trainer's label smoother stays off.
    assert recorder.label_smoothing == 0.1 and recorder.trainer_smoothing == 0.0
    (name,) = [fold["fold"] for fold in summary["folds"]]
    assert AutoConfig.from_pretrained(tmp_path / "out" / "folds" / name / "model").label_smoothing == 0.1
    assert summary["augmentation"]["mixup_alpha"] == 0.4 and summary["training"]["label_smoothing_factor"] == 0.1
    from msemoboost.reporting import render_model_card

    card = render_model_card(MODEL_CARD_TEMPLATE, json.loads((tmp_path / "out" / "results.json").read_text()),
                             "corpus", None, "model")
    assert ("- Mixup: each training batch's utterances were mixed in pairs, with labels mixed alike and weights drawn "
            "from Beta(0.4, 0.4).\n- Telephone augmentation: with probability 1.0, a training utterance passed through a "
            "narrowband telephone channel (8 kHz, 300–3,400 Hz, G.711 μ-law).\n- Label smoothing 0.1 in the "
            "cross-entropy.\n") in card
    with pytest.raises(ValueError, match=r"^--mixup_alpha must be >= 0 \(0 turns mixup off\), got -1.0.$"):
        run(corpus_dir, tmp_path / "refused", "--mixup_alpha", "-1")


def test_checkpoint_averaging_needs_a_fixed_schedule(corpus_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(corpus_dir, tmp_path / "out", "--average_last_epochs", "2")
    assert "--average_last_epochs averages the last epochs of a fixed schedule" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(corpus_dir, tmp_path / "out", "--average_last_epochs", "8", "--num_train_epochs", "3", "--validation_fraction", "0")
    assert ("--average_last_epochs 8 averages more epochs than the run has (--num_train_epochs 3): lower it, or give 0 "
            "to keep the last weights.") in " ".join(capsys.readouterr().err.split())


def test_label_merge_renames_classes(corpus_dir, tmp_path):
    summary = run(corpus_dir, tmp_path / "out", "--label_merge", "happy:angry", "--folds", "0", "--final_model", "false")
    assert summary["label_names"] == ["angry", "neutral", "sad"]
    assert summary["class_counts"] == {"angry": 42, "neutral": 18, "sad": 12}


def test_push_without_a_hub_says_so_and_keeps_the_model_directory(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"(?s)Could not push to the Hub repository 'someone/ser'.*Nothing is lost: the model directory .* is complete"):
        run(corpus_dir, output, "--protocol", "loso", "--num_folds", "2", "--num_train_epochs", "1",
            "--push_to_hub", "true", "--hub_model_id", "someone/ser")
    files = {path.name for path in (output / "model").iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "modeling_msemoboost.py"} <= files
    assert (output / "results.json").exists()


def test_arguments_come_from_a_yaml_file_and_the_command_line_overrides_it(tmp_path):
    file = tmp_path / "args.yaml"
    file.write_text(yaml.safe_dump({"dataset_name": "x", "protocol": "kfold", "num_folds": 5, "learning_rate": 0.5,
                                    "folds": ["1", "2"], "backbone_config": {"model_type": "hubert"},
                                    "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.25}}))
    model_args, data_args, noise_args, protocol_args, training_args, _ = parse_arguments([str(file), "--num_folds", "3"])
    assert (data_args.dataset_name, protocol_args.protocol, protocol_args.num_folds) == ("x", "kfold", 3)
    assert training_args.learning_rate == 0.5 and protocol_args.folds == ["1", "2"]
    assert training_args.lr_scheduler_kwargs == {"min_lr_rate": 0.25}  # a mapping in the file reaches the parser as JSON
    assert json.loads(model_args.backbone_config) == {"model_type": "hubert"}
    assert noise_args.eval_snr is None and noise_args.noise_augmentation_probability == 0.0  # both off by default


def test_a_preset_builds_on_its_base_file(tmp_path):
    from msemoboost.training import read_arguments_file

    scratch, pretrained = (read_arguments_file(REPO / "configs" / name) for name in ("emodb_cpu_scratch.yaml", "emodb_cpu.yaml"))
    changes = {"backbone_config": None, "backbone": "outputs/pretrained/emodb_cpu", "backbone_learning_rate": 1e-4,
               "backbone_pretraining": "configs/pretrain_cpu.yaml --dataset_name ../shared/data/ravdess "
                                       "../shared/data/tess --max_steps 1500",
               "model_config_overrides": {**scratch["model_config_overrides"], "use_weighted_layer_sum": True,
                                          "mfcc_statistics": True, "prosody_statistics": True,
                                          "classify_statistics": True, "utterance_statistics_classifier": True,
                                          "utterance_distribution_statistics": True,
                                          "utterance_log_mel_statistics": True},
               "learning_rate": 3e-3, "guidance_learning_rate": 1e-3, "freeze_feature_encoder": True, "validation_fraction": 0, "output_dir": "outputs/emodb_cpu",
               "lr_scheduler_type": "cosine_with_min_lr",
               "lr_scheduler_kwargs": {"min_lr_rate": 0.25}, "average_last_epochs": 8,
               "statistics_weight_grid": [0, 0.5, 1, 1.5, 2, 3, 4, 6, 10], "parallel_folds": 2,
               "speaker_normalization": True}
    assert pretrained == {**scratch, **changes}
    (tmp_path / "child.yaml").write_text("base: missing.yaml\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'child.yaml'}: its base missing.yaml is not a file "
                                         rf"\(looked for {tmp_path / 'missing.yaml'}\)\.$"):
        read_arguments_file(tmp_path / "child.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list.yaml: expected a mapping of argument names to values, got list\.$"):
        read_arguments_file(tmp_path / "list.yaml")


def test_a_backbone_on_the_command_line_replaces_the_preset_s(tmp_path, capsys):
    preset = str(REPO / "configs" / "emodb_cpu.yaml")
    model_args = parse_arguments([preset, "--dataset_name", "x"])[0]
    assert (model_args.backbone, model_args.backbone_config) == ("outputs/pretrained/emodb_cpu", None)
    assert model_args.backbone_pretraining.startswith("configs/pretrain_cpu.yaml --dataset_name")
    model_args = parse_arguments([preset, "--dataset_name", "x", "--backbone", "facebook/wav2vec2-base"])[0]
    assert (model_args.backbone, model_args.backbone_config, model_args.backbone_pretraining) == (
        "facebook/wav2vec2-base", None, None)
    model_args = parse_arguments([preset, "--dataset_name", "x", "--backbone_config={\"model_type\": \"hubert\"}"])[0]
    assert (model_args.backbone, model_args.backbone_config, model_args.backbone_pretraining) == (
        None, '{"model_type": "hubert"}', None)
    (tmp_path / "flags.yaml").write_text(f"base: {preset}\nbackbone_pretraining: --dataset_name corpus --max_steps 3\n")
    model_args = parse_arguments([str(tmp_path / "flags.yaml"), "--dataset_name", "x", "--backbone", "b"])[0]
    assert (model_args.backbone, model_args.backbone_pretraining) == ("b", None)
    model_args = parse_arguments([preset, "--dataset_name", "x", "--backbone_pretraining", "other.yaml"])[0]
    assert (model_args.backbone, model_args.backbone_pretraining) == ("outputs/pretrained/emodb_cpu", "other.yaml")
    with pytest.raises(SystemExit):
        parse_arguments(["--dataset_name", "x", "--backbone_pretraining", "configs/pretrain_cpu.yaml"])
    assert "--backbone_pretraining pretrains the folder that --backbone names: give --backbone" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a Hub id, so a folder, and it is not there (nor asked to be pretrained)
        parse_arguments([preset, "--dataset_name", "x", "--backbone", str(tmp_path / "absent" / "backbone")])
    assert (f"--backbone {tmp_path / 'absent' / 'backbone'}: no such folder, and not a Hub model id. Give a folder that "
            "holds a model, a Hub id (facebook/wav2vec2-base), or add --backbone_pretraining ARGUMENTS to pretrain one "
            "into that folder first.") in capsys.readouterr().err
    model_args = parse_arguments([preset, "--dataset_name", "x", "--backbone", str(tmp_path / "absent" / "backbone"),
                                        "--backbone_pretraining", "other.yaml"])[0]
    assert model_args.backbone_pretraining == "other.yaml"  # to be pretrained there first: no error


def test_the_ablations_without_the_mfcc_branch_drop_the_preset_s_statistics(caplog):
    preset = str(REPO / "configs" / "emodb_cpu.yaml")
    with caplog.at_level("WARNING", logger="msemoboost.train"):
        model_args = parse_arguments([preset, "--dataset_name", "x", "--use_mfcc", "false"])[0]
    overrides = json.loads(model_args.model_config_overrides)
    assert not {"mfcc_statistics", "prosody_statistics", "classify_statistics", "utterance_statistics_classifier",
                "utterance_distribution_statistics", "utterance_log_mel_statistics", "utterance_statistics_weight"} & set(overrides)
    # The preset's speaker normalisation goes with the statistics classifier it normalises.
    assert caplog.messages == ["--use_mfcc false: mfcc_statistics, prosody_statistics, classify_statistics, "
                               "utterance_statistics_classifier, utterance_distribution_statistics, "
                               "utterance_log_mel_statistics (statistics of the MFCC branch) are dropped from "
                               "--model_config_overrides.",
                               "--use_mfcc false: --speaker_normalization is off, with the statistics classifier "
                               "it normalises."]
    assert model_args.speaker_normalization is False
    from msemoboost import MSEmoBoostConfig

    MSEmoBoostConfig(use_mfcc=False, **overrides)  # the statistics would otherwise be refused without the MFCC branch


def test_a_statistics_weight_grid_with_a_negative_or_infinite_weight_is_refused():
    for grid in (["1", "-1"], ["inf"]):
        with pytest.raises(ValueError, match=r"^--statistics_weight_grid takes finite, non-negative weights, got "
                                             rf"\[{', '.join(f'{float(weight)}' for weight in grid)}\]\.$"):
            parse_arguments(["--dataset_name", "x", "--statistics_weight_grid", *grid])


def test_speaker_normalization_is_refused_where_test_speakers_cannot_be_grouped(capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--dataset_name", "x", "--speaker_normalization", "true", "--eval_snr", "10"])
    assert ("--eval_snr tests the model in noise without groups, and --speaker_normalization true needs each test "
            "speaker's recordings together: run them apart") in " ".join(capsys.readouterr().err.split())
    for protocol in ("cross_corpus", "leave_one_corpus_out"):
        with pytest.raises(SystemExit):
            parse_arguments(["--dataset_name", "x", "--protocol", protocol])
        assert f"--protocol {protocol} trains on --extra_train_datasets only: name at least one" in capsys.readouterr().err


def test_the_guidance_only_ablation_of_a_preset_drops_the_preset_s_backbone(caplog):
    from msemoboost.training import build_model, read_arguments_file

    preset = str(REPO / "configs" / "emodb_cpu.yaml")
    with caplog.at_level("WARNING", logger="msemoboost.train"):
        model_args = parse_arguments([preset, "--dataset_name", "x", "--use_backbone_features", "false"])[0]
    assert (model_args.backbone, model_args.backbone_config, model_args.backbone_pretraining) == (None, None, None)
    overrides = json.loads(model_args.model_config_overrides)
    assert overrides == {**read_arguments_file(REPO / "configs" / "emodb_cpu_scratch.yaml")["model_config_overrides"],
                         "mfcc_statistics": True, "prosody_statistics": True, "classify_statistics": True,
                         "utterance_statistics_classifier": True, "utterance_distribution_statistics": True,
                         "utterance_log_mel_statistics": True}
    assert caplog.messages == [
        "--use_backbone_features false: the guidance-only model has no backbone, so the backbone that this run names "
        "(outputs/pretrained/emodb_cpu) is neither loaded nor pretrained.",
        "--use_backbone_features false: use_weighted_layer_sum (a weighting of the backbone's layers) is dropped from "
        "--model_config_overrides.",
    ]
    model = build_model(["a", "b"], use_backbone_features=False, **overrides)
    assert not any(".backbone." in name for name, _ in model.named_parameters())
    assert model.config.use_weighted_layer_sum is False
    with_backbone = parse_arguments([preset, "--dataset_name", "x"])[0]
    assert json.loads(with_backbone.model_config_overrides)["use_weighted_layer_sum"] is True


def test_help_explains_how_validation_is_drawn():
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "validation part drawn from each fold's *training* speakers only" in text
    assert "--validation_fraction" in text and "--learning_rate" in text


def test_the_accuracy_benchmark_lists_its_rows():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accuracy.py"), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]  # a row's name with "%" once broke the help
    text = " ".join(result.stdout.split())
    assert "weight averaging (cosine to 25 %, last 8 epochs averaged)" in text


def test_train_py_takes_model_as_every_msemoboost_command_does():
    args = parse_arguments(["--dataset_name", "x", "--model", "ckpt"])
    assert args.model.model_name_or_path == "ckpt"
    assert parse_arguments(["--dataset_name", "x", "--model_name_or_path", "ckpt"]).model.model_name_or_path == "ckpt"


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_preset_parses_into_its_values(preset):
    from msemoboost.training import read_arguments_file, read_json_argument

    values = read_arguments_file(preset)  # with its base file's values, if it builds on one
    if preset.stem.startswith("pretrain"):  # a msemoboost pretrain preset
        from msemoboost.pretraining import MSEmoBoostPretrainingConfig, parse_pretraining_arguments

        parsed = parse_pretraining_arguments([str(preset), "--dataset_name", "x", "--output_dir", "o"])
        fields = {name: value for arguments in parsed for name, value in vars(arguments).items()}
        for key, value in values.items():
            if key == "backbone_config":  # inline, or a .json file of the configs
                assert read_json_argument(fields[key]) == read_json_argument(value), key
            elif key in ("lr_scheduler_type", "save_strategy"):
                assert str(getattr(fields[key], "value", fields[key])) == str(value), key
            elif key == "report_to":
                assert fields[key] in ([], "none", ["none"]), key
            else:
                assert fields[key] == value, key
        MSEmoBoostPretrainingConfig(backbone_config=read_json_argument(fields["backbone_config"]))  # a valid backbone
        return
    parsed = parse_arguments([str(preset), *([] if "dataset_name" in values else ["--dataset_name", "x"])])
    fields = {name: value for arguments in parsed for name, value in vars(arguments).items()}
    for key, value in values.items():
        if value is None:  # a base file's value removed
            assert fields[key] is None, key
        elif key == "backbone_config" and isinstance(value, str):  # a .json file of the configs
            assert fields[key] == value and read_json_argument(value)["model_type"], key
        elif key in ("backbone_config", "model_config_overrides", "corpus_languages"):
            assert json.loads(fields[key]) == value, key
        elif key == "lr_scheduler_type":
            assert fields[key] == value, key
        elif key in ("eval_strategy", "save_strategy", "logging_strategy", "optim"):
            assert str(getattr(fields[key], "value", fields[key])) == str(value), key
        elif key == "report_to":
            assert fields[key] in ([], "none", ["none"]), key
        else:
            assert fields[key] == (value if not isinstance(value, list) else list(value)), key
    if ("model_config_overrides" in values or "backbone_config" in values) and not values.get("backbone_pretraining"):
        model_config(parsed[0])  # the preset's model configuration is valid (a backbone to pretrain: below)


def test_classlabel_folders_kfold_and_a_pretrained_backbone_directory(corpus_dir, tmp_path):
    """An audiofolder whose labels come from sub-folder names (a ClassLabel), no speakers, k-fold, and --backbone."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    folders = tmp_path / "by_class"
    for row in read_csv(corpus_dir / "metadata.csv"):
        target = folders / row["emotion"] / row["file_name"].split("/")[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_dir / row["file_name"], target)
    backbone_config = json.loads(TINY_TRAIN_ARGS[TINY_TRAIN_ARGS.index("--backbone_config") + 1])
    backbone_config.pop("model_type")
    Wav2Vec2Model(Wav2Vec2Config(**backbone_config)).save_pretrained(tmp_path / "ssl")
    arguments = list(TINY_TRAIN_ARGS)
    del arguments[arguments.index("--backbone_config"): arguments.index("--backbone_config") + 2]
    arguments[arguments.index("--label_column") + 1] = "label"
    summary = run_train([
        "--dataset_name", str(folders), "--output_dir", str(tmp_path / "out"), *arguments,
        "--backbone", str(tmp_path / "ssl"), "--speaker_column", "", "--protocol", "kfold", "--num_folds", "3",
        "--folds", "0", "--final_model", "false", "--num_train_epochs", "1",
    ])
    assert summary["label_names"] == ["angry", "happy", "neutral", "sad"]
    assert summary["folds"][0]["num_test"] == 24 and summary["folds"][0]["test_speakers"] == []
    assert summary["model"]["backbone"] == str(tmp_path / "ssl")


def split_audiofolder(corpus_dir: Path, directory: Path, speakers_per_split: dict, columns=("file_name", "speaker", "emotion")) -> Path:
    """An audiofolder with one sub-folder per split, each holding the demo corpus's utterances of its speakers and a
    metadata.csv of `columns` only (leave out "speaker" for a corpus without speakers)."""
    for split, speakers in speakers_per_split.items():
        rows = [row for row in read_csv(corpus_dir / "metadata.csv") if row["speaker"] in speakers]
        (directory / split / "audio").mkdir(parents=True)
        with open(directory / split / "metadata.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        for row in rows:
            shutil.copy(corpus_dir / row["file_name"], directory / split / row["file_name"])
    return directory


def test_splits_protocol_uses_the_dataset_splits_and_publishes_that_model(corpus_dir, tmp_path):
    splits = split_audiofolder(corpus_dir, tmp_path / "splits", {"train": {"spk1", "spk2", "spk3", "spk4", "spk5"}, "test": {"spk6"}})
    output = tmp_path / "out"
    summary = run(splits, output, "--protocol", "splits", "--num_train_epochs", "1")
    assert [fold["fold"] for fold in summary["folds"]] == ["splits"]
    assert summary["folds"][0]["test_speakers"] == ["spk6"] and summary["folds"][0]["num_test"] == 12
    validation = json.loads((output / "folds" / "splits" / "results.json").read_text())["validation_speakers"]
    assert validation and "spk6" not in validation
    assert (output / "model" / "README.md").exists()
    assert (output / "model" / "model.safetensors").read_bytes() == (output / "folds" / "splits" / "model" / "model.safetensors").read_bytes()


def test_a_dataset_validation_split_picks_the_checkpoint_and_weight_averaging_is_not_applied(corpus_dir, tmp_path, caplog):
    splits = split_audiofolder(
        corpus_dir, tmp_path / "splits", {"train": {"spk1", "spk2", "spk3", "spk4"}, "validation": {"spk5"}, "test": {"spk6"}}
    )
    output = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="msemoboost.train"):
        summary = run(splits, output, "--protocol", "splits", "--validation_fraction", "0", "--num_train_epochs", "2",
                      "--average_last_epochs", "2", "--final_model", "false")
    fold = json.loads((output / "folds" / "splits" / "results.json").read_text())
    assert summary["folds"][0]["num_validation"] == 12 and fold["validation_speakers"] == ["spk5"]
    assert fold["averaged_epochs"] is None and fold["best_checkpoint"] is not None
    assert ("The fold has a validation part (the dataset's own validation split): early stopping on it picks the "
            "checkpoint, so --average_last_epochs is not applied.") in caplog.messages


def test_the_cpu_recipe_runs_unchanged_on_an_audiofolder_with_train_and_test_splits(corpus_dir, tmp_path, monkeypatch, caplog):
    splits = split_audiofolder(corpus_dir, tmp_path / "splits", {"train": {"spk1", "spk2", "spk3", "spk4"}, "test": {"spk6"}},
                               columns=("file_name", "emotion"))  # no speaker column
    # The recipe's paths are relative to the project root; its backbone is pretrained on the first run (here for 2
    # steps on the generated corpus, in place of RAVDESS and TESS) into outputs/pretrained/emodb_cpu and used.
    monkeypatch.chdir(tmp_path)
    caplog.set_level("WARNING", logger="msemoboost.train")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    pretraining = f"configs/pretrain_cpu.yaml --dataset_name {corpus_dir} --max_steps 2 --per_device_train_batch_size 4"
    summary = run_train([str(REPO / "configs" / "emodb_cpu.yaml"), "--dataset_name", str(splits), "--protocol", "splits",
                          "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "2", "--average_last_epochs", "2",
                          "--disable_tqdm", "true", "--backbone_pretraining", pretraining])
    backbone = tmp_path / "outputs" / "pretrained" / "emodb_cpu"
    assert json.loads((backbone / "pretraining_args.json").read_text())["max_steps"] == 2
    assert summary["model"]["backbone"] == "outputs/pretrained/emodb_cpu" and summary["model"]["backbone_pretraining"] == pretraining
    assert summary["model"]["backbone_learning_rate"] == 1e-4 and summary["architecture"]["use_weighted_layer_sum"]
    assert [fold["fold"] for fold in summary["folds"]] == ["splits"] and summary["folds"][0]["num_test"] == 12
    assert summary["folds"][0]["num_train"] + summary["folds"][0]["num_validation"] == 48
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "No speaker was held out for model selection" in card  # no validation split, and the recipe holds none out
    # One fold: the preset's weight search has nothing to choose on, and the model keeps its own weight.
    assert ("--statistics_weight_grid needs 2 folds or more to choose the statistics classifier's weight; this run has "
            "1, so the model keeps its own (1).") in caplog.messages
    assert "statistics_weight" not in summary and summary["architecture"]["utterance_statistics_weight"] == 1.0
    assert ("Architecture options: frame weighting `mean_residual`, classifier input `pooled_and_guidance`, MFCC "
            "normalisation `standardize`, MFCC pooled to 30 steps, the MFCC branch also reading the MFCC statistics "
            "(mean, standard deviation, frame-to-frame spread), the MFCC branch also reading pitch, voicing and energy "
            "statistics (an in-model autocorrelation pitch tracker), those statistics also read by the classifier, whose "
            "part for them is trained as a linear classifier of its own, and a logistic regression on the whole "
            "utterance's statistics and the shape of their distributions (skewness, kurtosis, percentiles and slopes of "
            "the MFCC, pitch and energy) and 11 functionals of each of its log-mel bands (level, spread, percentiles, "
            "range, slope, shape and frame-to-frame change), fitted after training (its penalty chosen by "
            "cross-validation over the training speakers) on each speaker's statistics standardised by that speaker's "
            "own mean and deviation (speaker normalisation: pass `group_ids`, one id per speaker, with a batch of several recordings of each speaker, or "
            "`msemoboost predict --group_by folder`; a recording without a group is classified by a second regression, "
            "fitted on the training data's statistics, times 1), whose log-probabilities are added to the network's, a "
            "learned weighted sum of the backbone's layers (the paper: `linear`, `pooled`, `l2`, no pooling, the last "
            "layer, no normalisation).") in card
    assert (f"- Backbone: `outputs/pretrained/emodb_cpu` (pretrained by the training recipe itself, self-supervised, on "
            f"unlabelled audio: `msemoboost pretrain {pretraining}`)") in card


def test_a_multi_process_run_asks_for_the_recipe_s_backbone_to_be_pretrained_first(tmp_path, monkeypatch, capsys, caplog):
    import transformers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(transformers.TrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(SystemExit):
        parse_arguments([str(REPO / "configs" / "emodb_cpu.yaml"), "--dataset_name", "x"])
    assert ("--backbone outputs/pretrained/emodb_cpu is not pretrained yet, and pretraining cannot start inside this "
            "2-process run. Pretrain it first: msemoboost pretrain configs/pretrain_cpu.yaml --dataset_name "
            "../shared/data/ravdess ../shared/data/tess --max_steps 1500 --output_dir outputs/pretrained/emodb_cpu"
            ) in " ".join(capsys.readouterr().err.split())
    (tmp_path / "outputs" / "pretrained" / "emodb_cpu").mkdir(parents=True)
    (tmp_path / "outputs" / "pretrained" / "emodb_cpu" / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="msemoboost.train"):
        model_args, _, _, protocol_args, _, _ = parse_arguments([str(REPO / "configs" / "emodb_cpu.yaml"), "--dataset_name", "x"])
    assert model_args.backbone_pretraining
    # The preset's folds side by side give way to the processes that already share each fold.
    assert protocol_args.parallel_folds == 1
    assert ("--parallel_folds 2 is ignored: this run already spans 2 processes, which train each fold together, one "
            "fold after another.") in caplog.text


def test_noisy_evaluation_augmentation_and_se_head_through_train_py(corpus_dir, tmp_path):
    noise = tmp_path / "noise"
    noise.mkdir()
    soundfile.write(noise / "hum.wav", (0.1 * np.sin(np.arange(800) / 3)).astype(np.float32), 16000)  # 50 ms: looped
    output = tmp_path / "noisy"

    class Logs(TrainerCallback):
        def __init__(self):
            self.training = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                self.training.append(logs)

    logs = Logs()
    summary = run(corpus_dir, output, "--folds", "0", "1", "--final_model", "false", "--eval_snr", "20", "0",
                  "--eval_noise", "white", "babble", "dataset", "--noise_dataset", str(noise),
                  "--noise_augmentation_probability", "0.5", "--use_se_head", "true", callbacks=[logs])
    assert logs.training and all(entry["se_loss"] > 0 and entry["classification_loss"] > 0 for entry in logs.training)
    noise_summary = summary["noise"]
    assert noise_summary["snr_db"] == ["20", "0"] and noise_summary["types"] == ["white", "babble", "dataset"]
    assert noise_summary["clean"] == {"wa": summary["wa"], "ua": summary["ua"]}
    assert noise_summary["silent_test_utterances"] == []
    assert "active speech power" in noise_summary["snr_definition"]
    folds = [json.loads((output / "folds" / f["fold"] / "results.json").read_text()) for f in summary["folds"]]
    for fold in folds:
        assert set(fold["noisy"]) == {"white", "babble", "dataset"}
        assert all(0 <= fold["noisy"][kind][snr][m] <= 1 for kind in fold["noisy"] for snr in ("20", "0") for m in ("wa", "ua"))
        assert fold["test_speakers"][0] not in fold["babble_speakers"] and fold["babble_speakers"]
    for snr in ("20", "0"):
        per_fold = [np.mean([fold["noisy"][kind][snr]["ua"] for kind in fold["noisy"]]) for fold in folds]
        assert noise_summary["mean_over_types"][snr]["ua"]["mean"] == pytest.approx(np.mean(per_fold))
        assert noise_summary["by_type"]["white"][snr]["wa"]["mean"] == pytest.approx(np.mean([f["noisy"]["white"][snr]["wa"] for f in folds]))
    assert (output / "accuracy_vs_snr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((output / "folds" / folds[0]["fold"] / "model" / "config.json").read_text())
    assert saved["use_se_head"] is True


def test_noise_arguments_are_checked(corpus_dir, tmp_path, capsys):
    base = ["--dataset_name", str(corpus_dir), "--output_dir", str(tmp_path / "run"), *TINY_TRAIN_ARGS]
    with pytest.raises(ValueError, match="--eval_snr: an SNR must be a finite number of dB, got nan"):
        run_train([*base, "--eval_snr", "10", "nan"])
    with pytest.raises(SystemExit):
        run_train([*base, "--use_se_head", "true"])
    assert "--use_se_head learns from clean/noisy pairs: set --noise_augmentation_probability above 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--eval_noise: the noise type 'dataset' needs --noise_dataset"):
        run_train([*base, "--eval_snr", "5", "--eval_noise", "dataset"])
    with pytest.raises(ValueError, match=r"--noise_augmentation_types: unknown noise type 'rain'"):
        run_train([*base, "--noise_augmentation_probability", "0.5", "--noise_augmentation_types", "rain"])
    with pytest.raises(ValueError, match=r"two values LOW HIGH with LOW <= HIGH, got \[20.0, 0.0\]"):
        run_train([*base, "--noise_augmentation_snr", "20", "0"])


def test_a_finished_fold_tested_otherwise_is_not_mixed_into_a_noisy_run(finished_run, corpus_dir, tmp_path):
    output, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(output / "folds", copy / "folds")
    with pytest.raises(ValueError, match=r"speaker_spk1/results.json was tested in noise never, and this run asks for "
                       r"\{'white': \['10'\]\}"):
        run(corpus_dir, copy, "--folds", "0", "--eval_snr", "10", "--eval_noise", "white")


@pytest.mark.parametrize("argv", [[], ["--demo"], ["--demo", "true"], ["--output_dir", "elsewhere"],
                                  [str(REPO / "configs" / "demo.yaml")]])
def test_every_way_of_asking_for_the_demo_runs_the_same_demo(argv):
    _, data_args, _, protocol_args, training_args, _ = parse_arguments(argv)
    expected = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert data_args.demo is True and data_args.label_column == expected["label_column"] == "emotion"
    assert training_args.num_train_epochs == expected["num_train_epochs"] and protocol_args.protocol == "loso"
    assert training_args.output_dir == ("elsewhere" if "elsewhere" in argv else expected["output_dir"])


def test_folds_run_in_parallel_give_the_results_of_folds_run_one_after_another(corpus_dir, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the parallel folds get 1 thread each: the same arithmetic
    try:
        one_by_one = run(corpus_dir, tmp_path / "one_by_one", "--folds", "0", "1", "--final_model", "false")
        side_by_side = run(corpus_dir, tmp_path / "side_by_side", "--folds", "0", "1", "--final_model", "false",
                           "--parallel_folds", "2")
    finally:
        torch.set_num_threads(threads)
    assert side_by_side["folds"] == one_by_one["folds"]
    assert (tmp_path / "side_by_side" / "predictions.csv").read_text() == (tmp_path / "one_by_one" / "predictions.csv").read_text()
    for fold in ("speaker_spk1", "speaker_spk2"):
        log = (tmp_path / "side_by_side" / "folds" / fold / "train.log").read_text()
        assert "'train_runtime'" in log  # the Trainer's closing metrics, logged in the fold's process
        assert not (tmp_path / "one_by_one" / "folds" / fold / "train.log").exists()


def test_parallel_folds_refuse_callbacks_and_counts_below_one(corpus_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"Callbacks passed to main\(\) run in this process only: use --parallel_folds 1 with them\."):
        run(corpus_dir, tmp_path / "out", "--folds", "0", "1", "--final_model", "false", "--parallel_folds", "2",
            callbacks=[TrainerCallback()])
    with pytest.raises(SystemExit):
        parse_arguments(["--dataset_name", "x", "--parallel_folds", "0"])
    assert "--parallel_folds must be at least 1, got 0" in capsys.readouterr().err


def test_jobs_in_processes_return_their_results_log_their_output_and_name_a_failed_job(tmp_path):
    from msemoboost.training import run_in_processes
    from tiny import say_and_count_threads

    logs = {name: tmp_path / name / "job.log" for name in ("a", "b")}
    finished = []
    results = run_in_processes(say_and_count_threads, {"a": ("said in a",), "b": ("said in b",)}, 2, logs,
                               lambda name, result: finished.append((name, result)))
    share = max(1, torch.get_num_threads() // 2)
    assert results == {"a": share, "b": share} and sorted(finished) == [("a", share), ("b", share)]
    assert [logs[name].read_text() for name in ("a", "b")] == ["said in a\n", "said in b\n"]
    with pytest.raises(RuntimeError, match=r"b failed: ValueError: invalid literal for int\(\) with base 10: 'x'\nIts log: .*b/job\.log"):
        run_in_processes(int, {"b": ("x",)}, 1, logs)


def tiny_arguments_with(**overrides) -> list[str]:
    """TINY_TRAIN_ARGS with `overrides` added to its --model_config_overrides."""
    arguments = list(TINY_TRAIN_ARGS)
    position = arguments.index("--model_config_overrides") + 1
    arguments[position] = json.dumps({**json.loads(arguments[position]), **overrides})
    return arguments


def test_the_statistics_classifier_is_fitted_in_each_fold_and_its_weight_chosen_over_the_folds(corpus_dir, tmp_path):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from msemoboost.data import AudioCollator
    from msemoboost.reporting import mean_std, render_model_card
    from msemoboost.statistics_fusion import C_GRID

    arguments = tiny_arguments_with(mfcc_statistics=True, prosody_statistics=True, utterance_statistics_classifier=True,
                                    utterance_distribution_statistics=True, utterance_log_mel_statistics=True,
                                    utterance_statistics_weight=0.5)
    output = tmp_path / "out"
    run = ["--dataset_name", str(corpus_dir), "--output_dir", str(output), *arguments, "--folds", "0", "1",
           "--final_model", "false", "--statistics_weight_grid", "2", "0", "0.5"]
    summary = run_train(run)
    names = [fold["fold"] for fold in summary["folds"]]
    folds = {name: json.loads((output / "folds" / name / "results.json").read_text()) for name in names}
    for fold in folds.values():
        assert set(fold["network"]) == {"wa", "ua"} and set(fold["statistics_classifier"]) == {"wa", "ua", "c"}
        assert fold["statistics_classifier"]["c"] in C_GRID
    for part in ("network", "statistics_classifier"):
        assert summary[part]["ua"] == mean_std([folds[name][part]["ua"] for name in names])
    # The weight: chosen over the 2 folds from the grid, each fold scored at the other fold's best.
    choice = summary["statistics_weight"]
    assert choice["grid"] == [0.0, 0.5, 2.0] and set(choice["nested"]) == set(names)
    ua_by_weight = {weight: np.mean([choice["per_fold"][name][weight] for name in names]) for weight in ("0", "0.5", "2")}
    assert choice["ua_by_weight"] == pytest.approx(ua_by_weight, abs=1e-12)
    assert choice["weight"] == max((0.0, 0.5, 2.0), key=lambda weight: ua_by_weight[f"{weight:g}"])
    for name, other in zip(names, reversed(names)):
        assert choice["nested"][name] == max((0.0, 0.5, 2.0), key=lambda weight: choice["per_fold"][other][f"{weight:g}"])
        assert folds[name]["statistics_weight"] == choice["nested"][name]
        assert folds[name]["ua"] == choice["per_fold"][name][f"{choice['nested'][name]:g}"]
    assert summary["ua"] == mean_std([folds[name]["ua"] for name in names])
    assert summary["architecture"]["utterance_statistics_classifier"] is True
    assert summary["architecture"]["utterance_statistics_weight"] == choice["weight"]
    card = render_model_card(MODEL_CARD_TEMPLATE, summary, "corpus", None, "model")
    network, statistics = (summary[part]["ua"] for part in ("network", "statistics_classifier"))
    assert (f"each alone (UA, mean ± std over folds): the network\n{100 * network['mean']:.2f} ± {100 * network['std']:.2f}, "
            f"the\nstatistics classifier {100 * statistics['mean']:.2f} ± {100 * statistics['std']:.2f}.") in card
    assert summary["architecture"]["utterance_distribution_statistics"] is True
    assert summary["architecture"]["utterance_log_mel_statistics"] is True
    assert ("and a logistic regression on the whole utterance's statistics and the shape of their distributions "
            "(skewness, kurtosis, percentiles and slopes of the MFCC, pitch and energy) and 11 functionals of each of "
            "its log-mel bands (level, spread, percentiles, range, slope, shape and frame-to-frame change), fitted "
            "after training (its "
            "penalty chosen by cross-validation over the training speakers), whose log-probabilities, times "
            f"{choice['weight']:g} (the weight chosen by cross-validation over the folds; each fold's figures score it "
            "at the weight chosen on the other folds), are added to the network's") in card
    files = {Path(row["file_name"]).name: corpus_dir / row["file_name"] for row in read_csv(corpus_dir / "metadata.csv")}
    for name in names:
        # The saved fold model holds the fitted classifier and the fold's weight, and its fused predictions are the
        # fold's predictions.
        model = AutoModelForAudioClassification.from_pretrained(output / "folds" / name / "model").eval()
        assert model.statistics_classifier.weight.abs().sum() > 0
        assert model.config.utterance_statistics_weight == choice["nested"][name]
        predictions = read_csv(output / "folds" / name / "predictions.csv")
        rows = [{"audio": {"path": str(files[row["utterance_id"]]), "bytes": None}, "labels": 0} for row in predictions]
        batch = AudioCollator(AutoFeatureExtractor.from_pretrained(output / "folds" / name / "model"))(rows)
        with torch.no_grad():
            probabilities = model(batch["input_values"], batch["attention_mask"]).logits.softmax(-1)
        label_names = list(model.config.id2label.values())
        expected = torch.tensor([[float(row[label]) for label in label_names] for row in predictions])
        torch.testing.assert_close(probabilities, expected, rtol=0, atol=2e-6)
        alone = model.statistics_classifier(model.utterance_statistics(batch["input_values"], batch["attention_mask"]))
        truth = np.array([label_names.index(row["label"]) for row in predictions])
        recalls = [(alone.argmax(-1).numpy()[truth == label] == label).mean() for label in np.unique(truth)]
        assert folds[name]["statistics_classifier"]["ua"] == pytest.approx(np.mean(recalls), abs=1e-12)
        # Each part apart, as tested (the model's own weight was 0.5): the predictions are their sum at the fold's.
        parts = np.load(output / "folds" / name / "fusion_parts.npz")
        assert parts["utterance_statistics_weight"] == 0.5
        np.testing.assert_array_equal(parts["labels"], truth)
        torch.testing.assert_close(torch.from_numpy(parts["statistics_log_probabilities"]).float(), alone, rtol=0, atol=1e-5)
        fused = parts["network_logits"] + choice["nested"][name] * parts["statistics_log_probabilities"]
        # predictions.csv and the fold's model give them calibrated, at the temperature fitted on the other folds
        temperature = folds[name]["calibration"]["temperature"]
        assert model.config.calibration_temperature == temperature
        torch.testing.assert_close(torch.from_numpy(fused / temperature).float().softmax(-1), expected, rtol=0, atol=2e-6)
        network = parts["network_logits"].argmax(-1)
        recalls = [(network[truth == label] == label).mean() for label in np.unique(truth)]
        assert folds[name]["network"]["ua"] == pytest.approx(np.mean(recalls), abs=1e-12)
    # Resumed after its folds: they are read back and scored the same.
    (output / "results.json").unlink()
    assert run_train(run)["ua"] == summary["ua"]


def test_the_weight_for_recordings_without_a_group_is_chosen_over_the_folds_as_the_other_one(corpus_dir, tmp_path):
    from transformers import AutoModelForAudioClassification

    from msemoboost.reporting import MODEL_CARD_TEMPLATE, render_model_card

    arguments = tiny_arguments_with(mfcc_statistics=True, utterance_statistics_classifier=True)
    output = tmp_path / "out"
    summary = run_train(["--dataset_name", str(corpus_dir), "--output_dir", str(output), *arguments, "--folds", "0", "1",
                         "--speaker_normalization", "true", "--statistics_weight_grid", "0", "1", "4"])
    choice, names = summary["statistics_weight"], [fold["fold"] for fold in summary["folds"]]
    ungrouped = choice["ungrouped"]
    assert ungrouped["grid"] == [0.0, 1.0, 4.0] and set(ungrouped["nested"]) == set(names)
    for name, other in zip(names, reversed(names)):
        parts = dict(np.load(output / "folds" / name / "fusion_parts.npz"))
        fold = json.loads((output / "folds" / name / "results.json").read_text())
        weight = ungrouped["nested"][name]
        assert weight == max((0.0, 1.0, 4.0), key=lambda w: ungrouped["per_fold"][other][f"{w:g}"])
        fused = parts["network_logits"] + weight * parts["ungrouped_statistics_log_probabilities"]
        recalls = [(fused.argmax(-1)[parts["labels"] == label] == label).mean() for label in np.unique(parts["labels"])]
        assert fold["ungrouped"]["ua"] == pytest.approx(np.mean(recalls), abs=1e-12)
        assert fold["ungrouped"]["wa"] == pytest.approx((fused.argmax(-1) == parts["labels"]).mean(), abs=1e-12)
        assert fold["ungrouped"]["statistics_weight"] == weight
        assert fold["ua"] == choice["per_fold"][name][f"{choice['nested'][name]:g}"]  # the grouped figure stays the fold's
    model = AutoModelForAudioClassification.from_pretrained(output / "model")
    assert model.config.ungrouped_statistics_weight == ungrouped["weight"] == summary["architecture"]["ungrouped_statistics_weight"]
    assert model.config.utterance_statistics_weight == choice["weight"]
    card = render_model_card(MODEL_CARD_TEMPLATE, summary, "corpus", None, "model")
    assert (f"a recording without a group is classified by a second regression, fitted on the training data's "
            f"statistics, times {ungrouped['weight']:g})") in card.replace("\n", " ")
    alone = summary["ungrouped"]["ua"]
    assert (f"Each test recording given alone, without its speaker's other recordings (as `msemoboost predict` without "
            f"`--group_by`): UA {100 * alone['mean']:.2f} ± {100 * alone['std']:.2f}.") in card.replace("\n", " ")


def test_speaker_normalization_standardises_each_test_speaker_by_its_own_test_audio(corpus_dir, tmp_path):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from msemoboost.data import AudioCollator

    arguments = tiny_arguments_with(mfcc_statistics=True, utterance_statistics_classifier=True)
    output = tmp_path / "out"
    summary = run_train(["--dataset_name", str(corpus_dir), "--output_dir", str(output), *arguments, "--folds", "0",
                          "--final_model", "false", "--speaker_normalization", "true"])
    assert summary["architecture"]["speaker_normalization"] is True
    name = summary["folds"][0]["fold"]
    directory = output / "folds" / name
    model = AutoModelForAudioClassification.from_pretrained(directory / "model").eval()
    assert model.config.speaker_normalization is True
    predictions = read_csv(directory / "predictions.csv")
    assert {row["speaker"] for row in predictions} == set(summary["folds"][0]["test_speakers"]) and len(predictions) > 2
    files = {Path(row["file_name"]).name: corpus_dir / row["file_name"] for row in read_csv(corpus_dir / "metadata.csv")}
    rows = [{"audio": {"path": str(files[row["utterance_id"]]), "bytes": None}, "labels": 0} for row in predictions]
    batch = AudioCollator(AutoFeatureExtractor.from_pretrained(directory / "model"))(rows)
    expected = torch.tensor([[float(row[label]) for label in model.config.id2label.values()] for row in predictions])
    with torch.no_grad():
        # The one test speaker's utterances standardised by their own statistics: the fold's predictions.
        grouped = model(batch["input_values"], batch["attention_mask"], group_ids=torch.zeros(len(rows), dtype=torch.long))
        ungrouped = model(batch["input_values"], batch["attention_mask"])
    torch.testing.assert_close(grouped.logits.softmax(-1), expected, rtol=0, atol=2e-6)
    assert (ungrouped.logits.softmax(-1) - expected).abs().max() > 1e-3
    # Each recording alone is classified by the regression fitted without speaker normalisation, at its own weight,
    # and the fold reports how the recordings do so.
    assert model.config.ungrouped_statistics_weight == model.config.utterance_statistics_weight
    assert model.statistics_classifier.ungrouped and model.statistics_classifier.ungrouped_weight.abs().sum() > 0
    names = list(model.config.id2label.values())
    alone = ungrouped.logits.argmax(-1).numpy()
    truth = np.array([names.index(row["label"]) for row in predictions])
    recalls = [(alone[truth == label] == label).mean() for label in np.unique(truth)]
    fold = json.loads((directory / "results.json").read_text())
    assert fold["ungrouped"]["ua"] == pytest.approx(np.mean(recalls), abs=1e-12)
    assert summary["ungrouped"]["ua"]["mean"] == fold["ungrouped"]["ua"]
