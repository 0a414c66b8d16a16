"""The recipe options: waveform augmentation, class-balanced loss, per-part learning rates, transfer."""

import json

import numpy as np
import pytest
import torch
from tiny import speech_like, tiny_config, tiny_model
from transformers import TrainingArguments, set_seed

from msemoboost import MSEmoBoostForSequenceClassification
from msemoboost.augmentation import BatchMixup, Chain, TelephoneAugmentation, WaveformAugmentation, telephone_band
from msemoboost.training import MSEmoBoostTrainer, class_balanced_weights, load_for_transfer, model_part


def test_speed_perturbation_resamples_by_the_factor():
    augmentation = WaveformAugmentation(16000, speed_range=(0.9, 1.1))
    waveform = speech_like(16_000)
    faster = augmentation.change_speed(waveform, 1.25)
    assert len(faster) == 12_800
    # y[n] = x(1.25 n): every 4th output sample is an input sample exactly (up to the end-point stretch).
    positions = np.arange(12_800) * (15_999 / 12_799)
    np.testing.assert_allclose(faster, np.interp(positions, np.arange(16_000), waveform), rtol=0, atol=1e-6)
    assert len(augmentation.change_speed(waveform, 0.8)) == 20_000


def test_augmentation_is_seeded_and_masks_spans_to_zero():
    waveform = speech_like(32_000) + 0.5  # no sample is 0 before masking
    first = WaveformAugmentation(16000, (0.9, 1.1), 1.0, num_time_masks=2, time_mask_max_s=0.1, seed=3)
    second = WaveformAugmentation(16000, (0.9, 1.1), 1.0, num_time_masks=2, time_mask_max_s=0.1, seed=3)
    outputs = [first(waveform), second(waveform)]
    assert np.array_equal(outputs[0], outputs[1])
    assert round(32_000 / 1.1) <= len(outputs[0]) <= round(32_000 / 0.9)
    assert 0 < (outputs[0] == 0).sum() <= 2 * 1600
    unchanged = WaveformAugmentation(16000, None, num_time_masks=0)
    assert not unchanged.is_active and np.array_equal(unchanged(waveform), waveform)


def test_chain_applies_its_steps_in_order():
    chain = Chain(lambda w, row: w * 2, None, lambda w, row: w + 1)
    assert chain(np.ones(3), {}).tolist() == [3.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(speed_range=(1.1, 0.9)), r"0 < LOW <= HIGH, e.g. 0.9 1.1; got \[1.1, 0.9\]"),
        (dict(speed_probability=1.5), r"probability must be in \[0, 1\], got 1.5"),
        (dict(num_time_masks=-1), "num_time_masks >= 0"),
    ],
)
def test_bad_augmentation_settings_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        WaveformAugmentation(16000, **arguments)



def tone(frequency: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(int(16000 * seconds)) / 16000)).astype(np.float32)


