"""Calibrating a model's probabilities (temperature scaling) and measuring calibration.

A network trained to minimise cross-entropy on a few speakers is overconfident on new ones: the CPU preset's mean top
probability on EMO-DB test speakers is well above its accuracy. Temperature scaling (Guo et al., 2017, "On
Calibration of Modern Neural Networks") divides the logits by one number `T`, fitted by minimising the log-loss of
held-out predictions; it never changes which class is top, so WA and UA stay as they are. `train.py` fits it on
predictions the model did not train on ([`cross_fitted_temperatures`]) and stores it in the config
(`calibration_temperature`, `segment_calibration_temperature`), which the model's `forward`, the ONNX graph and the
Inference Endpoints handler apply.

The measures, all on top-label confidence:
- [`expected_calibration_error`]: 15 equal-width confidence bins, the bins' |accuracy − mean confidence| weighted by
  their share of the predictions;
- [`log_loss`]: the mean negative log-probability of the true class;
- [`risk_coverage`]: the accuracy of the predictions kept when only the most confident fraction is answered (the
  rest abstain, `msemoboost predict --min_confidence`).
"""

import numpy as np

ECE_BINS = 15
# The temperatures searched, on a log scale: 0.05 to 20, then refined by golden-section search.
LOG_TEMPERATURE_RANGE = (np.log(0.05), np.log(20.0))
COVERAGES = (1.0, 0.9, 0.8, 0.7)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of `(num_items, num_labels)` logits, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def check_predictions(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != (probabilities.shape[0],) or not len(labels):
        raise ValueError(f"Expected probabilities (num_items, num_labels) and labels (num_items,) for at least one "
                         f"item, got shapes {probabilities.shape} and {labels.shape}.")
    if labels.min() < 0 or labels.max() >= probabilities.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {probabilities.shape[1]}), got {labels.min()} to "
                         f"{labels.max()}.")
    return probabilities, labels.astype(np.int64)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean negative natural log of each item's probability of its true class (`labels`, class indices)."""
    probabilities, labels = check_predictions(probabilities, labels)
    true = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(true, 1e-300, None)).mean())


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top label: the items are binned by their top probability into `bins` equal-width bins of (0, 1]
    (a bin holds (lower, upper]); the bins' |accuracy − mean top probability|, weighted by their share of the items."""
    probabilities, labels = check_predictions(probabilities, labels)
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    error = 0.0
    for bin_index in np.unique(which):
        members = which == bin_index
        error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def risk_coverage(probabilities: np.ndarray, labels: np.ndarray, coverages=COVERAGES) -> dict[str, dict]:
    """For each coverage `c`: answer the `round(c * num_items)` items of highest top probability (ties broken by order),
    and give their accuracy and the lowest top probability answered (the `--min_confidence` that keeps them)."""
    probabilities, labels = check_predictions(probabilities, labels)
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == labels
    order = np.argsort(-confidence, kind="stable")
    table = {}
    for coverage in coverages:
        kept = order[: max(1, int(round(coverage * len(labels))))]
        table[f"{coverage:g}"] = {"accuracy": float(correct[kept].mean()), "threshold": float(confidence[kept].min()),
                                  "answered": int(len(kept))}
    return table


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature `T` that minimises the log-loss of `softmax(logits / T)` against `labels` (class indices):
    a grid over 0.05 to 20 on a log scale, refined by golden-section search around its best point."""
    logits = np.asarray(logits, dtype=np.float64)
    _, labels = check_predictions(logits, labels)
    if not np.isfinite(logits).all():
        raise ValueError("Cannot fit a temperature: the logits hold NaN or infinite values.")

    def loss(log_temperature: float) -> float:
        return log_loss(softmax(logits / np.exp(log_temperature)), labels)

    grid = np.linspace(*LOG_TEMPERATURE_RANGE, 121)
    best = int(np.argmin([loss(value) for value in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(40):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return float(np.exp((low + high) / 2))


def measures(before: np.ndarray, after: np.ndarray, labels: np.ndarray) -> dict:
    """ECE, log-loss and mean top probability of the probabilities `before` and `after` calibration, and the
    accuracy (the same for both: calibration keeps the top class)."""
    return {
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "log_loss_before": log_loss(before, labels),
        "log_loss_after": log_loss(after, labels),
        "mean_confidence_before": float(before.max(-1).mean()),
        "mean_confidence_after": float(after.max(-1).mean()),
        "accuracy": float((before.argmax(-1) == np.asarray(labels)).mean()),
    }


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """[`measures`] of `softmax(logits)` (before) and of `softmax(logits / temperature)` (after), with the
    temperature."""
    after = softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return {"temperature": float(temperature), **measures(softmax(logits), after, labels)}


def cross_fitted_temperatures(parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Temperatures from the held-out predictions of several folds, `parts[fold] = (logits, labels)` (each fold's
    model on its own test speakers): `"nested"`, each fold's temperature fitted on the *other* folds' predictions
    only (so a fold's test labels never set the temperature it is scored with); `"all"`, fitted on every fold's (the
    recipe's temperature, for the model trained on all the data)."""
    if len(parts) < 2:
        raise ValueError(f"Cross-fitting a temperature needs 2 folds or more, got {len(parts)}.")

    def fitted(names) -> float:
        return fit_temperature(np.concatenate([parts[name][0] for name in names]),
                               np.concatenate([parts[name][1] for name in names]))

    return {"all": fitted(list(parts)), "nested": {name: fitted([other for other in parts if other != name])
                                                   for name in parts}}


def mean_report(reports: list[dict]) -> dict:
    """The mean over folds of each number in [`calibration_report`]s."""
    return {key: float(np.mean([report[key] for report in reports])) for key in reports[0]}


def pooled_report(parts: dict[str, tuple[np.ndarray, np.ndarray]], temperatures: dict[str, float]) -> dict:
    """ECE, log-loss and mean top probability over every fold's held-out predictions pooled (`parts[fold] = (logits,
    labels)`), before and after each fold's own temperature (`temperatures[fold]`, e.g. the nested ones of
    [`cross_fitted_temperatures`]), the accuracy, and the risk-coverage table of the calibrated probabilities (whose
    `threshold` is the `--min_confidence` that answers that share). Pooled, the bins hold enough predictions for the
    ECE to mean something; a fold of one speaker rarely does."""
    labels = np.concatenate([parts[name][1] for name in parts])
    before = softmax(np.concatenate([parts[name][0] for name in parts]))
    after = softmax(np.concatenate([np.asarray(parts[name][0], dtype=np.float64) / temperatures[name] for name in parts]))
    return {
        "num_items": int(len(labels)),
        **measures(before, after, labels),
        "risk_coverage": risk_coverage(after, labels),
    }
