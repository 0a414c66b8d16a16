"""The classical anchors: openSMILE functionals with a support vector machine, on exactly train.py's folds.

    python benchmarks/anchors.py                                   # EMO-DB LOSO: ComParE_2016 + linear SVM, eGeMAPSv02 + RBF SVM,
                                                                   # the model's MFCC (and prosody) statistics + linear SVM
    python benchmarks/anchors.py --anchors "MFCC statistics (the model's) + linear SVM"
    python benchmarks/anchors.py --dataset_name ../shared/data/ravdess --num_folds 6 \\
        --anchors "the model's statistics classifier (utterance statistics and their distributions)"
    python benchmarks/anchors.py --dataset_name ../shared/data/ravdess --num_folds 6
    python benchmarks/anchors.py --protocol cross_corpus --dataset_name ../shared/data/emodb \\
        --extra_train_datasets ../shared/data/ravdess
    python benchmarks/anchors.py --speaker_normalization                # each speaker standardised by its own statistics
    python benchmarks/anchors.py --protocol leave_one_corpus_out --dataset_name ../shared/data/emodb \\
        --extra_train_datasets ../shared/data/{ravdess,tess,nemo,ased} [--speaker_normalization] \\
        [--corpora emodb ravdess] --output results.json  # some corpora now, the others added to the file later

Folds come from `msemoboost.protocols.make_folds` with train.py's corpus loading, so the test utterances of every
fold are the model's. Each fold's SVM is standardised on its training part; its C is chosen on the fold's validation
speakers (the part train.py uses for early stopping), from a fixed grid, by UA; the chosen SVM is then refitted on
training + validation and tested once. When the model's run holds no validation part (`--validation_fraction 0`),
the anchors still choose C on train.py's default share of validation speakers: the test utterances, and the
utterances the final SVM is fitted on (training + validation), are the same either way. The anchors named "the
model's statistics classifier" are the model's whole-utterance statistics classifier on its own
(`utterance_statistics_classifier`, `msemoboost.statistics_fusion`), fitted on each fold's training + validation
utterances exactly as train.py fits it in the model (C by cross-validation over those speakers). Features are computed
from the same decoded 16 kHz waveforms the model reads, and cached per corpus in outputs/benchmarks/features/.
`leave_one_corpus_out` tests each corpus once with the anchors trained on all the others (train.py's `cross_corpus`
folds, over the classes they share). With `--corpora`, only those corpora are tested, and an `--output` file that
exists keeps its other corpora's results (from the same options), each corpus's written as soon as it is done: a
fit that takes hours can be run a corpus at a time, in separate processes (at the same time too: each re-reads the
file before it writes); each anchor's mean is written once every corpus is in.
"""

import argparse
import copy
import hashlib
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

MFCC_STATISTICS = "mfcc_statistics"
MFCC_AND_PROSODY_STATISTICS = "mfcc_and_prosody_statistics"
UTTERANCE_STATISTICS = "utterance_statistics"
UTTERANCE_DISTRIBUTION_STATISTICS = "utterance_distribution_statistics"
ANCHORS = {
    "ComParE_2016 + linear SVM": ("ComParE_2016", "linear"),
    "eGeMAPSv02 + RBF SVM": ("eGeMAPSv02", "rbf"),
    # The same functionals with liblinear's linear SVM (one-vs-rest, squared hinge loss, `LinearSVC`): it fits the
    # 10,000 training utterances of a leave-one-corpus-out fold, where libsvm's (`SVC`, one-vs-one) does not finish.
    "ComParE_2016 + LinearSVC": ("ComParE_2016", "liblinear"),
    # Not openSMILE: the statistics that the model's `mfcc_statistics` (and `prosody_statistics`) options add to its
    # MFCC branch, on their own.
    "MFCC statistics (the model's) + linear SVM": (MFCC_STATISTICS, "linear"),
    "MFCC and prosody statistics (the model's) + linear SVM": (MFCC_AND_PROSODY_STATISTICS, "linear"),
    # Not openSMILE either: the model's own whole-utterance statistics classifier (`utterance_statistics_classifier`)
    # on its own, fitted exactly as train.py fits it in the model, without and with the distribution statistics.
    "the model's statistics classifier (utterance statistics)": (UTTERANCE_STATISTICS, "logistic"),
    "the model's statistics classifier (utterance statistics and their distributions)": (
        UTTERANCE_DISTRIBUTION_STATISTICS, "logistic"),
}
from msemoboost.statistics_fusion import C_GRID  # noqa: E402  (the statistics classifier's grid is the anchors')


