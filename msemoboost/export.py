"""ONNX export of a trained MS-EmoBoost classifier, and running the exported graph with ONNX Runtime.

    msemoboost export MODEL_DIR --output OUT [--quantize int8 [--calibration FILES [--quantize_feature_encoder
                      [--finetune DATASET]]]] [--opset N]
    msemoboost predict --onnx OUT FILES...

The graph takes the raw 16 kHz waveforms, right-padded, and their attention mask, and computes everything the
PyTorch model computes: the feature extractor's zero-mean unit-variance normalisation (when the saved extractor has
`do_normalize`), segmenting into 3 s windows (the last one overlapping), pre-emphasis, MFCC, spectrogram image,
both guidance branches, the backbone, the frame weighting, the classifier and the mean of the segments'
log-probabilities, and with `utterance_statistics_classifier` the whole utterance's statistics and their
classifier's log-probabilities. Batch size and length are dynamic.

The graph formulates three things differently from PyTorch, each pinned equal by `tests/test_export.py`. Segmenting:
PyTorch keeps only real segments, whose number depends on the data, while the graph computes a fixed grid of
`ceil(num_samples / 3 s)` slots per utterance and masks the slots past each utterance's last segment out of the
mean; both read the same [`~MSEmoBoostModel.segment_grid`]. A batch of very unequal lengths therefore costs the
graph the silence slots of its short utterances; classify long recordings one at a time. The STFTs: a four-step FFT
of matrix products ([`~MSEmoBoostPowerSpectrogram.use_matmul_fft`]) instead of `torch.stft`; the two round
differently in float32, so the STFT of the whole-utterance MFCC, whose statistics a fitted statistics classifier reads
steeply, runs in float64 in both paths (`modeling_statistics.UTTERANCE_FFT_DTYPE`) and rounds to the same float32
power. And the backbone's per-channel group norm, summed in two levels (`channel_norm_in_two_levels`).

`--quantize int8` adds `model.int8.onnx`: ONNX Runtime's dynamic quantisation (int8 weights, activations quantised
per batch at run time) of the MatMul, Gemm and LSTM nodes. The feature front end (STFT, filter banks) stays float.
With `--calibration FILES_OR_FOLDERS`, the convolutions of the backbone's positional embedding and of AlexNet are
quantised too, statically: int8 weights per output channel, and activation ranges fixed from those recordings (the
99.999th percentile of each activation's magnitude), as `QLinearConv`. The backbone's convolutional feature encoder
stays float unless `--quantize_feature_encoder`: it is the backbone's slowest part in ONNX Runtime, but one uint8
range per activation costs it accuracy, which a model may or may not absorb. On the CPU preset's 8 fold models
(`configs/emodb_cpu.yaml`) it changed 1.7 % of the held-out predictions (the mean of the folds' UA 78.1 → 76.5), on an
older recipe's 11 %; measure yours with `benchmarks/quantization.py`. `--finetune DATASET` first fine-tunes the model
for a few epochs on the int8 feature encoder's output ([`simulated_int8_feature_encoder`],
`msemoboost.quantization_aware`), then exports the fine-tuned model: quantisation-aware fine-tuning, which wins that
accuracy back (BENCHMARKS.md section 4). Calibrate on speech like the speech the model will hear, and not on a test
set.

This module needs `onnx`, `onnxscript` and `onnxruntime` (`pip install msemoboost[onnx]`); the modeling files
never import it. Running an exported graph is `msemoboost.onnx_runtime.ONNXClassifier`; the int8 feature encoder's
simulation in torch is `msemoboost.int8_simulation`.
"""

import contextlib
import json
import logging
import math
import re
import warnings
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .acoustic_features import MSEmoBoostMFCC, MSEmoBoostProsody, MSEmoBoostSpectrogram, MSEmoBoostUtteranceLogMel
from .feature_extraction_msemoboost import MSEmoBoostFeatureExtractor
from .int8_simulation import FEATURE_ENCODER, int8_feature_encoder
from .modeling_msemoboost import MSEmoBoostForSequenceClassification
from .onnx_runtime import INPUT_NAMES, INT8_NAME, ONNX_NAME, OUTPUT_NAMES, ONNXClassifier, require

