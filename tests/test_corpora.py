"""Several corpora in one run through train.py: extra training corpora, cross-corpus testing, transfer."""

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_TRAIN_ARGS, read_csv, run_train

from msemoboost.arguments import parse_arguments
from msemoboost.training import load_wa_ua



def run(corpus: Path, output: Path, *extra: str) -> dict:
    return run_train(["--dataset_name", str(corpus), "--output_dir", str(output), *TINY_TRAIN_ARGS, *extra])


def extra_corpus(corpus_dir: Path, directory: Path, speakers: list[str], relabel: dict[str, str],
                 columns=("file_name", "actor", "emo")) -> Path:
    """A copy of some speakers of the demo corpus with other column names and some classes renamed."""
    (directory / "audio").mkdir(parents=True)
    rows = [row for row in read_csv(corpus_dir / "metadata.csv") if row["speaker"] in speakers]
    with open(directory / "metadata.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for row in rows:
            shutil.copy(corpus_dir / row["file_name"], directory / row["file_name"])
            writer.writerow([row["file_name"], f"x{row['speaker']}", relabel.get(row["emotion"], row["emotion"])])
    return directory


def columns_for(path: Path) -> list[str]:
    return ["--extra_train_columns", json.dumps({str(path): {"label_column": "emo", "speaker_column": "actor"}})]


def test_extra_corpora_join_training_are_never_tested_and_their_other_classes_are_dropped(corpus_dir, tmp_path):
    extra = extra_corpus(corpus_dir, tmp_path / "extra", ["spk1", "spk2"], {"sad": "calm"})
    summary = run(corpus_dir, tmp_path / "out", "--folds", "0", "--final_model", "false",
                  "--extra_train_datasets", str(extra), *columns_for(extra))
    assert summary["label_names"] == ["angry", "happy", "neutral", "sad"]
    # The extra corpus's 2 speakers x 2 "calm" utterances are dropped; its 2 x 10 others train every fold.
    assert summary["corpora"]["extra"] == {
        "utterances": 20, "dropped": {"calm": 4}, "num_dropped": 4, "label_names": ["angry", "happy", "neutral"]
    }
    assert summary["corpora"]["demo"]["utterances"] == 72
    fold = json.loads((tmp_path / "out" / "folds" / "speaker_spk1" / "results.json").read_text())
    assert fold["num_test"] == 12 and fold["num_train"] + fold["num_validation"] == 60 + 20
    assert not any(speaker.startswith("extra/") for speaker in fold["validation_speakers"])
    predicted = read_csv(tmp_path / "out" / "predictions.csv")
    assert {row["speaker"] for row in predicted} == {"spk1"} and len(predicted) == 12
    assert summary["num_utterances"] == 12


def test_mask_absent_classes_scores_each_corpus_s_utterances_over_its_own_classes(corpus_dir, tmp_path, monkeypatch):
    from msemoboost import MSEmoBoostForSequenceClassification

    seen = []
    loss = MSEmoBoostForSequenceClassification.classification_loss

    def recording(self, segment_logits, logits, labels, segments_per_utterance, class_mask=None):
        seen.append((labels.clone(), None if class_mask is None else class_mask.clone()))
        return loss(self, segment_logits, logits, labels, segments_per_utterance, class_mask=class_mask)

    monkeypatch.setattr(MSEmoBoostForSequenceClassification, "classification_loss", recording)
    extra = extra_corpus(corpus_dir, tmp_path / "extra", ["spk1", "spk2"], {"sad": "calm"})  # has no "sad"
    arguments = ["--folds", "0", "--final_model", "false", "--num_train_epochs", "1", "--extra_train_datasets", str(extra),
                 *columns_for(extra)]
    run(corpus_dir, tmp_path / "out", *arguments)  # on by default
    training = [(labels, mask) for labels, mask in seen if mask is not None]  # validation and test batches have none
    masks = torch.cat([mask for _, mask in training])
    labels = torch.cat([labels for labels, _ in training])
    # One epoch: demo's training utterances with every class allowed; extra's 20, with "sad" (index 3) left out.
    assert sorted(map(tuple, masks.tolist())).count((True, True, True, False)) == 20
    assert sorted(map(tuple, masks.tolist())).count((True, True, True, True)) == len(masks) - 20
    assert (labels[~masks[:, 3]] != 3).all()
    seen.clear()
    run(corpus_dir, tmp_path / "plain", *arguments, "--mask_absent_classes", "false")
    assert seen and all(mask is None for _, mask in seen)  # one softmax over every class


def test_class_masks_are_written_only_when_some_corpus_lacks_a_class():
    import datasets

    from msemoboost.data import EmotionCorpus, combine_corpora

    def corpus(label_names, labels):
        table = datasets.Dataset.from_dict({"labels": labels, "speaker": ["a"] * len(labels)})
        return EmotionCorpus(dataset=table, label_names=label_names, sampling_rate=16000)

    evaluated = corpus(["angry", "bored", "sad"], [0, 1, 2])
    lacking = combine_corpora(evaluated, "emodb", [("ravdess", corpus(["angry", "calm", "sad"], [0, 1, 2, 2]))],
                              class_masks=True)
    assert lacking.corpus.dataset["class_mask"] == [[True] * 3] * 3 + [[True, False, True]] * 3  # "calm" dropped
    complete = combine_corpora(evaluated, "emodb", [("other", corpus(["angry", "bored", "sad"], [2, 1]))],
                               class_masks=True)
    assert "class_mask" not in complete.corpus.dataset.column_names  # every corpus has every class
    shared = combine_corpora(evaluated, "emodb", [("ravdess", corpus(["angry", "calm", "sad"], [0, 2]))],
                             shared_labels_only=True, class_masks=True)
    assert shared.corpus.label_names == ["angry", "sad"] and "class_mask" not in shared.corpus.dataset.column_names


def test_masking_absent_classes_cannot_be_combined_with_label_smoothing(corpus_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(corpus_dir, tmp_path / "out", "--extra_train_datasets", "x", "--label_smoothing_factor", "0.1")
    assert ("--mask_absent_classes (on by default with --extra_train_datasets) cannot be combined with "
            "--label_smoothing_factor") in " ".join(capsys.readouterr().err.split())
    arguments = parse_arguments(["--dataset_name", "x", "--label_smoothing_factor", "0.1"])  # no extra corpora
    assert arguments[1].mask_absent_classes and arguments[4].label_smoothing_factor == 0.1


def test_cross_corpus_trains_on_the_extra_corpora_and_tests_the_shared_classes(corpus_dir, tmp_path):
    extra = extra_corpus(corpus_dir, tmp_path / "extra", ["spk1", "spk2", "spk3", "spk4"], {"sad": "calm"})
    summary = run(corpus_dir, tmp_path / "out", "--protocol", "cross_corpus", "--extra_train_datasets", str(extra),
                  *columns_for(extra))
    assert summary["label_names"] == ["angry", "happy", "neutral"]  # "sad" is not shared, "calm" neither
    assert summary["corpora"]["demo"] == {
        "utterances": 60, "dropped": {"sad": 12}, "num_dropped": 12, "label_names": ["angry", "happy", "neutral"]
    }
    assert summary["corpora"]["extra"]["dropped"] == {"calm": 8}
    (fold,) = summary["folds"]
    assert fold["fold"] == "cross_corpus" and fold["num_test"] == 60 == summary["num_utterances"]
    assert fold["num_train"] + fold["num_validation"] == 4 * 10
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()  # the published model is the fold's


def test_leave_one_corpus_out_tests_each_corpus_once_trained_on_all_the_others(corpus_dir, tmp_path):
    first = extra_corpus(corpus_dir, tmp_path / "first", ["spk1", "spk2", "spk3"], {"sad": "calm"})
    second = extra_corpus(corpus_dir, tmp_path / "second", ["spk4", "spk5", "spk6"], {})
    columns = {str(path): {"label_column": "emo", "speaker_column": "actor"} for path in (first, second)}
    output = tmp_path / "out"
    statistics = ["--model_config_overrides", json.dumps({"mfcc_statistics": True, "utterance_statistics_classifier": True})]
    summary = run(corpus_dir, output, "--protocol", "leave_one_corpus_out", "--extra_train_datasets", str(first),
                  str(second), "--extra_train_columns", json.dumps(columns), "--num_train_epochs", "1", *statistics)
    assert summary["corpora"] == ["demo", "first", "second"] and "statistics_weight" not in summary
    runs = {name: json.loads((output / name / "results.json").read_text()) for name in summary["corpora"]}
    for name, tested in runs.items():
        assert tested["protocol"] == "cross_corpus" and tested["data"]["dataset_name"].endswith(name)
        assert sorted(tested["corpora"]) == ["demo", "first", "second"]  # tested on itself, trained on the others
        assert summary["per_corpus"][name]["ua"] == tested["ua"]["mean"]
        assert summary["per_corpus"][name]["num_test"] == tested["num_utterances"]
    # Over the classes each shares with the others: "calm" (only in first) and nothing else is left out.
    assert runs["demo"]["label_names"] == ["angry", "happy", "neutral", "sad"] and runs["demo"]["num_utterances"] == 72
    assert runs["first"]["label_names"] == ["angry", "happy", "neutral"] and runs["first"]["num_utterances"] == 30
    assert runs["second"]["label_names"] == ["angry", "happy", "neutral", "sad"]
    # Trained over the tested corpus's classes only: second's "sad" utterances are left out when first is tested.
    assert runs["first"]["corpora"]["second"] == {
        "utterances": 30, "dropped": {"sad": 6}, "num_dropped": 6, "label_names": ["angry", "happy", "neutral"]
    }
    assert summary["ua"]["mean"] == pytest.approx(sum(r["ua"]["mean"] for r in runs.values()) / 3, abs=1e-12)
    assert json.loads((output / "results.json").read_text()) == summary
    # Killed before its summary: run again, each finished corpus is read back, not trained again.
    (output / "results.json").unlink()
    runs["first"]["ua"]["mean"] = 0.125
    (output / "first" / "results.json").write_text(json.dumps(runs["first"]))
    weights = (output / "first" / "model" / "model.safetensors").stat().st_mtime_ns
    again = run(corpus_dir, output, "--protocol", "leave_one_corpus_out", "--extra_train_datasets", str(first),
                str(second), "--extra_train_columns", json.dumps(columns), "--num_train_epochs", "1", *statistics)
    assert again["per_corpus"]["first"]["ua"] == 0.125 and again["per_corpus"]["demo"] == summary["per_corpus"]["demo"]
    assert (output / "first" / "model" / "model.safetensors").stat().st_mtime_ns == weights
    # With a grid, each corpus is scored again at the statistics weight chosen on the other two runs' parts.
    (output / "results.json").unlink()
    chosen = run(corpus_dir, output, "--protocol", "leave_one_corpus_out", "--extra_train_datasets", str(first),
                 str(second), "--extra_train_columns", json.dumps(columns), "--num_train_epochs", "1", *statistics,
                 "--statistics_weight_grid", "0", "1", "100")
    assert chosen["per_corpus"]["first"]["at_model_weight"]["ua"] == 0.125
    assert chosen["statistics_weight"]["grid"] == [0.0, 1.0, 100.0] and set(chosen["statistics_weight"]["nested"]) == {
        "demo", "first", "second"}
    parts = dict(np.load(output / "second" / "folds" / "cross_corpus" / "fusion_parts.npz"))
    weight = chosen["per_corpus"]["second"]["statistics_weight"]
    assert weight == chosen["statistics_weight"]["nested"]["second"]
    assert chosen["per_corpus"]["second"]["ua"] == load_wa_ua().compute(
        predictions=(parts["network_logits"] + weight * parts["statistics_log_probabilities"]).argmax(-1),
        references=parts["labels"])["ua"]


def test_leave_one_corpus_out_reports_each_part_every_corpus_reports(tmp_path):
    from msemoboost.reporting import summarize_leave_one_corpus_out

    def run_summary(ua: float, parts: dict) -> dict:
        return {"wa": {"mean": ua + 0.1}, "ua": {"mean": ua}, "num_utterances": 10, "label_names": ["a", "b"],
                "corpora": {}, **{part: {"wa": {"mean": v + 0.1}, "ua": {"mean": v}} for part, v in parts.items()}}

    runs = {"x": run_summary(0.5, {"network": 0.4, "statistics_classifier": 0.3, "ungrouped": 0.45}),
            "y": run_summary(0.7, {"network": 0.6, "statistics_classifier": 0.5})}
    summary = summarize_leave_one_corpus_out(runs, tmp_path)
    assert summary["network"]["ua"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.1)}
    assert summary["statistics_classifier"]["wa"]["mean"] == pytest.approx(0.5)
    assert summary["per_corpus"]["y"]["network"] == {"wa": pytest.approx(0.7), "ua": 0.6}
    assert "ungrouped" not in summary and "ungrouped" not in summary["per_corpus"]["x"]  # y does not report it
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(summary))


