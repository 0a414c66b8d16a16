"""Figures of what a trained model does: the guidance saliency of one recording and t-SNE of pooled features.

Needs the `plots` extra (matplotlib, scikit-learn).
"""

from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("The plots need matplotlib and scikit-learn: pip install 'msemoboost[plots]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


DPI = 100


def plot_explanation(
    path: Path,
    waveform: np.ndarray,
    sampling_rate: int,
    times: np.ndarray,
    weights: np.ndarray,
    prediction,
    labels: list[str],
    size: tuple[int, int],
    title: str,
) -> None:
    """Three aligned panels (waveform, log spectrogram, frame weights X_enh) and the class probabilities."""
    import torch

    plt = _pyplot()
    figure = plt.figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    grid = figure.add_gridspec(3, 2, width_ratios=[5, 1], hspace=0.35, wspace=0.25)
    duration = len(waveform) / sampling_rate

    axes_wave = figure.add_subplot(grid[0, 0])
    axes_wave.plot(np.arange(len(waveform)) / sampling_rate, waveform, linewidth=0.5, color="tab:gray")
    axes_wave.set(xlim=(0, duration), ylabel="amplitude", title=f"{title}: waveform")

    axes_spec = figure.add_subplot(grid[1, 0], sharex=axes_wave)
    hop, n_fft = sampling_rate // 100, sampling_rate // 25  # 10 ms hop, 40 ms window
    spectrum = torch.stft(torch.from_numpy(waveform), n_fft=n_fft, hop_length=hop, window=torch.hamming_window(n_fft), return_complex=True).abs()
    log_spectrum = 20 * torch.log10(spectrum.clamp(min=1e-5)).numpy()
    axes_spec.imshow(
        log_spectrum, origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, sampling_rate / 2000),
        vmin=log_spectrum.max() - 80,
    )
    axes_spec.set(ylabel="kHz", title="log spectrogram (dB)")

    axes_weights = figure.add_subplot(grid[2, 0], sharex=axes_wave)
    axes_weights.plot(times, weights, color="tab:blue", linewidth=1.0)
    axes_weights.axhline(0, color="black", linewidth=0.5)
    for boundary in np.arange(3.0, duration, 3.0):
        for axes in (axes_wave, axes_spec, axes_weights):
            axes.axvline(boundary, color="tab:red", linewidth=0.6, linestyle="--")
    axes_weights.set(xlabel="time (s)", ylabel="X_enh", title="guidance frame weights X_enh, one per SSL frame (dashed: 3 s segments)")

    axes_probs = figure.add_subplot(grid[:, 1])
    order = np.argsort(prediction.probabilities)
    colours = ["tab:blue" if i == order[-1] else "tab:gray" for i in order]
    axes_probs.barh([labels[i] for i in order], prediction.probabilities[order], color=colours)
    axes_probs.set(xlim=(0, 1), xlabel="probability", title=f"predicted: {labels[order[-1]]}")
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def plot_tsne(path: Path, features: dict[str, np.ndarray], labels: list[str], size: tuple[int, int], seed: int = 0) -> None:
    """One t-SNE panel per feature set, points coloured by true label."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    figure, axes_list = plt.subplots(1, len(features), figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, squeeze=False)
    classes = sorted(set(labels))
    colours = plt.get_cmap("tab10")
    for axes, (title, values) in zip(axes_list[0], features.items(), strict=True):
        perplexity = max(2.0, min(30.0, (len(values) - 1) / 3))
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(values)
        for index, name in enumerate(classes):
            chosen = np.array([label == name for label in labels])
            axes.scatter(points[chosen, 0], points[chosen, 1], s=14, color=colours(index % 10), label=name)
        axes.set(title=title, xticks=[], yticks=[])
    axes_list[0][-1].legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
