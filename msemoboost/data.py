"""Speech emotion corpora through `datasets`: loading, label spaces, audio checks and batching.

Training code lives outside the remote-code files: a Hub checkpoint never needs `datasets`.
"""

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass

import datasets
import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass
class EmotionCorpus:
    """One table of utterances from every split of the source dataset.

    `dataset` has the columns `audio` (undecoded: path and bytes), `labels` (class index), `speaker` (string),
    `split` (the source split), `utterance_id` (file name or row number) and `num_samples` (at the model's rate).
    """

    dataset: datasets.Dataset
    label_names: list[str]
    sampling_rate: int
    num_skipped: int = 0

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset["labels"])

    @property
    def speakers(self) -> np.ndarray:
        return np.asarray(self.dataset["speaker"])

    @property
    def splits(self) -> np.ndarray:
        return np.asarray(self.dataset["split"])


def parse_label_merge(text: str | None) -> dict[str, str]:
    """`"excited:happy,frustrated:angry"` → `{"excited": "happy", "frustrated": "angry"}`."""
    if not text:
        return {}
    merge = {}
    for pair in text.split(","):
        source, separator, target = pair.partition(":")
        if not separator or not source.strip() or not target.strip():
            raise ValueError(f"label_merge takes 'from:to' pairs separated by commas, e.g. 'excited:happy'; got {pair!r}.")
        merge[source.strip()] = target.strip()
    return merge


def load_corpus(
    dataset_name: str,
    sampling_rate: int,
    min_samples: int,
    audio_column: str = "audio",
    label_column: str = "label",
    speaker_column: str | None = "speaker",
    dataset_config_name: str | None = None,
    label_merge: dict[str, str] | None = None,
    keep_labels: list[str] | None = None,
    skip_bad_audio: bool = False,
    require_speaker: bool = True,
) -> EmotionCorpus:
    """Loads a Hub dataset id or a local path (an `audiofolder` directory with `metadata.csv` included).

    Every split is kept and tagged in the `split` column. Labels may be a `ClassLabel` or strings; `label_merge` renames
    classes before the label space is built, and `keep_labels` then keeps only those classes. Each audio file is decoded once at `sampling_rate` to check it: an
    unreadable file, or one shorter than `min_samples`, is an error naming the file unless `skip_bad_audio` is set.
    Without `require_speaker`, a missing `speaker_column` is logged and the speakers are left unknown.
    """
    source = datasets.load_dataset(dataset_name, dataset_config_name)
    if isinstance(source, datasets.Dataset):
        source = datasets.DatasetDict({"train": source})
    required = {"--audio_column": audio_column, "--label_column": label_column}
    if speaker_column and not require_speaker:
        if any(speaker_column not in table.column_names for table in source.values()):
            logger.warning(f"{dataset_name} has no speaker column {speaker_column!r}: its speakers are unknown.")
            speaker_column = None
    if speaker_column:
        required["--speaker_column"] = speaker_column
    for split, table in source.items():
        for flag, column in required.items():
            if column not in table.column_names:
                raise ValueError(
                    f"Column {column!r} ({flag}) is not in split {split!r} of {dataset_name}. "
                    f"Its columns are: {', '.join(table.column_names)}."
                )

    label_merge = label_merge or {}
    tables = []
    for split, table in source.items():
        label_names = [label_merge.get(name, name) for name in _label_strings(table, label_column)]
        speakers = [str(speaker) for speaker in table[speaker_column]] if speaker_column else [""] * len(table)
        table = table.select_columns([audio_column]).cast_column(audio_column, _audio_feature(sampling_rate))
        if audio_column != "audio":
            table = table.rename_column(audio_column, "audio")
        paths = [path for chunk in table.data.column("audio").chunks for path in chunk.field("path").to_pylist()]
        ids = [path.replace("\\", "/").rsplit("/", 1)[-1] if path else f"{split}/{row}" for row, path in enumerate(paths)]
        for name, values in (("label_name", label_names), ("speaker", speakers), ("split", [split] * len(table)), ("utterance_id", ids)):
            table = table.add_column(name, values)
        tables.append(table.cast(_features(sampling_rate)))
    dataset = datasets.concatenate_datasets(tables)
    if keep_labels:
        unknown = sorted(set(keep_labels) - set(dataset["label_name"]))
        if unknown:
            raise ValueError(f"keep_labels names class(es) {unknown} that the data does not have: {sorted(set(dataset['label_name']))}.")
        dataset = dataset.filter(lambda row: row["label_name"] in set(keep_labels), desc="Keeping labels")

    label_names = sorted(set(dataset["label_name"]))
    index = {name: i for i, name in enumerate(label_names)}
    dataset = dataset.map(lambda row: {"labels": index[row["label_name"]]}, desc="Encoding labels")
    dataset = dataset.map(
        lambda row: _check_audio(row["audio"], sampling_rate, min_samples), desc="Checking audio", load_from_cache_file=False
    )
    errors = dataset["audio_error"]
    bad = [i for i, error in enumerate(errors) if error]
    if bad:
        described = "; ".join(f"{dataset[i]['utterance_id']}: {errors[i]}" for i in bad[:5])
        if not skip_bad_audio:
            raise ValueError(
                f"{len(bad)} audio file(s) cannot be used: {described}"
                f"{' …' if len(bad) > 5 else ''}. Fix or remove them, or pass --skip_bad_audio to skip them."
            )
        logger.warning(f"Skipping {len(bad)} unusable audio file(s): {described}{' …' if len(bad) > 5 else ''}")
        keep = sorted(set(range(len(dataset))) - set(bad))
        dataset = dataset.select(keep)
    dataset = dataset.remove_columns(["audio_error", "label_name"])
    return EmotionCorpus(dataset=dataset, label_names=label_names, sampling_rate=sampling_rate, num_skipped=len(bad))


