"""Fitting the whole-utterance statistics classifier (`config.utterance_statistics_classifier`) after training.

The network's own classifier learns its part for the statistics by gradient, with the rest of the network, and with
little regularisation. A convex logistic regression on the same statistics, with a strong L2 penalty chosen by
cross-validation over speakers, generalises to new speakers as the classical functionals + linear SVM recipe does;
and its errors are not the network's. `fit_statistics_classifier` fits one on a model's training utterances and
writes it into the model's `MSEmoBoostStatisticsClassifier`, whose log-probabilities are then added to the
network's at inference (BENCHMARKS.md, section 1).

Needs scikit-learn (the `train` extra).
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .inference import group_codes
from .modeling_msemoboost import MSEmoBoostForSequenceClassification
from .modeling_statistics import MSEmoBoostStatisticsClassifier
from .training import load_wa_ua

logger = logging.getLogger(__name__)

# The inverse L2 penalties tried (scikit-learn's `C`); the anchors' SVMs use the same grid (benchmarks/anchors.py).
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# At most this many cross-validation folds over the training speakers (one speaker per fold when they are fewer).
MAX_FOLDS = 8
# The bias given to a class that no training utterance has: its probability is 0 in float32.
ABSENT_CLASS_BIAS = -1.0e4


def utterance_statistics(
    model: MSEmoBoostForSequenceClassification, dataset, collator, batch_size: int = 8
) -> np.ndarray:
    """`model.utterance_statistics` of every row of `dataset`, batched by `collator` (which gives `input_values`
    and `attention_mask`, as for the model): `(len(dataset), num_statistics)`, float64."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[index] for index in range(start, min(start + batch_size, len(dataset)))])
            attention_mask = batch.get("attention_mask")
            statistics = model.utterance_statistics(
                batch["input_values"].to(model.device), None if attention_mask is None else attention_mask.to(model.device)
            )
            rows.append(statistics.double().cpu().numpy())
    return np.concatenate(rows)


def classify_statistics(model: MSEmoBoostForSequenceClassification, statistics: np.ndarray, groups=None) -> np.ndarray:
    """The statistics classifier's unweighted log-probabilities of `statistics` `(num_utterances, num_statistics)`,
    standardised by group (`groups`, one per utterance) with `config.speaker_normalization`: `(num_utterances,
    num_labels)`, float64."""
    classifier = model.statistics_classifier
    if classifier is None:
        raise ValueError("classify_statistics() needs a model with config.utterance_statistics_classifier=True.")
    values = torch.from_numpy(statistics).to(classifier.mean.device, classifier.mean.dtype)
    with torch.no_grad():
        if model.config.speaker_normalization and groups is not None:
            log_probabilities = classifier(values, *model.group_normalization(values, group_codes(groups)))
        else:
            log_probabilities = classifier(values)
    return log_probabilities.double().cpu().numpy()


def logistic_regression(c: float):
    """The statistics classifier's regression, unfitted: standardisation, then a class-balanced L2 logistic regression
    with penalty `c` (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))


def cross_validated_ua(statistics: np.ndarray, labels: np.ndarray, groups: np.ndarray, c: float, seed: int = 0) -> float:
    """UA of the out-of-fold predictions of a logistic regression with penalty `c`, over folds that hold out whole
    groups (speakers): one group per fold up to `MAX_FOLDS` groups, `MAX_FOLDS` folds of groups beyond. With a
    single group (no speakers known), 5 stratified folds of utterances (fewer when a class has fewer utterances;
    unstratified folds when a class has only one)."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

    num_groups = len(np.unique(groups))
    smallest = np.bincount(labels)[np.unique(labels)].min()
    if num_groups >= 2:
        splits = GroupKFold(n_splits=min(num_groups, MAX_FOLDS)).split(statistics, labels, groups)
    elif smallest >= 2:
        splits = StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=seed).split(statistics, labels)
    else:
        splits = KFold(n_splits=min(5, len(labels)), shuffle=True, random_state=seed).split(statistics)
    predictions = np.empty_like(labels)
    for train, test in splits:
        if len(np.unique(labels[train])) < 2:  # nothing to fit: every held-out utterance is called that one class
            predictions[test] = labels[train][0]
            continue
        predictions[test] = logistic_regression(c).fit(statistics[train], labels[train]).predict(statistics[test])
    return load_wa_ua().compute(predictions=predictions, references=labels)["ua"]


def cross_validated_regression(features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                               c_grid: tuple[float, ...] = C_GRID, seed: int = 0) -> tuple:
    """The logistic regression ([`logistic_regression`]) at the C of `c_grid` with the best [`cross_validated_ua`]
    over `groups`, fitted on every row of `features` `(num_rows, num_features)`: `(the fitted pipeline, that C, {C:
    cross-validated UA})`. Among equal scores the first C of `c_grid` wins: the strongest penalty, the grid ascending."""
    scores = {c: cross_validated_ua(features, labels, groups, c, seed) for c in c_grid}
    best = max(c_grid, key=lambda c: scores[c])
    return logistic_regression(best).fit(features, labels), best, scores