def cached_per_corpus(corpus, name: str, compute) -> np.ndarray:
    """Features of every row of `corpus.dataset`, `(num_rows, num_features)`, cached on disk per source corpus and
    utterance (outputs/benchmarks/features/NAME_CORPUS.npz), so that every fold and every protocol that reads a corpus
    computes each of its utterances once. `compute(rows)` gives the features of those row indices."""
    table = corpus.dataset
    sources = np.asarray(table["corpus"]) if "corpus" in table.column_names else np.full(len(table), "")
    utterances = np.asarray(table["utterance_id"])
    features = None
    for source in np.unique(sources):
        rows = np.flatnonzero(sources == source)
        cache = REPO / "outputs" / "benchmarks" / "features" / f"{name}_{source or 'corpus'}.npz"
        known = dict(np.load(cache, allow_pickle=False)) if cache.exists() else {"ids": np.array([], dtype=str)}
        index = {utterance: position for position, utterance in enumerate(known["ids"])}
        missing = [row for row in rows if utterances[row] not in index]
        if missing:
            computed = np.asarray(compute(np.asarray(missing)), dtype=np.float64)
            ids = np.concatenate([known["ids"], utterances[missing]])
            values = computed if "features" not in known else np.concatenate([known["features"], computed])
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, ids=ids, features=values)
            known = {"ids": ids, "features": values}
            index = {utterance: position for position, utterance in enumerate(ids)}
        part = known["features"][[index[utterance] for utterance in utterances[rows]]]
        if features is None:
            features = np.empty((len(table), part.shape[1]))
        features[rows] = part
    return features


def functionals(corpus, feature_set: str) -> np.ndarray:
    """openSMILE functionals of every row of `corpus.dataset`, `(num_rows, num_features)`, cached on disk."""
    import opensmile

    from msemoboost.data import decode_audio

    smile = opensmile.Smile(
        feature_set=getattr(opensmile.FeatureSet, feature_set), feature_level=opensmile.FeatureLevel.Functionals
    )

    def compute(rows: np.ndarray) -> np.ndarray:
        found = []
        for index in rows:
            waveform = decode_audio(corpus.dataset[int(index)]["audio"], corpus.sampling_rate)
            found.append(smile.process_signal(waveform, corpus.sampling_rate).to_numpy()[0])
        return np.nan_to_num(np.asarray(found, dtype=np.float64))

    return cached_per_corpus(corpus, feature_set, compute)


def mfcc_statistics(corpus, config, prosody: bool = False) -> np.ndarray:
    """The model's own MFCC statistics of every whole utterance, `(num_rows, 3 * num_mfcc)`: per coefficient, the
    mean, the standard deviation and the frame-to-frame standard deviation over the frames that hold audio
    (`MSEmoBoostMFCCEncoder.statistics`, of the pre-emphasised waveform's MFCCs as `config` computes them). With
    `prosody`, the 9 prosody statistics follow (`MSEmoBoostMFCCEncoder.prosody_statistics`), their audio fraction
    being the utterance's length over one segment's."""
    import torch

    from msemoboost.acoustic_features import pre_emphasis
    from msemoboost.data import decode_audio
    from msemoboost.modeling_msemoboost import MSEmoBoostMFCCEncoder

    config = copy.deepcopy(config)
    config.mfcc_statistics, config.prosody_statistics = True, prosody
    encoder = MSEmoBoostMFCCEncoder(config).eval()
    rows = []
    with torch.no_grad():
        for index in range(len(corpus.dataset)):
            waveform = torch.from_numpy(decode_audio(corpus.dataset[index]["audio"], corpus.sampling_rate))[None]
            emphasised = pre_emphasis(waveform.float(), config.pre_emphasis)
            mfcc = encoder.mfcc(emphasised)
            length = torch.tensor([waveform.shape[1]])
            mask = encoder.frame_mask(mfcc, length)
            rows.append(encoder.segment_statistics(emphasised, mfcc, mask, length)[0].double().numpy())
    return np.asarray(rows)