if TYPE_CHECKING:
    from .quantization_aware import QuantizationAwareFineTuning

INT8_SOURCE = "model.int8-source.onnx"  # the fp32 graph that quantize_int8 starts from (see write_graph)
# Opset 23 gives ONNX Runtime whole Attention and Gelu nodes, where opset 18 (the first whose Resize has the
# antialiasing the spectrogram image needs) spells them out in MatMul/Softmax/Erf pieces; the fused kernels run the
# paper-size graph about 5 % faster, fp32 and int8 (BENCHMARKS.md section 4). Its GroupNormalization has no ONNX
# Runtime kernel, though (ONNX Runtime expands it into its function body): see `channel_norm_in_two_levels`.
DEFAULT_OPSET = 23


class MSEmoBoostForONNX(nn.Module):
    """A trained [`MSEmoBoostForSequenceClassification`] as one graph from the raw waveform to logits.

    It computes both branches' STFTs by matrix products, a four-step FFT
    ([`MSEmoBoostPowerSpectrogram.use_matmul_fft`]), switched on in `model`, over `config.segment_chunk_size`
    segments at a time (a `Scan` node), as PyTorch runs its segments: the FFT's intermediates for a long recording's
    hundreds of segments never exist at once.

    Forward inputs: `input_values` `(batch_size, num_samples)`, raw float waveforms in [-1, 1], right-padded, and
    `attention_mask` `(batch_size, num_samples)`, 1 on audio and 0 on padding.

    Forward outputs: `logits` `(batch_size, num_labels)`, as the PyTorch model's in `eval()` mode (calibrated);
    `segment_logits` `(batch_size, num_slots, num_labels)`, each segment's calibrated log-probabilities (raw outputs
    for multi-label and regression models), `num_slots = ceil(num_samples / segment_samples)`, of which the first
    `segments_per_utterance` `(batch_size,)` of each row are the utterance's segments.
    """

    def __init__(self, model: MSEmoBoostForSequenceClassification, normalize: bool):
        super().__init__()
        self.model = model
        self.normalize = normalize
        for module in model.modules():  # ONNX Runtime's STFT is ten times slower than torch's
            if isinstance(module, (MSEmoBoostMFCC, MSEmoBoostProsody, MSEmoBoostSpectrogram, MSEmoBoostUtteranceLogMel)):
                module.use_matmul_fft(rows_per_step=model.config.segment_chunk_size)
        self.single_label = model.config.problem_type in (None, "single_label_classification")

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor):
        base = self.model.msemoboost
        lengths = attention_mask.long().sum(-1)
        if self.normalize:  # MSEmoBoostFeatureExtractor's do_normalize, over each row's audio, as numpy computes it
            # numpy sums float32 pairwise, nearly as exactly as a float64 sum, and does the rest in float32. A plain
            # float32 sum over a recording's samples rounds differently, and the guidance features carry that
            # through to the logits: on a trained CPU-preset fold model, in eager PyTorch with torch.stft, the graph's
            # formulation moved the logits up to 8.0e-5 from the model's (mean 9.7e-6) with float32 sums, 4.6e-5
            # (mean 6.7e-6) with these.
            mask = attention_mask.to(torch.float64)
            count = mask.sum(-1, keepdim=True)
            mean = ((input_values.double() * mask).sum(-1, keepdim=True) / count).to(input_values.dtype)
            deviation = input_values - mean
            variance = ((deviation.square().double() * mask).sum(-1, keepdim=True) / count).to(input_values.dtype)
            input_values = deviation / torch.sqrt(variance + 1e-7) * mask.to(input_values.dtype)
        segments, segment_lengths, segments_per_utterance = base.segment_grid(input_values, lengths)
        batch_size, num_slots, segment_samples = segments.shape
        features = base.encode_segments(segments.reshape(-1, segment_samples), segment_lengths.reshape(-1))[0]
        raw_segment_logits = self.model.classifier(features).reshape(batch_size, num_slots, -1)
        segment_logits = raw_segment_logits.log_softmax(-1) if self.single_label else raw_segment_logits
        is_segment = torch.arange(num_slots, device=lengths.device) < segments_per_utterance[:, None]
        totals = torch.where(is_segment[..., None], segment_logits, 0.0).sum(1)
        logits = totals / segments_per_utterance[:, None].to(totals.dtype)
        if self.model.statistics_classifier is not None:  # as the model's forward, less its input checks
            statistics = self.model.statistics_of_lengths(input_values, lengths)
            logits = logits + self.model.weighted_statistics_log_probabilities(statistics)
        if self.single_label:  # calibrated, as the model's forward and the handler give them
            segment_logits = self.model.calibrated(raw_segment_logits, segments=True).log_softmax(-1)
        return self.model.calibrated(logits), segment_logits, segments_per_utterance


