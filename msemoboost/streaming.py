"""`msemoboost stream`: emotions of audio as it arrives, one JSON line per hop.

Every `hop_s` seconds of audio, the window of the model's segment length that ends there (shorter at the start) is
classified on its own, exactly as `msemoboost predict --timeline --hop_s` classifies the same windows of a file, and a
line is written at once (flushed):

    {"time": 3.0, "start": 0.0, "end": 3.0, "label": "anger", "score": 0.71, "probabilities": {"anger": 0.71, ...}}

`label` is "uncertain" when `score` is below `--min_confidence`. Sources: raw PCM on standard input (`--input -`,
16-bit little-endian mono by default, `--format f32le` for float32), a WAV file that may still be growing
(`--input FILE.wav`, followed until it stops growing for `--follow_s` seconds), or the microphone (`--microphone`,
through `sounddevice`, the `stream` extra). The audio must be at the model's sampling rate; resample it first, e.g.
`ffmpeg -i in.mp3 -ar 16000 -ac 1 -f s16le - | msemoboost stream --model M`.
"""

import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

from .handler import top_label

STREAM_INSTALL = "pip install 'msemoboost[stream]'"
SAMPLE_FORMATS = {"s16le": ("<i2", 32768.0), "f32le": ("<f4", 1.0)}


class StreamError(ValueError):
    """Audio that cannot be streamed; the message says why."""


class WindowStream:
    """Takes samples as they arrive ([`push`]) and gives, for every `hop` samples, the window of `window` samples that
    ends there classified by `run(waveforms, names)` (which gives `Prediction`s, as `msemoboost.inference.predict`).

    Holds at most `window` samples and the chunk being pushed: memory does not grow with the stream's length."""

    def __init__(self, run, labels: list[str], sampling_rate: int, window: int, hop: int, min_samples: int = 1,
                 min_confidence: float | None = None):
        self.run, self.labels, self.rate = run, labels, sampling_rate
        self.window, self.hop, self.min_samples, self.min_confidence = window, hop, min_samples, min_confidence
        self.buffer = np.zeros(0, dtype=np.float32)
        self.buffer_start = 0  # the sample index of buffer[0]
        self.received = 0
        self.next_end = hop
        self.last_end = 0
        self.peak = 0.0

    def push(self, samples: np.ndarray) -> list[dict]:
        """Adds `samples` `(num_samples,)`; returns the lines of the hops they complete."""
        samples = np.asarray(samples, dtype=np.float32)
        if not np.isfinite(samples).all():
            raise StreamError(f"the stream holds NaN or infinite samples (after sample {self.received}).")
        self.peak = max(self.peak, float(np.abs(samples).max(initial=0.0)))
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += len(samples)
        lines = []
        while self.received >= self.next_end:
            lines += self.classify(self.next_end)
            self.next_end += self.hop
        # Every window still to come ends at or after the last sample received (the final one, at finish, there).
        keep_from = max(0, self.received - self.window) - self.buffer_start
        if keep_from > 0:
            self.buffer, self.buffer_start = self.buffer[keep_from:], self.buffer_start + keep_from
        return lines

    def finish(self) -> list[dict]:
        """The line of the window ending at the stream's last sample, when that is not on a hop."""
        return self.classify(self.received) if self.received > self.last_end else []

    def classify(self, end: int) -> list[dict]:
        self.last_end = end
        start = max(0, end - self.window)
        if end - start < self.min_samples:
            return []
        waveform = self.buffer[start - self.buffer_start : end - self.buffer_start]
        (prediction,) = self.run([waveform], [f"stream [{start}:{end}]"])
        probabilities = prediction.segment_probabilities[0]
        return [{"time": end / self.rate, "start": start / self.rate, "end": end / self.rate,
                 "label": top_label(self.labels, probabilities, self.min_confidence),
                 "score": float(probabilities.max()),
                 "probabilities": {label: float(p) for label, p in zip(self.labels, probabilities)}}]


def pcm_chunks(stream, sample_format: str, chunk_samples: int):
    """Float32 arrays of at most `chunk_samples` samples from a binary stream of raw PCM; [`StreamError`] when it ends
    in the middle of a sample."""
    dtype, scale = SAMPLE_FORMATS[sample_format]
    width = np.dtype(dtype).itemsize
    pending = b""
    while True:
        data = stream.read(chunk_samples * width - len(pending))
        if not data:
            break
        pending += data
        usable = len(pending) - len(pending) % width
        if usable:
            yield np.frombuffer(pending[:usable], dtype=dtype).astype(np.float32) / scale
            pending = pending[usable:]
    if pending:
        raise StreamError(f"the stream ended mid-sample: {len(pending)} byte(s) of a {width}-byte {sample_format} "
                          "sample left over.")