def statistics_classifier_model(corpus, config, distributions: bool, speaker_normalization: bool = False):
    """A model that holds only the MFCC branch's statistics and an unfitted whole-utterance statistics classifier
    (with `distributions`, on the distribution statistics too; with `speaker_normalization`, on statistics
    standardised per speaker), for `corpus`'s labels."""
    from msemoboost import MSEmoBoostForSequenceClassification

    config = copy.deepcopy(config)
    config.use_backbone_features, config.use_spectrogram = False, False
    config.mfcc_statistics = config.prosody_statistics = config.utterance_statistics_classifier = True
    config.utterance_distribution_statistics = distributions
    config.speaker_normalization = speaker_normalization
    config.num_labels = len(corpus.label_names)
    return MSEmoBoostForSequenceClassification(config).eval()


def model_statistics(corpus, model) -> np.ndarray:
    """`model.utterance_statistics` of every row of `corpus.dataset`, `(num_rows, num_statistics)`, cached on disk
    (they depend on the model's feature settings, never on its fitted weights)."""
    from msemoboost import MSEmoBoostConfig, MSEmoBoostFeatureExtractor
    from msemoboost.data import AudioCollator
    from msemoboost.statistics_fusion import utterance_statistics

    extractor = MSEmoBoostFeatureExtractor(sampling_rate=corpus.sampling_rate, do_normalize=True)
    # The settings away from the defaults name the cache, so that a new configuration field keeps the caches valid.
    defaults = MSEmoBoostConfig().to_dict()
    settings = {key: value for key, value in model.config.to_dict().items()
                if key not in ("id2label", "label2id", "num_labels", "speaker_normalization", "transformers_version")
                and (key not in defaults or value != defaults[key])}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cached_per_corpus(corpus, f"model_statistics_{key}",
                             lambda rows: utterance_statistics(model, corpus.dataset.select(rows), AudioCollator(extractor)))


def statistics_classifier_fold(model, features, labels, speakers, fold) -> tuple[np.ndarray, float]:
    """Test predictions of one fold by the model's statistics classifier, fitted on the fold's training and
    validation parts as train.py fits it (C by cross-validation over their speakers), and the C chosen."""
    from msemoboost.statistics_fusion import classify_statistics, fit_statistics_classifier

    seen = np.concatenate([fold.train, fold.validation])
    fitted = fit_statistics_classifier(model, features[seen], labels[seen], speakers[seen])
    # With speaker normalisation, each test speaker is standardised by its own test utterances (no labels).
    return classify_statistics(model, features[fold.test], speakers[fold.test]).argmax(-1), fitted["c"]