def export(model_dir: str | Path, output: str | Path, quantize: str | None = None, opset: int = DEFAULT_OPSET,
           calibration: list[np.ndarray] | None = None, quantize_feature_encoder: bool = False,
           fine_tuning: "QuantizationAwareFineTuning | None" = None) -> list[Path]:
    """Exports the classifier saved in `model_dir` to `output/model.onnx` (and `model.int8.onnx` with
    `quantize="int8"`), with `config.json` and `preprocessor_config.json` beside it. Returns the ONNX files written.

    `calibration`: raw waveforms at the model's sampling rate; with `quantize="int8"`, the convolutions are quantised
    statically with activation ranges measured on them (see the module docstring). `quantize_feature_encoder`: the
    backbone's convolutional feature encoder too (it needs `calibration`).

    `fine_tuning` (with `quantize_feature_encoder`): first fine-tune the model on the int8 feature encoder's output
    (a [`~msemoboost.quantization_aware.QuantizationAwareFineTuning`]; see that module), then export the fine-tuned
    model. Both graphs then carry the fine-tuned weights, and `output` is also the fine-tuned model's folder
    (`model.safetensors`), which `from_pretrained` loads.

    Raises `ValueError` naming the backbone type and the operator when the exporter cannot translate the model.
    """
    onnx = require("onnx")
    require("onnxscript")  # torch.onnx's exporter translates through it
    model_dir, output = Path(model_dir), Path(output)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir}: not a model folder (it has no config.json).")
    if quantize not in (None, "int8"):
        raise ValueError(f"--quantize takes int8, got {quantize!r}.")
    if calibration is not None and quantize != "int8":
        raise ValueError("--calibration sets the int8 convolutions' activation ranges: it needs --quantize int8.")
    if calibration is not None and not len(calibration):
        raise ValueError("--calibration: no recordings to calibrate on.")
    if quantize_feature_encoder and calibration is None:
        raise ValueError("--quantize_feature_encoder quantises the feature encoder's convolutions statically: it needs "
                         "--quantize int8 and --calibration.")
    if fine_tuning is not None and not quantize_feature_encoder:
        raise ValueError("--finetune trains the model on the int8 feature encoder's output: it needs --quantize int8, "
                         "--calibration and --quantize_feature_encoder.")
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = model.config
    extractor = MSEmoBoostFeatureExtractor.from_pretrained(model_dir)
    fine_tuned = None
    if fine_tuning is not None:
        from .quantization_aware import fine_tune_for_int8

        with tempfile.TemporaryDirectory(prefix="msemoboost-export-") as work:  # the int8 ranges of the model as it is
            write_graph(model, extractor, None, opset, int8_source=Path(work) / INT8_SOURCE)
            quantize_int8(Path(work) / INT8_SOURCE, Path(work) / INT8_NAME, calibration, config.segment_samples,
                          static_feature_encoder=True)
            convolutions = int8_feature_encoder(Path(work) / INT8_NAME, model)
        fine_tuned = fine_tune_for_int8(model, extractor, convolutions, fine_tuning)

    written = [output / ONNX_NAME]
    with tempfile.TemporaryDirectory(prefix="msemoboost-export-") as work:
        int8_source = Path(work) / INT8_SOURCE if quantize == "int8" else None
        write_graph(model, extractor, written[0], opset, int8_source)  # makes `output` once the exporter translated
        for name in ("config.json", "preprocessor_config.json"):  # labels, rates and segmenting, as trained
            shutil.copyfile(model_dir / name, output / name)
        if fine_tuned is not None:
            model.save_pretrained(output)
        if quantize == "int8":
            written.append(quantize_int8(int8_source, output / INT8_NAME, calibration, config.segment_samples,
                                         static_feature_encoder=quantize_feature_encoder))
    (output / "export.json").write_text(json.dumps({
        "source": str(model_dir), "opset": opset, "torch": torch.__version__, "onnx": onnx.__version__,
        "files": [path.name for path in written], "inputs": INPUT_NAMES, "outputs": OUTPUT_NAMES,
        "normalizes_input": bool(extractor.do_normalize),
        "int8_convolutions": None if quantize != "int8" else
        "float" if calibration is None else
        f"static (the backbone's feature encoder {'int8 too' if quantize_feature_encoder else 'float'}), "
        f"calibrated on {len(calibration)} recording(s)",
        "quantization_aware_fine_tuning": fine_tuned,
    }, indent=2) + "\n")
    return written


