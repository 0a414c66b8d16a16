"""`msemoboost export` and `predict --onnx`: the ONNX graph of the CPU recipe's options against the PyTorch model on
real speech, its int8 versions and the usage errors. Other backbones and ablations: test_export_backbones.py."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from msemoboost import MSEmoBoostConfig, MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification
from msemoboost.acoustic_features import MSEmoBoostMFCC, MSEmoBoostSpectrogram, pre_emphasis
from msemoboost.cli import main
from msemoboost.export import (channel_norm_in_two_levels, export, front_end_constants, graph_nodes,
                               group_norm_as_instance_norm, module_scopes, sum_run_length)
from msemoboost.int8_simulation import int8_feature_encoder, simulated_int8_feature_encoder
from msemoboost.onnx_runtime import INT8_NAME, ONNX_NAME, ONNXClassifier
from onnx_models import LABELS, RECIPE, pytorch_logits, save_model
from tiny import tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    # Calibrated, so that the graph's logits and segment log-probabilities carry both temperatures as PyTorch's do.
    model_dir = save_model(tmp_path_factory.mktemp("model"), **RECIPE, calibration_temperature=1.7,
                           segment_calibration_temperature=0.6)
    output = tmp_path_factory.mktemp("onnx")
    assert export(model_dir, output, quantize="int8") == [output / ONNX_NAME, output / INT8_NAME]
    return model_dir, output


@pytest.mark.parametrize("hop", [160, 150, 512], ids=["hop 160", "hop 150", "hop 512"])
@pytest.mark.parametrize("features", [MSEmoBoostSpectrogram, MSEmoBoostMFCC])
def test_the_graph_s_fft_by_matrix_products_equals_torch_stft(features, hop, emodb_utterances, monkeypatch):
    length = min(len(utterance) for utterance in emodb_utterances)
    waveform = pre_emphasis(torch.from_numpy(np.stack([u[:length] for u in emodb_utterances])), 0.97)
    config = MSEmoBoostConfig(mfcc_hop_length=hop, spectrogram_hop_length=hop)
    by_fft, by_product = features(config), features(config)
    by_product.use_matmul_fft()
    assert by_product.state_dict().keys() == by_fft.state_dict().keys()  # the bases are not saved with the model
    assert by_product.fft_factors == {MSEmoBoostSpectrogram: (25, 32), MSEmoBoostMFCC: (32, 64)}[features]
    expected = by_fft.power_spectrogram(waveform)
    with monkeypatch.context() as patched:  # the products, not the FFT, compute it
        patched.setattr(torch, "stft", lambda *args, **kwargs: pytest.fail("torch.stft ran"))
        found = by_product.power_spectrogram(waveform)
    assert found.shape == expected.shape == (len(emodb_utterances), by_fft.n_fft // 2 + 1, length // hop + 1)
    assert ((found - expected).abs().amax() / expected.amax()).item() < 1e-5
    expected, found = by_fft(waveform), by_product(waveform)
    assert ((found - expected).abs().amax() / expected.abs().amax()).item() < 1e-4  # dB of the weakest bins


@pytest.mark.parametrize("n_fft", [2048, 800, 97], ids=["2048 = 32 x 64", "800 = 25 x 32", "97, a prime"])
def test_the_four_step_fft_holds_for_any_frame_size(n_fft):
    config = MSEmoBoostConfig(spectrogram_n_fft=n_fft, spectrogram_win_length=n_fft, spectrogram_hop_length=40,
                              spectrogram_num_bins=n_fft // 2 + 1)
    by_fft, by_product = MSEmoBoostSpectrogram(config), MSEmoBoostSpectrogram(config)
    by_product.use_matmul_fft()
    waveform = torch.randn(3, 4001, generator=torch.Generator().manual_seed(0))
    expected = by_fft.power_spectrogram(waveform)
    assert ((by_product.power_spectrogram(waveform) - expected).abs().amax() / expected.amax()).item() < 1e-5


def test_the_front_end_in_groups_of_rows_gives_the_same_numbers():
    spectrogram = MSEmoBoostSpectrogram(MSEmoBoostConfig())
    spectrogram.use_matmul_fft()
    waveform = 0.1 * torch.randn(5, 16_000, generator=torch.Generator().manual_seed(0))
    expected = spectrogram(waveform)
    spectrogram.use_matmul_fft(rows_per_step=2)  # groups of 2, 2 and 1 + a zero row
    torch.testing.assert_close(spectrogram(waveform), expected, rtol=0, atol=0)


def test_export_writes_the_graph_with_config_and_preprocessor_beside_it(exported):
    model_dir, output = exported
    for name in ("config.json", "preprocessor_config.json"):
        assert (output / name).read_text() == (model_dir / name).read_text()
    graph = onnx.load(str(output / ONNX_NAME))
    assert [value.name for value in graph.graph.input] == ["input_values", "attention_mask"]
    assert [value.name for value in graph.graph.output] == ["logits", "segment_logits", "segments_per_utterance"]
    for value in graph.graph.input:  # batch and length are dynamic
        assert [dim.dim_param != "" for dim in value.type.tensor_type.shape.dim] == [True, True]
    operators = {node.op_type for node in graph_nodes(graph.graph)}
    assert {"LSTM", "Conv", "Resize"} <= operators  # the guidance branches are inside the graph
    assert not {"STFT", "DFT"} & operators  # both STFTs are the four-step FFT's matrix products
    assert [node.op_type for node in graph.graph.node].count("Scan") == 2  # MFCC and spectrogram, in groups of rows
    # The feature encoder's GroupNorm (one group per channel) summed in two levels; in the int8 graph, the faster
    # InstanceNormalization kernel it equals.
    assert not {"GroupNormalization", "InstanceNormalization"} & operators
    norm = [node for node in graph.graph.node if "feature_extractor.conv_layers.0.layer_norm" in module_scopes(node)]
    assert sorted({node.op_type for node in norm}) == ["Add", "Div", "Mul", "ReduceSum", "ReduceSumSquare", "Reshape",
                                                       "Sqrt", "Sub"]
    int8_operators = [node.op_type for node in onnx.load(str(output / INT8_NAME)).graph.node]
    assert "GroupNormalization" not in int8_operators and int8_operators.count("InstanceNormalization") == 1
    assert json.loads((output / "export.json").read_text())["normalizes_input"] is True
    index_tables = [tuple(tensor.dims) for tensor in graph.graph.initializer if tensor.data_type == onnx.TensorProto.INT64
                    and len(tensor.dims) > 1 and np.prod(tensor.dims) > 10_000]
    assert index_tables == []  # the spectrogram's frames are slices: no (frames × window) table of sample indices


def group_norm_graph(groups: int, shape: list) -> tuple:
    """A graph of one opset-23 `GroupNormalization` of 6 channels in `groups` groups (epsilon 1e-3) over an input of
    `shape` (a str for a dimension not known), with a random scale and bias, and that norm in float64 as a function."""
    from onnx import TensorProto, helper, numpy_helper

    generator = np.random.default_rng(0)
    scale, bias = (generator.normal(size=6).astype(np.float32) for _ in range(2))
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=groups, epsilon=1e-3)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(bias, "bias")])

    def reference(x: np.ndarray) -> np.ndarray:
        return torch.nn.functional.group_norm(torch.from_numpy(x).double(), groups, torch.from_numpy(scale).double(),
                                              torch.from_numpy(bias).double(), eps=1e-3).numpy()

    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), reference


def run_graph(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    onnx.checker.check_model(model)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("groups", [6, 3])
def test_group_norm_with_a_group_per_channel_becomes_the_instance_norm_it_equals(groups):
    model, reference = group_norm_graph(groups, [2, 6, 50])
    x = (3.0 * np.random.default_rng(1).normal(size=(2, 6, 50)) + 1.0).astype(np.float32)
    before = run_graph(model, x)
    assert group_norm_as_instance_norm(model.graph) == (1 if groups == 6 else 0)
    if groups == 6:
        assert [(node.op_type, [(a.name, a.f) for a in node.attribute]) for node in model.graph.node] == [
            ("InstanceNormalization", [("epsilon", pytest.approx(1e-3))])]
    else:  # several channels per group: not an instance norm, left as it was
        assert [node.op_type for node in model.graph.node] == ["GroupNormalization"]
    np.testing.assert_allclose(before, reference(x), atol=1e-5)
    np.testing.assert_allclose(run_graph(model, x), reference(x), atol=1e-5)


@pytest.mark.parametrize("length, run, pads", [(9599, 331, 0), (9601, 98, 2), ("num_frames", None, 0)],
                         ids=["9599 = 29 runs of 331", "9601, a prime: padded", "length not known"])
def test_a_channel_norm_is_summed_in_two_levels_as_exactly_as_float64(length, run, pads):
    """The feature encoder's first norm, on speech-like channels (loud bursts, quiet stretches, and zeros after the
    audio): ONNX Runtime's InstanceNormalization kernel put a CPU-preset model's first layer 9.5e-5 from float64 (3e-5
    and 7e-5 on these data), PyTorch 9e-7; summed in two levels it stays within 1e-5 (6e-6 and 1e-6 measured)."""
    frames = length if isinstance(length, int) else 9599
    assert run is None or sum_run_length(frames) == run
    generator = np.random.default_rng(0)
    loudness = np.repeat(np.exp(2 * generator.normal(size=(2, 6, frames // 100 + 1))), 100, axis=-1)[..., :frames]
    x = generator.normal(size=(2, 6, frames)) * loudness
    x[1, :, int(0.7 * frames) :] = 0
    x = x.astype(np.float32)
    model, reference = group_norm_graph(6, [2, 6, length])
    assert channel_norm_in_two_levels(model.graph) == 1
    operators = [node.op_type for node in model.graph.node]
    if run is None:  # no length to divide into runs: the instance norm kernel
        assert operators == ["InstanceNormalization"]
        return
    assert not {"GroupNormalization", "InstanceNormalization"} & set(operators)
    assert operators.count("Pad") == pads and operators.count("ReduceSum") == 3 and operators.count("ReduceSumSquare") == 1
    assert [node.output[0] for node in model.graph.node][-1] == "y"
    np.testing.assert_allclose(run_graph(model, x), reference(x), atol=1e-5, rtol=0)


def test_onnx_logits_match_pytorch_on_real_speech_batched_and_one_at_a_time(exported, emodb_utterances):
    model_dir, output = exported
    lengths = sorted(len(utterance) for utterance in emodb_utterances)
    assert lengths[0] < 48_000 < lengths[-1] and lengths[-1] % 48_000  # short ones and an overlapping last window
    engine = ONNXClassifier(output)
    logits, segment_logits = engine(emodb_utterances)
    np.testing.assert_allclose(logits, pytorch_logits(model_dir, emodb_utterances), atol=1e-4, rtol=0)
    for utterance, segments in zip(emodb_utterances, segment_logits):
        alone, alone_segments = engine([utterance])
        np.testing.assert_allclose(alone, pytorch_logits(model_dir, [utterance]), atol=1e-4, rtol=0)
        assert len(segments) == max(1, -(-len(utterance) // 48_000))
        np.testing.assert_allclose(alone_segments[0], segments, atol=1e-4, rtol=0)


def test_predict_onnx_gives_the_pytorch_output_timeline_included(exported, emodb, tmp_path):
    model_dir, output = exported
    files = [str(path) for path in sorted((emodb / "audio").glob("*.flac"))[:: 100]]
    assert main(["predict", *files, "--model", str(model_dir), "--timeline", "--output", str(tmp_path / "t.json")]) == 0
    assert main(["predict", *files, "--onnx", str(output), "--timeline", "--output", str(tmp_path / "o.json")]) == 0
    torch_rows, onnx_rows = (json.loads((tmp_path / name).read_text()) for name in ("t.json", "o.json"))
    assert onnx_rows["labels"] == torch_rows["labels"] == LABELS
    for part in ("files", "segments"):
        assert len(onnx_rows[part]) == len(torch_rows[part]) >= len(files)
        for ours, theirs in zip(onnx_rows[part], torch_rows[part]):
            assert {k: v for k, v in ours.items() if k not in LABELS} == {k: v for k, v in theirs.items() if k not in LABELS}
            np.testing.assert_allclose([ours[k] for k in LABELS], [theirs[k] for k in LABELS], atol=1e-4, rtol=0)


def test_int8_quantizes_the_matmuls_and_the_lstm_and_stays_close_to_fp32(exported, emodb_utterances):
    _, output = exported
    fp32, int8 = (onnx.load(str(output / name)) for name in (ONNX_NAME, INT8_NAME))
    assert {"MatMulInteger", "DynamicQuantizeLSTM"} <= {node.op_type for node in int8.graph.node}
    assert not {"MatMulInteger", "DynamicQuantizeLSTM"} & {node.op_type for node in fp32.graph.node}
    # The front end's products in the fp32 graph: per branch the FFT's two, then the mel filter bank's 8 runs of
    # filters (slices of the bank) and the DCT. They keep their names, and stay float, in the int8 graph (in the Scan's
    # body), as int8 activations cannot hold a power spectrum's range.
    fp32_nodes, int8_nodes = graph_nodes(fp32.graph), graph_nodes(int8.graph)
    bank = {name for node in fp32_nodes if node.op_type == "Slice" and node.input[0].endswith(".mel_filters")
            for name in node.output}
    assert len(bank) == len(MSEmoBoostMFCC(MSEmoBoostConfig()).mel_bands) == 8
    constants = front_end_constants(fp32_nodes)
    front_end = {node.name for node in fp32_nodes if node.op_type == "MatMul" and constants.intersection(node.input)}
    assert len(front_end) == 2 * 2 + 8 + 1
    assert sorted(node.op_type for node in int8_nodes if node.name in front_end) == ["MatMul"] * 13
    # Every other product with a constant weight is quantised.
    initializers = {initializer.name for graph in [int8.graph, *(attribute.g for node in int8_nodes for attribute in
                                                                   node.attribute if attribute.HasField("g"))]
                    for initializer in graph.initializer}
    float_products = {node.name for node in int8_nodes if node.op_type in ("MatMul", "Gemm", "LSTM")
                      and initializers.intersection(node.input)}
    assert float_products == front_end
    reference, _ = ONNXClassifier(output)(emodb_utterances)
    quantized, _ = ONNXClassifier(output, int8=True)(emodb_utterances)
    assert 0 < np.abs(quantized - reference).max() < 0.05


def test_calibrated_int8_quantizes_the_convolutions_but_the_feature_encoder_statically(exported, emodb, emodb_utterances,
                                                                                       tmp_path, capsys):
    model_dir, output = exported
    calibration = [str(path) for path in sorted((emodb / "audio").glob("*.flac"))[1::100]]  # not the test utterances
    assert main(["export", "--model", str(model_dir), "--output_dir", str(tmp_path), "--quantize", "int8", "--calibration", *calibration]) == 0
    assert f"wrote {tmp_path / INT8_NAME}" in capsys.readouterr().out
    fp32, dynamic, static = (onnx.load(str(folder / name)) for folder, name in
                             ((output, ONNX_NAME), (output, INT8_NAME), (tmp_path, INT8_NAME)))
    count = lambda graph, op: sum(node.op_type == op for node in graph.graph.node)  # noqa: E731
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir)
    convolutions = sum(isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)) for module in model.modules())
    encoder = len(model.msemoboost.backbone.feature_extractor.conv_layers)
    assert count(fp32, "Conv") == count(dynamic, "Conv") == convolutions > encoder > 0
    assert count(static, "QLinearConv") == convolutions - encoder and count(static, "Conv") == encoder
    float_convolutions = {node.name for node in static.graph.node if node.op_type == "Conv"}
    assert float_convolutions == {node.name for node in fp32.graph.node if node.op_type == "Conv"
                                  and "backbone.feature_extractor.conv_layers." in module_scopes(node)}
    assert count(static, "MatMulInteger") == count(dynamic, "MatMulInteger") > 0
    assert json.loads((tmp_path / "export.json").read_text())["int8_convolutions"] == (
        "static (the backbone's feature encoder float), calibrated on 5 recording(s)")
    assert json.loads((output / "export.json").read_text())["int8_convolutions"] == "float"
    assert (tmp_path / INT8_NAME).stat().st_size < (output / INT8_NAME).stat().st_size
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in output.iterdir())
    reference, _ = ONNXClassifier(output)(emodb_utterances)
    quantized, _ = ONNXClassifier(tmp_path, int8=True)(emodb_utterances)
    assert 0 < np.abs(quantized - reference).max() < 0.1


def exact_int8_products() -> bool:
    """Whether ONNX Runtime's int8 convolutions can be expected to compute exact integer sums here: not on an x86
    CPU without VNNI, where AVX2 adds pairs of u8 x s8 products in saturating 16-bit lanes (ONNX Runtime recommends
    `reduce_range` on non-VNNI CPUs for its accuracy)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    is_x86 = " avx2" in flags or " sse2" in flags
    return not is_x86 or "avx512_vnni" in flags or "avx_vnni" in flags