def svm_fold(features, labels, fold, kernel: str) -> tuple[np.ndarray, float]:
    """Test predictions of one fold, and the C chosen on its validation part."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    from msemoboost.training import load_wa_ua

    metric = load_wa_ua()

    def model(c):
        if kernel == "liblinear":
            return make_pipeline(StandardScaler(), LinearSVC(C=c, class_weight="balanced", max_iter=5000, random_state=0))
        return make_pipeline(StandardScaler(), SVC(kernel=kernel, C=c, gamma="scale", class_weight="balanced"))

    scores = []
    for c in C_GRID:
        fitted = model(c).fit(features[fold.train], labels[fold.train])
        predicted = fitted.predict(features[fold.validation])
        scores.append(metric.compute(predictions=predicted, references=labels[fold.validation])["ua"])
    best = C_GRID[int(np.argmax(scores))]
    seen = np.concatenate([fold.train, fold.validation])
    return model(best).fit(features[seen], labels[seen]).predict(features[fold.test]), best


def normalize_per_group(features: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each group's functionals standardised with that group's own mean and standard deviation (no labels used):
    per corpus, the usual first step of cross-corpus emotion recognition, which removes recording-level offsets; per
    speaker, the classical speaker normalisation."""
    normalized = np.empty_like(features)
    for name in np.unique(groups):
        rows = groups == name
        mean, std = features[rows].mean(0), features[rows].std(0)
        normalized[rows] = (features[rows] - mean) / np.where(std > 0, std, 1.0)
    return normalized