def _audio_feature(sampling_rate: int, decode: bool = False) -> datasets.Audio:
    """Audio resampled to the model's rate when decoded. The table keeps it undecoded."""
    return datasets.Audio(sampling_rate=sampling_rate, decode=decode)


def _features(sampling_rate: int) -> datasets.Features:
    return datasets.Features(
        {
            "audio": _audio_feature(sampling_rate),
            "label_name": datasets.Value("string"),
            "speaker": datasets.Value("string"),
            "split": datasets.Value("string"),
            "utterance_id": datasets.Value("string"),
        }
    )


def _label_strings(table: datasets.Dataset, label_column: str) -> list[str]:
    feature = table.features[label_column]
    values = table[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return [feature.int2str(int(value)) for value in values]
    return [str(value) for value in values]


def decode_audio(audio: dict, sampling_rate: int) -> np.ndarray:
    """Decodes an undecoded `datasets` audio value to a mono float32 waveform at `sampling_rate`.

    FFmpeg (through torchcodec) resamples; channels are averaged here, since FFmpeg's own downmix scales the sum
    by 1/sqrt(2) and can leave [-1, 1].
    """
    decoder = _audio_feature(sampling_rate, decode=True).decode_example(audio)
    return decoder.get_all_samples().data.mean(dim=0).numpy().astype(np.float32, copy=False)


def decoding_error_reason(error: Exception, audio: dict) -> str:
    """Why a file could not be decoded, in the user's terms: no decoder-internal source paths or class names."""
    path = audio.get("path")
    if not audio.get("bytes") and path and os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    if path and not audio.get("bytes") and not os.path.exists(path):
        return "no such file"
    message = " ".join(str(error).split())
    if "Invalid data found" in message or "could not find codec" in message.lower():
        return "not an audio file FFmpeg can read (invalid data)"
    if "audio stream" in message.lower():
        return "no audio stream FFmpeg can read"
    # Drop "Decoder, /build/path/File.cpp:41, " prefixes and the file's own path, which the caller names anyway.
    message = re.sub(r"[\w:]*,?\s*\S+\.(?:cpp|cc|cxx|h|hpp):\d+,?\s*", "", message)
    if path:
        message = message.replace(f": {path}", "").replace(path, "the file")
    return message.strip(" ,:") or type(error).__name__


def audio_problem(waveform: np.ndarray, min_samples: int) -> str:
    """Why a decoded waveform cannot be classified (non-finite samples, too short), or `""` when it can."""
    if waveform.size == 0:
        return "holds no audio samples"
    if not np.isfinite(waveform).all():
        return "contains NaN or Inf samples"
    if len(waveform) < min_samples:
        return f"{len(waveform)} samples, shorter than one analysis frame ({min_samples} samples)"
    return ""


def _check_audio(audio: dict, sampling_rate: int, min_samples: int) -> dict:
    """`num_samples` at `sampling_rate`, and `audio_error`: why the file is unusable, or empty when it is fine."""
    try:
        waveform = decode_audio(audio, sampling_rate)
    except Exception as error:  # any decoder failure means the file is unusable; say why
        return {"num_samples": -1, "audio_error": f"cannot be decoded: {decoding_error_reason(error, audio)}"}
    return {"num_samples": len(waveform), "audio_error": audio_problem(waveform, min_samples)}


class AudioCollator:
    """Decodes a batch of utterances at the feature extractor's rate and pads them with the feature extractor.

    Args:
        feature_extractor: pads (and normalises) the batch.
        noise (*optional*): a callable `(waveform, row) -> waveform` applied to each decoded utterance before the
            feature extractor, e.g. [`~msemoboost.noise.FixedNoise`] or [`~msemoboost.noise.NoiseAugmentation`].
        return_clean (`bool`): also return `clean_input_values`, the utterances before `noise`, normalised with
            their noisy version's mean and variance (so clean and noisy share one scale): the target of the
            speech-enhancement head.
        mixup (*optional*): a callable `batch -> batch` applied to the padded batch last, e.g.
            [`~msemoboost.augmentation.BatchMixup`] (which makes `labels` class probabilities).
        class_masks (`bool`): also return `class_mask`, the rows' `class_mask` column (the classes of each
            utterance's corpus, which [`combine_corpora`] writes), for the model's loss.

    Returns `input_values` `(batch_size, num_samples)`, `attention_mask`, `labels` `(batch_size,)`, with
    `return_clean` `clean_input_values` `(batch_size, num_samples)`, and with `class_masks` `class_mask`
    `(batch_size, num_labels)`.
    """

    def __init__(self, feature_extractor, noise=None, return_clean: bool = False, mixup=None, class_masks: bool = False):
        self.feature_extractor = feature_extractor
        self.noise = noise
        self.return_clean = return_clean
        self.mixup = mixup
        self.class_masks = class_masks

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        rate = self.feature_extractor.sampling_rate
        clean = [decode_audio(row["audio"], rate) for row in rows]
        noisy = [self.noise(waveform, row) for waveform, row in zip(clean, rows)] if self.noise else clean
        batch = self.feature_extractor(noisy, sampling_rate=rate, return_tensors="pt")
        batch["labels"] = torch.tensor([row["labels"] for row in rows], dtype=torch.long)
        if self.class_masks:
            batch["class_mask"] = torch.tensor([row["class_mask"] for row in rows], dtype=torch.bool)
        if self.return_clean:
            targets = torch.zeros_like(batch["input_values"])
            for index, (speech, mixture) in enumerate(zip(clean, noisy)):
                speech = torch.from_numpy(np.asarray(speech, dtype=np.float32))
                if self.feature_extractor.do_normalize:
                    mixture = torch.from_numpy(np.asarray(mixture, dtype=np.float64))
                    speech = ((speech - mixture.mean()) / torch.sqrt(mixture.var(correction=0) + 1e-7)).float()
                targets[index, : len(speech)] = speech
            batch["clean_input_values"] = targets
        return self.mixup(batch) if self.mixup else batch


@dataclass
class CombinedCorpus:
    """The evaluated corpus and extra training corpora in one table, with one label space.

    `corpus.dataset` holds the evaluated corpus's rows first, then the extra corpora's (`extra_rows`); the `corpus` column names each row's source (and with `class_masks`, the `class_mask` column says which classes of the label space that source has). Extra corpora's speakers are prefixed with their
    corpus name, so that speakers of different corpora never merge. `report` says, per corpus, how many
    utterances were kept and how many were dropped for a label outside the label space.
    """

    corpus: EmotionCorpus
    extra_rows: np.ndarray
    report: dict


def combine_corpora(
    evaluated: EmotionCorpus,
    evaluated_name: str,
    extras: list[tuple[str, EmotionCorpus]],
    shared_labels_only: bool = False,
    keep_extra_labels: bool = False,
    class_masks: bool = False,
) -> CombinedCorpus:
    """Pools `extras` (`(name, corpus)` pairs) with `evaluated`, matching labels by name.

    The label space is the evaluated corpus's classes; with `keep_extra_labels`, the extra corpora's other classes
    are added (they are trained on, never tested). With `shared_labels_only` (the cross-corpus setting) it is the
    classes the evaluated corpus shares with the extra corpora, and evaluated rows of other classes are dropped too.
    With `class_masks`, each row gets a `class_mask` column: for each class of the label space, whether the row's
    corpus has it (for the model's `class_mask`, see [`AudioCollator`]). The column is left out when every corpus
    has every class of the label space, where the masks would all be true.
    Raises `ValueError` naming the corpus when an extra corpus shares no class with the evaluated one.
    """
    evaluated_labels = set(evaluated.label_names)
    extra_labels = set()
    for name, extra in extras:
        if extra.sampling_rate != evaluated.sampling_rate:
            raise ValueError(f"Extra corpus {name} is read at {extra.sampling_rate} Hz, the evaluated one at {evaluated.sampling_rate} Hz.")
        if not evaluated_labels & set(extra.label_names):
            raise ValueError(
                f"Extra training corpus {name} shares no emotion with {evaluated_name}: its labels are "
                f"{extra.label_names}, those of {evaluated_name} are {evaluated.label_names}. Labels are matched by "
                "name; rename them with --label_merge."
            )
        extra_labels |= set(extra.label_names)
    if shared_labels_only:
        label_names = sorted(evaluated_labels & extra_labels)
        if len(label_names) < 2:
            raise ValueError(
                f"Cross-corpus training and testing need at least 2 shared emotions; {evaluated_name} and the training "
                f"corpora share {label_names}."
            )
    elif keep_extra_labels:
        label_names = sorted(evaluated_labels | extra_labels)
    else:
        label_names = list(evaluated.label_names)
    index = {name: i for i, name in enumerate(label_names)}
    parts = [(evaluated_name, evaluated), *extras]
    has_class = [[label in part.label_names for label in label_names] for _, part in parts]
    class_masks = class_masks and not all(all(has) for has in has_class)  # all-true masks would change nothing

    tables, report, sources = [], {}, []
    for number, (name, part) in enumerate(parts):
        names = [part.label_names[label] for label in part.labels]
        keep = [row for row, label in enumerate(names) if label in index]
        dropped = Counter(label for label in names if label not in index)
        table = part.dataset.select(keep)
        prefix = "" if number == 0 else f"{name}/"
        table = table.map(
            lambda row: {"labels": index[part.label_names[row["labels"]]], "speaker": prefix + row["speaker"]},
            desc=f"Labels of {name}",
        )
        table = table.add_column("corpus", [name] * len(table))
        if class_masks:
            table = table.add_column("class_mask", [has_class[number]] * len(table))
        tables.append(table)
        sources.append(np.full(len(table), number))
        report[name] = {
            "utterances": len(table), "dropped": dict(sorted(dropped.items())), "num_dropped": sum(dropped.values()),
            "label_names": [label for label in part.label_names if label in index],
        }
        if dropped:
            logger.info(f"{name}: dropped {sum(dropped.values())} utterance(s) of class(es) outside the label space: {dict(dropped)}.")
    sources = np.concatenate(sources)
    dataset = datasets.concatenate_datasets(tables)
    num_skipped = evaluated.num_skipped + sum(extra.num_skipped for _, extra in extras)
    combined = EmotionCorpus(dataset=dataset, label_names=label_names, sampling_rate=evaluated.sampling_rate, num_skipped=num_skipped)
    return CombinedCorpus(combined, np.flatnonzero(sources > 0), report)


def read_corpus_audio(
    dataset_name: str, sampling_rate: int, min_samples: int, required_columns: tuple[str, ...] = ()
) -> tuple[list[dict], list[np.ndarray], list[str]]:
    """Every row of a corpus (an audiofolder path or a dataset id, all splits) with its decoded waveform, for the
    commands that read whole corpora into memory (`msemoboost intensity train`, `msemoboost pretrain`).

    Returns the rows (without their audio), their mono float32 waveforms at `sampling_rate`, and one line per
    skipped file naming it and why: undecodable, non-finite, shorter than `min_samples`, or digitally silent.
    Raises `ValueError` for a path or id that holds no audio, or lacks one of `required_columns` (checked before any
    audio is decoded).
    """
    try:
        source = datasets.load_dataset(dataset_name)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise ValueError(f"{dataset_name}: no audio dataset there ({' '.join(str(error).split())[:200]}).") from None
    tables = list(source.values()) if isinstance(source, datasets.DatasetDict) else [source]
    table = datasets.concatenate_datasets(tables) if tables else None
    if table is None or len(table) == 0 or "audio" not in table.column_names:
        raise ValueError(f"{dataset_name}: no audio files found.")
    for column in required_columns:
        if column not in table.column_names:
            columns = sorted(set(table.column_names) - {"audio"})
            raise ValueError(f"{dataset_name} has no {column!r} column; its columns are {columns}.")
    table = table.cast_column("audio", datasets.Audio(decode=False))
    rows, waveforms, skipped = [], [], []
    for row in table:
        name = row["audio"].get("path") or f"row {len(rows) + len(skipped)}"
        try:
            waveform = decode_audio(row["audio"], sampling_rate)
        except Exception as error:  # the decoders raise many types; all mean "unreadable"
            skipped.append(f"{name}: cannot be decoded: {decoding_error_reason(error, row['audio'])}")
            continue
        problem = audio_problem(waveform, min_samples) or ("digitally silent" if not np.abs(waveform).max() else "")
        if problem:
            skipped.append(f"{name}: {problem}")
            continue
        rows.append({key: value for key, value in row.items() if key != "audio"})
        waveforms.append(waveform)
    if not waveforms:
        raise ValueError(f"{dataset_name}: no usable audio; all {len(skipped)} file(s) were skipped ({skipped[0]}).")
    return rows, waveforms, skipped