def test_quantize_feature_encoder_makes_every_convolution_static_int8(exported, emodb, emodb_utterances, tmp_path):
    model_dir, output = exported
    calibration = [str(path) for path in sorted((emodb / "audio").glob("*.flac"))[1::100]]  # not the test utterances
    assert main(["export", "--model", str(model_dir), "--output_dir", str(tmp_path), "--quantize", "int8", "--calibration", *calibration,
                 "--quantize_feature_encoder"]) == 0
    static = onnx.load(str(tmp_path / INT8_NAME))
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir)
    convolutions = sum(isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)) for module in model.modules())
    assert sum(node.op_type == "QLinearConv" for node in static.graph.node) == convolutions
    assert not any(node.op_type == "Conv" for node in static.graph.node)
    assert json.loads((tmp_path / "export.json").read_text())["int8_convolutions"] == (
        "static (the backbone's feature encoder int8 too), calibrated on 5 recording(s)")
    reference, _ = ONNXClassifier(output)(emodb_utterances)
    quantized, _ = ONNXClassifier(tmp_path, int8=True)(emodb_utterances)
    assert np.isfinite(quantized).all() and 0 < np.abs(quantized - reference).max() < 0.2  # 0.043 measured

    # What ONNX Runtime made of the feature encoder, read back, and the PyTorch model computing as it does.
    layers = model.msemoboost.backbone.feature_extractor.conv_layers
    found = int8_feature_encoder(tmp_path / INT8_NAME, model)
    assert len(found) == len(layers) > 0
    for layer, convolution in zip(layers, found):
        weight = layer.conv.weight.detach()
        assert convolution["weight"].shape == weight.shape and convolution["bias"] is None  # wav2vec2: no conv bias
        assert 0 < (convolution["weight"] - weight).abs().max() <= weight.abs().max() / 127
        assert convolution["input_scale"] > 0 and convolution["output_scale"] > 0
        assert 0 <= convolution["input_zero_point"] <= 255 and 0 <= convolution["output_zero_point"] <= 255
    model.eval()
    inputs = MSEmoBoostFeatureExtractor.from_pretrained(model_dir)(emodb_utterances, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs).logits.numpy()
        with simulated_int8_feature_encoder(model, found):
            simulated = model(**inputs).logits.numpy()
        after = model(**inputs).logits.numpy()
    np.testing.assert_array_equal(after, before)  # the context leaves the model as it was
    np.testing.assert_allclose(before, reference, atol=1e-4)
    # The int8 graph's other difference from fp32 is its dynamic MatMuls: the simulation is much nearer to it
    # (mean absolute difference 0.0006 against 0.0138 measured on an Intel Xeon). On an x86 CPU without VNNI the
    # graph's int8 convolutions are not exact integer arithmetic (see exact_int8_products): the simulation is still
    # nearer than fp32, 2.2x (0.0088 against 0.0194 on a 2-core AMD EPYC with AVX2 only, the same figures with the
    # code from before speaker normalisation).
    nearer = 5 if exact_int8_products() else 1
    assert np.abs(simulated - quantized).mean() < np.abs(before - quantized).mean() / nearer
    with pytest.raises(ValueError, match=rf"^{re.escape(str(output / INT8_NAME))}: 0 int8 convolutions match feature "
                                         r"encoder convolution 0 of the model, expected 1: export this model with "
                                         r"--quantize int8 --calibration \.\.\. --quantize_feature_encoder\.$"):
        int8_feature_encoder(output / INT8_NAME, model)
    with pytest.raises(ValueError, match=rf"^1 int8 convolutions for a feature encoder of {len(layers)}\.$"):
        with simulated_int8_feature_encoder(model, found[:1]):
            pass
    guidance_only = tiny_model(use_backbone_features=False, mfcc_normalization="standardize")
    with pytest.raises(ValueError, match=r"^This model has no backbone \(use_backbone_features=False\), so no feature "
                                         r"encoder to quantise\.$"):
        int8_feature_encoder(tmp_path / INT8_NAME, guidance_only)