def level(waveform: np.ndarray) -> float:
    """RMS of the second half (past the filters' transients)."""
    return float(np.sqrt(np.mean(waveform[len(waveform) // 2 :] ** 2)))


def test_the_telephone_channel_passes_the_voice_band_and_removes_what_is_outside_it():
    for frequency in (500.0, 1000.0, 3000.0):  # in the band: the level kept within 1 dB (μ-law's 8 bits add noise)
        assert 20 * np.log10(level(telephone_band(tone(frequency), 16000)) / level(tone(frequency))) == pytest.approx(0, abs=1)
    assert level(telephone_band(tone(100.0), 16000)) < 0.1 * level(tone(100.0))  # below 300 Hz: > 20 dB down
    assert level(telephone_band(tone(5000.0), 16000)) < 0.01 * level(tone(5000.0))  # above 4 kHz: gone
    assert len(telephone_band(tone(1000.0, 0.3337), 16000)) == len(tone(1000.0, 0.3337))
    # μ-law, 8 bits: a quiet tone keeps a better signal-to-quantisation ratio than linear 8 bits would give it
    quiet = tone(1000.0, amplitude=0.01)
    through = telephone_band(quiet, 16000)
    assert 20 * np.log10(level(through) / level(quiet)) == pytest.approx(0, abs=1)


def test_telephone_augmentation_applies_the_channel_with_its_probability():
    waveform = speech_like(16000)
    assert TelephoneAugmentation(16000, 0.0)(waveform) is waveform
    np.testing.assert_array_equal(TelephoneAugmentation(16000, 1.0)(waveform), telephone_band(waveform, 16000))
    augmentation = TelephoneAugmentation(16000, 0.5, seed=3)
    changed = [augmentation(waveform) is not waveform for _ in range(200)]
    assert 70 < sum(changed) < 130
    with pytest.raises(ValueError, match="--telephone_augmentation is a probability per utterance, from 0 to 1; got 1.5"):
        TelephoneAugmentation(16000, 1.5)


def test_mixup_mixes_waveforms_masks_and_labels_with_one_seeded_draw():
    values = torch.randn(3, 10)
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7])
    class_mask = torch.tensor([[True, False, True, True], [True] * 4, [False, True, True, False]])  # per corpus
    batch = {"input_values": values * mask, "attention_mask": mask, "labels": torch.tensor([0, 2, 2]),
             "clean_input_values": values, "class_mask": class_mask}
    mixed = BatchMixup(0.4, num_labels=4, seed=5)(batch)
    rng = np.random.default_rng(5)  # the draws in their order: the weight, then the permutation
    weight, permutation = rng.beta(0.4, 0.4), torch.from_numpy(rng.permutation(3))
    assert not torch.equal(permutation, torch.arange(3))  # this seed pairs utterances with others
    torch.testing.assert_close(mixed["input_values"], weight * values * mask + (1 - weight) * (values * mask)[permutation])
    torch.testing.assert_close(mixed["clean_input_values"], weight * values + (1 - weight) * values[permutation])
    assert torch.equal(mixed["attention_mask"], torch.maximum(mask, mask[permutation]))
    assert torch.equal(mixed["class_mask"], class_mask | class_mask[permutation])  # both utterances' classes
    one_hot = torch.eye(4)[[0, 2, 2]]
    torch.testing.assert_close(mixed["labels"], weight * one_hot + (1 - weight) * one_hot[permutation])
    assert torch.equal(batch["labels"], torch.tensor([0, 2, 2]))  # the batch given is left as it was
    again = BatchMixup(0.4, num_labels=4, seed=5)(batch)
    assert all(torch.equal(again[key], mixed[key]) for key in mixed)
    with pytest.raises(ValueError, match=r"^mixup needs alpha > 0 \(0 turns it off\), got 0.$"):
        BatchMixup(0, num_labels=4)
    with pytest.raises(ValueError, match=r"^mixup mixes class indices of shape \(batch_size,\), got shape \(3, 4\)"):
        BatchMixup(0.4, num_labels=4)({**batch, "labels": mixed["labels"]})


def test_trainer_divides_each_models_loss_by_the_accumulation_steps(tmp_path):
    from msemoboost.intensity import MSEmoBoostIntensityPreTrainedModel
    from msemoboost.pretraining import MSEmoBoostForPretraining

    # forward takes **kwargs, so without accepts_loss_kwargs = False the Trainer would take each per-batch mean loss
    # for one already normalised over the accumulated batch, and sum the micro-batches' gradients.
    assert MSEmoBoostIntensityPreTrainedModel.accepts_loss_kwargs is False
    assert MSEmoBoostForPretraining.accepts_loss_kwargs is False
    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), gradient_accumulation_steps=4, report_to="none", use_cpu=True)
    trainer = MSEmoBoostTrainer(model=model, args=args)
    assert trainer.model_accepts_loss_kwargs is False
    inputs = {"input_values": torch.from_numpy(np.stack([speech_like(20_000), speech_like(20_000, 1)])),
              "labels": torch.tensor([0, 3])}
    trainer.current_gradient_accumulation_steps = 4
    set_seed(0)  # the same dropout and SpecAugment masks in both
    loss = trainer.training_step(model, dict(inputs), num_items_in_batch=torch.tensor(2))
    set_seed(0)
    expected = model.train()(**inputs).loss / 4
    torch.testing.assert_close(loss, expected.detach())


def test_class_balanced_weights_are_inverse_frequencies():
    labels = np.array([0] * 6 + [1] * 3 + [3] * 1)
    weights = class_balanced_weights(labels, 4)
    assert weights == pytest.approx([10 / 18, 10 / 9, 0.0, 10 / 3])
    # Every present class carries the same total weight: count x weight = 10 / 3.
    assert [count * weight for count, weight in zip([6, 3, 0, 1], weights)] == pytest.approx([10 / 3, 10 / 3, 0, 10 / 3])


def test_each_part_trains_at_its_own_learning_rate(tmp_path):
    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, report_to="none", use_cpu=True)
    trainer = MSEmoBoostTrainer(model=model, args=args, part_learning_rates={"backbone": 1e-4, "guidance": 5e-4, "head": None})
    optimizer = trainer.create_optimizer()
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    expected = {"backbone": 1e-4, "guidance": 5e-4, "head": 1e-3}
    for name, parameter in model.named_parameters():
        assert rate[id(parameter)] == expected[model_part(name)], name
    assert decay[id(model.classifier.weight)] == 0.1 and decay[id(model.classifier.bias)] == 0.0
    assert len(rate) == sum(1 for p in model.parameters() if p.requires_grad)
    assert {model_part(name) for name, _ in model.named_parameters()} == {"backbone", "guidance", "head"}