def write_graph(model: MSEmoBoostForSequenceClassification, extractor: MSEmoBoostFeatureExtractor, path: Path | None,
                opset: int, int8_source: Path | None = None) -> None:
    """Writes `model`'s graph from the raw waveform to logits ([`MSEmoBoostForONNX`]) to `path` (unless None), and
    checks it. The folder of `path` is made only once the exporter has translated the model, so a failed export
    leaves nothing.

    In `path` the backbone's per-channel group norm is summed in two levels (`channel_norm_in_two_levels`), so that
    ONNX Runtime computes it as exactly as PyTorch. With `int8_source`, the same graph is also written there with that
    norm as one faster `InstanceNormalization` kernel (`group_norm_as_instance_norm`): the graph to give
    `quantize_int8`, whose int8 rounding is far larger than that kernel's.

    Raises `ValueError` naming the backbone type and the operator when the exporter cannot translate the model."""
    onnx = require("onnx")
    config = model.config
    wrapper = MSEmoBoostForONNX(model, normalize=bool(extractor.do_normalize)).eval()
    # Example inputs: two rows of different lengths, longer than one segment, so no shape is specialised.
    length = config.segment_samples + config.segment_samples // 2 + 7
    generator = torch.Generator().manual_seed(0)
    input_values = 0.1 * torch.randn(2, length, generator=generator)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, length - config.segment_samples // 3 :] = 0
    dims = {0: torch.export.Dim("batch_size"), 1: torch.export.Dim("num_samples", min=config.min_input_samples)}
    backbone = config.backbone_config.model_type if config.use_backbone_features else "no"
    # Size-oblivious shapes: without them torch.export specialises the graph to more than one 3 s slot (the example
    # has two), and a recording of at most 3 s would be refused.
    from torch.fx.experimental import _config as shape_config

    try:
        with torch.no_grad(), shape_config.patch(backed_size_oblivious=True), exporter_quiet():
            program = torch.onnx.export(
                wrapper, (input_values, attention_mask), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                dynamic_shapes={"input_values": dims, "attention_mask": dims}, opset_version=opset, dynamo=True,
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; name what it could not translate
        raise ValueError(f"Cannot export this model ({backbone} backbone) to ONNX: {export_failure(error)}") from error
    for target, rewrite in ((path, channel_norm_in_two_levels), (int8_source, group_norm_as_instance_norm)):
        if target is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(target))
        graph = onnx.load(str(target), load_external_data=False)  # weights stored beside a large graph stay there
        if rewrite(graph.graph):
            onnx.save(graph, str(target))
        del graph
        onnx.checker.check_model(str(target))


