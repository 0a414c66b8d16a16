"""A saved checkpoint answers transformers' Trainer, pipeline and helpers exactly as transformers' own audio classifier
(`Wav2Vec2ForSequenceClassification`) does: the stock `Trainer` evaluates it with a loss and metrics."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForSequenceClassification,
    pipeline,
)
from transformers.utils import can_return_loss, find_labels

from msemoboost import MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification
from tiny import TINY_BACKBONE, speech_like, tiny_model

LABELS = ["anger", "boredom", "neutral", "sadness"]
ID2LABEL = dict(enumerate(LABELS))
LABEL2ID = {label: index for index, label in ID2LABEL.items()}
# Lengths in samples: one and two 3 s segments, padded together in one batch.
LENGTHS = (20_000, 52_000, 70_000, 33_000, 48_000)


def wav2vec2_classifier() -> Wav2Vec2ForSequenceClassification:
    torch.manual_seed(0)
    config = Wav2Vec2Config(**TINY_BACKBONE, num_labels=len(LABELS), id2label=ID2LABEL, label2id=LABEL2ID)
    return Wav2Vec2ForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def remote_code_checkpoint(tmp_path_factory):
    """A tiny MS-EmoBoost saved with its code, as `train.py` and `push_to_hub` write it."""
    directory = tmp_path_factory.mktemp("checkpoint")
    tiny_model(id2label=ID2LABEL, label2id=LABEL2ID).save_pretrained(directory)
    MSEmoBoostFeatureExtractor(return_attention_mask=True).save_pretrained(directory)
    return directory


# Run in a fresh process, where msemoboost is not imported: the model class then comes from the checkpoint's own
# code, as a Hub user gets it (in this process the registered local class would be used).
STOCK_TRAINER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from datasets import Dataset
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, Trainer, TrainingArguments

    directory, output_dir, lengths, labels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    extractor = AutoFeatureExtractor.from_pretrained(directory, trust_remote_code=True)
    model = AutoModelForAudioClassification.from_pretrained(directory, trust_remote_code=True).eval()
    rng = np.random.default_rng(0)
    audio = [(0.1 * rng.standard_normal(length)).astype(np.float32) for length in lengths]
    rows = [{"input_values": extractor(waveform, sampling_rate=16000)["input_values"][0], "labels": label}
            for waveform, label in zip(audio, labels)]

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    # No label_names, no data collator: what an unmodified Trainer script gives (the feature extractor pads).
    args = TrainingArguments(output_dir, per_device_eval_batch_size=len(lengths), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, eval_dataset=Dataset.from_list(rows), processing_class=extractor,
                      compute_metrics=accuracy)
    metrics = trainer.evaluate()
    inputs = extractor(audio, sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        own = model(**inputs, labels=torch.tensor(labels))
    print(json.dumps({
        "metrics": metrics,
        "label_names": trainer.label_names,
        "own_loss": own.loss.item(),
        "own_predictions": own.logits.argmax(-1).tolist(),
        "model_module": type(model).__module__,
        "msemoboost_imported": any(name.split(".")[0] == "msemoboost" for name in sys.modules),
    }))
    """
)


def test_stock_trainer_evaluates_a_remote_code_checkpoint_with_its_loss_and_metrics(remote_code_checkpoint, tmp_path):
    labels = [0, 3, 1, 2, 3]
    script = tmp_path / "evaluate.py"
    script.write_text(STOCK_TRAINER)
    result = subprocess.run(
        [sys.executable, str(script), str(remote_code_checkpoint), str(tmp_path / "out"), json.dumps(LENGTHS),
         json.dumps(labels)],
        cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout.strip().splitlines()[-1])

    assert evaluated["msemoboost_imported"] is False
    assert evaluated["model_module"].startswith("transformers_modules.")
    assert evaluated["label_names"] == ["labels"]
    assert evaluated["metrics"]["eval_loss"] == pytest.approx(evaluated["own_loss"], rel=1e-6)
    wanted = float(np.mean(np.array(evaluated["own_predictions"]) == np.array(labels)))
    assert evaluated["metrics"]["eval_accuracy"] == wanted


@pytest.mark.parametrize("model_class", [MSEmoBoostForSequenceClassification, Wav2Vec2ForSequenceClassification])
def test_trainer_helpers_find_only_labels_and_no_loss_flag(model_class):
    # Trainer takes every forward argument whose name holds "label" for a label; a batch lacking one is unlabelled.
    assert find_labels(model_class) == ["labels"]
    assert can_return_loss(model_class) is False
    assert model_class.main_input_name == "input_values"
    assert model_class._keys_to_ignore_on_save is None


@pytest.mark.parametrize("extractor_class", [MSEmoBoostFeatureExtractor, Wav2Vec2FeatureExtractor])
def test_feature_extractor_gives_the_model_inputs_it_names(extractor_class):
    extractor = extractor_class(return_attention_mask=True)
    assert extractor.model_input_names == ["input_values", "attention_mask"]
    inputs = extractor([speech_like(16_000), speech_like(24_000)], sampling_rate=16000, padding=True, return_tensors="pt")
    assert list(inputs) == extractor.model_input_names
    assert inputs["attention_mask"].sum(-1).tolist() == [16_000, 24_000]


@pytest.mark.parametrize("make_model", [lambda: tiny_model(id2label=ID2LABEL, label2id=LABEL2ID), wav2vec2_classifier],
                         ids=["msemoboost", "wav2vec2"])
def test_pipeline_scores_are_the_softmax_of_the_model_logits(make_model):
    model = make_model()
    extractor = MSEmoBoostFeatureExtractor() if isinstance(model, MSEmoBoostForSequenceClassification) else Wav2Vec2FeatureExtractor()
    audio = speech_like(70_000)
    with torch.no_grad():
        probabilities = model(**extractor(audio, sampling_rate=16000, return_tensors="pt")).logits[0].softmax(-1)

    predictions = pipeline("audio-classification", model=model, feature_extractor=extractor)(audio, top_k=None)

    order = probabilities.argsort(descending=True)
    assert [item["label"] for item in predictions] == [LABELS[index] for index in order]
    scores = torch.tensor([item["score"] for item in predictions])
    torch.testing.assert_close(scores, probabilities[order], rtol=0, atol=1e-6)
