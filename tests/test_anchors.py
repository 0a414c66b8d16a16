"""benchmarks/anchors.py's leave-one-corpus-out bookkeeping: corpora tested a few at a time, their results kept."""

import importlib.util
import json
from pathlib import Path

import pytest


def load_anchors():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "anchors.py"
    spec = importlib.util.spec_from_file_location("anchors", path)
    anchors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchors)
    return anchors


ANCHOR = "eGeMAPSv02 + RBF SVM"
UA = {"a": 0.25, "b": 0.5, "c": 0.75}


def fake_run_anchors(tested_calls: list):
    """`run_anchors` as leave_one_corpus_out calls it, giving each tested corpus its UA of `UA` (WA the same)."""

    def run(argv, anchors, corpus_normalization, speaker_normalization):
        name = Path(argv[argv.index("--dataset_name") + 1]).name
        tested_calls.append((name, argv[argv.index("--extra_train_datasets") + 1:]))
        score = {"mean": UA[name], "std": 0.0}
        return {anchor: {"wa": score, "ua": score, "folds": [{"num_test": 10}], "label_names": ["x", "y"]}
                for anchor in anchors}

    return run


def test_leave_one_corpus_out_tests_some_corpora_and_keeps_the_others_results(tmp_path, monkeypatch, capsys):
    anchors = load_anchors()
    calls = []
    monkeypatch.setattr(anchors, "run_anchors", fake_run_anchors(calls))
    corpora = [str(tmp_path / name) for name in "abc"]
    options = {"anchors": [ANCHOR], "corpus_normalization": False, "speaker_normalization": True}
    output = tmp_path / "loco.json"

    def arguments(protocol, dataset_name, extras):
        return anchors.train_arguments(protocol, dataset_name, extras)

    first = anchors.leave_one_corpus_out(corpora, arguments, options, ["b"], output)
    # b is trained on the other two; the file holds b's row alone, and no mean while a and c are missing.
    assert calls == [("b", [corpora[0], corpora[2]])]
    assert json.loads(output.read_text()) == first
    assert first[ANCHOR]["per_corpus"] == {"b": {"wa": 0.5, "ua": 0.5, "label_names": ["x", "y"], "num_test": 10}}
    assert "ua" not in first[ANCHOR] and first[ANCHOR]["options"] == {"corpus_normalization": False,
                                                                      "speaker_normalization": True}
    # a and c later, in another process: b's result is read back, not run again, and the mean is written.
    done = anchors.leave_one_corpus_out(corpora, arguments, options, ["c", "a"], output)
    assert [name for name, _ in calls] == ["b", "a", "c"]
    assert list(done[ANCHOR]["per_corpus"]) == ["a", "b", "c"]
    assert done[ANCHOR]["ua"] == pytest.approx(0.5, abs=1e-12) and done[ANCHOR]["wa"] == pytest.approx(0.5, abs=1e-12)
    assert json.loads(output.read_text()) == done
    assert "mean over corpora WA 50.00%  UA 50.00%  (a 25.0%, b 50.0%, c 75.0%)" in capsys.readouterr().out
    # Two processes at once, each with --corpora: what the other writes while one runs is kept.
    output.unlink()
    plain = fake_run_anchors([])
    monkeypatch.setattr(anchors, "run_anchors", plain)
    anchors.leave_one_corpus_out(corpora, arguments, options, ["a"], output)

    def run_while_c_is_written(argv, **kwargs):
        monkeypatch.setattr(anchors, "run_anchors", plain)
        anchors.leave_one_corpus_out(corpora, arguments, options, ["c"], output)  # the other process, done first
        return plain(argv, **kwargs)

    monkeypatch.setattr(anchors, "run_anchors", run_while_c_is_written)
    found = anchors.leave_one_corpus_out(corpora, arguments, options, ["b"], output)
    assert list(found[ANCHOR]["per_corpus"]) == ["a", "b", "c"] and found[ANCHOR]["ua"] == pytest.approx(0.5, abs=1e-12)
    assert json.loads(output.read_text()) == found
    # Results of other options, or of other anchors, are not mixed in.
    with pytest.raises(SystemExit, match=r"loco.json holds 'eGeMAPSv02 \+ RBF SVM' with options "
                                         r"\{'corpus_normalization': False, 'speaker_normalization': True\}, not "
                                         r"\{'corpus_normalization': False, 'speaker_normalization': False\}: give "
                                         r"another --output"):
        anchors.leave_one_corpus_out(corpora, arguments, {**options, "speaker_normalization": False}, ["a"], output)
    with pytest.raises(SystemExit, match=r"loco.json holds no results of 'ComParE_2016 \+ LinearSVC' \(it has "
                                         r"'eGeMAPSv02 \+ RBF SVM'\): give another --output"):
        anchors.leave_one_corpus_out(corpora, arguments, {**options, "anchors": ["ComParE_2016 + LinearSVC"]}, ["a"], output)
    with pytest.raises(SystemExit, match=r"--corpora d: not among the corpora given \(a, b, c\)"):
        anchors.leave_one_corpus_out(corpora, arguments, options, ["d"], output)
    assert [name for name, _ in calls] == ["b", "a", "c"]


def test_corpora_needs_the_leave_one_corpus_out_protocol(monkeypatch, capsys):
    anchors = load_anchors()
    monkeypatch.setattr("sys.argv", ["anchors.py", "--corpora", "emodb"])
    with pytest.raises(SystemExit):
        anchors.main()
    assert "--corpora is for --protocol leave_one_corpus_out." in capsys.readouterr().err
