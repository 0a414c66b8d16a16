"""Pieces of `train.py` that other scripts reuse: arguments from a YAML file, the WA/UA metric, model construction,
the Trainer, the staged unfreezing and checkpoint averaging callbacks, and jobs run side by side in processes."""

import json
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoFeatureExtractor, Trainer, TrainerCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .configuration_msemoboost import MSEmoBoostConfig
from .feature_extraction_msemoboost import MSEmoBoostFeatureExtractor
from .imagenet import load_imagenet_alexnet
from .modeling_msemoboost import MSEmoBoostForSequenceClassification
from .modeling_statistics import MSEmoBoostStatisticsClassifier

logger = logging.getLogger(__name__)

WA_UA_PATH = Path(__file__).parent / "metrics" / "wa_ua"


def load_wa_ua():
    """The WA/UA `evaluate` metric, from the module shipped in this package (no Hub access)."""
    import evaluate

    # In memory: no cache file, so that several processes of one run never contend for it.
    return evaluate.load(str(WA_UA_PATH), keep_in_memory=True)


class WaUaMetrics:
    """`compute_metrics` for `Trainer`: utterance-level WA and UA from the model's utterance logits."""

    def __init__(self):
        self.metric = load_wa_ua()

    def __call__(self, evaluation) -> dict[str, float]:
        predictions = np.argmax(evaluation.predictions, axis=-1)
        return self.metric.compute(predictions=predictions, references=evaluation.label_ids)


def read_arguments_file(path: str | Path) -> dict:
    """The arguments in a YAML or JSON file, as a mapping. A file may build on another with `base: OTHER.yaml` (a path
    relative to the file): its own values replace the base's, mappings (`model_config_overrides`) are merged key by
    key, and a top-level `null` removes the base's value."""
    path = Path(path)
    if path.suffix == ".json":
        values = json.loads(path.read_text())
    else:
        import yaml

        values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values, got {type(values).__name__}.")
    base = values.pop("base", None)
    if base is None:
        return values
    if not (path.parent / base).is_file():
        raise ValueError(f"{path}: its base {base} is not a file (looked for {path.parent / base}).")
    merged = read_arguments_file(path.parent / base)
    for key, value in values.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both_mappings else value
    return merged


def arguments_from_file(path: str) -> list[str]:
    """A YAML or JSON file of arguments (see [`read_arguments_file`]) as command-line words, so that later words
    override it."""
    return argument_words(read_arguments_file(path))


def argument_words(values: dict) -> list[str]:
    """A mapping of arguments as command-line words; `None` values are left out."""
    words = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict) or (isinstance(value, list) and key in ("backbone_config", "model_config_overrides")):
            value = json.dumps(value)  # e.g. lr_scheduler_kwargs: {min_lr_rate: 0.25}, which the parser reads as JSON
        if isinstance(value, list):
            words += [f"--{key}", *map(str, value)]
        else:
            words += [f"--{key}", str(value)]
    return words


def read_json_argument(value: str | None) -> dict:
    """A JSON object given inline or as the path of a `.json` file; `None` gives `{}`."""
    if not value:
        return {}
    text = Path(value).read_text() if value.strip().endswith(".json") and Path(value).is_file() else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"Expected a JSON object or the path of a .json file, got {value!r}: {error}") from error
    if not isinstance(parsed, dict):
        raise ValueError(f"Expected a JSON object, got {type(parsed).__name__}: {value!r}")
    return parsed


def build_model(
    label_names: list[str],
    backbone: str | None = None,
    backbone_config: dict | None = None,
    imagenet_alexnet: bool = False,
    freeze_feature_encoder: bool = False,
    freeze_backbone: bool = False,
    **config_overrides,
) -> MSEmoBoostForSequenceClassification:
    """An MS-EmoBoost classifier for `label_names`, around a pretrained backbone (`backbone`, a Hub id or path) or a
    randomly initialised one (`backbone_config`)."""
    labels = {"id2label": dict(enumerate(label_names)), "label2id": {name: i for i, name in enumerate(label_names)}}
    if backbone and backbone_config:
        raise ValueError("Pass either backbone (pretrained weights) or backbone_config (random weights), not both.")
    if backbone:
        model = MSEmoBoostForSequenceClassification.from_backbone(backbone, **labels, **config_overrides)
    else:
        config = MSEmoBoostConfig(backbone_config=backbone_config or None, **labels, **config_overrides)
        model = MSEmoBoostForSequenceClassification(config)
    if imagenet_alexnet:
        load_imagenet_alexnet(model)
    return freeze(model, freeze_feature_encoder, freeze_backbone)


