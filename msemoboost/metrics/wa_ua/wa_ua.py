"""WA and UA, the speech emotion recognition accuracies of the MS-EmoBoost paper, as an `evaluate` metric.

Load it from its local path, which works offline: `evaluate.load("<path>/msemoboost/metrics/wa_ua")`, or
`msemoboost.training.load_wa_ua()`.
"""

import datasets
import evaluate

_DESCRIPTION = """
WA (weighted accuracy) is the fraction of utterances classified correctly. UA (unweighted accuracy) is the mean
over classes of each class's recall, so every class counts equally however many utterances it has. A class that has
no reference utterance has no recall and is left out of UA.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class index of each utterance.
    references (`list[int]`): true class index of each utterance.
Returns:
    wa (`float`): correct / total, in [0, 1].
    ua (`float`): mean per-class recall over the classes present in `references`, in [0, 1].
Examples:
    >>> metric = evaluate.load("msemoboost/metrics/wa_ua")
    >>> metric.compute(predictions=[0, 0, 1, 2], references=[0, 1, 1, 2])
    {'wa': 0.75, 'ua': 0.8333333333333334}
"""

_CITATION = """
@article{song2025msemoboost,
  title={MS-EmoBoost: a novel strategy for enhancing self-supervised speech emotion representations},
  author={Song, Huan and Zhang, Jiawei and Gao, Lu and Zhang, Ping and Hain, Thomas and Shan, Shiguang},
  journal={Scientific Reports}, volume={15}, pages={21607}, year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WaUa(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        if len(references) == 0:
            raise ValueError("WA/UA need at least one utterance; got none.")
        correct = [int(p == r) for p, r in zip(predictions, references)]
        recalls = []
        for label in sorted(set(references)):
            hits = [c for c, r in zip(correct, references) if r == label]
            recalls.append(sum(hits) / len(hits))
        return {"wa": sum(correct) / len(correct), "ua": sum(recalls) / len(recalls)}
