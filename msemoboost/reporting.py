"""Result files of a training run: confusion matrices, per-class reports, fold summaries and the model card."""

import json
from pathlib import Path

import numpy as np


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