def fit_statistics_classifier(
    model: MSEmoBoostForSequenceClassification,
    statistics: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    c_grid: tuple[float, ...] = C_GRID,
    seed: int = 0,
) -> dict:
    """Fits `model.statistics_classifier`: a class-balanced L2 logistic regression on standardised `statistics`
    `(num_utterances, num_statistics)` (from [`utterance_statistics`]) with class indices `labels`
    `(num_utterances,)`, its penalty `C` chosen from `c_grid` by the UA of speaker-grouped cross-validation
    ([`cross_validated_ua`]; `groups` are the utterances' speakers), then refitted on every utterance. A class that
    no utterance has gets weight 0 and bias `ABSENT_CLASS_BIAS`. The classifier's `mean` and `scale` are the
    training utterances' statistics. With `config.speaker_normalization`, each speaker's statistics are first
    standardised by that speaker's own mean and standard deviation (as the model standardises each group at
    inference), and the regression is fitted on those; with `config.ungrouped_statistics_weight` too, a second
    regression is fitted as without speaker normalisation, for utterances without a group.

    Returns `{"c": the chosen C, "cross_validated_ua": {C: UA}}`, plus `"ungrouped"` (the same for the second
    regression) when it is fitted.
    """
    classifier = model.statistics_classifier
    if classifier is None:
        raise ValueError("fit_statistics_classifier() needs a model with config.utterance_statistics_classifier=True.")
    labels, groups = np.asarray(labels), np.asarray(groups)
    if statistics.shape != (len(labels), classifier.mean.numel()):
        raise ValueError(
            f"statistics has shape {statistics.shape}; expected ({len(labels)}, {classifier.mean.numel()}): one row "
            "of the model's utterance statistics per label."
        )
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(f"The statistics classifier needs at least 2 classes in its training data, got {len(present)}.")
    from sklearn.preprocessing import StandardScaler

    pooled = StandardScaler().fit(statistics)  # the training data's: the standardisation of an utterance without a group
    with torch.no_grad():
        classifier.mean.copy_(torch.from_numpy(pooled.mean_)), classifier.scale.copy_(torch.from_numpy(pooled.scale_))
    fits = {}
    if model.config.speaker_normalization:  # each speaker standardised by its own statistics; no labels used
        values = torch.from_numpy(statistics)
        mean, scale = model.group_normalization(values, group_codes(groups))
        fits[""] = _fitted_regression(((values - mean) / scale).numpy(), labels, groups, c_grid, seed,
                                      classifier.bias.numel(), fold_scaler=True)
        if classifier.ungrouped:
            fits["ungrouped_"] = _fitted_regression(statistics, labels, groups, c_grid, seed, classifier.bias.numel())
    else:
        fits[""] = _fitted_regression(statistics, labels, groups, c_grid, seed, classifier.bias.numel())
    with torch.no_grad():
        for prefix, fit in fits.items():
            for name in ("weight", "bias"):
                getattr(classifier, prefix + name).copy_(torch.from_numpy(fit[name]))
    logger.info(
        f"Statistics classifier: C={fits['']['c']:g} (cross-validated UA by C: "
        + ", ".join(f"{c:g}: {score:.3f}" for c, score in fits[""]["scores"].items())
        + f"), fitted on {len(labels)} utterances of {len(np.unique(groups))} speaker(s)"
        + (", each standardised by its own statistics" if model.config.speaker_normalization else "")
        + (f"; for utterances without a group, C={fits['ungrouped_']['c']:g}" if "ungrouped_" in fits else "") + "."
    )
    found = {"c": fits[""]["c"], "cross_validated_ua": {f"{c:g}": v for c, v in fits[""]["scores"].items()}}
    if "ungrouped_" in fits:
        found["ungrouped"] = {"c": fits["ungrouped_"]["c"],
                              "cross_validated_ua": {f"{c:g}": v for c, v in fits["ungrouped_"]["scores"].items()}}
    return found