def freeze(model, freeze_feature_encoder: bool, freeze_backbone: bool):
    """Freezes the whole backbone, or else (with a backbone) its convolutional feature encoder; returns `model`."""
    if freeze_backbone:
        model.freeze_base_model()
    elif freeze_feature_encoder and model.config.use_backbone_features:
        model.freeze_feature_encoder()
    return model


def class_balanced_weights(labels: np.ndarray, num_labels: int) -> list[float]:
    """Inverse-frequency class weights `n / (k * n_c)` over the `k` classes present in `labels` (a class absent from
    them gets weight 0): with these, every present class carries the same total weight in the loss."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_labels).astype(float)
    present = counts > 0
    weights = np.zeros(num_labels)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return [float(weight) for weight in weights]


def load_for_transfer(
    model_name_or_path: str,
    label_names: list[str],
    class_weights: list[float] | None = None,
    freeze_feature_encoder: bool = False,
    freeze_backbone: bool = False,
) -> MSEmoBoostForSequenceClassification:
    """A trained MS-EmoBoost classifier ready to fine-tune on `label_names`.

    Everything but the classifier is kept. The classifier gets one row per label of `label_names`, in that order:
    the checkpoint's row for a label it knows (matched by name), a newly initialised row for one it does not. A
    statistics classifier (`config.utterance_statistics_classifier`) starts unfitted, for the new labels.
    """
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_name_or_path)
    old = {name: int(index) for index, name in model.config.id2label.items()}
    new_classifier = nn.Linear(model.classifier.in_features, len(label_names), dtype=model.classifier.weight.dtype)
    model._init_weights(new_classifier)
    with torch.no_grad():
        for row, name in enumerate(label_names):
            if name in old:
                new_classifier.weight[row] = model.classifier.weight[old[name]]
                new_classifier.bias[row] = model.classifier.bias[old[name]]
    kept = [name for name in label_names if name in old]
    logger.info(
        f"Transfer from {model_name_or_path}: classifier rows kept for {kept}, new for "
        f"{[name for name in label_names if name not in old]}."
    )
    model.classifier = new_classifier
    if model.statistics_classifier is not None:  # fitted for the old labels; train.py fits it again after training
        model.statistics_classifier = MSEmoBoostStatisticsClassifier(
            model.statistics_classifier.mean.numel(), len(label_names)
        ).to(model.statistics_classifier.bias.dtype)
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}
    model.config.class_weights = class_weights
    return freeze(model, freeze_feature_encoder, freeze_backbone)


def model_part(parameter_name: str) -> str:
    """Which part of an MS-EmoBoost classifier a parameter belongs to: `backbone`, `guidance` (the MFCC and
    spectrogram branches and X_enh) or `head` (the classifier and the SE head)."""
    if parameter_name.startswith("msemoboost.backbone."):
        return "backbone"
    if parameter_name.startswith("msemoboost."):
        return "guidance"
    return "head"


def build_feature_extractor(backbone: str | None, sampling_rate: int, do_normalize: bool | None) -> MSEmoBoostFeatureExtractor:
    """The feature extractor; `do_normalize=None` follows the pretrained backbone's own feature extractor."""
    if do_normalize is None and backbone:
        try:
            do_normalize = bool(getattr(AutoFeatureExtractor.from_pretrained(backbone), "do_normalize", True))
        except (OSError, ValueError):
            logger.warning(f"No feature extractor found for {backbone}; normalising waveforms (do_normalize=True).")
    return MSEmoBoostFeatureExtractor(sampling_rate=sampling_rate, do_normalize=True if do_normalize is None else do_normalize)


