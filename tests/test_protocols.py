"""Folds: leave-one-speaker-out, grouped LOSO, stratified k-fold and the dataset's own splits, without leakage."""

import numpy as np
import pytest

from msemoboost.data import load_corpus
from msemoboost.protocols import make_folds, select_folds


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
    with pytest.raises(ValueError, match=r"^protocol must be one of \['loso', 'kfold', 'splits', 'cross_corpus', 'train_only'\], got 'lolo'.$"):
        make_folds("lolo", labels, speakers, splits)


from msemoboost.protocols import hold_out_validation  # noqa: E402


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_the_validation_fraction_must_lie_in_0_to_1(fraction):
    labels, speakers, _ = synthetic()
    with pytest.raises(ValueError, match=rf"^validation_fraction must be in \[0, 1\), got {fraction}\.$"):
        hold_out_validation(np.arange(len(labels)), labels, speakers, True, fraction, 0)


def test_a_validation_fraction_of_0_holds_nothing_out():
    labels, speakers, splits = synthetic(num_speakers=2)
    for by_speaker in (True, False):
        train, validation = hold_out_validation(np.arange(5, 30), labels, speakers, by_speaker, 0.0, 0)
        assert train.tolist() == list(range(5, 30)) and validation.tolist() == []
    folds = make_folds("loso", labels, speakers, splits, validation_fraction=0.0)  # 2 speakers suffice without validation
    assert [(fold.test_speakers, len(fold.validation)) for fold in folds] == [(["s0"], 0), (["s1"], 0)]
    assert [sorted(set(speakers[fold.train])) for fold in folds] == [["s1"], ["s0"]]
    with pytest.raises(ValueError, match=r"^protocol 'loso' needs at least 2 speakers \(one to test, one to train on\); "
                       r"the dataset has 1: \['s0'\]\.$"):
        make_folds("loso", *synthetic(num_speakers=1), validation_fraction=0.0)


def test_validation_by_speaker_holds_out_about_the_fraction_of_the_speakers():
    labels, speakers, _ = synthetic(num_speakers=20, per_speaker=8)
    rows = np.arange(len(labels))
    for fraction, held_speakers in ((0.5, 10), (0.1, 2), (0.25, 5)):  # round(1 / fraction) speaker groups
        train, validation = hold_out_validation(rows, labels, speakers, True, fraction, 0)
        assert len(set(speakers[validation])) == held_speakers and not set(speakers[train]) & set(speakers[validation])
        assert sorted([*train, *validation]) == rows.tolist()
    with pytest.raises(ValueError, match=r"^Early stopping needs a validation speaker apart from the training speakers, "
                                         r"but the training part has only 1 speaker\(s\)\.$"):
        hold_out_validation(rows[:8], labels, speakers, True, 0.15, 0)


def test_validation_without_speakers_is_stratified_and_falls_back_to_a_seeded_random_cut_for_rare_classes():
    labels = np.array([0] * 40 + [1] * 40)
    rows = np.arange(80)
    train, validation = hold_out_validation(rows, labels, np.array([""] * 80), False, 0.25, 0)
    assert len(validation) == 20 and np.bincount(labels[validation]).tolist() == [10, 10]  # stratified
    rare = np.array([0] * 39 + [1] * 40 + [2])  # class 2 has one utterance: it cannot be stratified
    train, validation = hold_out_validation(rows, rare, np.array([""] * 80), False, 0.25, 3)
    assert len(validation) == 20 and len(train) == 60 and sorted([*train, *validation]) == rows.tolist()
    again, _ = hold_out_validation(rows, rare, np.array([""] * 80), False, 0.25, 3)[::-1]
    assert again.tolist() == validation.tolist()  # seeded
    assert hold_out_validation(rows, rare, np.array([""] * 80), False, 0.25, 4)[1].tolist() != validation.tolist()
    expected = np.sort(np.random.default_rng(3).permutation(80)[:20])
    assert validation.tolist() == expected.tolist()  # the documented fallback: the seed's permutation, cut at 25 %
    tiny = hold_out_validation(rows[:5], np.array([0, 0, 0, 1, 2]), np.array([""] * 5), False, 0.01, 0)[1]
    assert len(tiny) == 1  # at least one validation utterance