def test_leave_one_corpus_out_scores_each_corpus_at_the_statistics_weight_chosen_on_the_others(tmp_path):
    from msemoboost.cross_validation import choose_corpus_weights
    from msemoboost.reporting import summarize_leave_one_corpus_out

    right, wrong = [[0.0, -1.0], [-1.0, 0.0]], [[-1.0, 0.0], [0.0, -1.0]]  # for labels [0, 1]
    network = {"a": [[1.0, 0.0], [0.0, 1.0]], "b": [[0.0, 1.0], [1.0, 0.0]]}  # right on a, wrong elsewhere
    for name in "abcd":  # a is best at weight 0 (the network alone), b, c and d at weight 4
        folder = tmp_path / name / "folds" / "cross_corpus"
        folder.mkdir(parents=True)
        np.savez(folder / "fusion_parts.npz", labels=np.array([0, 1]), network_logits=np.array(network.get(name, network["b"])),
                 statistics_log_probabilities=np.array(wrong if name == "a" else right),
                 ungrouped_statistics_log_probabilities=np.zeros((2, 2)), utterance_statistics_weight=np.array(1.0))
    runs = {name: {"wa": {"mean": 0.5}, "ua": {"mean": 0.5}, "num_utterances": 2, "label_names": ["x", "y"],
                   "corpora": {}, "ungrouped": {"wa": {"mean": 0.5}, "ua": {"mean": 0.5}},
                   "architecture": {"utterance_statistics_classifier": True}} for name in "abcd"}
    choice = choose_corpus_weights(tmp_path, runs, [4, 0])
    # a is scored at the weight best on b, c and d (4), each other at the best on the three others (4: UA 2/3 against 1/3).
    assert choice["nested"] == {"a": 4.0, "b": 4.0, "c": 4.0, "d": 4.0} and choice["weight"] == 4.0
    assert {name: (found["ua"], found["statistics_weight"]) for name, found in choice["scores"].items()} == {
        "a": (0.0, 4.0), "b": (1.0, 4.0), "c": (1.0, 4.0), "d": (1.0, 4.0)}
    # Without a group, the statistics say nothing: every weight ties, and the smaller one is kept.
    assert choice["ungrouped"]["nested"] == dict.fromkeys("abcd", 0.0)
    assert choice["scores"]["a"]["ungrouped"]["ua"] == 1.0 and choice["scores"]["b"]["ungrouped"]["ua"] == 0.0

    summary = summarize_leave_one_corpus_out(runs, tmp_path, choice)
    assert summary["ua"] == {"mean": 0.75, "std": pytest.approx(np.std([0, 1, 1, 1]))}
    assert summary["at_model_weight"]["ua"] == {"mean": 0.5, "std": 0.0}
    assert summary["per_corpus"]["a"] | {"corpora": None} == {
        "wa": 0.0, "ua": 0.0, "num_test": 2, "label_names": ["x", "y"], "corpora": None, "statistics_weight": 4.0,
        "at_model_weight": {"wa": 0.5, "ua": 0.5}, "ungrouped": {"wa": 1.0, "ua": 1.0}}
    assert summary["statistics_weight"]["weight"] == 4.0 and "scores" not in summary["statistics_weight"]
    assert summary["ungrouped"]["ua"]["mean"] == 0.25

    (tmp_path / "c" / "folds" / "cross_corpus" / "fusion_parts.npz").unlink()
    with pytest.raises(FileNotFoundError, match="the run that tests c finished before train.py kept its network and "
                       "statistics classifier apart"):
        choose_corpus_weights(tmp_path, runs, [0, 4])
    assert choose_corpus_weights(tmp_path, runs, None) is None and choose_corpus_weights(tmp_path, {"a": runs["a"]}, [0]) is None


