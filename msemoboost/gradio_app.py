"""The demo page (`app.py`): upload or record speech, see the emotions the model hears, their timeline and the frame
weights X_enh. Needs the `demo` extra (`pip install 'msemoboost[demo]'`)."""

import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from .inference import BadAudioError, enhancement_curve, load_classifier, predict, read_audio

MAX_SECONDS = 600.0  # longer recordings: msemoboost predict --timeline --vad
EXAMPLE_EMOTIONS = ("angry", "happy", "neutral", "sad")
PROBABILITY_DIGITS = 4  # as the page prints them


def require_gradio():
    try:
        import gradio
    except ImportError as error:
        raise ImportError(f"The demo page needs gradio: pip install 'msemoboost[demo]' ({error}).") from None
    return gradio


def example_recordings(folder: Path) -> list[Path]:
    """One generated recording per emotion of the synthetic demo corpus (`msemoboost.demo`), written to `folder`."""
    from .demo import SAMPLING_RATE, SPEAKERS, synthesize, write_wav

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, emotion in enumerate(EXAMPLE_EMOTIONS):
        path = folder / f"{emotion}_example.wav"
        if not path.exists():
            waveform = synthesize(emotion, SPEAKERS["spk3"], 4.0, np.random.default_rng(index))
            write_wav(path, waveform, SAMPLING_RATE)
        paths.append(path)
    return paths


def probability_table(labels: list[str], probabilities: np.ndarray) -> str:
    """A Markdown table of every class's probability, the highest first."""
    order = np.argsort(-probabilities, kind="stable")
    rows = [f"| {labels[i]} | {probabilities[i]:.{PROBABILITY_DIGITS}f} |" for i in order]
    return "\n".join(["| emotion | probability |", "|---|---|", *rows])


def timeline_figure(prediction, labels: list[str], windows: str = "3 s segment"):
    """Each class's probability in each window over time; non-speech rows (NaN) shaded grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 3), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    speech = ~np.isnan(prediction.segment_probabilities).all(1)
    for (start, end), is_speech in zip(prediction.segment_bounds, speech):
        if not is_speech:
            axis.axvspan(start, end, color="0.85", linewidth=0)
    for column, label in enumerate(labels):
        rows = prediction.segment_probabilities[speech, column]
        bounds = prediction.segment_bounds[speech]
        axis.hlines(rows, bounds[:, 0], bounds[:, 1], color=colours[column % len(colours)], linewidth=2, label=label)
    if not speech.all():
        axis.axvspan(0, 0, color="0.85", label="non-speech")
    axis.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), title=f"emotion per {windows}",
             xlim=(0, float(prediction.segment_bounds[-1, 1])))
    axis.legend(fontsize=8, ncol=min(len(labels) + 1, 5), loc="upper right")
    figure.tight_layout()
    return figure


class DemoModel:
    """The loaded model and what the page shows for one recording."""

    def __init__(self, model: str, device: str | None = "cpu", max_seconds: float = MAX_SECONDS):
        self.classifier, self.extractor = load_classifier(model, device)
        config = self.classifier.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.max_seconds = max_seconds
        self.figures = Path(tempfile.mkdtemp(prefix="msemoboost_demo_"))

    def analyse(self, path: str | None):
        """`(status, label scores, probability table, timeline figure, explanation image)` for a recording; on a
        problem, the status says what it is and the rest is empty."""
        from .analysis import plot_explanation

        empty = (None, "", None, None)
        if not path:
            return ("Upload a recording or record one first.", *empty)
        name = Path(path).name
        rate = self.extractor.sampling_rate
        try:
            waveform = read_audio(path, rate, name, self.classifier.config.min_input_samples)
        except BadAudioError as error:
            return (f"**Cannot analyse this recording.** {error}", *empty)
        seconds = len(waveform) / rate
        if seconds > self.max_seconds:
            return (f"**Cannot analyse this recording.** {name} is {seconds:.0f} s long; this page takes up to "
                    f"{self.max_seconds:.0f} s. For longer files: `msemoboost predict FILE --timeline --vad`.", *empty)
        try:
            (prediction,) = predict(self.classifier, self.extractor, [waveform], [name])
            timeline, windows = self.timeline(waveform, name, prediction)
        except (ValueError, RuntimeError) as error:  # the model refuses the input: say why, in the page
            return (f"**Cannot analyse this recording.** {name}: {' '.join(str(error).split())[:300]}", *empty)
        image, note = None, ""
        if self.classifier.msemoboost.enhancement is not None:
            times, weights = enhancement_curve(self.classifier, self.extractor, waveform)
            image = str(self.figures / f"{Path(name).stem}_explain.png")
            plot_explanation(image, waveform, rate, times, weights, prediction, self.labels, (1100, 700), name)
        else:
            note = " This model has no guidance branches, so no frame weights to show."
        probabilities = prediction.probabilities
        best = self.labels[int(probabilities.argmax())]
        status = (f"**{best}**: {name}, {seconds:.1f} s, {len(timeline.segment_bounds)} timeline row(s) of {windows}. "
                  f"{self.calibration}{note}")
        scores = {label: float(p) for label, p in zip(self.labels, probabilities)}
        return (status, scores, probability_table(self.labels, probabilities),
                timeline_figure(timeline, self.labels, windows), image)

    @property
    def calibration(self) -> str:
        config = self.classifier.config
        if config.calibration_temperature == 1 and config.segment_calibration_temperature == 1:
            return "Probabilities as trained (this model was not calibrated: train.py --calibrate)."
        return (f"Calibrated probabilities (temperature {config.calibration_temperature:.2f}; segments "
                f"{config.segment_calibration_temperature:.2f}).")

    def timeline(self, waveform: np.ndarray, name: str, prediction):
        """The speech-only timeline (Silero VAD, the `vad` extra) and what its rows are; without silero-vad, the
        model's own 3 s segments."""
        from .timeline import speech_timeline

        try:
            run = partial(predict, self.classifier, self.extractor)
            return speech_timeline(run, waveform, name, self.classifier.config), "speech window (3 s at most)"
        except ImportError:
            return prediction, "3 s segment (no voice activity detection: pip install 'msemoboost[vad]')"


def build_demo(model: DemoModel, examples: list[Path]):
    """The page: an audio input, an Analyse button, and the results."""
    gr = require_gradio()
    with gr.Blocks(title="MS-EmoBoost speech emotion recognition") as demo:
        gr.Markdown("# Speech emotion recognition with MS-EmoBoost\nUpload a recording or record one; the model "
                    "classifies the whole recording, and each speech window of up to 3 s for the timeline (grey: no speech). "
                    "Emotions: " + ", ".join(model.labels) + ".")
        with gr.Row():
            with gr.Column(scale=1):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="speech", elem_id="audio")
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                gr.Examples([[str(path)] for path in examples], inputs=[audio], label="examples (synthetic speech)")
            with gr.Column(scale=1):
                status = gr.Markdown(elem_id="status")
                scores = gr.Label(num_top_classes=min(5, len(model.labels)), label="emotion", elem_id="scores")
                table = gr.Markdown(elem_id="probabilities")
        timeline = gr.Plot(label="timeline", elem_id="timeline")
        explanation = gr.Image(label="frame weights X_enh", type="filepath", elem_id="explanation")
        button.click(model.analyse, inputs=[audio], outputs=[status, scores, table, timeline, explanation])
    return demo