def _fitted_regression(statistics: np.ndarray, labels: np.ndarray, groups: np.ndarray, c_grid: tuple[float, ...],
                       seed: int, num_labels: int, fold_scaler: bool = False) -> dict:
    """[`fit_statistics_classifier`]'s regression on `statistics`: `{"c", "scores": {C: UA}, "weight" (num_labels,
    num_statistics), "bias" (num_labels,)}`. Its weights apply to the statistics standardised by the training data's
    (its own standardisation), or with `fold_scaler` to `statistics` as given (its standardisation folded in)."""
    fitted, best, scores = cross_validated_regression(statistics, labels, groups, c_grid, seed)
    scaler, regression = fitted[0], fitted[1]
    coefficients, intercepts = regression.coef_, regression.intercept_
    if fold_scaler:
        coefficients = coefficients / scaler.scale_
        intercepts = intercepts - coefficients @ scaler.mean_
    if len(regression.classes_) == 2:  # scikit-learn's binary model: the logit of the second class against the first
        coefficients = np.concatenate([np.zeros_like(coefficients), coefficients])
        intercepts = np.concatenate([np.zeros_like(intercepts), intercepts])
    weight = np.zeros((num_labels, statistics.shape[1]))
    bias = np.full(num_labels, ABSENT_CLASS_BIAS)
    weight[regression.classes_], bias[regression.classes_] = coefficients, intercepts
    return {"c": best, "scores": scores, "weight": weight, "bias": bias}


def add_ungrouped_regression(model: MSEmoBoostForSequenceClassification) -> None:
    """Gives a speaker-normalised `model` (`config.speaker_normalization`) a statistics classifier with the second
    regression for recordings without a group (`config.ungrouped_statistics_weight`, set to the model's
    `utterance_statistics_weight`), unfitted: [`fit_statistics_classifier`] then fits both."""
    old = model.statistics_classifier
    if old is None or not model.config.speaker_normalization:
        raise ValueError("add_ungrouped_regression() needs a model with config.speaker_normalization=True.")
    model.config.ungrouped_statistics_weight = model.config.utterance_statistics_weight
    model.statistics_classifier = MSEmoBoostStatisticsClassifier(old.mean.numel(), old.bias.numel(), ungrouped=True).to(
        old.mean.device
    )


@contextmanager
def statistics_classifier_off(model: MSEmoBoostForSequenceClassification) -> Iterator[None]:
    """Within the block, the model's `logits` are the network's alone (`utterance_statistics_weight` 0)."""
    weight = model.config.utterance_statistics_weight
    model.config.utterance_statistics_weight = 0.0
    try:
        yield
    finally:
        model.config.utterance_statistics_weight = weight


def fused_logits(parts: dict[str, np.ndarray], weight: float) -> np.ndarray:
    """The fused model's utterance logits at `weight` from one fold's parts (train.py's `fusion_parts.npz`: the
    network's utterance logits `network_logits` and the statistics classifier's unweighted
    `statistics_log_probabilities`, both `(num_utterances, num_labels)`): `network + weight * statistics`."""
    return parts["network_logits"] + weight * parts["statistics_log_probabilities"]


def choose_statistics_weight(folds: dict[str, dict[str, np.ndarray]], grid: tuple[float, ...]) -> dict:
    """Chooses `config.utterance_statistics_weight` by cross-validation over the folds of a run.

    `folds` maps each fold's name to its parts (see [`fused_logits`]; `labels` `(num_utterances,)` are the class
    indices). Each weight of `grid` is scored by the mean over folds of the fused model's UA. The weight for a model
    trained on every fold's data is the best of them. Each fold also gets the weight that does best on the *other*
    folds, never on its own test utterances (nested, leave one fold out): scored at those weights, the folds estimate
    what choosing the weight this way gives on unseen speakers. Ties go to the smaller weight.

    Returns `{"grid", "ua_by_weight": {weight: mean UA}, "per_fold": {fold: {weight: UA}}, "weight": the weight on
    every fold, "nested": {fold: its weight}}` (weights as `%g` strings in the keys; `nested` is empty for one fold).
    """
    if not folds:
        raise ValueError("choose_statistics_weight() needs the parts of at least one fold.")
    grid = tuple(sorted(set(float(weight) for weight in grid)))
    if not grid or any(not 0 <= weight < float("inf") for weight in grid):
        raise ValueError(f"The statistics weights must be finite and non-negative, got {list(grid)}.")
    metric = load_wa_ua()
    scores = {
        name: {
            weight: metric.compute(predictions=fused_logits(parts, weight).argmax(-1), references=parts["labels"])["ua"]
            for weight in grid
        }
        for name, parts in folds.items()
    }

    def best(names: list[str]) -> float:
        return max(grid, key=lambda weight: np.mean([scores[name][weight] for name in names]))

    nested = {name: best([other for other in folds if other != name]) for name in folds} if len(folds) > 1 else {}
    return {
        "grid": list(grid),
        "ua_by_weight": {f"{weight:g}": float(np.mean([scores[name][weight] for name in folds])) for weight in grid},
        "per_fold": {name: {f"{weight:g}": score for weight, score in by_weight.items()} for name, by_weight in scores.items()},
        "weight": best(list(folds)),
        "nested": nested,
    }
