"""MS-EmoBoost speech emotion recognition for the Hugging Face stack.

Importing the package registers the model with the Auto classes, and marks the classes for `trust_remote_code`, so
that `save_pretrained` writes `auto_map` and copies the modeling files next to the weights.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

from .configuration_msemoboost import SUPPORTED_BACKBONE_TYPES, MSEmoBoostConfig
from .feature_extraction_msemoboost import MSEmoBoostFeatureExtractor
from .imagenet import load_imagenet_alexnet
from .modeling_msemoboost import (
    MSEmoBoostForSequenceClassification,
    MSEmoBoostModel,
    MSEmoBoostModelOutput,
    MSEmoBoostPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(MSEmoBoostConfig.model_type, MSEmoBoostConfig, exist_ok=True)
AutoModel.register(MSEmoBoostConfig, MSEmoBoostModel, exist_ok=True)
AutoModelForAudioClassification.register(MSEmoBoostConfig, MSEmoBoostForSequenceClassification, exist_ok=True)
AutoFeatureExtractor.register(MSEmoBoostConfig, MSEmoBoostFeatureExtractor, exist_ok=True)

MSEmoBoostConfig.register_for_auto_class()
MSEmoBoostModel.register_for_auto_class("AutoModel")
MSEmoBoostForSequenceClassification.register_for_auto_class("AutoModelForAudioClassification")
MSEmoBoostFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = [
    "SUPPORTED_BACKBONE_TYPES",
    "MSEmoBoostConfig",
    "MSEmoBoostFeatureExtractor",
    "MSEmoBoostForSequenceClassification",
    "MSEmoBoostModel",
    "MSEmoBoostModelOutput",
    "MSEmoBoostPreTrainedModel",
    "load_imagenet_alexnet",
]
