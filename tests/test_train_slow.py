"""Multi-process evaluation and interrupted runs. Slow (marked), and run in CI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import TINY_TRAIN_ARGS, read_csv

REPO = Path(__file__).resolve().parents[1]

KILLING_TRAIN = """
import os, sys
from transformers import TrainerCallback
import runpy

class KillOnSave(TrainerCallback):
    # Ends the process the hard way right after the given fold's first checkpoint is saved.
    def __init__(self, fold):
        self.fold, self.trainings = fold, 0
    def on_train_begin(self, args, state, control, **kwargs):
        self.trainings += 1
    def on_save(self, args, state, control, **kwargs):
        if self.trainings == self.fold:
            os._exit(17)

kill_fold = int(os.environ.get("KILL_AT_FOLD", "0"))
main = runpy.run_path({train_script!r})["main"]
main(sys.argv[1:], callbacks=[KillOnSave(kill_fold)] if kill_fold else [])
"""


def environment() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_processes_evaluate_every_utterance_exactly_once(corpus_dir, tmp_path):
    output = tmp_path / "ddp"
    command = [
        # Two CPU processes in one torch.distributed (gloo) group: accelerate's torchrun path, with use_cpu.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train.py"),
        "--dataset_name", str(corpus_dir), "--output_dir", str(output), *TINY_TRAIN_ARGS,
        "--folds", "0", "1", "--final_model", "false", "--num_train_epochs", "1", "--use_cpu", "true",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((output / "results.json").read_text())
    assert summary["num_processes"] == 2
    metadata = read_csv(corpus_dir / "metadata.csv")
    for fold in summary["folds"]:
        speaker = fold["test_speakers"][0]
        expected = sorted(row["file_name"].split("/")[-1] for row in metadata if row["speaker"] == speaker)
        predicted = [row["utterance_id"] for row in read_csv(output / "folds" / fold["fold"] / "predictions.csv")]
        # 12 test utterances in eval batches of 5 over 2 processes: the last batch is uneven, and the gathered
        # predictions must still hold each utterance once.
        assert sorted(predicted) == expected
        assert fold["num_test"] == 12
    assert summary["num_utterances"] == 24
    assert result.stdout.count("[fold ") == 2  # only the main process reports


def run_killable(corpus_dir: Path, output: Path, *extra: str, kill_at_fold: int = 0) -> subprocess.CompletedProcess:
    script = output.parent / "killable_train.py"
    script.write_text(KILLING_TRAIN.format(train_script=str(REPO / "train.py")))
    command = [sys.executable, str(script), "--dataset_name", str(corpus_dir), "--output_dir", str(output), *TINY_TRAIN_ARGS,
               "--folds", "0", "1", "--final_model", "false", "--num_train_epochs", "3", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**environment(), "KILL_AT_FOLD": str(kill_at_fold)}, cwd=REPO)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(corpus_dir, tmp_path):
    reference_dir = tmp_path / "reference"
    reference = run_killable(corpus_dir, reference_dir)
    assert reference.returncode == 0, reference.stderr[-4000:]

    resumed_dir = tmp_path / "resumed"
    killed = run_killable(corpus_dir, resumed_dir, kill_at_fold=2)  # dies after the second fold's first epoch
    assert killed.returncode == 17, killed.stderr[-4000:]
    assert (resumed_dir / "folds" / "speaker_spk1" / "results.json").exists()
    assert not (resumed_dir / "folds" / "speaker_spk2" / "results.json").exists()
    assert list((resumed_dir / "folds" / "speaker_spk2" / "checkpoints").glob("checkpoint-*"))
    assert not (resumed_dir / "results.json").exists()

    resumed = run_killable(corpus_dir, resumed_dir, "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = resumed.stdout + resumed.stderr
    assert "Skipping finished fold speaker_spk1" in log
    assert "Resuming from" in log and "speaker_spk2/checkpoints/checkpoint-" in log

    expected = json.loads((reference_dir / "results.json").read_text())
    actual = json.loads((resumed_dir / "results.json").read_text())
    assert actual["folds"] == expected["folds"]
    assert (actual["wa"], actual["ua"]) == (expected["wa"], expected["ua"])
    for fold in ("speaker_spk1", "speaker_spk2"):
        assert (resumed_dir / "folds" / fold / "predictions.csv").read_text() == \
            (reference_dir / "folds" / fold / "predictions.csv").read_text()
