"""The WA/UA metric equals scikit-learn's accuracy and balanced accuracy, on imbalanced labels above all."""

import importlib.util
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from msemoboost.training import WA_UA_PATH, WaUaMetrics, load_wa_ua


@pytest.fixture(scope="module", params=["evaluate.load", "module file"])
def metric(request):
    """The metric as train.py loads it (evaluate copies the file into its cache and imports the copy), and the
    package's file imported in place, so that a change to that file (a mutation test's) reaches the tests too."""
    if request.param == "evaluate.load":
        return load_wa_ua()
    name = "msemoboost.metrics.wa_ua.wa_ua"
    spec = importlib.util.spec_from_file_location(name, WA_UA_PATH / "wa_ua.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.WaUa()


def check_against_sklearn(metric, references, predictions):
    result = metric.compute(predictions=predictions, references=references)
    assert result["wa"] == pytest.approx(accuracy_score(references, predictions), abs=1e-12)
    assert result["ua"] == pytest.approx(balanced_accuracy_score(references, predictions), abs=1e-12)
    return result


def test_imbalanced_labels_give_ua_different_from_wa(metric):
    references = [0] * 8 + [1] * 2 + [2] * 2
    predictions = [0] * 8 + [0, 1] + [0, 2]  # the large class is always right, the small ones half the time
    result = check_against_sklearn(metric, references, predictions)
    assert result == {"wa": 10 / 12, "ua": (1 + 0.5 + 0.5) / 3}


def test_a_class_that_is_never_predicted_counts_with_recall_zero(metric):
    references = [0, 0, 0, 1, 1, 2]
    predictions = [0, 0, 1, 0, 0, 0]  # class 1 and class 2 are never right, class 2 never predicted
    result = check_against_sklearn(metric, references, predictions)
    assert result["ua"] == pytest.approx((2 / 3 + 0 + 0) / 3)


def test_a_class_absent_from_the_references_is_left_out_of_ua(metric):
    # One fold's test speaker has no utterance of class 3, which is still predicted once.
    references = [0, 0, 1, 1, 2, 2, 2]
    predictions = [0, 3, 1, 1, 2, 2, 0]
    with pytest.warns(UserWarning):  # scikit-learn warns about the predicted class that has no reference
        expected = balanced_accuracy_score(references, predictions)
    result = metric.compute(predictions=predictions, references=references)
    assert result["ua"] == pytest.approx(expected) == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert result["wa"] == pytest.approx(5 / 7)


@pytest.mark.parametrize("seed", range(5))
def test_random_imbalanced_folds_match_sklearn(metric, seed):
    rng = np.random.default_rng(seed)
    references = rng.choice(7, size=120, p=[0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02])
    predictions = np.where(rng.random(120) < 0.6, references, rng.integers(0, 7, 120))
    check_against_sklearn(metric, references.tolist(), predictions.tolist())


def test_no_utterances_is_an_error(metric):
    with pytest.raises(ValueError, match=r"^WA/UA need at least one utterance; got none\.$"):
        metric.compute(predictions=[], references=[])


def test_trainer_metrics_take_the_argmax_of_utterance_logits():
    from transformers import EvalPrediction

    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]]))
    result = WaUaMetrics()(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 1, 1])))
    assert result == {"wa": 0.5, "ua": (1 + 1 / 3) / 2}


def test_the_metric_card_describes_wa_ua_its_inputs_and_the_paper(metric):
    metric = type(metric)()  # built here, so that this test is the one that reads the card
    assert "UA (unweighted accuracy) is the mean" in metric.description
    assert "predictions (`list[int]`): predicted class index" in metric.inputs_description
    assert "@article{song2025msemoboost" in metric.citation
