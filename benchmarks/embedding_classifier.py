"""The network's pooled utterance features classified by a speaker-normalised logistic regression fitted after
training, in place of the network's own linear classifier: a lever studied on finished leave-one-corpus-out runs,
without training.

    python benchmarks/embedding_classifier.py outputs/multicorpus_cpu_loco \\
        --output benchmarks/results/embedding_classifier_loco_cpu.json

For each corpus's run in `DIR/<corpus>` (`train.py --protocol leave_one_corpus_out`), its network (the run's
`folds/cross_corpus/model`) gives the pooled features (`model.msemoboost(...).utterance_features`, `(num_utterances,
feature_size)`) of every test utterance and of `--per_corpus` utterances drawn at random (seed 0) from each training
corpus. They are standardised either by the drawn training utterances' statistics or by each speaker's own (the
classical speaker normalisation: a test speaker by its own test utterances, without labels), and classified by the
statistics classifier's regression (`msemoboost.statistics_fusion.logistic_regression`, C by speaker-grouped
cross-validation over the drawn training utterances, `cross_validated_ua`). Reported per corpus: the UA of the run's
network, of each regression alone, and of each fused with the run's statistics classifier (`fusion_parts.npz`) at the
weight chosen on the other corpora (`msemoboost.cross_validation.corpus_weight_choice`), beside the run's own network
at its chosen weight. The network was trained on the training corpora's utterances, so its features separate them
far better than they separate unseen speech: the cross-validated UA that chooses C is no estimate of the test UA.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from anchors import normalize_per_group, train_arguments  # noqa: E402

CORPORA = ("emodb", "ravdess", "tess", "nemo", "ased")
STANDARDISATIONS = ("training data's", "each speaker's own")


def run_features(run: Path, tested: str, per_corpus: int) -> dict[str, np.ndarray]:
    """The run's network's pooled features of its test corpus and of `per_corpus` utterances of each training corpus,
    with their labels (the run's classes), speakers and whether each is a test utterance; cached in the run's
    `folds/cross_corpus/pooled_features_<per_corpus>.npz`."""
    cache = run / "folds" / "cross_corpus" / f"pooled_features_{per_corpus}.npz"
    if cache.exists():
        return dict(np.load(cache))
    found = computed_features(run, tested, per_corpus)
    np.savez(cache, **found)
    return found


def computed_features(run: Path, tested: str, per_corpus: int) -> dict[str, np.ndarray]:
    import torch

    from msemoboost import MSEmoBoostFeatureExtractor, MSEmoBoostForSequenceClassification
    from msemoboost.arguments import parse_arguments
    from msemoboost.cross_validation import load_corpora, model_config
    from msemoboost.data import AudioCollator

    shared = REPO.parent / "shared" / "data"
    argv = train_arguments("cross_corpus", str(shared / tested), [str(shared / name) for name in CORPORA if name != tested])
    model_args, data_args, *_ = parse_arguments(argv)
    corpus, _, _ = load_corpora(data_args, model_config(model_args), "cross_corpus")
    model_dir = run / "folds" / "cross_corpus" / "model"
    model = MSEmoBoostForSequenceClassification.from_pretrained(model_dir).eval()
    if [model.config.id2label[index] for index in range(model.config.num_labels)] != corpus.label_names:
        raise ValueError(f"{model_dir} classifies {model.config.id2label}, not {tested}'s shared classes {corpus.label_names}.")
    collate = AudioCollator(MSEmoBoostFeatureExtractor.from_pretrained(model_dir))
    sources = np.asarray(corpus.dataset["corpus"])
    generator = np.random.default_rng(0)
    rows = [np.flatnonzero(sources == tested)] + [
        np.sort(generator.choice(np.flatnonzero(sources == name), min(per_corpus, int((sources == name).sum())), replace=False))
        for name in CORPORA if name != tested
    ]
    rows = np.concatenate(rows)
    features = []
    with torch.no_grad():
        for start in range(0, len(rows), 8):
            batch = collate([corpus.dataset[int(row)] for row in rows[start:start + 8]])
            outputs = model.msemoboost(batch["input_values"], attention_mask=batch.get("attention_mask"), return_dict=True)
            features.append(outputs.utterance_features.double().numpy())
    return {"features": np.concatenate(features), "labels": np.asarray(corpus.labels)[rows],
            "speakers": np.asarray(corpus.speakers).astype(str)[rows], "test": sources[rows] == tested}


def regression_log_probabilities(found: dict[str, np.ndarray], features: np.ndarray, num_labels: int) -> tuple[np.ndarray, float]:
    """The regression fitted on the training utterances' `features`: the test utterances' log-probabilities
    `(num_test, num_labels)` (a class the training utterances lack gets -inf) and the C chosen."""
    from msemoboost.statistics_fusion import cross_validated_regression

    train, test = ~found["test"], found["test"]
    fitted, best, _ = cross_validated_regression(features[train], found["labels"][train], found["speakers"][train])
    log_probabilities = np.full((int(test.sum()), num_labels), -np.inf)
    log_probabilities[:, fitted.classes_] = fitted.predict_log_proba(features[test])
    return log_probabilities, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("loco_dir", type=Path, help="a train.py --protocol leave_one_corpus_out output folder")
    parser.add_argument("--per_corpus", type=int, default=600, help="utterances drawn from each training corpus")
    parser.add_argument("--output", type=Path, help="JSON file for the results (default: print only)")
    args = parser.parse_args()
    from msemoboost.cross_validation import corpus_weight_choice
    from msemoboost.training import load_wa_ua, read_arguments_file

    grid = read_arguments_file(REPO / "configs" / "multicorpus_cpu.yaml")["statistics_weight_grid"]
    metric = load_wa_ua()
    tested = [name for name in CORPORA if (args.loco_dir / name / "folds" / "cross_corpus" / "fusion_parts.npz").exists()]
    if len(tested) < 2:
        parser.error(f"{args.loco_dir} holds fewer than 2 finished runs with folds/cross_corpus/fusion_parts.npz.")
    parts = {}
    for name in tested:  # the fusion of the regression for recordings without a group is not studied here
        parts[name] = dict(np.load(args.loco_dir / name / "folds" / "cross_corpus" / "fusion_parts.npz"))
        parts[name].pop("ungrouped_statistics_log_probabilities", None)
    variants = {"the run's network": parts}
    results = {"per_corpus": args.per_corpus, "corpora": {}}
    for name in tested:
        found = run_features(args.loco_dir / name, name, args.per_corpus)
        if not np.array_equal(found["labels"][found["test"]], parts[name]["labels"]):
            raise ValueError(f"{name}: the test utterances' labels differ from its run's fusion_parts.npz.")
        row = {"network": metric.compute(predictions=parts[name]["network_logits"].argmax(-1), references=parts[name]["labels"])["ua"]}
        for standardisation in STANDARDISATIONS:
            features = found["features"]
            if standardisation == STANDARDISATIONS[1]:
                features = normalize_per_group(features, found["speakers"])
            log_probabilities, c = regression_log_probabilities(found, features, parts[name]["network_logits"].shape[1])
            row[standardisation] = {"c": c, "ua": metric.compute(predictions=log_probabilities.argmax(-1), references=parts[name]["labels"])["ua"]}
            variants.setdefault(standardisation, {})[name] = {**parts[name], "network_logits": log_probabilities}
        results["corpora"][name] = row
        print(name, json.dumps(row), flush=True)
    for variant, found in variants.items():
        choice = corpus_weight_choice(found, grid)
        mean_ua = float(np.mean([score["ua"] for score in choice["scores"].values()]))
        results.setdefault("fused_at_the_weight_chosen_on_the_other_corpora", {})[variant] = {
            "scores": choice["scores"], "mean_ua": mean_ua}
        print(f"fused, {variant}: " + ", ".join(f"{name} {100 * score['ua']:.1f} (weight {score['statistics_weight']:g})"
                                              for name, score in choice["scores"].items()) + f"; mean {100 * mean_ua:.1f}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
