"""Staged unfreezing: the stage syntax, which parameters train at every stage, that they really train once
unfrozen, and that train.py runs the schedule by epoch."""

import json
import logging

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from msemoboost import MSEmoBoostForSequenceClassification
from msemoboost.training import StagedUnfreezing, UnfreezeStage
from tiny import TINY_TRAIN_ARGS, run_train, speech_like, tiny_config, tiny_model


class RandomUtterances(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return {"input_values": torch.from_numpy(speech_like(16000, index)), "labels": torch.tensor(index % 4)}


class Probe(TrainerCallback):
    """Records, at the end of every step, which backbone parameters train and the value of one of each part."""

    def __init__(self):
        self.trainable, self.snapshots = [], []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        backbone = model.msemoboost.backbone
        self.trainable.append({name for name, p in backbone.named_parameters() if p.requires_grad})
        self.snapshots.append({name: p.detach().clone() for name, p in backbone.named_parameters()})


def groups(names: set[str]) -> set[str]:
    """Parameter names reduced to the parts the schedule speaks of."""
    parts = set()
    for name in names:
        if name.startswith("encoder.layers."):
            parts.add("block" + name.split(".")[2])
        elif name.startswith("feature_extractor."):
            parts.add("feature_encoder")
        else:
            parts.add("rest")
    return parts


def test_stage_syntax():
    assert UnfreezeStage.parse("epoch:2=top:3") == UnfreezeStage("epoch", 2, "top", 3)
    assert UnfreezeStage.parse("step:500=all") == UnfreezeStage("step", 500, "all")
    assert str(UnfreezeStage.parse("epoch:6=feature_encoder")) == "epoch:6=feature_encoder"
    for bad in ("epoch2=top:1", "epoch:2=top", "epoch:2=top:0", "minute:2=all", "epoch:1=all:2", "epoch:-1=all", "epoch:x=all"):
        with pytest.raises(ValueError, match=rf"Cannot read the unfreezing stage '{bad}': write WHEN=WHAT"):
            UnfreezeStage.parse(bad)
    with pytest.raises(ValueError, match="must be in time order"):
        StagedUnfreezing(["epoch:3=all", "epoch:1=top:1"])
    with pytest.raises(ValueError, match="every one in steps, not both"):
        StagedUnfreezing(["epoch:1=top:1", "step:9=all"])


def test_schedule_by_step_unfreezes_each_part_at_its_step_and_trains_it(tmp_path, caplog):
    config = tiny_config()  # 2 transformer blocks
    config.backbone_config.layerdrop = 0.0  # a dropped block gets no update in that step
    torch.manual_seed(0)
    model = MSEmoBoostForSequenceClassification(config).train()
    probe = Probe()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=7, per_device_train_batch_size=4, learning_rate=1e-2, report_to="none",
        logging_strategy="no", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )
    stages = StagedUnfreezing(["step:2=top:1", "step:4=all", "step:6=feature_encoder"])
    trainer = Trainer(model=model, args=args, train_dataset=RandomUtterances(), callbacks=[stages, probe])
    initial = {name: p.detach().clone() for name, p in model.msemoboost.backbone.named_parameters()}
    with caplog.at_level(logging.INFO, logger="msemoboost.training"):
        trainer.train()

    expected = [set(), set(), {"block1"}, {"block1"}, {"block0", "block1", "rest"}, {"block0", "block1", "rest"},
                {"block0", "block1", "rest", "feature_encoder"}]
    assert [groups(names) for names in probe.trainable] == expected
    # a part changes exactly from the step it is unfrozen: the optimizer holds it all along
    for step, snapshot in enumerate(probe.snapshots):
        before = initial if step == 0 else probe.snapshots[step - 1]
        changed = {name for name in snapshot if not torch.equal(snapshot[name], before[name])}
        assert groups(changed) == expected[step], f"step {step}"
    stages_logged = [entry for entry in trainer.state.log_history if "unfreeze" in entry]
    assert [(entry["unfreeze"], entry["step"]) for entry in stages_logged] == [
        ("step:2=top:1", 2), ("step:4=all", 4), ("step:6=feature_encoder", 6)]
    total = sum(p.numel() for p in model.msemoboost.backbone.parameters())
    assert stages_logged[-1]["backbone_trainable_parameters"] == total
    assert "stage 1/3 (step:2=top:1) at epoch" in caplog.text and "stage 3/3 (step:6=feature_encoder)" in caplog.text


def test_frozen_before_training_is_an_error(tmp_path):
    model = tiny_model().train()
    model.freeze_feature_encoder()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True, save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=RandomUtterances(), callbacks=[StagedUnfreezing(["step:1=all"])])
    with pytest.raises(ValueError, match=r"backbone parameter tensors are not in the optimizer.*no\s+--freeze_feature_encoder"):
        trainer.train()


def test_train_py_runs_the_schedule_by_epoch(corpus_dir, tmp_path):
    class EpochProbe(TrainerCallback):
        def __init__(self):
            self.per_epoch = []

        def on_epoch_begin(self, args, state, control, model=None, **kwargs):
            backbone = model.msemoboost.backbone
            self.per_epoch.append(groups({n for n, p in backbone.named_parameters() if p.requires_grad}))

    probe = EpochProbe()
    arguments = ["--dataset_name", str(corpus_dir), "--output_dir", str(tmp_path / "run"), *TINY_TRAIN_ARGS,
                 "--folds", "0", "--final_model", "false", "--num_train_epochs", "3",
                 "--unfreeze_stages", "epoch:1=top:1", "epoch:2=feature_encoder"]
    run_train(arguments, callbacks=[probe])
    # the tiny train.py backbone has one block: top:1 is block0; "rest" (projection, norms) waits for "all"
    assert probe.per_epoch == [set(), {"block0"}, {"block0", "feature_encoder"}]
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["model"]["unfreeze_stages"] == ["epoch:1=top:1", "epoch:2=feature_encoder"]
    fold = summary["folds"][0]
    assert summary["ua"]["mean"] == fold["ua"] and 0.0 <= fold["ua"] <= 1.0


def test_train_py_refuses_bad_schedules(corpus_dir, tmp_path, capsys):
    base = ["--dataset_name", str(corpus_dir), "--output_dir", str(tmp_path / "run"), *TINY_TRAIN_ARGS]
    with pytest.raises(ValueError, match="Cannot read the unfreezing stage 'epoch:1'"):
        run_train([*base, "--unfreeze_stages", "epoch:1"])
    with pytest.raises(SystemExit):
        run_train([*base, "--unfreeze_stages", "epoch:1=all", "--freeze_backbone", "true"])
    assert "cannot be combined with --freeze_backbone true" in capsys.readouterr().err
