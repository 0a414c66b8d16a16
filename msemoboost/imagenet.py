"""ImageNet AlexNet weights for the spectrogram branch, loaded through torchvision.

This lives outside the remote-code files: a checkpoint saved after loading already holds the weights, so people who
load it with `trust_remote_code` never need torchvision.
"""

from torch import nn


def load_imagenet_alexnet(model: nn.Module, alexnet: nn.Module | None = None) -> nn.Module:
    """Copies AlexNet's convolutional `features` into the model's spectrogram branch, as the paper initialises it.

    Args:
        model: an `MSEmoBoostModel` or `MSEmoBoostForSequenceClassification` with `use_spectrogram=True` and the
            default `spectrogram_conv_channels`.
        alexnet: a torchvision `AlexNet` to copy from. By default `torchvision.models.alexnet(weights="IMAGENET1K_V1")`,
            which torchvision downloads once into its cache.

    Returns:
        `model`, with `spectrogram_encoder.features` equal to `alexnet.features`.
    """
    encoder = getattr(model.base_model, "spectrogram_encoder", None)
    if encoder is None:
        raise ValueError("This model has no spectrogram branch (use_spectrogram=False): there is nothing to load into.")
    if alexnet is None:
        try:
            import torchvision
        except ImportError as error:
            raise ImportError("Loading ImageNet AlexNet weights needs torchvision: pip install torchvision") from error
        alexnet = torchvision.models.alexnet(weights="IMAGENET1K_V1")
    source = alexnet.features.state_dict()
    target = encoder.features.state_dict()
    mismatched = [name for name in target if name not in source or source[name].shape != target[name].shape]
    if mismatched:
        raise ValueError(
            f"The spectrogram branch does not have AlexNet's shape ({mismatched[0]}: "
            f"{tuple(target[mismatched[0]].shape)}); build it with the default spectrogram_conv_channels."
        )
    encoder.features.load_state_dict(source)
    return model