def test_export_and_predict_onnx_usage_errors(exported, tmp_path, capsys):
    model_dir, output = exported
    assert main(["export", "--model", str(tmp_path), "--output_dir", str(tmp_path / "out")]) == 2
    assert f"{tmp_path}: not a model folder (it has no config.json)." in capsys.readouterr().err
    assert main(["predict", str(model_dir / "config.json"), "--onnx", str(model_dir)]) == 2
    assert f"--onnx {model_dir}: no model.onnx in this folder (write one with msemoboost export)." in capsys.readouterr().err
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / ONNX_NAME).write_bytes((output / ONNX_NAME).read_bytes())
    (tmp_path / "fp32" / "config.json").write_text((output / "config.json").read_text())
    assert main(["predict", str(model_dir / "config.json"), "--onnx", str(tmp_path / "fp32"), "--quantize", "int8"]) == 2
    assert "no model.int8.onnx in this folder (write one with msemoboost export). Export it with --quantize int8." in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["predict", "x.wav", "--model", str(model_dir), "--quantize", "int8"])
    assert "--quantize int8 needs --onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", str(model_dir), "--output_dir", str(tmp_path / "out"), "--calibration", str(model_dir)])
    assert "--calibration sets the int8 convolutions' activation ranges: it needs --quantize int8" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^--calibration sets the int8 convolutions' activation ranges: it needs "
                                         r"--quantize int8\.$"):
        export(model_dir, tmp_path / "out", calibration=[np.zeros(16000, np.float32)])
    with pytest.raises(ValueError, match=r"^--calibration: no recordings to calibrate on\.$"):
        export(model_dir, tmp_path / "out", quantize="int8", calibration=[])
    with pytest.raises(SystemExit):
        main(["export", "--model", str(model_dir), "--output_dir", str(tmp_path / "out"), "--quantize", "int8", "--quantize_feature_encoder"])
    assert ("--quantize_feature_encoder quantises the feature encoder's convolutions statically: it needs --quantize int8 "
            "and --calibration") in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^--quantize_feature_encoder quantises the feature encoder's convolutions "
                                         r"statically: it needs --quantize int8 and --calibration\.$"):
        export(model_dir, tmp_path / "out", quantize="int8", quantize_feature_encoder=True)
    assert not (tmp_path / "out").exists()