def test_train_only_trains_one_model_on_every_corpus_over_the_union_of_their_classes(corpus_dir, tmp_path):
    extra = extra_corpus(corpus_dir, tmp_path / "extra", ["spk1", "spk2"], {"sad": "calm"})
    output = tmp_path / "out"
    summary = run(corpus_dir, output, "--protocol", "train_only", "--extra_train_datasets", str(extra),
                  *columns_for(extra), "--num_train_epochs", "1", "--speaker_normalization", "true",
                  "--model_config_overrides", json.dumps({"mfcc_statistics": True, "utterance_statistics_classifier": True}),
                  "--corpus_languages", json.dumps({"demo": "de", "extra": "en"}))
    assert summary["label_names"] == ["angry", "calm", "happy", "neutral", "sad"]  # nothing dropped
    assert summary["corpora"] == {
        "demo": {"utterances": 72, "dropped": {}, "num_dropped": 0, "label_names": ["angry", "happy", "neutral", "sad"],
                 "language": "de"},
        "extra": {"utterances": 24, "dropped": {}, "num_dropped": 0, "label_names": ["angry", "calm", "happy", "neutral"],
                  "language": "en"},
    }
    assert summary["num_folds"] == 0 and summary["folds"] == [] and summary["num_utterances"] == 96
    assert "wa" not in summary and not (output / "folds").exists() and not (output / "predictions.csv").exists()
    assert json.loads((output / "results.json").read_text()) == json.loads(json.dumps(summary, default=str))
    config = json.loads((output / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "angry", "1": "calm", "2": "happy", "3": "neutral", "4": "sad"}
    assert config["speaker_normalization"] is True
    card = (output / "model" / "README.md").read_text()
    metadata = card.split("---")[1]
    assert "language:\n- de\n- en\n" in metadata and "model-index" not in metadata
    assert "- `extra` (en): 24 utterances; angry, calm, happy, neutral" in card
    assert "This run tested nothing" in card and "| WA |" not in card


def test_train_only_refuses_what_would_test(tmp_path, capsys):
    for extra, message in (
        (["--final_model", "false"], "--protocol train_only tests nothing and only trains the final model"),
        (["--eval_snr", "10"], "--protocol train_only tests nothing, so --eval_snr has nothing to test in noise"),
    ):
        with pytest.raises(SystemExit):
            parse_arguments(["--dataset_name", "x", "--protocol", "train_only", *extra])
        assert message in " ".join(capsys.readouterr().err.split())


def test_languages_of_corpora_the_run_does_not_have_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="msemoboost.train"):
        parse_arguments(["--dataset_name", "x", "--corpus_languages", '{"emodb": "de", "x": "en"}'])
    assert "--corpus_languages names ['emodb'], which are not among the run's corpora ['x']: ignored." in caplog.text