def test_cross_corpus_without_extra_corpora_and_loso_without_speakers_are_refused_with_their_messages():
    labels, speakers, splits = synthetic()
    with pytest.raises(ValueError, match=r"^protocol 'cross_corpus' trains on the extra corpora only: give "
                                         r"--extra_train_datasets\.$"):
        make_folds("cross_corpus", labels, speakers, splits)
    with pytest.raises(ValueError, match=r"^protocol 'loso' needs a speaker column \(--speaker_column\)\.$"):
        make_folds("loso", labels, np.array([""] * len(labels)), splits)


def test_cross_corpus_without_speaker_columns_validates_on_utterances_and_names_no_test_speaker():
    labels, speakers, splits = synthetic(num_speakers=4)
    extra = np.arange(40, len(labels))
    no_speakers = np.array([""] * len(labels))
    (fold,) = make_folds("cross_corpus", labels, no_speakers, splits, extra_rows=extra)
    assert fold.test_speakers == [] and fold.test.tolist() == list(range(40))
    assert sorted([*fold.train, *fold.validation]) == extra.tolist() and len(fold.validation) == 6  # 15 % of 40
    with_speakers = np.where(np.isin(np.arange(len(labels)), extra), speakers, "")
    (fold,) = make_folds("cross_corpus", labels, with_speakers, splits, extra_rows=extra)
    assert fold.test_speakers == [] and not set(speakers[fold.train]) & set(speakers[fold.validation])


def test_splits_names_its_test_speakers_only_when_speakers_are_known():
    labels, speakers, _ = synthetic()
    splits = np.where(speakers == "s0", "test", "train")
    assert make_folds("splits", labels, speakers, splits)[0].test_speakers == ["s0"]
    assert make_folds("splits", labels, np.array([""] * len(labels)), splits)[0].test_speakers == []


def test_kfold_folds_are_named_by_number_and_name_no_speaker_without_a_speaker_column():
    labels, speakers, splits = synthetic(num_speakers=1)
    folds = make_folds("kfold", labels, speakers, splits, num_folds=4)
    assert [fold.name for fold in folds] == ["fold_00", "fold_01", "fold_02", "fold_03"]  # one speaker, still k-fold
    assert all(fold.test_speakers == ["s0"] for fold in folds)
    unnamed = make_folds("kfold", labels, np.array([""] * len(labels)), splits, num_folds=4)
    assert all(fold.test_speakers == [] for fold in unnamed)


def test_grouped_loso_makes_the_number_of_folds_asked():
    labels, speakers, splits = synthetic(num_speakers=9)
    folds = make_folds("loso", labels, speakers, splits, num_folds=3)
    assert len(folds) == 3 and sorted(s for fold in folds for s in fold.test_speakers) == sorted(set(speakers))


@pytest.mark.parametrize("protocol", ["cross_corpus", "splits"])
def test_drawn_validation_sets_follow_the_seed(protocol):
    labels, speakers, _ = synthetic(num_speakers=8)
    splits = np.where(speakers == "s0", "test", "train")
    extra = np.arange(20, len(labels)) if protocol == "cross_corpus" else None

    def validation(seed):
        return make_folds(protocol, labels, speakers, splits, seed=seed, extra_rows=extra)[0].validation.tolist()

    assert [validation(seed) for seed in range(6)] == [validation(seed) for seed in range(6)]  # seeded, every time
    assert len({tuple(validation(seed)) for seed in range(6)}) > 1  # the draw depends on the seed


def test_train_only_has_no_fold_and_select_folds_takes_names_or_indices():
    labels, speakers = np.array([0, 1] * 6), np.repeat(["a", "b", "c"], 4)
    assert make_folds("train_only", labels, speakers, np.array(["train"] * 12)) == []
    folds = make_folds("loso", labels, speakers, np.array(["train"] * 12), validation_fraction=0)
    assert [fold.name for fold in select_folds(folds, None)] == ["speaker_a", "speaker_b", "speaker_c"]
    assert [fold.name for fold in select_folds(folds, ["speaker_c", "0"])] == ["speaker_a", "speaker_c"]
    with pytest.raises(ValueError, match=r"^--folds \['speaker_z'\] matches no fold\.$"):
        select_folds(folds, ["speaker_z"])
