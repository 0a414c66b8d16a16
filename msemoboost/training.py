"""Pieces of `train.py` that other scripts reuse: the WA/UA metric, model construction and the Trainer."""

import json
import logging
from pathlib import Path

import numpy as np
from transformers import AutoFeatureExtractor, Trainer

from .configuration_msemoboost import MSEmoBoostConfig
from .feature_extraction_msemoboost import MSEmoBoostFeatureExtractor
from .imagenet import load_imagenet_alexnet
from .modeling_msemoboost import MSEmoBoostForSequenceClassification

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
    if freeze_backbone:
        model.freeze_base_model()
    elif freeze_feature_encoder and model.config.use_backbone_features:
        model.freeze_feature_encoder()
    return model


def build_feature_extractor(backbone: str | None, sampling_rate: int, do_normalize: bool | None) -> MSEmoBoostFeatureExtractor:
    """The feature extractor; `do_normalize=None` follows the pretrained backbone's own feature extractor."""
    if do_normalize is None and backbone:
        try:
            do_normalize = bool(getattr(AutoFeatureExtractor.from_pretrained(backbone), "do_normalize", True))
        except (OSError, ValueError):
            logger.warning(f"No feature extractor found for {backbone}; normalising waveforms (do_normalize=True).")
    return MSEmoBoostFeatureExtractor(sampling_rate=sampling_rate, do_normalize=True if do_normalize is None else do_normalize)


class MSEmoBoostTrainer(Trainer):
    """`Trainer` whose model card is the project's (`model_card` text), used by `save_model` + `push_to_hub`."""

    def __init__(self, *args, model_card: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_card = model_card

    def create_model_card(self, *args, **kwargs):
        if self.model_card is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            (Path(self.args.output_dir) / "README.md").write_text(self.model_card)
