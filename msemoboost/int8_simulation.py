"""The backbone's convolutional feature encoder as an int8 ONNX graph computes it, simulated in torch: read back from
an export with `--quantize_feature_encoder` ([`int8_feature_encoder`]) and applied to the model
([`simulated_int8_feature_encoder`]), for quantisation-aware fine-tuning (`msemoboost.quantization_aware`) and to
check the export against the model.
"""

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .modeling_msemoboost import MSEmoBoostForSequenceClassification
from .onnx_runtime import require

# The module path of the SSL backbones' convolutional feature encoder (wav2vec 2.0, HuBERT, WavLM, data2vec-audio),
# which static int8 leaves float (`quantize_int8`).
FEATURE_ENCODER = "backbone.feature_extractor.conv_layers."


def feature_encoder_layers(model: MSEmoBoostForSequenceClassification) -> nn.ModuleList:
    """The backbone's convolutional feature encoder layers (each with its `conv`), as the SSL backbones name them."""
    if model.msemoboost.backbone is None:
        raise ValueError("This model has no backbone (use_backbone_features=False), so no feature encoder to quantise.")
    return model.msemoboost.backbone.feature_extractor.conv_layers


def int8_feature_encoder(int8_path: str | Path, model: MSEmoBoostForSequenceClassification) -> list[dict]:
    """What ONNX Runtime made of `model`'s feature-encoder convolutions in `int8_path`, an export of that model with
    `--quantize_feature_encoder`: for each convolution, in the order of the backbone's `conv_layers`, its `QLinearConv`'s
    input and output scale and zero point (uint8), its int8 weight dequantised, `(out_channels, in_channels, kernel)`,
    and its int32 bias dequantised (or None). Each convolution is found by its weight: the one whose dequantised
    weight is within half a quantisation step of the model's, channel by channel."""
    onnx = require("onnx")
    from onnx import numpy_helper

    layers = feature_encoder_layers(model)
    graph = onnx.load(str(int8_path)).graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    candidates = [[constants.get(name) for name in node.input] for node in graph.node if node.op_type == "QLinearConv"]
    found = []
    for index, layer in enumerate(layers):
        weight = layer.conv.weight.detach().float().numpy()
        matches = []
        for inputs in candidates:
            if inputs[3] is None or inputs[3].shape != weight.shape:
                continue
            scale = inputs[4].astype(np.float32).reshape(-1, 1, 1)
            dequantized = (inputs[3].astype(np.float32) - inputs[5].astype(np.float32).reshape(-1, 1, 1)) * scale
            if np.all(np.abs(dequantized - weight) <= 0.5001 * scale + 1e-12):
                matches.append((inputs, dequantized))
        if len(matches) != 1:
            raise ValueError(f"{int8_path}: {len(matches)} int8 convolutions match feature encoder convolution {index} "
                             "of the model, expected 1: export this model with --quantize int8 --calibration ... "
                             "--quantize_feature_encoder.")
        inputs, dequantized = matches[0]
        bias = None
        if len(inputs) > 8 and inputs[8] is not None:
            bias = torch.from_numpy(inputs[8].astype(np.float32) * float(inputs[1]) * inputs[4].astype(np.float32))
        found.append({"input_scale": float(inputs[1]), "input_zero_point": int(inputs[2]),
                      "weight": torch.from_numpy(dequantized), "bias": bias,
                      "output_scale": float(inputs[6]), "output_zero_point": int(inputs[7])})
    return found


@contextlib.contextmanager
def simulated_int8_feature_encoder(model: MSEmoBoostForSequenceClassification, convolutions: list[dict]):
    """Within the context, `model`'s feature-encoder convolutions compute as the `QLinearConv`s of
    [`int8_feature_encoder`] do: the input rounded to its uint8 grid, the int8 weight, the output rounded to its uint8
    grid (in float arithmetic, so the sums may round differently). The rest of the model is unchanged, so the model
    can be fine-tuned on the features the int8 graph will give it (quantisation-aware fine-tuning,
    `benchmarks/quantization_aware.py`)."""
    layers = feature_encoder_layers(model)
    if len(layers) != len(convolutions):
        raise ValueError(f"{len(convolutions)} int8 convolutions for a feature encoder of {len(layers)}.")

    def quantized(conv: nn.Conv1d, parameters: dict):
        def forward(hidden_states: torch.Tensor) -> torch.Tensor:
            hidden_states = torch.fake_quantize_per_tensor_affine(
                hidden_states, parameters["input_scale"], parameters["input_zero_point"], 0, 255)
            bias = None if parameters["bias"] is None else parameters["bias"].to(hidden_states.device)
            hidden_states = nn.functional.conv1d(hidden_states, parameters["weight"].to(hidden_states.device), bias,
                                                 conv.stride, conv.padding, conv.dilation, conv.groups)
            return torch.fake_quantize_per_tensor_affine(
                hidden_states, parameters["output_scale"], parameters["output_zero_point"], 0, 255)
        return forward

    try:
        for layer, parameters in zip(layers, convolutions):
            layer.conv.forward = quantized(layer.conv, parameters)
        yield model
    finally:
        for layer in layers:
            layer.conv.__dict__.pop("forward", None)