def channel_group_norms(graph) -> list:
    """The `GroupNormalization` nodes of `graph` with one group per channel (their scale holds as many values as
    there are groups) and float32 statistics: the norms that `InstanceNormalization` equals."""
    from onnx import numpy_helper

    sizes = {tensor.name: int(np.prod(tensor.dims)) for tensor in graph.initializer}
    sizes.update({node.output[0]: int(np.prod(numpy_helper.to_array(node.attribute[0].t).shape))
                  for node in graph.node if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"})
    found = []
    for node in graph.node:
        if node.op_type != "GroupNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        attributes = {attribute.name: attribute for attribute in node.attribute}
        if len(node.input) < 3 or sizes.get(node.input[1]) != attributes["num_groups"].i:
            continue  # several channels per group
        if "stash_type" in attributes and attributes["stash_type"].i != 1:  # statistics in another precision than fp32
            continue
        found.append(node)
    return found


def channel_norm_in_two_levels(graph) -> int:
    """Rewrites in place each per-channel `GroupNormalization` node of `graph` (`channel_group_norms`) whose input is
    `(batch, channels, length)` with a known `length` as the same math in plain nodes, with its sums taken in two
    levels: each channel's mean, then its variance as the mean of the squared deviations, each summed over runs of
    `sum_run_length(length)` frames and then over the runs; then `(x - mean) * scale / sqrt(variance + epsilon) +
    bias`. The others become `InstanceNormalization` (`group_norm_as_instance_norm`). Returns how many it rewrote.

    The SSL backbones' feature encoder normalises its first convolution's output so (`feat_extract_norm="group"`:
    9,599 frames per channel for a 3 s segment). ONNX Runtime's `InstanceNormalization` kernel, like its
    `ReduceSum`, adds a channel's frames up in a few running float32 sums, whose rounding grows with their length: on
    a CPU-preset fold model it put that layer's output 6.3e-6 (relative) from PyTorch's, a hundred times PyTorch's own
    rounding, which every later layer carried to the logits (BENCHMARKS.md section 4). Summed in two levels the layer
    is within 2.3e-6 (on outputs up to 15) of float64, at about twice the kernel's time (2 % of the paper-size fp32
    graph's)."""
    from onnx import helper, numpy_helper

    shapes = {value.name: [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
              for value in list(graph.value_info) + list(graph.input)}
    rewritten = {}
    for node in channel_group_norms(graph):
        shape = shapes.get(node.input[0], [])
        if len(shape) != 3 or not shape[2]:
            continue
        length = shape[2]
        run = sum_run_length(length)
        padding = -length % run
        epsilon = next((attribute.f for attribute in node.attribute if attribute.name == "epsilon"), 1e-5)
        prefix = f"{node.output[0]}.two_level."
        constants = {"run_shape": np.array([0, 0, -1, run], np.int64), "last_axis": np.array([-1], np.int64),
                     "length": np.array(length, np.float32), "epsilon": np.array(epsilon, np.float32),
                     "column": np.array([-1, 1], np.int64)}
        if padding:
            constants["padding"] = np.array([0, 0, 0, 0, 0, padding], np.int64)
        graph.initializer.extend(numpy_helper.from_array(value, prefix + name) for name, value in constants.items())
        constant = {name: prefix + name for name in constants}
        nodes = []

        def add(op_type, inputs, **attributes):
            output = f"{prefix}{len(nodes)}"
            nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
            return output

        def summed(values, square=False):  # (batch, channels, length) -> (batch, channels, 1)
            if padding:  # zeros add nothing to the sums
                values = add("Pad", [values, constant["padding"]])
            runs = add("Reshape", [values, constant["run_shape"]])  # (batch, channels, length / run, run)
            runs = add("ReduceSumSquare" if square else "ReduceSum", [runs, constant["last_axis"]], keepdims=0)
            return add("ReduceSum", [runs, constant["last_axis"]], keepdims=1)

        x, scale, bias = node.input[:3]
        mean = add("Div", [summed(x), constant["length"]])
        deviation = add("Sub", [x, mean])
        variance = add("Div", [summed(deviation, square=True), constant["length"]])
        deviation_scale = add("Sqrt", [add("Add", [variance, constant["epsilon"]])])
        factor = add("Div", [add("Reshape", [scale, constant["column"]]), deviation_scale])  # (batch, channels, 1)
        add("Add", [add("Mul", [deviation, factor]), add("Reshape", [bias, constant["column"]])])
        nodes[-1].output[0] = node.output[0]
        for new in nodes:  # the module scopes of the norm, for the profiles
            new.metadata_props.extend(node.metadata_props)
        rewritten[node.output[0]] = nodes  # tensor names are unique in a graph
    if rewritten:
        replaced = [new for node in graph.node for new in rewritten.get(node.output[0], [node])]
        del graph.node[:]
        graph.node.extend(replaced)
    return len(rewritten) + group_norm_as_instance_norm(graph)


def sum_run_length(length: int) -> int:
    """The run length for summing `length` values in two levels: the smallest divisor of `length` that is at least
    its square root, when that leaves at least 8 runs (ONNX Runtime would copy the tensor to pad it), otherwise the
    square root rounded up (the last run padded with zeros). Each float32 running sum then adds up about `run +
    length / run` terms instead of `length`."""
    root = math.isqrt(length - 1) + 1 if length > 1 else 1
    divisor = next(d for d in range(root, length + 1) if length % d == 0)
    return divisor if length // divisor >= 8 else root


def group_norm_as_instance_norm(graph) -> int:
    """Rewrites in place each per-channel `GroupNormalization` node of `graph` (`channel_group_norms`) as the
    `InstanceNormalization` it equals (the same statistics per channel, the same per-channel scale and bias, the same
    epsilon). Returns how many it rewrote.

    The exporter writes `nn.GroupNorm` as opset 21+ `GroupNormalization`, for which ONNX Runtime has no CPU kernel:
    it runs the op's function body, about ten element-wise passes over the largest activation of the graph
    (channels × 1/5 of the samples), each with its own dequantisation in the int8 graph. `InstanceNormalization` is
    one kernel, but a less exact one (see `channel_norm_in_two_levels`): the int8 graphs use it, whose int8 rounding
    is far larger. Groups of several channels are left as they are."""
    rewritten = 0
    for node in channel_group_norms(graph):
        node.op_type = "InstanceNormalization"
        kept = [attribute for attribute in node.attribute if attribute.name == "epsilon"]
        del node.attribute[:]
        node.attribute.extend(kept)
        rewritten += 1
    return rewritten


@contextlib.contextmanager
def exporter_quiet():
    """The exporter's notes about its own internals (deprecations inside torch.export, LSTM weights it reads, axis
    names it merges) say nothing a user can act on: keep them off the terminal."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def export_failure(error: Exception) -> str:
    """The operator (and the exporter's reason) out of an exporter error, on one line."""
    text = " ".join(str(error).split())
    operator = re.search(r"torch\.ops\.([\w.]+)", text) or re.search(r"aten::(\w+)", text)
    reason = re.search(r"<class '[\w.]*(?:Error|Exception)'>: (.{1,200}?)(?: ⬆️|$)", text)
    detail = reason.group(1) if reason else text[:300]
    return f"operator {operator.group(1)} cannot be translated ({detail})" if operator else detail


def quantize_int8(source: Path, destination: Path, calibration: list[np.ndarray] | None = None,
                  segment_samples: int = 48_000, static_feature_encoder: bool = False) -> Path:
    """Dynamic int8 quantisation of the MatMul, Gemm and LSTM nodes with ONNX Runtime, except the feature front end:
    the FFT, mel filter bank and DCT products stay float, as int8 activations cannot hold a power spectrum's range.
    With `calibration` waveforms, first static int8 quantisation of the Conv nodes (`QLinearConv`, weights per
    output channel, activation ranges from the 99.999th percentile over the calibration recordings), except the
    backbone's convolutional feature encoder unless `static_feature_encoder`: quantising it changed 11 % of an older
    recipe's held-out predictions and 1.7 % of the CPU preset's, any one of its seven convolutions alone moves the
    logits, and neither per-channel equalisation nor another calibration method fixed that (BENCHMARKS.md section 4)."""
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    nodes = graph_nodes(onnx.load(str(source), load_external_data=False).graph)
    front_end = front_end_constants(nodes)
    excluded = [node.name for node in nodes if front_end.intersection(node.input)]
    feature_encoder = [node.name for node in nodes if node.op_type == "Conv" and FEATURE_ENCODER in module_scopes(node)
                       and not static_feature_encoder]
    prepared = destination.with_name(destination.stem + ".prepared.onnx")
    convolutions = destination.with_name(destination.stem + ".conv.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if calibration is not None:
            quantize_static(str(prepared), str(convolutions), CalibrationReader(calibration, segment_samples),
                            quant_format=QuantFormat.QOperator, op_types_to_quantize=["Conv"], per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=feature_encoder)
            prepared.unlink()
            convolutions.rename(prepared)
        quantize_dynamic(str(prepared), str(destination), op_types_to_quantize=["MatMul", "Gemm", "LSTM"],
                         weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
    finally:
        prepared.unlink(missing_ok=True)
        convolutions.unlink(missing_ok=True)
    return destination


def front_end_constants(nodes: list) -> set[str]:
    """The names of the front end's constant matrices in a graph's `nodes`: the FFT's bases, the mel filter bank, the
    DCT and the prosody's autocorrelation basis, and the slices of them that the graph takes (the filter bank's runs
    of filters, see `msemoboost.acoustic_features.mel_bands`). The products with them stay float."""
    names = {name for node in nodes for name in node.input
             if name.endswith((".mel_filters", ".dct", ".fft_first", ".fft_second", ".autocorrelation"))}
    for node in nodes:  # in graph order, so slices of slices count too
        if node.op_type == "Slice" and node.input[0] in names:
            names.update(node.output)
    return names


def module_scopes(node) -> str:
    """The torch modules the exporter recorded for an ONNX node (`pkg.torch.onnx.name_scopes`), as one string."""
    return next((prop.value for prop in node.metadata_props if prop.key == "pkg.torch.onnx.name_scopes"), "")


def graph_nodes(graph) -> list:
    """Every node of an ONNX graph, those of its subgraphs (the front end's `Scan` body) included."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                nodes += graph_nodes(subgraph)
    return nodes


class CalibrationReader:
    """ONNX Runtime's calibration data reader protocol over raw waveforms: each recording's consecutive whole
    segments (a recording shorter than one segment, whole), one per batch, so that every batch has the activation
    shapes of one slot (ONNX Runtime's histogram calibrators need equal shapes) and no padding enters the ranges."""

    def __init__(self, waveforms: list[np.ndarray], segment_samples: int):
        segments = [np.asarray(waveform, dtype=np.float32)[start : start + segment_samples]
                    for waveform in waveforms for start in range(0, max(1, len(waveform) - segment_samples + 1), segment_samples)]
        self.feeds = iter([{"input_values": segment[None], "attention_mask": np.ones((1, len(segment)), dtype=np.int64)}
                           for segment in segments])

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


__all__ = ["MSEmoBoostForONNX", "ONNXClassifier", "export"]  # ONNXClassifier: from .onnx_runtime
