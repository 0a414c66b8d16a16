"""Result files of a training run: confusion matrices, per-class reports, fold summaries, `results.json` and the
model card."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers

from . import __version__
from .arguments import RunArguments
from .data import decode_audio
from .training import load_wa_ua, read_json_argument

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"


def confusion_matrix(references, predictions, num_labels: int) -> np.ndarray:
    """Counts of shape `(num_labels, num_labels)`: row = true class, column = predicted class."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(references), np.asarray(predictions)), 1)
    return matrix


def per_class_report(matrix: np.ndarray, label_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class (classes without support get recall `None`)."""
    report = {}
    for index, name in enumerate(label_names):
        true_positives = int(matrix[index, index])
        support = int(matrix[index].sum())
        predicted = int(matrix[:, index].sum())
        precision = true_positives / predicted if predicted else 0.0
        recall = true_positives / support if support else None
        f1 = 2 * precision * recall / (precision + recall) if recall and precision else 0.0
        report[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return report


def format_report(report: dict[str, dict[str, float]], wa: float, ua: float) -> str:
    """The per-class report as a plain-text table, with WA and UA underneath."""
    width = max(len(name) for name in report) + 2
    lines = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in report.items():
        recall = f"{row['recall']:.4f}" if row["recall"] is not None else "n/a"
        lines.append(f"{name:<{width}}{row['precision']:>10.4f}{recall:>10}{row['f1']:>10.4f}{row['support']:>10d}")
    total = sum(row["support"] for row in report.values())
    lines += ["", f"WA (accuracy)            {wa:.4f}  ({total} utterances)", f"UA (mean class recall)   {ua:.4f}"]
    return "\n".join(lines) + "\n"


def save_confusion_matrix(matrix: np.ndarray, label_names: list[str], path: Path, title: str) -> None:
    """A PNG of the confusion matrix normalised per row (each true class sums to 100 %), as in the paper's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = matrix.sum(axis=1, keepdims=True)
    percent = np.divide(100.0 * matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = 1.2 + 0.75 * len(label_names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    axes.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    axes.set_yticks(range(len(label_names)), label_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for row in range(len(label_names)):
        for column in range(len(label_names)):
            value = percent[row, column]
            colour = "white" if value > 50 else "black"
            axes.text(column, row, f"{value:.1f}", ha="center", va="center", color=colour, fontsize=8)
    figure.colorbar(image, ax=axes, label="% of true class")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def save_snr_plot(noise: dict, path: Path, title: str) -> None:
    """A PNG of WA and UA (mean over folds) against SNR, one line per noise type, clean as a dashed line.

    `noise` is the `noise` section of a run's results.json.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snrs = noise["snr_db"]
    figure, panels = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axes, metric in zip(panels, ("wa", "ua")):
        for kind, results in noise["by_type"].items():
            axes.plot([float(s) for s in snrs], [100 * results[s][metric]["mean"] for s in snrs], marker="o", label=kind)
        axes.axhline(100 * noise["clean"][metric]["mean"], color="black", linestyle="--", label="clean")
        axes.set_xlabel("SNR (dB, active speech)")
        axes.set_title(f"{metric.upper()} (%)")
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("accuracy (%)")
    panels[1].legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and population standard deviation over folds."""
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std())}


def write_json(path: Path, content: dict) -> None:
    """Writes JSON through a temporary file, so that a killed run never leaves a half-written result."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(content, indent=2, default=str) + "\n")
    temporary.replace(path)


def render_model_card(
    template: Path, results: dict, hub_dataset: str, base_model: str | None, model_name: str, repo_id: str | None = None
) -> str:
    """Renders the `model_card.md` template with Hub metadata (`model-index` with WA and UA) and the run's results."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset_name = results["data"]["dataset_name"]
    protocol = results["protocol"]
    corpora = results.get("corpora") or {}
    languages = sorted({part["language"] for part in corpora.values() if "language" in part})
    card_data = ModelCardData(
        model_name=model_name,
        language=languages or None,
        library_name="transformers",
        pipeline_tag="audio-classification",
        tags=["audio-classification", "speech-emotion-recognition", "msemoboost", "custom_code"],
        datasets=[hub_dataset, *(name for name in corpora if name != hub_dataset)],
        metrics=["accuracy", "recall"],
        base_model=base_model,
        eval_results=[
            EvalResult(
                task_type="audio-classification",
                dataset_type=hub_dataset,
                dataset_name=dataset_name,
                metric_type=metric_type,
                metric_name=f"{name} ({protocol}, mean over {results['num_folds']} fold(s))",
                metric_value=round(100 * results[key]["mean"], 2),
            )
            for key, name, metric_type in (("wa", "WA", "accuracy"), ("ua", "UA", "recall"))
        ] if "wa" in results else None,  # a train_only run tested nothing
    )
    card = ModelCard.from_template(
        card_data, template_path=str(template), results=results, model_name=model_name, repo_id=repo_id,
        dataset=hub_dataset,
    )
    return str(card)


# The parts a run reports beside the fused model, each when it has it: with the statistics classifier, the network and
# the classifier alone; speaker-normalised, each test recording alone (without its group).
RESULT_PARTS = ("network", "statistics_classifier", "ungrouped")


def summarize(
    fold_results: list[dict], corpus, args: RunArguments, output_dir: Path, config, corpora_report: dict,
    weight_choice: dict | None = None, calibration: dict | None = None,
) -> dict:
    """Overall results of a run for `results.json` and the model card: what it trained on and how
    ([`describe_run`]), per-fold WA/UA, mean ± std over folds, the calibration (`calibration`, from
    `calibrate_run`), pooled confusion matrix and per-class report, written
    to `output_dir` as `classification_report.txt`, `confusion_matrix.png` and the merged `predictions.csv`. With no
    fold (`train_only`), only the description."""
    protocol_args, noise_args = args.protocol, args.noise
    summary = describe_run(fold_results, corpus, args, config, corpora_report, weight_choice)
    if not fold_results:
        return summary
    matrix = sum(np.asarray(result["confusion_matrix"]) for result in fold_results)
    references = np.repeat(np.arange(len(matrix)), matrix.sum(1))
    predictions = np.concatenate([np.repeat(np.arange(len(matrix)), row) for row in matrix])
    pooled = load_wa_ua().compute(predictions=predictions, references=references)
    summary.update(
        wa=mean_std([result["wa"] for result in fold_results]), ua=mean_std([result["ua"] for result in fold_results]),
        pooled=pooled, num_utterances=int(matrix.sum()), per_class=per_class_report(matrix, corpus.label_names),
        confusion_matrix=matrix.tolist(),
    )
    if calibration:
        summary["calibration"] = calibration
    for part in RESULT_PARTS:
        if part in fold_results[0]:
            summary[part] = {key: mean_std([result[part][key] for result in fold_results]) for key in ("wa", "ua")}
    if noise_args.eval_snr:
        summary["noise"] = summarize_noise(fold_results, summary, noise_args)
        save_snr_plot(summary["noise"], output_dir / "accuracy_vs_snr.png", f"{protocol_args.protocol}, {len(fold_results)} fold(s)")
    (output_dir / "classification_report.txt").write_text(format_report(summary["per_class"], pooled["wa"], pooled["ua"]))
    title = f"{protocol_args.protocol}, {len(fold_results)} fold(s): WA {summary['wa']['mean']:.1%}, UA {summary['ua']['mean']:.1%}"
    save_confusion_matrix(matrix, corpus.label_names, output_dir / "confusion_matrix.png", title)
    with open(output_dir / "predictions.csv", "w", newline="") as merged:
        for number, result in enumerate(fold_results):
            lines = (output_dir / "folds" / result["fold"] / "predictions.csv").read_text().splitlines(keepends=True)
            merged.writelines(lines if number == 0 else lines[1:])
    return summary


ARCHITECTURE_KEYS = (
    "frame_weighting", "classifier_input", "mfcc_normalization", "mfcc_pool_frames", "mfcc_statistics",
    "prosody_statistics", "classify_statistics", "utterance_statistics_classifier", "utterance_distribution_statistics",
    "utterance_log_mel_statistics", "utterance_statistics_weight", "speaker_normalization", "ungrouped_statistics_weight", "use_weighted_layer_sum", "pooled_normalization",
    "segment_length_s",
)


def describe_run(
    fold_results: list[dict], corpus, args: RunArguments, config, corpora_report: dict, weight_choice: dict | None = None
) -> dict:
    """What a run trained on and how: its data, classes, folds, arguments, versions, architecture options (of
    `config`), the corpora (`corpora_report`, with `--corpus_languages`) and the statistics weight chosen, if any."""
    model_args, data_args, noise_args, protocol_args, training_args, augmentation_args = args
    languages = read_json_argument(data_args.corpus_languages)
    summary = {
        "protocol": protocol_args.protocol,
        "num_folds": len(fold_results),
        "num_utterances": len(corpus.dataset) if not fold_results else None,  # tested ones, below, after folds
        "num_skipped_audio": corpus.num_skipped,
        "num_processes": training_args.world_size,
        "label_names": corpus.label_names,
        "class_counts": {name: int((corpus.labels == i).sum()) for i, name in enumerate(corpus.label_names)},
        "num_speakers": len(set(corpus.speakers)),
        "folds": [{key: result[key] for key in ("fold", "test_speakers", "wa", "ua", "num_train", "num_validation", "num_test")} for result in fold_results],
        "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args),
        "noise_arguments": dataclasses.asdict(noise_args),
        "protocol_arguments": dataclasses.asdict(protocol_args),
        "training": {key: getattr(getattr(training_args, key), "value", getattr(training_args, key)) for key in (
            "learning_rate", "per_device_train_batch_size", "num_train_epochs", "max_steps", "seed", "optim",
            "weight_decay", "lr_scheduler_type", "warmup_steps", "gradient_accumulation_steps", "max_grad_norm",
            "label_smoothing_factor")},  # enumerations (optim, lr_scheduler_type) by their value: "adamw_torch"
        "versions": {"msemoboost": __version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "corpora": {name: {**part, **({"language": languages[name]} if name in languages else {})}
                    for name, part in corpora_report.items()},
        "augmentation": dataclasses.asdict(augmentation_args),
        "architecture": {key: getattr(config, key) for key in ARCHITECTURE_KEYS},
    }
    if weight_choice:  # the final model's weight
        summary["statistics_weight"] = weight_choice
        summary["architecture"]["utterance_statistics_weight"] = weight_choice["weight"]
        if "ungrouped" in weight_choice:
            summary["architecture"]["ungrouped_statistics_weight"] = weight_choice["ungrouped"]["weight"]
    return summary


def summarize_noise(fold_results: list[dict], summary: dict, noise_args) -> dict:
    """WA/UA (mean ± std over folds) clean and for each noise type and SNR, and their mean over noise types."""
    snrs = [f"{snr:g}" for snr in noise_args.eval_snr]
    kinds = list(fold_results[0]["noisy"])
    by_kind = {
        kind: {snr: {m: mean_std([r["noisy"][kind][snr][m] for r in fold_results]) for m in ("wa", "ua")} for snr in snrs}
        for kind in kinds
    }
    mean_over_types = {
        snr: {m: mean_std([np.mean([r["noisy"][kind][snr][m] for kind in kinds]) for r in fold_results]) for m in ("wa", "ua")}
        for snr in snrs
    }
    return {
        "snr_definition": "10 log10(active speech power / noise power); active = 20 ms frames within 40 dB of the "
        "loudest frame (msemoboost/noise.py)",
        "snr_db": snrs,
        "types": kinds,
        "clean": {"wa": summary["wa"], "ua": summary["ua"]},
        "by_type": by_kind,
        "mean_over_types": mean_over_types,
        "silent_test_utterances": sorted(u for r in fold_results for u in r.get("silent_test_utterances", [])),
    }


def write_model_directory(model_dir: Path, summary: dict, data_args, model_args, output_dir: Path, repo_id: str | None) -> None:
    """Adds the model card (rendered from model_card.md) and the confusion matrix (when the run tested) to the saved
    model."""
    if (output_dir / "confusion_matrix.png").exists():
        shutil.copy(output_dir / "confusion_matrix.png", model_dir / "confusion_matrix.png")
    hub_dataset = data_args.dataset_name if not Path(data_args.dataset_name).exists() else Path(data_args.dataset_name).name
    base_model = model_args.backbone if model_args.backbone and not Path(model_args.backbone).exists() else None
    name = repo_id.split("/")[-1] if repo_id else model_dir.resolve().parent.name
    card = render_model_card(MODEL_CARD_TEMPLATE, summary, hub_dataset, base_model, name, repo_id)
    (model_dir / "README.md").write_text(card)


def classify_example(model_dir: Path, corpus, rows: np.ndarray) -> None:
    """Reloads the saved model through the audio-classification pipeline and classifies one utterance."""
    from transformers import pipeline

    classifier = pipeline("audio-classification", model=str(model_dir), trust_remote_code=True, device="cpu")
    item = corpus.dataset[int(rows[0])]
    waveform = decode_audio(item["audio"], classifier.feature_extractor.sampling_rate)
    top = classifier(waveform, top_k=len(corpus.label_names))
    scores = ", ".join(f"{entry['label']} {entry['score']:.2f}" for entry in top[:3])
    print(f"Reloaded {model_dir} and classified {item['utterance_id']} (true: {corpus.label_names[item['labels']]}): {scores}")


def summarize_leave_one_corpus_out(runs: dict[str, dict], output_dir: Path, weight_choice: dict | None = None) -> dict:
    """`--protocol leave_one_corpus_out`: the per-corpus and mean WA/UA of the `cross_corpus` runs' summaries `runs`
    (keyed by the tested corpus), and of the parts every run reports (`network`, `statistics_classifier`,
    `ungrouped`), written to `output_dir/results.json` and printed. With `weight_choice` (from
    `msemoboost.cross_validation.choose_corpus_weights`), each corpus's WA/UA (and `ungrouped`) are those at the
    statistics classifier's weight chosen on the other corpora; `at_model_weight` keeps the run's own, and
    `statistics_weight` records the choice."""
    per_corpus = {
        name: {"wa": run["wa"]["mean"], "ua": run["ua"]["mean"], "num_test": run["num_utterances"],
               "label_names": run["label_names"], "corpora": run["corpora"]}
        for name, run in runs.items()
    }
    summary = {"protocol": "leave_one_corpus_out", "corpora": list(runs), "per_corpus": per_corpus}
    for part in RESULT_PARTS:
        if all(part in run for run in runs.values()):
            for name, run in runs.items():
                per_corpus[name][part] = {key: run[part][key]["mean"] for key in ("wa", "ua")}
    if weight_choice:
        for name, row in per_corpus.items():
            scores = weight_choice["scores"][name]
            row["at_model_weight"] = {key: row[key] for key in ("wa", "ua")}
            row.update(wa=scores["wa"], ua=scores["ua"], statistics_weight=scores["statistics_weight"])
            if "ungrouped" in scores and "ungrouped" in row:
                row["ungrouped"] = {key: scores["ungrouped"][key] for key in ("wa", "ua")}
        summary["at_model_weight"] = {key: mean_std([row["at_model_weight"][key] for row in per_corpus.values()])
                                      for key in ("wa", "ua")}
        summary["statistics_weight"] = {key: value for key, value in weight_choice.items() if key != "scores"}
    summary |= {"wa": mean_std([row["wa"] for row in per_corpus.values()]),
                "ua": mean_std([row["ua"] for row in per_corpus.values()])}
    for part in RESULT_PARTS:
        if all(part in row for row in per_corpus.values()):
            summary[part] = {key: mean_std([row[part][key] for row in per_corpus.values()]) for key in ("wa", "ua")}
    write_json(output_dir / "results.json", summary)
    print(f"leave_one_corpus_out over {len(runs)} corpora: WA {summary['wa']['mean']:.2%} ± {summary['wa']['std']:.2%}  "
          f"UA {summary['ua']['mean']:.2%} ± {summary['ua']['std']:.2%}  ("
          + ", ".join(f"{name} {row['ua']:.1%}" for name, row in per_corpus.items()) + ")")
    if weight_choice:
        print(f"  at the statistics weight chosen on the other corpora ("
              + ", ".join(f"{name} {row['statistics_weight']:g}" for name, row in per_corpus.items())
              + f"; {weight_choice['weight']:g} on all of them); at the runs' own weight: UA "
              f"{summary['at_model_weight']['ua']['mean']:.2%}")
    for part in RESULT_PARTS:
        if part in summary:
            print(f"  {part.replace('_', ' ')}: UA {summary[part]['ua']['mean']:.2%} ("
                  + ", ".join(f"{name} {row[part]['ua']:.1%}" for name, row in per_corpus.items()) + ")")
    return summary
