"""Quantisation-aware fine-tuning (`msemoboost export ... --quantize_feature_encoder --finetune DATASET`): the
fine-tuning data in the model's label space, the fine-tuning on the int8 feature encoder's ranges, the export of the
fine-tuned model, and the usage errors."""

import csv
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from msemoboost import MSEmoBoostForSequenceClassification
from msemoboost import quantization_aware
from msemoboost.cli import main
from msemoboost.export import export
from msemoboost.int8_simulation import int8_feature_encoder
from msemoboost.onnx_runtime import INT8_NAME, ONNXClassifier
from msemoboost.quantization_aware import FROZEN, QuantizationAwareFineTuning, training_corpus
from onnx_models import FEWER_MFCC_FRAMES, LABELS, RECIPE, pytorch_logits, save_model
from tiny import tiny_config

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def emotions(corpus_dir: Path) -> dict[str, str]:
    with open(corpus_dir / "metadata.csv", newline="") as file:
        return {Path(row["file_name"]).name: row["emotion"] for row in csv.DictReader(file)}


def test_the_fine_tuning_data_takes_the_model_s_label_order_and_leaves_other_classes_out(corpus_dir, caplog):
    model_labels = ["sad", "neutral", "happy"]  # not the data's sorted order, and without "angry"
    config = tiny_config(id2label=dict(enumerate(model_labels)), label2id={l: i for i, l in enumerate(model_labels)})
    with caplog.at_level(logging.WARNING, logger="msemoboost.quantization_aware"):
        corpus = training_corpus(QuantizationAwareFineTuning(str(corpus_dir), label_column="emotion"), config)
    truth = emotions(corpus_dir)
    angry = sum(emotion == "angry" for emotion in truth.values())
    assert angry == 24 and len(corpus.dataset) == len(truth) - angry == 48
    assert corpus.label_names == model_labels
    assert [model_labels[label] for label in corpus.dataset["labels"]] == [truth[u] for u in corpus.dataset["utterance_id"]]
    assert ("Leaving out the fine-tuning utterances of classes the model does not have: angry (24)."
            in caplog.messages)


def test_the_fine_tuning_data_errors(corpus_dir):
    other = tiny_config(id2label={0: "calm", 1: "bored"}, label2id={"calm": 0, "bored": 1})
    with pytest.raises(ValueError, match=r"^None of the fine-tuning data's labels \(angry, happy, neutral, sad\) is "
                                         r"one of the model's \(calm, bored\): is --finetune_label_column the emotion "
                                         r"column\?$"):
        training_corpus(QuantizationAwareFineTuning(str(corpus_dir), label_column="emotion"), other)
    with pytest.raises(ValueError, match=r"^--finetune_split 'test' is not a split of the fine-tuning data: train\.$"):
        training_corpus(QuantizationAwareFineTuning(str(corpus_dir), label_column="emotion", split="test"),
                        tiny_config(id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)}))
    with pytest.raises(ValueError, match=r"^--finetune trains a single-label classifier; this model's problem_type is "
                                         r"'regression'\.$"):
        training_corpus(QuantizationAwareFineTuning(str(corpus_dir), label_column="emotion"),
                        tiny_config(num_labels=1, problem_type="regression"))
    with pytest.raises(ValueError, match=r"^Column 'label' \(--label_column\) is not in split 'train' of "):
        training_corpus(QuantizationAwareFineTuning(str(corpus_dir)),
                        tiny_config(id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)}))