def test_transfer_keeps_everything_but_the_rows_of_unknown_labels(tmp_path):
    source = MSEmoBoostForSequenceClassification(tiny_config(id2label={0: "anger", 1: "calm", 2: "sadness", 3: "neutral"},
                                                              label2id={"anger": 0, "calm": 1, "sadness": 2, "neutral": 3}))
    source.save_pretrained(tmp_path)
    model = load_for_transfer(str(tmp_path), ["anger", "boredom", "neutral"], class_weights=[1.0, 2.0, 1.0])
    assert model.config.id2label == {0: "anger", 1: "boredom", 2: "neutral"} and model.config.num_labels == 3
    assert model.config.class_weights == [1.0, 2.0, 1.0]
    assert torch.equal(model.classifier.weight[0], source.classifier.weight[0])
    assert torch.equal(model.classifier.weight[2], source.classifier.weight[3])
    assert torch.equal(model.classifier.bias[2], source.classifier.bias[3])
    assert not any(torch.equal(model.classifier.weight[1], row) for row in source.classifier.weight)
    source_state = source.msemoboost.state_dict()
    for name, value in model.msemoboost.state_dict().items():
        assert torch.equal(value, source_state[name]), name
    inputs = {"input_values": torch.from_numpy(speech_like(20_000))[None]}
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 3)


def test_checkpoint_averaging_keeps_the_mean_of_the_last_epochs_weights(tmp_path):
    from transformers import TrainerControl, TrainerState

    from msemoboost.training import CheckpointAveraging

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=4, report_to="none")
    state, control = TrainerState(), TrainerControl()
    averaging = CheckpointAveraging(last_epochs=3)
    averaging.on_train_begin(args, state, control)
    for epoch in range(1, 5):  # the weights after epoch e are all e; batch norm counts e batches
        with torch.no_grad():
            for value in model.state_dict().values():
                value.fill_(epoch)
        state.epoch = float(epoch)
        averaging.on_epoch_end(args, state, control, model=model)
    averaging.on_train_end(args, state, control, model=model)
    averaged = model.state_dict()
    assert averaged["0.weight"].tolist() == [[3.0, 3.0], [3.0, 3.0]]  # (2 + 3 + 4) / 3
    assert averaged["1.running_var"].tolist() == [3.0, 3.0]
    assert averaged["1.num_batches_tracked"].item() == 4  # an integer buffer keeps its last value
    assert state.log_history[-1]["averaged_epochs"] == [2, 3, 4]


def test_checkpoint_averaging_resumed_from_a_checkpoint_averages_the_epochs_of_a_run_never_stopped(tmp_path):
    from safetensors import safe_open
    from transformers import Trainer

    from msemoboost.training import AVERAGE_FILE, CheckpointAveraging

    class Regression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, x, labels):
            return {"loss": (self.linear(x)[:, 0] - labels).square().mean()}

    generator = torch.Generator().manual_seed(0)
    data = [{"x": x, "labels": x.sum() + 1} for x in torch.randn(16, 2, generator=generator)]

    def train(resume: str | None = None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = Regression()
        args = TrainingArguments(output_dir=str(tmp_path / "run"), num_train_epochs=4, per_device_train_batch_size=4,
                                 learning_rate=0.05, save_strategy="epoch", report_to="none", use_cpu=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[CheckpointAveraging(3)])
        trainer.train(resume_from_checkpoint=resume)
        assert [entry["averaged_epochs"] for entry in trainer.state.log_history if "averaged_epochs" in entry] == [[2, 3, 4]]
        return {name: value.clone() for name, value in model.state_dict().items()}

    never_stopped = train()
    for checkpoint, epochs in (("checkpoint-4", []), ("checkpoint-8", [2]), ("checkpoint-12", [2, 3])):
        with safe_open(tmp_path / "run" / checkpoint / AVERAGE_FILE, framework="pt") as saved:
            assert json.loads(saved.metadata()["epochs"]) == epochs
            assert sorted(saved.keys()) == ([] if not epochs else ["linear.bias", "linear.weight"])
    for resumed_at in ("checkpoint-8", "checkpoint-12"):  # after epoch 2 (one epoch summed) and epoch 3 (two)
        resumed = train(str(tmp_path / "run" / resumed_at))
        assert all(torch.equal(resumed[name], never_stopped[name]) for name in never_stopped), resumed_at


def test_checkpoint_averaging_refuses_what_it_cannot_average(tmp_path):
    from transformers import TrainerControl, TrainerState

    from msemoboost.training import CheckpointAveraging

    with pytest.raises(ValueError, match=r"^Checkpoint averaging needs at least 2 epochs to average, got 1\.$"):
        CheckpointAveraging(1)
    state, control = TrainerState(), TrainerControl()
    for arguments, message in (
        (dict(num_train_epochs=2), r"^Checkpoint averaging of the last 3 epochs needs at least as many epochs of "
                                   r"training; num_train_epochs is 2\.$"),
        (dict(max_steps=10), r"^Checkpoint averaging counts whole epochs; the run is set by max_steps=10\.$"),
        (dict(eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True),
         r"cannot be combined with best-checkpoint selection \(load_best_model_at_end\)\.$"),
    ):
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **arguments)
        with pytest.raises(ValueError, match=message):
            CheckpointAveraging(3).on_train_begin(args, state, control)
