"""Folds: leave-one-speaker-out, grouped LOSO, stratified k-fold and the dataset's own splits, without leakage."""

import numpy as np
import pytest

from msemoboost.data import load_corpus
from msemoboost.protocols import make_folds


def synthetic(num_speakers=6, per_speaker=20, num_classes=4):
    labels = np.tile(np.arange(num_classes), num_speakers * per_speaker // num_classes)
    speakers = np.repeat([f"s{i}" for i in range(num_speakers)], per_speaker)
    return labels, speakers, np.array(["train"] * len(labels))


def assert_no_leakage(fold, speakers):
    assert not set(fold.train) & set(fold.validation) and not set(fold.train) & set(fold.test)
    assert not set(fold.validation) & set(fold.test)
    train, validation, test = (set(speakers[part]) for part in (fold.train, fold.validation, fold.test))
    assert not train & test, "a test speaker is in training"
    assert not validation & test, "a test speaker takes part in model selection"
    assert not train & validation, "validation speakers must be held out from training"


def test_loso_holds_out_each_speaker_once():
    labels, speakers, splits = synthetic()
    folds = make_folds("loso", labels, speakers, splits)
    assert [fold.name for fold in folds] == [f"speaker_s{i}" for i in range(6)]
    assert [fold.test_speakers for fold in folds] == [[f"s{i}"] for i in range(6)]
    for fold in folds:
        assert_no_leakage(fold, speakers)
        assert len(fold.train) + len(fold.validation) + len(fold.test) == len(labels)


def test_loso_groups_speakers_when_fewer_folds_are_asked():
    labels, speakers, splits = synthetic(num_speakers=10)
    folds = make_folds("loso", labels, speakers, splits, num_folds=5)
    assert len(folds) == 5
    tested = [speaker for fold in folds for speaker in fold.test_speakers]
    assert sorted(tested) == sorted(set(speakers))  # every speaker is tested exactly once
    for fold in folds:
        assert_no_leakage(fold, speakers)


def test_loso_on_emodb_has_eight_speaker_folds(emodb):
    corpus = load_corpus(str(emodb), 16_000, 400, label_column="emotion", speaker_column="speaker")
    folds = make_folds("loso", corpus.labels, corpus.speakers, corpus.splits)
    assert [fold.test_speakers for fold in folds] == [["10"], ["11"], ["12"], ["13"], ["14"], ["3"], ["8"], ["9"]]
    for fold in folds:
        assert_no_leakage(fold, corpus.speakers)
    assert sum(len(fold.test) for fold in folds) == 408


def test_kfold_is_stratified_and_covers_every_utterance_once():
    labels, speakers, splits = synthetic()
    folds = make_folds("kfold", labels, np.array([""] * len(labels)), splits, num_folds=5)
    assert sorted(np.concatenate([fold.test for fold in folds]).tolist()) == list(range(len(labels)))
    for fold in folds:
        assert np.bincount(labels[fold.test]).tolist() == [6, 6, 6, 6]
        assert not set(fold.validation) & set(fold.train)


def test_splits_uses_the_dataset_splits_and_draws_validation_from_training_speakers():
    labels, speakers, _ = synthetic()
    splits = np.where(np.isin(speakers, ["s0"]), "test", "train")
    (fold,) = make_folds("splits", labels, speakers, splits)
    assert set(speakers[fold.test]) == {"s0"}
    assert_no_leakage(fold, speakers)
    with pytest.raises(ValueError, match=r"needs a 'test' split; the dataset has \['train'\]"):
        make_folds("splits", labels, speakers, np.array(["train"] * len(labels)))


def test_loso_needs_two_speakers():
    labels, speakers, splits = synthetic(num_speakers=1)
    with pytest.raises(ValueError, match=r"needs at least 2 speakers; the dataset has 1: \['s0'\]"):
        make_folds("loso", labels, speakers, splits)
    with pytest.raises(ValueError, match="needs a speaker column"):
        make_folds("loso", labels, np.array([""] * len(labels)), splits)