def test_finetune_trains_on_the_int8_feature_encoder_and_exports_the_fine_tuned_model(
        corpus_dir, emodb, emodb_utterances, tmp_path, monkeypatch):
    model_dir = save_model(tmp_path / "model", **RECIPE, **FEWER_MFCC_FRAMES, mfcc_statistics=True,
                           prosody_statistics=True, utterance_statistics_classifier=True)
    simulated = []  # the int8 ranges that the fine-tuning ran with
    fine_tune = quantization_aware.fine_tune_for_int8
    monkeypatch.setattr(quantization_aware, "fine_tune_for_int8", lambda model, extractor, convolutions, settings: (
        simulated.append(convolutions) or fine_tune(model, extractor, convolutions, settings)))
    calibration = [str(path) for path in sorted((emodb / "audio").glob("*.flac"))[1::100]]  # not the test utterances
    output = tmp_path / "onnx"
    assert main(["export", "--model", str(model_dir), "--output_dir", str(output), "--quantize", "int8", "--calibration", *calibration,
                 "--quantize_feature_encoder", "--finetune", str(corpus_dir), "--finetune_label_column", "emotion",
                 "--finetune_epochs", "1", "--seed", "3"]) == 0
    record = json.loads((output / "export.json").read_text())["quantization_aware_fine_tuning"]
    losses = record.pop("epoch_losses")
    assert record == {"dataset": str(corpus_dir), "label_column": "emotion", "split": None, "epochs": 1.0,
                      "learning_rate": 1e-4, "batch_size": 8, "seed": 3, "utterances": 72}
    assert len(losses) == 1 and 0 < losses[0] < 2 * math.log(len(LABELS))

    # The output folder is the fine-tuned model: the feature encoder and the statistics classifier as they were,
    # the rest trained.
    original = MSEmoBoostForSequenceClassification.from_pretrained(model_dir).state_dict()
    tuned = MSEmoBoostForSequenceClassification.from_pretrained(output).state_dict()
    assert tuned.keys() == original.keys()
    frozen = [name for name in original if any(part in "." + name for part in FROZEN)]
    assert any("conv_layers" in name for name in frozen) and any("statistics_classifier" in name for name in frozen)
    for name in frozen:
        torch.testing.assert_close(tuned[name], original[name], rtol=0, atol=0, msg=name)
    changed = {name for name in original if name not in frozen and not torch.equal(tuned[name], original[name])}
    assert {"classifier.weight", "msemoboost.backbone.encoder.layers.0.attention.q_proj.weight"} <= changed

    # Its int8 graph's feature encoder has the ranges the fine-tuning simulated (frozen, calibrated on the same
    # recordings), and its fp32 graph is the fine-tuned model.
    model = MSEmoBoostForSequenceClassification.from_pretrained(output)
    exported = int8_feature_encoder(output / INT8_NAME, model)
    assert len(simulated) == 1 and len(simulated[0]) == len(exported) == 7
    for before, after in zip(simulated[0], exported):
        assert {k: v for k, v in before.items() if "scale" in k or "zero" in k} == {
            k: v for k, v in after.items() if "scale" in k or "zero" in k}
        torch.testing.assert_close(after["weight"], before["weight"], rtol=0, atol=0)
    logits, _ = ONNXClassifier(output)(emodb_utterances)
    np.testing.assert_allclose(logits, pytorch_logits(output, emodb_utterances), atol=1e-4)
    assert np.abs(logits - pytorch_logits(model_dir, emodb_utterances)).max() > 1e-3  # not the original model


def test_finetune_usage_errors(tmp_path, capsys):
    model_dir = save_model(tmp_path / "model")
    with pytest.raises(SystemExit):
        main(["export", "--model", str(model_dir), "--output_dir", str(tmp_path / "out"), "--quantize", "int8", "--calibration",
              str(model_dir), "--finetune", str(tmp_path)])
    assert ("--finetune trains the model on the int8 feature encoder's output: it needs --quantize int8, --calibration "
            "and --quantize_feature_encoder") in capsys.readouterr().err
    with pytest.raises(ValueError, match=re.escape(
            "--finetune trains the model on the int8 feature encoder's output: it needs --quantize int8, --calibration "
            "and --quantize_feature_encoder.")):
        export(model_dir, tmp_path / "out", quantize="int8", calibration=[np.zeros(16000, np.float32)],
               fine_tuning=QuantizationAwareFineTuning(str(tmp_path)))
    assert not (tmp_path / "out").exists()