def test_leave_one_corpus_out_pretrains_each_run_s_backbone_without_the_tested_corpus(tmp_path):
    from msemoboost.cross_validation import leave_one_corpus_out_runs

    a, b, c = (tmp_path / name for name in "abc")
    for folder in (a, b, c):
        folder.mkdir()
    argv = ["--dataset_name", str(a), "--extra_train_datasets", str(b), str(c), "--protocol", "leave_one_corpus_out",
            "--backbone", "out/bb/", "--backbone_pretraining", f"configs/pretrain_cpu.yaml --dataset_name {a} {b} --max_steps 9"]
    args = parse_arguments(argv)
    runs = leave_one_corpus_out_runs(argv, args.data, args.model, tmp_path / "loco")
    parsed = {name: parse_arguments(words) for name, words in runs.items()}
    assert {name: (run.model.backbone, run.model.backbone_pretraining) for name, run in parsed.items()} == {
        "a": ("out/bb_without_a", f"configs/pretrain_cpu.yaml --dataset_name {b} --max_steps 9"),
        "b": ("out/bb_without_b", f"configs/pretrain_cpu.yaml --dataset_name {a} --max_steps 9"),
        "c": ("out/bb/", f"configs/pretrain_cpu.yaml --dataset_name {a} {b} --max_steps 9"),  # c: never pretrained on
    }
    assert [(run.data.dataset_name, run.data.extra_train_datasets, run.training.output_dir) for run in parsed.values()] == [
        (str(a), [str(b), str(c)], str(tmp_path / "loco" / "a")), (str(b), [str(a), str(c)], str(tmp_path / "loco" / "b")),
        (str(c), [str(a), str(b)], str(tmp_path / "loco" / "c"))]
    alone = ["--dataset_name", str(a), "--extra_train_datasets", str(b), "--backbone", "bb",
             "--backbone_pretraining", f"p.yaml --dataset_name {a}"]
    with pytest.raises(ValueError, match=r"^--backbone_pretraining pretrains on a alone, the corpus this run tests"):
        leave_one_corpus_out_runs(alone, parse_arguments(alone).data, parse_arguments(alone).model, tmp_path / "loco")


