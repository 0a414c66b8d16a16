"""Quantisation-aware fine-tuning for the int8 feature encoder (`msemoboost export ... --quantize_feature_encoder
--finetune DATASET`).

With every convolution in int8 (`--quantize_feature_encoder`), the exported graph runs about 2.2× as fast as torch
fp32 on a CPU, but the backbone's convolutional feature encoder, with one uint8 range per activation, hands the
rest of the network slightly different frames, and a trained model loses accuracy on them (the CPU preset's 8 fold
models: the mean of the folds' UA 78.1 → 76.5). The fix is to let the rest of the network see those frames in
training:

1. export the model and quantise it with `--quantize_feature_encoder`, which fixes each feature-encoder
   convolution's int8 weight and its input and output ranges ([`~msemoboost.int8_simulation.int8_feature_encoder`] reads
   them back);
2. fine-tune the model for a few epochs with its feature encoder computing as those `QLinearConv`s do
   ([`~msemoboost.int8_simulation.simulated_int8_feature_encoder`]). The feature encoder itself stays frozen, so a new
   calibration on the same recordings gives it the same ranges again; so does the fitted statistics classifier
   (`config.utterance_statistics_classifier`), which gradients never train. Everything else trains;
3. export the fine-tuned model.

Step 2 is [`fine_tune_for_int8`], with the `Trainer`; [`~msemoboost.export.export`] runs the three steps. Fine-tune
on the training data of the model (or speech like the deployment's), never on a test set.
"""

import logging
import tempfile
from dataclasses import dataclass

import numpy as np
from transformers import Trainer, TrainingArguments

from .data import AudioCollator, EmotionCorpus, load_corpus
from .int8_simulation import FEATURE_ENCODER, feature_encoder_layers, simulated_int8_feature_encoder

logger = logging.getLogger(__name__)

# The parameters that the fine-tuning leaves as they are: the backbone's convolutional feature encoder (its int8
# ranges were calibrated on it) and the statistics classifier (fitted in closed form, never by gradient).
FROZEN = (FEATURE_ENCODER, "statistics_classifier.")


@dataclass
class QuantizationAwareFineTuning:
    """What [`fine_tune_for_int8`] trains on, and how.

    Args:
        dataset: a dataset id or local path that `datasets` loads (an `audiofolder` included), or an
            [`~msemoboost.data.EmotionCorpus`] already loaded (e.g. one fold's training speakers).
        label_column: the column of the emotion labels; its names must be the model's (`config.id2label`).
            Utterances of classes the model does not have are left out, with a warning.
        audio_column: the audio column.
        split: only this split of the dataset (default: every split).
        epochs, learning_rate, batch_size, seed: the `Trainer`'s; AdamW at a constant learning rate, no weight decay.
    """

    dataset: "str | EmotionCorpus"
    label_column: str = "label"
    audio_column: str = "audio"
    split: str | None = None
    epochs: float = 3.0
    learning_rate: float = 1e-4
    batch_size: int = 8
    seed: int = 0

    def describe(self) -> dict:
        """The settings as `export.json` records them."""
        dataset = self.dataset if isinstance(self.dataset, str) else f"{len(self.dataset.dataset)} utterances given"
        return {"dataset": dataset, "label_column": self.label_column, "split": self.split, "epochs": self.epochs,
                "learning_rate": self.learning_rate, "batch_size": self.batch_size, "seed": self.seed}


def training_corpus(fine_tuning: QuantizationAwareFineTuning, config) -> EmotionCorpus:
    """The fine-tuning utterances, their `labels` the model's class indices."""
    if config.problem_type not in (None, "single_label_classification"):
        raise ValueError(f"--finetune trains a single-label classifier; this model's problem_type is "
                         f"{config.problem_type!r}.")
    corpus = fine_tuning.dataset
    if isinstance(corpus, str):
        corpus = load_corpus(corpus, config.sampling_rate, config.min_input_samples, audio_column=fine_tuning.audio_column,
                             label_column=fine_tuning.label_column, speaker_column=None)
    dataset = corpus.dataset
    if fine_tuning.split is not None:
        splits = sorted(set(dataset["split"]))
        if fine_tuning.split not in splits:
            raise ValueError(f"--finetune_split {fine_tuning.split!r} is not a split of the fine-tuning data: "
                             f"{', '.join(splits)}.")
        dataset = dataset.filter(lambda row: row["split"] == fine_tuning.split, desc="Keeping the split")
    model_labels = [config.id2label[index] for index in range(config.num_labels)]
    counts = np.bincount(np.asarray(dataset["labels"], dtype=int), minlength=len(corpus.label_names))
    unknown = {name: int(count) for name, count in zip(corpus.label_names, counts) if count and name not in model_labels}
    if unknown and len(unknown) == sum(1 for count in counts if count):
        raise ValueError(f"None of the fine-tuning data's labels ({', '.join(unknown)}) is one of the model's "
                         f"({', '.join(model_labels)}): is --finetune_label_column the emotion column?")
    if unknown:
        logger.warning(f"Leaving out the fine-tuning utterances of classes the model does not have: "
                       f"{', '.join(f'{name} ({count})' for name, count in unknown.items())}.")
    index = {name: model_labels.index(name) for name in corpus.label_names if name in model_labels}
    known = [corpus.label_names[label] in index for label in dataset["labels"]]
    dataset = dataset.select(np.flatnonzero(known)).map(
        lambda row: {"labels": index[corpus.label_names[row["labels"]]]}, desc="Mapping labels to the model's")
    return EmotionCorpus(dataset=dataset, label_names=model_labels, sampling_rate=corpus.sampling_rate)


def fine_tune_for_int8(model, feature_extractor, convolutions: list[dict], fine_tuning: QuantizationAwareFineTuning) -> dict:
    """Fine-tunes `model` in place with its feature encoder computing as the int8 graph's `convolutions` do (read back
    with [`~msemoboost.int8_simulation.int8_feature_encoder`]), its feature encoder and statistics classifier frozen. Returns
    what `export.json` records: the settings, the number of utterances and each epoch's mean training loss."""
    feature_encoder_layers(model)  # a clear error for a model without a backbone
    corpus = training_corpus(fine_tuning, model.config)
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    encoder = model.msemoboost.backbone.feature_extractor
    encoder_trains = encoder._requires_grad
    encoder._freeze_parameters()  # as model.freeze_feature_encoder(): no backward pass through it at all
    for name, parameter in model.named_parameters():
        parameter.requires_grad = not any(part in name for part in FROZEN)
    with tempfile.TemporaryDirectory(prefix="msemoboost-finetune-") as work:
        arguments = TrainingArguments(
            output_dir=work, num_train_epochs=fine_tuning.epochs, learning_rate=fine_tuning.learning_rate,
            per_device_train_batch_size=fine_tuning.batch_size, lr_scheduler_type="constant", weight_decay=0.0,
            logging_strategy="epoch", save_strategy="no", report_to="none", seed=fine_tuning.seed,
            remove_unused_columns=False, dataloader_pin_memory=False)
        trainer = Trainer(model=model, args=arguments, train_dataset=corpus.dataset,
                          data_collator=AudioCollator(feature_extractor))
        try:
            with simulated_int8_feature_encoder(model, convolutions):
                trainer.train()
        finally:
            encoder._requires_grad = encoder_trains
            for name, parameter in model.named_parameters():
                parameter.requires_grad = trainable[name]
    model.cpu().eval()
    return {**fine_tuning.describe(), "utterances": len(corpus.dataset),
            "epoch_losses": [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]}