def run_anchors(argv: list[str], anchors=tuple(ANCHORS), corpus_normalization: bool = False,
                speaker_normalization: bool = False) -> dict:
    """WA/UA of each anchor on train.py's folds for the train.py arguments `argv` (dataset, protocol, extras, seed).
    With `corpus_normalization`, functionals are first standardised per corpus, with `speaker_normalization` per
    speaker ([`normalize_per_group`]; the statistics classifier then uses the model's own speaker normalisation)."""
    from msemoboost.arguments import ProtocolArguments, parse_arguments
    from msemoboost.cross_validation import load_corpora, model_config
    from msemoboost.protocols import make_folds
    from msemoboost.reporting import confusion_matrix, mean_std
    from msemoboost.training import load_wa_ua

    model_args, data_args, _, protocol_args, training_args, _ = parse_arguments(argv)
    config = model_config(model_args)
    corpus, extra_rows, report = load_corpora(data_args, config, protocol_args.protocol)
    # An SVM's C needs a validation part; its final fit and its test utterances are the same with any share.
    validation_fraction = protocol_args.validation_fraction or ProtocolArguments.validation_fraction
    folds = make_folds(
        protocol_args.protocol, corpus.labels, corpus.speakers, corpus.splits, protocol_args.num_folds,
        validation_fraction, training_args.seed, protocol_args.train_split,
        protocol_args.validation_split, protocol_args.test_split, extra_rows,
    )
    metric = load_wa_ua()
    results = {}
    for anchor in anchors:
        feature_set, kernel = ANCHORS[anchor]
        model = None
        if feature_set in (UTTERANCE_STATISTICS, UTTERANCE_DISTRIBUTION_STATISTICS):
            model = statistics_classifier_model(corpus, config, distributions=feature_set == UTTERANCE_DISTRIBUTION_STATISTICS,
                                                speaker_normalization=speaker_normalization)
            features = model_statistics(corpus, model)
        elif feature_set in (MFCC_STATISTICS, MFCC_AND_PROSODY_STATISTICS):
            features = mfcc_statistics(corpus, config, prosody=feature_set == MFCC_AND_PROSODY_STATISTICS)
        else:
            features = functionals(corpus, feature_set)
        if corpus_normalization:
            features = normalize_per_group(features, np.asarray(corpus.dataset["corpus"]) if "corpus" in
                                           corpus.dataset.column_names else np.zeros(len(features)))
        if speaker_normalization and model is None:  # the statistics classifier normalises by speaker itself
            features = normalize_per_group(features, np.asarray(corpus.speakers))
        per_fold, matrix = [], 0
        for fold in folds:
            if model is not None:
                predicted, c = statistics_classifier_fold(model, features, corpus.labels, np.asarray(corpus.speakers), fold)
            else:
                predicted, c = svm_fold(features, corpus.labels, fold, kernel)
            scores = metric.compute(predictions=predicted, references=corpus.labels[fold.test])
            per_fold.append({"fold": fold.name, "wa": scores["wa"], "ua": scores["ua"], "C": c, "num_test": len(fold.test)})
            matrix = matrix + confusion_matrix(corpus.labels[fold.test], predicted, len(corpus.label_names))
        results[anchor] = {
            "wa": mean_std([fold["wa"] for fold in per_fold]),
            "ua": mean_std([fold["ua"] for fold in per_fold]),
            "folds": per_fold,
            "confusion_matrix": np.asarray(matrix).tolist(),
            "label_names": corpus.label_names,
            "corpora": report,
        }
        print(f"{anchor}: WA {results[anchor]['wa']['mean']:.2%} ± {results[anchor]['wa']['std']:.2%}  "
              f"UA {results[anchor]['ua']['mean']:.2%} ± {results[anchor]['ua']['std']:.2%}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default=str(REPO.parent / "shared" / "data" / "emodb"))
    parser.add_argument("--protocol", default="loso")
    parser.add_argument("--num_folds", type=int)
    parser.add_argument("--extra_train_datasets", nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus_normalization", action="store_true",
                        help="standardise each corpus's functionals with its own statistics first (cross-corpus)")
    parser.add_argument("--speaker_normalization", action="store_true",
                        help="standardise each speaker's features with its own statistics first (test speakers over "
                             "their own unlabelled test utterances); the statistics classifier with the model's own "
                             "speaker normalisation")
    parser.add_argument("--anchors", nargs="+", choices=list(ANCHORS), default=list(ANCHORS), metavar="ANCHOR",
                        help=f"the anchors to run (default: all): {', '.join(map(repr, ANCHORS))}")
    parser.add_argument("--corpora", nargs="+", metavar="NAME", help="with --protocol leave_one_corpus_out, the "
                        "corpora to test (folder names; default: all); an --output file that exists keeps the others'")
    parser.add_argument("--output", type=Path, help="JSON file for the results (default: print only)")
    args = parser.parse_args()
    if args.corpora and args.protocol != "leave_one_corpus_out":
        parser.error("--corpora is for --protocol leave_one_corpus_out.")

    def arguments(protocol: str, dataset_name: str, extras: list[str] | None) -> list[str]:
        return train_arguments(protocol, dataset_name, extras, args.seed, args.num_folds)

    options = dict(anchors=args.anchors, corpus_normalization=args.corpus_normalization,
                   speaker_normalization=args.speaker_normalization)
    if args.protocol == "leave_one_corpus_out":
        results = leave_one_corpus_out([args.dataset_name, *(args.extra_train_datasets or [])], arguments, options,
                                       args.corpora, args.output)
    else:
        results = run_anchors(arguments(args.protocol, args.dataset_name, args.extra_train_datasets), **options)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


def train_arguments(protocol: str, dataset_name: str, extras: list[str] | None, seed: int = 0,
                    num_folds: int | None = None) -> list[str]:
    """The train.py arguments that load a shared corpus (`emotion` labels, `speaker` column) and make its folds under
    `protocol`, with `extras` as extra training corpora."""
    argv = ["--dataset_name", dataset_name, "--label_column", "emotion", "--speaker_column", "speaker",
            "--protocol", protocol, "--seed", str(seed), "--output_dir", "/tmp/unused"]
    if num_folds:
        argv += ["--num_folds", str(num_folds)]
    return argv + (["--extra_train_datasets", *extras] if extras else [])


def leave_one_corpus_out(corpora: list[str], arguments, options: dict, tested: list[str] | None = None,
                         output: Path | None = None) -> dict:
    """Each corpus tested once by the anchors trained on all the others (train.py's `cross_corpus` folds, over the
    classes the tested corpus shares with them): per corpus and, once every corpus is in, mean WA/UA of each anchor.

    `tested` names the corpora to test now (default: all). Where `output` exists, its results for the other corpora
    are then kept (every requested anchor's, with the same `options`). After each tested corpus the results so far
    are written to `output`, with those that another call testing other corpora has written to it meanwhile."""
    names = [Path(corpus).name for corpus in corpora]
    if len(corpora) < 2:
        raise SystemExit("leave_one_corpus_out needs 2 corpora or more: --dataset_name A --extra_train_datasets B ...")
    unknown = sorted(set(tested or []) - set(names))
    if unknown:
        raise SystemExit(f"--corpora {' '.join(unknown)}: not among the corpora given ({', '.join(names)}).")
    def kept() -> dict[str, dict]:  # the other corpora's results in `output`, as they are now
        if not (tested and output and output.exists()):
            return {}
        return {name: by_anchor for name, by_anchor in known_corpora(output, options).items()
                if name in names and name not in tested}

    others, found = kept(), {}  # read first too: a file of other options or anchors stops the run before it starts
    for corpus in corpora:
        name = Path(corpus).name
        if name not in (tested or names):
            continue
        print(f"== tested on {name}, trained on {', '.join(Path(c).name for c in corpora if c != corpus)}", flush=True)
        found[name] = run_anchors(arguments("cross_corpus", corpus, [c for c in corpora if c != corpus]), **options)
        if output:  # with what another call testing other corpora has written meanwhile
            others = kept()
            output.write_text(json.dumps(corpus_summaries({**others, **found}, names, options), indent=2) + "\n")
    results = corpus_summaries({**others, **found}, names, options)
    for anchor, result in results.items():
        if "ua" in result:
            print(f"{anchor}: mean over corpora WA {result['wa']:.2%}  UA {result['ua']:.2%}  ("
                  + ", ".join(f"{name} {row['ua']:.1%}" for name, row in result["per_corpus"].items()) + ")", flush=True)
    return results


def corpus_summaries(per_corpus: dict[str, dict], names: list[str], options: dict) -> dict:
    """`leave_one_corpus_out`'s results from each tested corpus's `run_anchors` results (`per_corpus`, by name): per
    anchor, its row for each corpus in the order of `names`, the options it ran with, and its mean WA/UA once every
    corpus of `names` is in."""
    results = {}
    done = [name for name in names if name in per_corpus]
    for anchor in options["anchors"]:
        rows = {name: {"wa": per_corpus[name][anchor]["wa"]["mean"], "ua": per_corpus[name][anchor]["ua"]["mean"],
                       "label_names": per_corpus[name][anchor]["label_names"],
                       "num_test": per_corpus[name][anchor]["folds"][0]["num_test"]} for name in done}
        results[anchor] = {"per_corpus": rows, "options": {key: options[key] for key in OPTIONS},
                           "details": {name: per_corpus[name][anchor] for name in done}}
        if len(done) == len(names):
            results[anchor] |= {"wa": float(np.mean([row["wa"] for row in rows.values()])),
                                "ua": float(np.mean([row["ua"] for row in rows.values()]))}
    return results


OPTIONS = ("corpus_normalization", "speaker_normalization")


def known_corpora(output: Path, options: dict) -> dict[str, dict]:
    """The `run_anchors` results by corpus that an earlier `leave_one_corpus_out` wrote to `output`: the corpora for
    which it holds every anchor of `options`. An anchor recorded with other options is an error naming the file."""
    recorded = json.loads(output.read_text())
    found = {}
    for anchor in options["anchors"]:
        if anchor not in recorded:
            raise SystemExit(f"{output} holds no results of {anchor!r} (it has {', '.join(map(repr, recorded))}): give "
                             "another --output.")
        wanted = {key: options[key] for key in OPTIONS}
        if recorded[anchor].get("options") != wanted:
            raise SystemExit(f"{output} holds {anchor!r} with options {recorded[anchor].get('options')}, not {wanted}: "
                             "give another --output.")
        for name, details in recorded[anchor]["details"].items():
            found.setdefault(name, {})[anchor] = details
    return {name: by_anchor for name, by_anchor in found.items() if set(by_anchor) == set(options["anchors"])}


if __name__ == "__main__":
    main()