def test_transfer_starts_each_fold_from_a_trained_checkpoint(corpus_dir, tmp_path):
    extra = extra_corpus(corpus_dir, tmp_path / "extra", ["spk1", "spk2", "spk3", "spk4"], {"sad": "calm"})
    run(corpus_dir, tmp_path / "pre", "--protocol", "cross_corpus", "--extra_train_datasets", str(extra),
        *columns_for(extra), "--num_train_epochs", "1")
    summary = run(corpus_dir, tmp_path / "out", "--folds", "0", "--final_model", "false",
                  "--model_name_or_path", str(tmp_path / "pre" / "model"), "--num_train_epochs", "1")
    assert summary["label_names"] == ["angry", "happy", "neutral", "sad"]
    assert summary["model"]["model_name_or_path"] == str(tmp_path / "pre" / "model")
    card = (tmp_path / "pre" / "model" / "README.md").read_text()
    assert "Training corpora: `demo` (60 utterances, 12 of other classes dropped), `extra`" in card


def test_an_extra_corpus_without_the_label_column_is_named(corpus_dir, tmp_path):
    extra = extra_corpus(corpus_dir, tmp_path / "extra", ["spk1"], {})
    with pytest.raises(ValueError, match=rf"Column 'emotion' \(--label_column\) is not in split 'train' of {extra}"):
        run(corpus_dir, tmp_path / "out", "--extra_train_datasets", str(extra))