def wav_format(path: Path, header: bytes) -> tuple[int, str, int]:
    """`(data_offset, sample_format, sampling_rate)` of a mono 16-bit PCM or 32-bit float WAV file's header."""
    if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        raise StreamError(f"{path}: not a WAV file (no RIFF/WAVE header); pipe other formats through ffmpeg to --input -.")
    position, fmt = 12, None
    while position + 8 <= len(header):
        chunk, size = header[position : position + 4], struct.unpack("<I", header[position + 4 : position + 8])[0]
        if chunk == b"fmt ":
            fmt = struct.unpack("<HHIIHH", header[position + 8 : position + 24])
        if chunk == b"data":
            if fmt is None:
                break
            encoding, channels, rate, _, _, bits = fmt
            formats = {(1, 16): "s16le", (3, 32): "f32le"}
            if channels != 1 or (encoding, bits) not in formats:
                raise StreamError(f"{path}: {channels} channel(s), encoding {encoding}, {bits} bits; streaming takes "
                                  "mono 16-bit PCM or 32-bit float WAV.")
            return position + 8, formats[(encoding, bits)], rate
        position += 8 + size + size % 2
    raise StreamError(f"{path}: no fmt and data chunks in its first {len(header)} bytes.")


class GrowingFile:
    """A binary file read as it is written: `read(n)` waits (polling) for more bytes, and gives b"" once the file
    has not grown for `follow_s` seconds."""

    def __init__(self, path: Path, offset: int, follow_s: float):
        self.file = open(path, "rb")
        self.file.seek(offset)
        self.follow_s = follow_s

    def read(self, size: int) -> bytes:
        data, waited = b"", 0.0
        while len(data) < size:
            more = self.file.read(size - len(data))
            if more:
                data += more
                waited = 0.0
                continue
            if data or waited >= self.follow_s:
                break
            time.sleep(0.05)
            waited += 0.05
        return data


def microphone_chunks(sampling_rate: int, chunk_samples: int):
    """Float32 arrays of `chunk_samples` from the default input device, until interrupted (Ctrl-C)."""
    try:
        import sounddevice
    except (ImportError, OSError) as error:  # OSError: the PortAudio library is missing
        raise ImportError(f"--microphone needs sounddevice and PortAudio: {STREAM_INSTALL}, and on Debian "
                          f"apt-get install libportaudio2 ({error}).") from None
    with sounddevice.InputStream(samplerate=sampling_rate, channels=1, dtype="float32", blocksize=chunk_samples) as stream:
        try:
            while True:
                samples, _ = stream.read(chunk_samples)
                yield samples[:, 0].copy()
        except KeyboardInterrupt:
            return


def stream_lines(args, run, config, output=None) -> int:
    """Runs `msemoboost stream` (its `--hop_s` and `--min_confidence` checked by the command line): writes a JSON line
    per hop to `output` (standard output); returns the exit code."""
    output = output or sys.stdout
    rate = config.sampling_rate
    hop = int(round(args.hop_s * rate))
    if args.microphone:
        chunks = microphone_chunks(rate, hop)
    elif args.input == "-":
        if args.sampling_rate != rate:
            raise ValueError(f"the stream is at {args.sampling_rate} Hz and the model takes {rate} Hz: resample it "
                             f"first (ffmpeg ... -ar {rate} -ac 1 -f {args.format} -).")
        chunks = pcm_chunks(sys.stdin.buffer, args.format, hop)
    else:
        path = Path(args.input)
        if not path.is_file():
            raise ValueError(f"--input {path}: no such file.")
        header = path.read_bytes()[:4096]
        offset, sample_format, file_rate = wav_format(path, header)
        if file_rate != rate:
            raise ValueError(f"{path} is at {file_rate} Hz and the model takes {rate} Hz: resample it first "
                             f"(ffmpeg -i {path} -ar {rate} -ac 1 out.wav).")
        chunks = pcm_chunks(GrowingFile(path, offset, args.follow_s), sample_format, hop)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    windows = WindowStream(run, labels, rate, config.segment_samples, hop, config.min_input_samples, args.min_confidence)
    written = 0

    def write(lines: list[dict]) -> None:
        nonlocal written
        for line in lines:
            output.write(json.dumps(line) + "\n")
            written += 1
        output.flush()

    try:
        for chunk in chunks:
            write(windows.push(chunk))
        write(windows.finish())
    except StreamError as error:
        write(windows.finish())
        print(f"msemoboost stream: {error} The {written} line(s) before it were written.", file=sys.stderr)
        return 1
    if windows.received == 0:
        print("msemoboost stream: the stream held no audio; nothing was written.", file=sys.stderr)
        return 1
    if windows.peak == 0:
        print(f"msemoboost stream: the stream held only silence ({windows.received / rate:.1f} s of zeros); its "
              f"{written} line(s) classify silence.", file=sys.stderr)
    return 0