class MSEmoBoostTrainer(Trainer):
    """`Trainer` whose model card is the project's (`model_card` text), used by `save_model` + `push_to_hub`, and
    whose training batches may come from their own collator (`train_data_collator`, e.g. one that adds noise),
    while evaluation and prediction use `data_collator`."""

    def __init__(self, *args, model_card: str | None = None, train_data_collator=None, part_learning_rates=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_card = model_card
        self.part_learning_rates = {part: rate for part, rate in (part_learning_rates or {}).items() if rate is not None}
        self.train_data_collator = train_data_collator
        self._loss_parts: dict[str, tuple[float, int]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        """The model's loss; when it has several parts (a speech-enhancement head, the statistics' own loss), each is
        also averaged for the training logs."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if model.training and isinstance(outputs, dict) and outputs.get("classification_loss") is not None:
            for key in ("classification_loss", "statistics_loss", "se_loss"):
                if outputs.get(key) is None:
                    continue
                total, count = self._loss_parts.get(key, (0.0, 0))
                self._loss_parts[key] = (total + outputs[key].detach().float().item(), count + 1)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._loss_parts:
            logs.update({key: round(total / count, 4) for key, (total, count) in self._loss_parts.items()})
            self._loss_parts = {}
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the learning rate of `part_learning_rates` for each part named there
        (`backbone`, `guidance`, `head`; see [`model_part`]) and `args.learning_rate` for the others."""
        if not self.part_learning_rates or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                rate = self.part_learning_rates.get(model_part(name), self.args.learning_rate)
                weight_decay = self.args.weight_decay if name in decay else 0.0
                groups.setdefault((rate, weight_decay), []).append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs = {key: value for key, value in optimizer_kwargs.items() if key != "lr"}
        self.optimizer = optimizer_cls(
            [{"params": params, "lr": rate, "weight_decay": decay_rate} for (rate, decay_rate), params in groups.items()],
            lr=self.args.learning_rate,
            **optimizer_kwargs,
        )
        return self.optimizer

    def get_train_dataloader(self):
        if self.train_data_collator is None:
            return super().get_train_dataloader()
        evaluation_collator, self.data_collator = self.data_collator, self.train_data_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = evaluation_collator

    def create_model_card(self, *args, **kwargs):
        if self.model_card is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            (Path(self.args.output_dir) / "README.md").write_text(self.model_card)


@dataclass(frozen=True)
class UnfreezeStage:
    """One stage of staged unfreezing: at `unit` (`"epoch"` or `"step"`) `at`, unfreeze `part` of the backbone:
    `"top"` (its `count` highest transformer blocks), `"all"` (every transformer block, the positional
    convolution, feature projection and encoder norms) or `"feature_encoder"` (the convolutional encoder)."""

    unit: str
    at: int
    part: str
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> "UnfreezeStage":
        """`"epoch:2=top:4"`, `"step:500=all"`, `"epoch:6=feature_encoder"`."""
        when, separator, what = text.partition("=")
        unit, _, at = when.partition(":")
        part, _, count = what.partition(":")
        try:
            if not separator or unit not in ("epoch", "step") or int(at) < 0:
                raise ValueError
            if part == "top":
                if int(count) < 1:
                    raise ValueError
                return cls(unit, int(at), part, int(count))
            if part in ("all", "feature_encoder") and not count:
                return cls(unit, int(at), part)
            raise ValueError
        except ValueError:
            raise ValueError(
                f"Cannot read the unfreezing stage {text!r}: write WHEN=WHAT with WHEN epoch:N or step:N and WHAT "
                "top:K (the K highest transformer blocks), all (the whole transformer) or feature_encoder (the CNN), "
                "e.g. epoch:1=top:2 epoch:3=all epoch:5=feature_encoder."
            ) from None

    def is_due(self, state: TrainerState) -> bool:
        if self.unit == "epoch":
            return (state.epoch or 0) >= self.at - 1e-6
        return state.global_step >= self.at

    def __str__(self) -> str:
        what = f"top:{self.count}" if self.part == "top" else self.part
        return f"{self.unit}:{self.at}={what}"


class StagedUnfreezing(TrainerCallback):
    """Trains with the SSL backbone frozen at first, then unfreezes it stage by stage ("cascade unfreezing").

    At the start of training the whole backbone is frozen; each [`UnfreezeStage`] then unfreezes its part when its
    epoch or step is reached (checked at the start of every epoch and step; a resumed run re-applies the stages
    already due). Every stage is logged and recorded in the Trainer's `log_history` (so in `trainer_state.json`).

    The optimizer must hold the backbone's parameters: build the model with them trainable and let this callback
    freeze them (a frozen parameter has no gradient, and AdamW leaves it, and its moments, untouched).

    Args:
        stages (`list[str]` or `list[UnfreezeStage]`): e.g. `["epoch:1=top:2", "epoch:3=all"]`, in time order.
    """

    def __init__(self, stages):
        self.stages = [stage if isinstance(stage, UnfreezeStage) else UnfreezeStage.parse(stage) for stage in stages]
        if not self.stages:
            raise ValueError("Staged unfreezing needs at least one stage.")
        if len({stage.unit for stage in self.stages}) > 1:
            raise ValueError(f"Give every unfreezing stage in epochs or every one in steps, not both: {self.stages}.")
        if any(later.at < earlier.at for earlier, later in zip(self.stages, self.stages[1:])):
            raise ValueError(f"Unfreezing stages must be in time order, got {[str(stage) for stage in self.stages]}.")
        self.num_applied = 0

    @staticmethod
    def backbone_parts(model) -> dict[str, list]:
        """The backbone's parameters by part: `blocks` (one list per transformer block, lowest first),
        `feature_encoder`, and `rest` (everything else: projection, positional convolution, norms)."""
        backbone = getattr(getattr(model, "msemoboost", None), "backbone", None)
        if backbone is None:
            raise ValueError("Staged unfreezing needs a model with an SSL backbone (use_backbone_features=True).")
        blocks = [list(block.parameters()) for block in backbone.encoder.layers]
        feature_encoder = list(backbone.feature_extractor.parameters())
        seen = {id(parameter) for parameter in feature_encoder} | {id(p) for block in blocks for p in block}
        rest = [parameter for parameter in backbone.parameters() if id(parameter) not in seen]
        return {"blocks": blocks, "feature_encoder": feature_encoder, "rest": rest, "module": backbone}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        parts = self.backbone_parts(model)
        if optimizer is not None:
            in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
            missing = [p for p in parts["module"].parameters() if id(p) not in in_optimizer]
            if missing:
                raise ValueError(
                    f"Staged unfreezing: {len(missing)} backbone parameter tensors are not in the optimizer, so "
                    "unfreezing them would not train them. Build the model with the backbone trainable (no "
                    "--freeze_feature_encoder / --freeze_backbone); the callback freezes it itself."
                )
        for parameter in parts["module"].parameters():
            parameter.requires_grad = False
        parts["module"].feature_extractor._requires_grad = False
        self.num_applied = 0
        logger.info(f"Staged unfreezing: backbone frozen; stages {[str(stage) for stage in self.stages]}.")
        self._advance(state, model)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self._advance(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._advance(state, model)

    def _advance(self, state: TrainerState, model) -> None:
        while self.num_applied < len(self.stages) and self.stages[self.num_applied].is_due(state):
            stage = self.stages[self.num_applied]
            parts = self.backbone_parts(model)
            if stage.part == "top":
                chosen = [p for block in parts["blocks"][-stage.count :] for p in block]
            elif stage.part == "all":
                chosen = [p for block in parts["blocks"] for p in block] + parts["rest"]
            else:
                chosen = parts["feature_encoder"]
                parts["module"].feature_extractor._requires_grad = True
            for parameter in chosen:
                parameter.requires_grad = True
            self.num_applied += 1
            trainable = sum(p.numel() for p in parts["module"].parameters() if p.requires_grad)
            total = sum(p.numel() for p in parts["module"].parameters())
            record = {
                "unfreeze_stage": self.num_applied,
                "unfreeze": str(stage),
                "epoch": round(state.epoch or 0.0, 4),
                "step": state.global_step,
                "backbone_trainable_parameters": trainable,
            }
            state.log_history.append(record)
            logger.info(
                f"Staged unfreezing, stage {self.num_applied}/{len(self.stages)} ({stage}) at epoch "
                f"{record['epoch']}, step {state.global_step}: {trainable:,} of {total:,} backbone parameters train."
            )


AVERAGE_FILE = "checkpoint_average.safetensors"  # CheckpointAveraging's running sum, in each saved checkpoint


class CheckpointAveraging(TrainerCallback):
    """Keeps the average of the weights at the end of the last `last_epochs` epochs instead of the last weights (a
    uniform checkpoint average, as in stochastic weight averaging with the run's own schedule).

    The average is taken in float64 over every floating-point parameter and buffer (batch-norm statistics included);
    integer buffers keep their last value. It is loaded into the model when training ends, so `Trainer.predict` and
    `save_model` see it. It needs a fixed schedule of whole epochs: no early stopping, no best-checkpoint selection.
    The epochs it averaged are recorded in the Trainer's `log_history` as `averaged_epochs`. Each checkpoint the
    Trainer saves holds the running sum (`checkpoint_average.safetensors`), so a run resumed from it averages the
    same epochs as one never stopped.

    Args:
        last_epochs (`int`): how many final epochs to average, at least 2.
    """

    def __init__(self, last_epochs: int):
        if last_epochs < 2:
            raise ValueError(f"Checkpoint averaging needs at least 2 epochs to average, got {last_epochs}.")
        self.last_epochs = last_epochs
        self.sum: dict[str, torch.Tensor] = {}
        self.epochs: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if args.load_best_model_at_end:
            raise ValueError("Checkpoint averaging keeps the average of the last epochs; it cannot be combined with "
                             "best-checkpoint selection (load_best_model_at_end).")
        if args.max_steps and args.max_steps > 0:
            raise ValueError(f"Checkpoint averaging counts whole epochs; the run is set by max_steps={args.max_steps}.")
        if self.last_epochs > args.num_train_epochs:
            raise ValueError(f"Checkpoint averaging of the last {self.last_epochs} epochs needs at least as many "
                             f"epochs of training; num_train_epochs is {args.num_train_epochs}.")
        self.sum, self.epochs = {}, []
        if state.global_step:  # resumed: the Trainer has loaded the state of checkpoint-<global_step>
            self.load(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def on_save(self, args, state, control, **kwargs):
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:  # every process holds the same sum; one writes it
            save_file(self.sum, folder / AVERAGE_FILE, metadata={"epochs": json.dumps(self.epochs)})

    def load(self, checkpoint: Path) -> None:
        """The running sum and its epochs from `checkpoint`'s `checkpoint_average.safetensors`, when it has one (a
        checkpoint saved before any averaged epoch holds an empty sum)."""
        from safetensors import safe_open

        if not (checkpoint / AVERAGE_FILE).exists():
            return
        with safe_open(checkpoint / AVERAGE_FILE, framework="pt") as saved:
            self.sum = {name: saved.get_tensor(name) for name in saved.keys()}
            self.epochs = json.loads(saved.metadata()["epochs"])
        logger.info(f"Checkpoint averaging: resumed with the sum of epochs {self.epochs} from {checkpoint}.")

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        if epoch <= args.num_train_epochs - self.last_epochs:
            return
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value = value.detach().to("cpu", torch.float64)
                self.sum[name] = self.sum[name] + value if name in self.sum else value.clone()
        self.epochs.append(epoch)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.epochs:
            raise ValueError("Checkpoint averaging saw no epoch to average (was the run resumed past them?).")
        if len(self.epochs) < self.last_epochs:
            logger.warning(f"Checkpoint averaging: averaged epochs {self.epochs} only (a resumed run loses the epochs "
                           "averaged before it stopped).")
        current = model.state_dict()
        averaged = {name: (total / len(self.epochs)).to(current[name].dtype) for name, total in self.sum.items()}
        model.load_state_dict(averaged, strict=False)
        state.log_history.append({"averaged_epochs": list(self.epochs), "step": state.global_step})
        logger.info(f"Checkpoint averaging: the model now holds the average of its weights after epochs {self.epochs}.")


def run_in_processes(
    function: Callable, jobs: dict[str, tuple], processes: int, logs: dict[str, Path],
    on_result: Callable[[str, object], None] | None = None,
) -> dict[str, object]:
    """Runs `function(*arguments)` for each job, `processes` jobs at a time, each in a fresh (spawned) process with an
    equal share of this process's torch threads and its output (stdout, stderr, logging) appended to its log.

    Small models use several threads poorly: on 2 cores, two one-thread jobs side by side finish sooner than the same
    jobs one after another on two threads. `function` and the arguments must pickle (a module-level function).

    Args:
        function: what each job runs; its return value must pickle.
        jobs: job name -> the arguments of its call.
        processes: how many jobs run at once.
        logs: job name -> its log file.
        on_result: called in this process with (name, result) as each job finishes.

    Returns:
        job name -> result. When a job fails, the jobs not started yet are cancelled, the running ones finish, and a
        `RuntimeError` names the failed job and its log.
    """
    threads = max(1, torch.get_num_threads() // processes)
    logger.info(f"Running {len(jobs)} job(s), {processes} at a time, each on {threads} thread(s).")
    results, failed = {}, None
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        running = {pool.submit(_run_logged, function, arguments, threads, logs[name]): name for name, arguments in jobs.items()}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                if future.cancelled():
                    continue
                if future.exception() is not None:
                    failed = failed or (name, future.exception())
                    for other in running:
                        other.cancel()
                    continue
                results[name] = future.result()
                if on_result is not None:
                    on_result(name, results[name])
    if failed:
        name, error = failed
        raise RuntimeError(f"{name} failed: {type(error).__name__}: {error}\nIts log: {logs[name]}") from error
    return results


def _run_logged(function: Callable, arguments: tuple, threads: int, log: Path):
    """One job of `run_in_processes`, inside its own process."""
    torch.set_num_threads(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, force=True)
    return function(*arguments)