def test_an_extra_corpus_that_shares_no_emotion_is_named(corpus_dir, tmp_path):
    relabel = {"angry": "a", "happy": "b", "neutral": "c", "sad": "d"}
    extra = extra_corpus(corpus_dir, tmp_path / "other", ["spk1"], relabel)
    with pytest.raises(ValueError, match=r"Extra training corpus other shares no emotion with demo: its labels are "
                       r"\['a', 'b', 'c', 'd'\]"):
        run(corpus_dir, tmp_path / "out", "--extra_train_datasets", str(extra), *columns_for(extra))


def test_cross_corpus_without_extra_corpora_is_a_usage_error(corpus_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(corpus_dir, tmp_path / "out", "--protocol", "cross_corpus")
    assert "--protocol cross_corpus trains on --extra_train_datasets only" in capsys.readouterr().err


def test_a_single_class_corpus_is_refused(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match=r"demo has 1 class\(es\) \(\['sad'\]\) after --label_merge/--keep_labels; "
                       "emotion recognition needs at least 2"):
        run(corpus_dir, tmp_path / "out", "--keep_labels", "sad")


def test_a_fold_whose_training_data_holds_one_class_is_refused(corpus_dir, tmp_path):
    copy = tmp_path / "corpus"
    (copy / "audio").mkdir(parents=True)
    rows = [row for row in read_csv(corpus_dir / "metadata.csv")
            if row["speaker"] == "spk1" and row["emotion"] in ("angry", "sad")
            or row["speaker"] in ("spk2", "spk3") and row["emotion"] == "sad"]
    with open(copy / "metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["file_name", "speaker", "emotion"])
        writer.writeheader()
        for row in rows:
            shutil.copy(corpus_dir / row["file_name"], copy / row["file_name"])
            writer.writerow(row)
    with pytest.raises(ValueError, match=r"Fold speaker_spk1: the training data holds 1 class\(es\) \(\['sad'\]\); "
                       "a classifier needs at least 2."):
        run(copy, tmp_path / "out", "--folds", "0", "--final_model", "false")
