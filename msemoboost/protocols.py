"""Evaluation protocols: leave-one-speaker-out, stratified k-fold, the dataset's own splits, and cross-corpus; and
`train_only`, which evaluates nothing (its run trains the final model on every utterance of every corpus).

Every fold holds out a validation part for early stopping that is drawn from the fold's *training* utterances only
(none with `validation_fraction=0`: every training utterance then trains, for a fixed schedule).
Under `loso`, `splits` and `cross_corpus`, whole training speakers are held out (`StratifiedGroupKFold`), so neither
the test speaker nor any validation speaker is seen in training; under `kfold` (which mixes speakers across folds
by design), and whenever there are no speakers, a stratified random part of the fold's training utterances.

Extra training corpora (`extra_rows`) join the training part of every fold and are never tested or validated on;
under `cross_corpus` they are the only training data (validation speakers are drawn from them), and every row of
the evaluated corpus is tested.
"""

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold, StratifiedKFold, StratifiedShuffleSplit

PROTOCOLS = ("loso", "kfold", "splits", "cross_corpus", "train_only")


@dataclass
class Fold:
    """Row indices of one fold into the corpus table."""

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    test_speakers: list[str]


def make_folds(
    protocol: str,
    labels: np.ndarray,
    speakers: np.ndarray,
    splits: np.ndarray,
    num_folds: int | None = None,
    validation_fraction: float = 0.15,
    seed: int = 0,
    train_split: str = "train",
    validation_split: str | None = "validation",
    test_split: str = "test",
    extra_rows: np.ndarray | None = None,
) -> list[Fold]:
    """Builds the folds of `protocol` over a corpus of `len(labels)` utterances.

    `extra_rows` are the rows of extra training corpora: every fold trains on them too, and never tests on them.
    The protocol folds over the other rows (the evaluated corpus).

    - `loso`: each speaker is the test set once (`LeaveOneGroupOut`). With `num_folds` smaller than the number of
      speakers, speakers are grouped into `num_folds` folds with class-stratified `StratifiedGroupKFold`.
    - `kfold`: `StratifiedKFold` into `num_folds` folds (default 10); speakers, when given, may appear in both parts.
    - `splits`: the dataset's own `train_split` / `validation_split` / `test_split`. Without a validation split, one
      is drawn from the training speakers.
    - `cross_corpus`: one fold that trains on `extra_rows` only and tests on every other row.
    - `train_only`: no fold (nothing is tested; the run's final model trains on every row).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}.")
    if protocol == "train_only":
        return []
    extra_rows = np.asarray([] if extra_rows is None else extra_rows, dtype=int)
    evaluated = np.setdiff1d(np.arange(len(labels)), extra_rows)
    if protocol == "cross_corpus":
        if not len(extra_rows):
            raise ValueError("protocol 'cross_corpus' trains on the extra corpora only: give --extra_train_datasets.")
        has_extra_speakers = not (speakers[extra_rows] == "").all()
        train, validation = hold_out_validation(extra_rows, labels, speakers, has_extra_speakers, validation_fraction, seed)
        test_speakers = sorted(set(map(str, speakers[evaluated]))) if not (speakers[evaluated] == "").all() else []
        return [Fold("cross_corpus", train, validation, evaluated, test_speakers)]
    folds = _evaluated_folds(
        protocol, labels[evaluated], speakers[evaluated], splits[evaluated], num_folds, validation_fraction, seed,
        train_split, validation_split, test_split,
    )
    return [
        Fold(fold.name, np.sort(np.concatenate([evaluated[fold.train], extra_rows])), evaluated[fold.validation],
             evaluated[fold.test], fold.test_speakers)
        for fold in folds
    ]


def select_folds(folds: list[Fold], wanted: list[str] | None) -> list[Fold]:
    """The folds named in `wanted` (by name or by index; all of them when `wanted` is empty or None)."""
    if not wanted:
        return folds
    selected = [fold for index, fold in enumerate(folds) if fold.name in wanted or str(index) in wanted]
    if not selected:
        raise ValueError(f"--folds {wanted} matches no fold.")
    return selected


def _evaluated_folds(
    protocol, labels, speakers, splits, num_folds, validation_fraction, seed, train_split, validation_split, test_split
) -> list[Fold]:
    """The folds of `protocol` (loso, kfold or splits) over one corpus, as row indices into it."""
    rows = np.arange(len(labels))
    has_speakers = bool(len(speakers)) and not (speakers == "").all()
    if protocol == "splits":
        present = sorted(set(map(str, splits)))
        for name in (train_split, test_split):
            if name not in present:
                raise ValueError(f"protocol 'splits' needs a {name!r} split; the dataset has {present}.")
        train = rows[splits == train_split]
        if validation_split in present:
            validation = rows[splits == validation_split]
        else:
            train, validation = hold_out_validation(train, labels, speakers, has_speakers, validation_fraction, seed)
        test = rows[splits == test_split]
        return [Fold("splits", train, validation, test, sorted(set(map(str, speakers[test]))) if has_speakers else [])]

    if protocol == "loso":
        if not has_speakers:
            raise ValueError("protocol 'loso' needs a speaker column (--speaker_column).")
        unique = sorted(set(map(str, speakers)))
        roles = ["one to test", *(["one held out for validation"] if validation_fraction > 0 else []), "one to train on"]
        if len(unique) < len(roles):
            raise ValueError(f"protocol 'loso' needs at least {len(roles)} speakers ({', '.join(roles)}); the dataset "
                             f"has {len(unique)}: {unique}.")
        if num_folds is None or num_folds >= len(unique):
            splitter = LeaveOneGroupOut().split(rows, labels, groups=speakers)
        else:
            splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed).split(rows, labels, speakers)
    else:
        splitter = StratifiedKFold(n_splits=num_folds or 10, shuffle=True, random_state=seed).split(rows, labels)

    folds = []
    for index, (train, test) in enumerate(splitter):
        # k-fold tests every utterance once and mixes speakers by design: validate on a stratified part of the
        # fold's training utterances, so that no held-out speaker's other utterances sit in the test fold.
        by_speaker = has_speakers and protocol == "loso"
        train, validation = hold_out_validation(train, labels, speakers, by_speaker, validation_fraction, seed)
        test_speakers = sorted(set(map(str, speakers[test]))) if has_speakers else []
        if protocol == "loso" and len(test_speakers) == 1:
            name = f"speaker_{test_speakers[0]}"
        else:
            name = f"fold_{index:02d}"
        folds.append(Fold(name, train, validation, test, test_speakers))
    return folds


def hold_out_validation(
    train: np.ndarray, labels: np.ndarray, speakers: np.ndarray, by_speaker: bool, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits training rows into (train, validation). By speaker when speakers are known, else stratified. A
    `fraction` of 0 holds nothing out: the validation part is empty (training then runs a fixed schedule)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}.")
    if fraction == 0:
        return train, train[:0]
    if by_speaker:
        train_speakers = speakers[train]
        num_speakers = len(set(train_speakers))
        if num_speakers < 2:
            raise ValueError(
                "Early stopping needs a validation speaker apart from the training speakers, but the training part "
                f"has only {num_speakers} speaker(s)."
            )
        num_splits = min(num_speakers, max(2, round(1 / fraction)))
        splitter = StratifiedGroupKFold(n_splits=num_splits, shuffle=True, random_state=seed)
        kept, held = next(splitter.split(train, labels[train], train_speakers))
    else:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        try:
            kept, held = next(splitter.split(train, labels[train]))
        except ValueError:  # a class too rare to stratify: fall back to a plain random split
            order = np.random.default_rng(seed).permutation(len(train))
            cut = max(1, round(fraction * len(train)))
            held, kept = order[:cut], order[cut:]
    return train[np.sort(kept)], train[np.sort(held)]
