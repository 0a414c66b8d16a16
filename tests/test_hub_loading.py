"""A saved checkpoint loads through every Auto entry point and the pipeline, in a fresh process, offline."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForAudioClassification

import msemoboost
from msemoboost import MSEmoBoostFeatureExtractor
from tiny import speech_like, tiny_model

REMOTE_CODE_FILES = [
    "configuration_msemoboost.py",
    "modeling_msemoboost.py",
    "acoustic_features.py",
    "feature_extraction_msemoboost.py",
    "handler.py",
    "modeling_statistics.py",
    "modeling_enhancement.py",
]

FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification, pipeline

    directory, audio_path = sys.argv[1], sys.argv[2]
    audio = np.load(audio_path)
    extractor = AutoFeatureExtractor.from_pretrained(directory, trust_remote_code=True)
    inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")
    classifier = AutoModelForAudioClassification.from_pretrained(directory, trust_remote_code=True).eval()
    bare = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = classifier(**inputs).logits[0].tolist()
        features = bare(**inputs).utterance_features[0].tolist()
    predictions = pipeline("audio-classification", model=directory, trust_remote_code=True)(audio, top_k=None)
    print(json.dumps({
        "input_values": inputs["input_values"][0].tolist(),
        "logits": logits,
        "features": features,
        "pipeline": predictions,
        "classes": [type(extractor).__name__, type(classifier).__name__, type(bare).__name__],
        "msemoboost_imported": any(name.split(".")[0] == "msemoboost" for name in sys.modules),
    }))
    """
)


def test_fresh_process_loads_the_saved_directory_offline(tmp_path):
    labels = ["anger", "boredom", "neutral", "sadness"]
    model = tiny_model(id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    extractor = MSEmoBoostFeatureExtractor()
    model.save_pretrained(tmp_path / "checkpoint")
    extractor.save_pretrained(tmp_path / "checkpoint")
    audio = speech_like(70_000)  # 4.4 s: two segments
    np.save(tmp_path / "audio.npy", audio)
    inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        features = model.msemoboost(**inputs).utterance_features[0]

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "checkpoint"), str(tmp_path / "audio.npy")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])

    assert loaded["classes"] == ["MSEmoBoostFeatureExtractor", "MSEmoBoostForSequenceClassification", "MSEmoBoostModel"]
    assert loaded["msemoboost_imported"] is False  # everything came from the checkpoint's own code
    np.testing.assert_array_equal(np.array(loaded["input_values"], dtype=np.float32), inputs["input_values"][0].numpy())
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(loaded["features"]), features, rtol=0, atol=1e-6)
    probabilities = logits.softmax(-1)
    assert [item["label"] for item in loaded["pipeline"]] == [labels[i] for i in probabilities.argsort(descending=True)]
    scores = torch.tensor([item["score"] for item in loaded["pipeline"]])
    torch.testing.assert_close(scores, probabilities.sort(descending=True).values, rtol=0, atol=1e-6)


def test_remote_code_imports_only_torch_transformers_and_its_siblings():
    allowed = {"torch", "transformers", "numpy", "math", "dataclasses", "warnings",  # numpy: a transformers dependency
               "base64", "binascii", "struct", "sys"}
    package = Path(msemoboost.__file__).parent
    for name in REMOTE_CODE_FILES:
        tree = ast.parse((package / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [] if node.level else [node.module]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in allowed, f"{name} imports {module}"


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_implementation_reaches_the_backbone(tmp_path, implementation):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForAudioClassification.from_pretrained(
        tmp_path, trust_remote_code=True, attn_implementation=implementation
    ).eval()
    assert loaded.msemoboost.backbone.config._attn_implementation == implementation
    inputs = {"input_values": torch.from_numpy(speech_like(30_000))[None]}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=1e-5)


def test_a_backbone_without_sdpa_gives_transformers_own_error(tmp_path):
    tiny_model(model_type="wavlm").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="WavLMModel does not support an attention implementation through "
                       "torch.nn.functional.scaled_dot_product_attention"):
        AutoModelForAudioClassification.from_pretrained(tmp_path, trust_remote_code=True, attn_implementation="sdpa")
    default = AutoModelForAudioClassification.from_pretrained(tmp_path, trust_remote_code=True)
    assert default.msemoboost.backbone.config._attn_implementation == "eager"


@pytest.mark.parametrize("loading", [{"device_map": "cpu"}, {"device_map": "auto"}, {"low_cpu_mem_usage": True}])
def test_big_model_loading_gives_the_same_model(tmp_path, loading):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path, trust_remote_code=True, **loading).eval()
    assert "MSEmoBoostSpectrogramEncoder" in loaded._no_split_modules
    for name, buffer in model.named_buffers():  # the non-persistent feature buffers are rebuilt exactly
        assert torch.equal(dict(loaded.named_buffers())[name], buffer), name
    inputs = {"input_values": torch.from_numpy(speech_like(30_000))[None]}
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_a_checkpoint_saved_by_msemoboost_0_1_0_loads_with_the_same_outputs():
    """tests/fixtures/checkpoint_0_1_0 was saved by the code of commit d47d230 (before the recipe options, the
    attention flags and the output changes), with the logits it gave on utterances whose segmenting is unchanged."""
    from msemoboost import MSEmoBoostForSequenceClassification

    fixture = Path(__file__).parent / "fixtures" / "checkpoint_0_1_0"
    expected = json.loads((fixture / "expected_logits.json").read_text())
    model = MSEmoBoostForSequenceClassification.from_pretrained(fixture).eval()
    assert model.config.frame_weighting == "linear" and model.config.classifier_input == "pooled"
    extractor = MSEmoBoostFeatureExtractor.from_pretrained(fixture)
    waveforms = [speech_like(length, seed) for length, seed in zip(expected["lengths"], expected["seeds"])]
    with torch.no_grad():
        logits = model(**extractor(waveforms, sampling_rate=16000, return_tensors="pt")).logits
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), rtol=0, atol=1e-6)
