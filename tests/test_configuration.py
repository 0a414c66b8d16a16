"""MSEmoBoostConfig: serialisation, derived sizes and validation."""

import pytest
import torch
from transformers import AutoModel, BertConfig, Wav2Vec2Config

from msemoboost import SUPPORTED_BACKBONE_TYPES, MSEmoBoostConfig

from tiny import tiny_config


def test_config_survives_dict_and_save_pretrained(tmp_path):
    config = tiny_config("hubert", use_spectrogram=False, id2label={0: "angry", 1: "sad"}, label2id={"angry": 0, "sad": 1})
    as_dict = config.to_dict()
    assert MSEmoBoostConfig.from_dict(as_dict).to_dict() == as_dict
    config.save_pretrained(tmp_path)
    reloaded = MSEmoBoostConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == {**as_dict, "auto_map": {"AutoConfig": "configuration_msemoboost.MSEmoBoostConfig"}}
    assert reloaded.backbone_config.model_type == "hubert"
    assert reloaded.backbone_config.hidden_size == 32
    assert reloaded.use_spectrogram is False
    assert reloaded.id2label == {0: "angry", 1: "sad"}


def test_default_is_the_paper_setting():
    config = MSEmoBoostConfig()
    assert isinstance(config.backbone_config, Wav2Vec2Config)
    assert config.backbone_config.hidden_size == 768
    assert config.segment_samples == 48_000
    assert config.num_backbone_frames(config.segment_samples) == 149
    assert config.num_mfcc_frames == 301
    assert config.min_input_samples == 400


@pytest.mark.parametrize("model_type", SUPPORTED_BACKBONE_TYPES)
def test_backbone_frames_are_derived_from_the_conv_config(model_type):
    config = tiny_config(model_type)
    config.backbone_config.conv_kernel = (7, 5, 3)
    config.backbone_config.conv_stride = (4, 3, 2)
    config.backbone_config.conv_dim = (8, 8, 8)
    config.backbone_config.num_feat_extract_layers = 3
    backbone = AutoModel.from_config(config.backbone_config)
    for num_samples in (400, 16_000, 48_000, 48_017):
        expected = int(backbone._get_feat_extract_output_lengths(torch.tensor(num_samples)))
        assert config.num_backbone_frames(num_samples) == expected
    with torch.no_grad():
        frames = backbone(torch.zeros(1, 48_000)).last_hidden_state.shape[1]
    assert frames == config.num_backbone_frames(48_000)


def test_non_audio_backbone_config_is_refused():
    with pytest.raises(ValueError, match=r"audio SSL model.*BertConfig \(model_type='bert'\)"):
        MSEmoBoostConfig(backbone_config=BertConfig())
    with pytest.raises(ValueError, match=r"audio SSL model.*model_type='whisper'"):
        MSEmoBoostConfig(backbone_config={"model_type": "whisper"})
    with pytest.raises(ValueError, match=r"model_type=None"):
        MSEmoBoostConfig(backbone_config={"hidden_size": 32})


def test_num_labels_disagreeing_with_id2label_is_refused():
    with pytest.raises(ValueError, match=r"num_labels=3 disagrees with id2label, which has 2 labels"):
        MSEmoBoostConfig(num_labels=3, id2label={0: "angry", 1: "sad"})
    with pytest.raises(ValueError, match=r"label2id .* is not the inverse of id2label"):
        MSEmoBoostConfig(id2label={0: "angry", 1: "sad"}, label2id={"angry": 1, "sad": 0})


@pytest.mark.parametrize("new_labels", [None, list("abcdefg"), list("wxyz")], ids=["num_labels", "seven", "four"])
def test_from_pretrained_with_new_labels_replaces_the_saved_ones_as_wav2vec2_does(tmp_path, new_labels):
    # What transformers' audio-classification example passes to fine-tune a checkpoint on a corpus's own classes.
    saved = {"id2label": dict(enumerate("abcd")), "label2id": {label: index for index, label in enumerate("abcd")}}
    tiny_config(**saved).save_pretrained(tmp_path / "msemoboost")
    Wav2Vec2Config(**saved).save_pretrained(tmp_path / "wav2vec2")
    kwargs = {"num_labels": 7 if new_labels is None else len(new_labels)}
    if new_labels is not None:
        kwargs["id2label"] = {str(index): label for index, label in enumerate(new_labels)}
        kwargs["label2id"] = {label: str(index) for index, label in enumerate(new_labels)}
    ours = MSEmoBoostConfig.from_pretrained(tmp_path / "msemoboost", **kwargs)
    theirs = Wav2Vec2Config.from_pretrained(tmp_path / "wav2vec2", **kwargs)
    assert (ours.num_labels, ours.id2label, ours.label2id) == (theirs.num_labels, theirs.id2label, theirs.label2id)
    assert ours.num_labels == kwargs["num_labels"]
    assert ours.id2label[6 if new_labels is None else "1"] == ("LABEL_6" if new_labels is None else new_labels[1])


def test_model_with_no_features_is_refused():
    with pytest.raises(ValueError, match="no features to classify"):
        tiny_config(use_backbone_features=False, use_mfcc=False, use_spectrogram=False)


def test_segment_shorter_than_a_backbone_frame_is_refused():
    with pytest.raises(ValueError, match=r"shorter than one frame of the backbone's feature encoder \(400 samples\)"):
        tiny_config(segment_length_s=0.02)


def test_prosody_settings_that_cannot_work_are_refused_with_the_reason():
    on = {"prosody_statistics": True}
    with pytest.raises(ValueError, match=r"0 < pitch_min_hz < pitch_max_hz <= sampling_rate / 2 = 8000.0, got 300 and 200"):
        MSEmoBoostConfig(pitch_min_hz=300, pitch_max_hz=200, **on)
    with pytest.raises(ValueError, match=r"prosody_n_fft \(1024\) must hold the window \(640\) and the longest pitch "
                                         r"period searched \(ceil\(16000 / pitch_min_hz=40\) = 400 samples\)"):
        MSEmoBoostConfig(pitch_min_hz=40, **on)
    MSEmoBoostConfig(pitch_min_hz=40, prosody_n_fft=2048, **on)  # room for it
    with pytest.raises(ValueError, match=r"prosody_win_length \(256\) must be longer than the longest pitch period "
                                         r"searched \(ceil\(16000 / pitch_min_hz=60.0\) = 267 samples\)"):
        MSEmoBoostConfig(prosody_win_length=256, **on)
    with pytest.raises(ValueError, match=r"pitch_step_semitones must be positive, got 0"):
        MSEmoBoostConfig(pitch_step_semitones=0, **on)
    with pytest.raises(ValueError, match=r"prosody_max_frequency must be in \(0, sampling_rate / 2 = 8000.0\], got 9000"):
        MSEmoBoostConfig(prosody_max_frequency=9000, **on)
    # Without the tracker its settings are not read, so they are not checked (a config for 4 kHz audio still loads).
    MSEmoBoostConfig(prosody_win_length=256, prosody_max_frequency=9000)
    for option in ("mfcc_statistics", "prosody_statistics"):
        with pytest.raises(ValueError, match=rf"{option}=True needs use_mfcc=True: the statistics join the MFCC branch"):
            MSEmoBoostConfig(use_mfcc=False, **{option: True})
