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


@pytest.mark.parametrize("with_speakers", [False, True])
def test_kfold_is_stratified_and_covers_every_utterance_once(with_speakers):
    labels, speakers, splits = synthetic()
    speaker_column = speakers if with_speakers else np.array([""] * len(labels))
    folds = make_folds("kfold", labels, speaker_column, splits, num_folds=5, validation_fraction=0.125)
    assert sorted(np.concatenate([fold.test for fold in folds]).tolist()) == list(range(len(labels)))
    for fold in folds:
        assert np.bincount(labels[fold.test]).tolist() == [6, 6, 6, 6]
        # Validation is a stratified part of the fold's training utterances: train + validation + test is everything,
        # and validation has every class in proportion (3 of 96 training utterances per class at 0.125).
        assert sorted(np.concatenate([fold.train, fold.validation, fold.test]).tolist()) == list(range(len(labels)))
        assert not set(fold.validation) & set(fold.test) and not set(fold.validation) & set(fold.train)
        assert np.bincount(labels[fold.validation]).tolist() == [3, 3, 3, 3]


def test_kfold_with_speakers_validates_on_utterances_not_on_whole_speakers():
    labels, speakers, splits = synthetic()
    for fold in make_folds("kfold", labels, speakers, splits, num_folds=5, validation_fraction=0.125):
        # Every speaker keeps utterances in training: no speaker is held out whole.
        assert set(speakers[fold.train]) == set(speakers)


def test_extra_rows_train_every_fold_and_are_never_tested_or_validated():
    labels, speakers, splits = synthetic(num_speakers=4)
    extra_labels, extra_speakers, extra_splits = synthetic(num_speakers=3, per_speaker=8)
    extra_rows = np.arange(len(labels), len(labels) + len(extra_labels))
    all_speakers = np.concatenate([speakers, np.char.add("extra/", extra_speakers)])
    folds = make_folds(
        "loso", np.concatenate([labels, extra_labels]), all_speakers, np.concatenate([splits, extra_splits]),
        extra_rows=extra_rows,
    )
    assert [fold.test_speakers for fold in folds] == [["s0"], ["s1"], ["s2"], ["s3"]]
    for fold in folds:
        assert set(extra_rows) <= set(fold.train)
        assert not set(extra_rows) & (set(fold.validation) | set(fold.test))
        assert_no_leakage(fold, all_speakers)
    assert sorted(np.concatenate([fold.test for fold in folds]).tolist()) == list(range(len(labels)))


def test_cross_corpus_trains_on_the_extra_rows_only_and_tests_every_evaluated_row():
    labels, speakers, splits = synthetic(num_speakers=3)
    extra_labels, extra_speakers, extra_splits = synthetic(num_speakers=6, per_speaker=8)
    extra_rows = np.arange(len(labels), len(labels) + len(extra_labels))
    all_speakers = np.concatenate([speakers, np.char.add("extra/", extra_speakers)])
    (fold,) = make_folds(
        "cross_corpus", np.concatenate([labels, extra_labels]), all_speakers, np.concatenate([splits, extra_splits]),
        extra_rows=extra_rows,
    )
    assert fold.name == "cross_corpus" and fold.test.tolist() == list(range(len(labels)))
    assert sorted(np.concatenate([fold.train, fold.validation]).tolist()) == extra_rows.tolist()
    assert not set(all_speakers[fold.train]) & set(all_speakers[fold.validation])  # whole validation speakers
    with pytest.raises(ValueError, match="protocol 'cross_corpus' trains on the extra corpora only"):
        make_folds("cross_corpus", labels, speakers, splits)


def test_splits_uses_the_dataset_splits_and_draws_validation_from_training_speakers():
    labels, speakers, _ = synthetic()
    splits = np.where(np.isin(speakers, ["s0"]), "test", "train")
    (fold,) = make_folds("splits", labels, speakers, splits)
    assert set(speakers[fold.test]) == {"s0"}
    assert_no_leakage(fold, speakers)
    with pytest.raises(ValueError, match=r"needs a 'test' split; the dataset has \['train'\]"):
        make_folds("splits", labels, speakers, np.array(["train"] * len(labels)))


@pytest.mark.parametrize("num_speakers", [1, 2])
def test_loso_needs_a_test_a_validation_and_a_training_speaker(num_speakers):
    labels, speakers, splits = synthetic(num_speakers=num_speakers)
    with pytest.raises(ValueError, match=r"protocol 'loso' needs at least 3 speakers \(one to test, one held out for "
                       rf"validation, one to train on\); the dataset has {num_speakers}: \['s0'"):
        make_folds("loso", labels, speakers, splits)
    assert len(make_folds("loso", *synthetic(num_speakers=3))) == 3
    with pytest.raises(ValueError, match="needs a speaker column"):
        make_folds("loso", labels, np.array([""] * len(labels)), splits)



@pytest.mark.parametrize("protocol, folds", [("kfold", None), ("kfold", 4), ("loso", 3), ("loso", None)])
def test_folds_are_reproducible_under_a_seed_and_change_with_it(protocol, folds):
    labels, speakers, splits = synthetic(num_speakers=8)
    def fingerprint(seed):
        return [(fold.train.tolist(), fold.validation.tolist(), fold.test.tolist())
                for fold in make_folds(protocol, labels, speakers, splits, num_folds=folds, seed=seed)]
    assert fingerprint(5) == fingerprint(5)
    assert fingerprint(5) != fingerprint(6)  # the shuffles and the validation draw use the seed
    assert fingerprint(0) == [(f.train.tolist(), f.validation.tolist(), f.test.tolist())
                              for f in make_folds(protocol, labels, speakers, splits, num_folds=folds)]  # seed 0 default


def test_kfold_defaults_to_ten_folds_and_loso_with_as_many_folds_as_speakers_is_plain_loso():
    labels, speakers, splits = synthetic()
    assert len(make_folds("kfold", labels, speakers, splits)) == 10
    assert [fold.name for fold in make_folds("loso", labels, speakers, splits, num_folds=6)] == [f"speaker_s{i}" for i in range(6)]


def test_splits_uses_the_datasets_own_validation_split_when_there_is_one():
    labels, speakers, _ = synthetic()
    splits = np.select([speakers == "s0", speakers == "s1"], ["test", "validation"], "train")
    (fold,) = make_folds("splits", labels, speakers, splits)
    assert fold.name == "splits" and fold.test_speakers == ["s0"]
    assert set(speakers[fold.validation]) == {"s1"} and set(speakers[fold.train]) == {"s2", "s3", "s4", "s5"}
    (renamed,) = make_folds("splits", labels, speakers, np.where(splits == "validation", "dev", splits), validation_split="dev")
    assert renamed.validation.tolist() == fold.validation.tolist()


def test_cross_corpus_names_the_evaluated_speakers_and_unknown_protocols_are_refused():
    labels, speakers, splits = synthetic(num_speakers=3)
    extra = np.arange(20, len(labels))  # speakers s1 and s2 are the training corpus
    (fold,) = make_folds("cross_corpus", labels, np.where(np.isin(np.arange(len(labels)), extra), "x" + speakers, speakers),
                         splits, extra_rows=extra)
    assert fold.test_speakers == ["s0"] and fold.test.tolist() == list(range(20))
    with pytest.raises(ValueError, match=r"^protocol must be one of \['loso', 'kfold', 'splits', 'cross_corpus'\], got 'lolo'.$"):
        make_folds("lolo", labels, speakers, splits)
