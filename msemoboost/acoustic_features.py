"""The guidance features of MS-EmoBoost (MFCC and log spectrogram), computed in torch inside the model.

Both follow the reference recipe of the paper's lineage (librosa) so closely that they match it to float32
precision on real speech (see `tests/test_acoustic_features.py`):

- MFCC: `librosa.feature.mfcc(y=preemphasis(x), sr=16000, n_mfcc=40, hop_length=160, htk=True)` at librosa's other
  defaults (n_fft 2048, periodic Hann window, centred frames with zero padding, 128 Slaney-normalised HTK mel filters,
  `power_to_db` with ref 1.0, amin 1e-10 and top_db 80, orthonormal DCT-II).
- Spectrogram: `amplitude_to_db(|stft(preemphasis(x), n_fft=800, win_length=640, hop_length=160,
  window="hamming")|, ref=np.max)`, first 200 bins, min-max scaled to [0, 1], frequency axis flipped.

The windows and mel filters come from `transformers.audio_utils`. They are non-persistent buffers: they are not
saved with the weights, and `MSEmoBoostPreTrainedModel._init_weights` fills them again after loading. They stay
float32 when the model is cast to half precision, and features are always computed in float32: the log and the DCT
need the range, and a bf16 window or filter bank alone would change the features by up to 16 %. A caller may ask for
the STFT itself in float64 (`fft_dtype`), as the whole-utterance MFCC does; the power is rounded to float32.
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers.audio_utils import mel_filter_bank, window_function


def pre_emphasis(waveform: torch.Tensor, coefficient: float) -> torch.Tensor:
    """`y[n] = x[n] - coefficient * x[n - 1]`, started the way `librosa.effects.preemphasis` starts it.

    librosa initialises the filter state with `2 * x[0] - x[1]` and feeds it to `scipy.signal.lfilter` unscaled, so
    its first output is `x[0] + 2 * x[0] - x[1]`. We reproduce that to stay numerically faithful to the recipe.

    Args:
        waveform (`torch.Tensor` of shape `(batch_size, num_samples)`), with `num_samples >= 2`.

    Returns:
        `torch.Tensor` of shape `(batch_size, num_samples)`.
    """
    first = 3 * waveform[:, :1] - waveform[:, 1:2]
    return torch.cat([first, waveform[:, 1:] - coefficient * waveform[:, :-1]], dim=1)


def device_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """`dtype` for a computation on `device`: float32 instead on Apple's MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else dtype


def power_to_db(power: torch.Tensor, amin: float, top_db: float) -> torch.Tensor:
    """`librosa.power_to_db` with `ref=1.0` over the last two dimensions of `power` (one spectrogram per leading
    index): `10 log10(max(power, amin))`, floored `top_db` below each spectrogram's peak."""
    log_spec = 10.0 * torch.log10(power.clamp(min=amin))
    floor = log_spec.amax(dim=(-2, -1), keepdim=True) - top_db
    return torch.maximum(log_spec, floor)


def dct_matrix(num_inputs: int, num_outputs: int) -> np.ndarray:
    """Orthonormal DCT-II basis of shape `(num_inputs, num_outputs)`, as `scipy.fft.dct(..., norm="ortho")`."""
    n = np.arange(num_inputs)
    k = np.arange(num_outputs)
    basis = np.cos(np.pi / num_inputs * (n[:, None] + 0.5) * k[None, :]) * np.sqrt(2.0 / num_inputs)
    basis[:, 0] /= np.sqrt(2.0)
    return basis


def mel_bands(mel_filters: np.ndarray, num_bands: int = 8) -> tuple[tuple[int, int, int, int], ...]:
    """Splits a filter bank `(num_frequency_bins, num_mel_bins)` into `num_bands` runs of consecutive filters, each
    with the span of frequency bins where any of its filters is non-zero: `(first_filter, end_filter, first_bin,
    end_bin)` per run. The product of a power spectrum with each run's span of the bank, side by side, is the product
    with the whole bank less terms that are exactly zero: at 2048 points and 128 mel filters, 13 % of the
    multiply-adds."""
    num_bins, num_filters = mel_filters.shape
    non_zero = mel_filters != 0
    bins = np.arange(num_bins)[:, None]
    first = np.where(non_zero, bins, num_bins).min(0)  # per filter; num_bins for an all-zero filter
    end = np.where(non_zero, bins, -1).max(0) + 1  # 0 for an all-zero filter
    bands = []
    for band in range(num_bands):
        start, stop = band * num_filters // num_bands, (band + 1) * num_filters // num_bands
        if start < stop:
            low, high = int(first[start:stop].min()), int(end[start:stop].max())
            bands.append((start, stop, min(low, high), high))  # an all-zero run: an empty span, a zero product
    return tuple(bands)


def slaney_mel_filters(n_fft: int, num_mel_bins: int, sampling_rate: int) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filters from 0 Hz to half the sampling rate, `(n_fft // 2 + 1,
    num_mel_bins)` float32 (librosa's defaults): those of `MSEmoBoostLogMel` and `MSEmoBoostUtteranceLogMel`."""
    return mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=num_mel_bins, min_frequency=0.0,
                           max_frequency=sampling_rate / 2, sampling_rate=sampling_rate, norm="slaney",
                           mel_scale="slaney", dtype=np.float32)


class MSEmoBoostPowerSpectrogram(nn.Module):
    """Power spectrogram `|STFT|^2` with librosa's framing: centred frames, zero padding at the edges.

    Subclasses set `n_fft` and `hop_length` and return their constant tensors (the `window` among them) from
    `compute_buffers`; those become non-persistent float32 buffers. Those with a mel filter bank return it from
    `filter_bank` as a numpy array `(n_fft // 2 + 1, num_mel_bins)`, and as the buffer `mel_filters`.
    """

    n_fft: int
    hop_length: int
    center: bool = True  # librosa's framing; False: frame t covers samples [t * hop, t * hop + n_fft)
    rows_per_step: int | None = None  # set by use_matmul_fft: `forward` computes the rows in groups of this many
    # Eager PyTorch computes the rows (segments) `eager_rows_per_step` at a time: the STFT's frames and spectra of a
    # few segments stay in the CPU's cache instead of streaming through memory. On 2 cores, 32 segments of 3 s:
    # the MFCC about 1.5x faster in groups of 4 than all at once (BENCHMARKS.md section 2). The same numbers.
    eager_rows_per_step: int = 4

    def register_feature_buffers(self):
        for name, value in self.compute_buffers().items():
            self.register_buffer(name, value, persistent=False)
        if hasattr(self, "filter_bank"):  # from numpy, as the buffers may be on the meta device while loading
            self.mel_bands = mel_bands(self.filter_bank())

    def mel_power(self, power: torch.Tensor) -> torch.Tensor:
        """`power` `(..., num_frequency_bins)` → its mel power `(..., num_mel_bins)`: the product with `mel_filters`,
        computed one run of filters at a time over the bins where they are non-zero (see `mel_bands`)."""
        mel_filters = self.mel_filters.float()
        return torch.cat([power[..., low:high] @ mel_filters[low:high, start:stop]
                          for start, stop, low, high in self.mel_bands], dim=-1)

    def compute_buffers(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` / `.half()` cast every floating buffer; the windows, filters and DCT must stay
        # exact float32 (the features are always computed in float32), so rebuild any that lost precision.
        super()._apply(fn, recurse)
        for name, value in self.compute_buffers().items():
            buffer = self._buffers[name]
            if buffer.dtype != torch.float32:
                self._buffers[name] = value.to(buffer.device)
        return self

    def forward(self, waveform: torch.Tensor, fft_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The subclass's `features` of each row of `waveform` `(batch_size, num_samples)`, each row on its own, from
        an STFT computed in `fft_dtype` (see `power_spectrogram`).

        After `use_matmul_fft(rows_per_step)`, the rows go through in `ceil(batch_size / rows_per_step)` equal groups
        of at most `rows_per_step` rows (padded with fewer zero rows than there are groups), one `scan` step each (a
        `Scan` node in an exported graph): the FFT's intermediates then never exist for all the segments of a long
        recording at once, and a short input is not padded up to `rows_per_step`. The same numbers either way.
        """
        if self.rows_per_step is None:
            rows = self.eager_rows_per_step
            if waveform.shape[0] <= rows or torch.compiler.is_compiling() or torch.jit.is_tracing():
                return self.features(waveform, fft_dtype)
            return torch.cat([self.features(group, fft_dtype) for group in waveform.split(rows)])
        from torch._higher_order_ops.scan import scan

        rows = waveform.shape[0]
        num_groups = (rows + self.rows_per_step - 1) // self.rows_per_step
        step = (rows + num_groups - 1) // num_groups  # at most rows_per_step, and fewer than num_groups pad rows
        groups = F.pad(waveform, (0, 0, 0, num_groups * step - rows)).reshape(num_groups, step, -1)
        _, features = scan(lambda carry, group: (carry.clone(), self.features(group, fft_dtype)), waveform.new_zeros(()),
                           groups)
        return features.flatten(0, 1)[:rows]

    def features(self, waveform: torch.Tensor, fft_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def use_matmul_fft(self, rows_per_step: int | None = None):
        """Computes `|STFT|^2` by matrix products instead of `torch.stft`: a four-step FFT.

        `n_fft = n1 * n2` (`n1` the largest factor up to its square root): each windowed frame, read as an `(n1, n2)`
        matrix, gets an `n1`-point DFT down its columns, a twiddle factor per element, then an `n2`-point DFT along its
        rows, each DFT one product with a small real basis (cos and sin side by side). Only the outputs up to
        `n_fft // 2` are computed. The same numbers as `torch.stft` to float32 rounding (`tests/test_export.py` pins
        them), at about `2 * n1 * n2 * (n1 + n2)` multiply-adds per frame instead of a DFT's `n_fft ** 2`: 0.4 M at
        2048 points, 0.1 M at 800. `msemoboost.export` switches it on for the ONNX graph, where ONNX Runtime's STFT is
        about ten times slower than torch's FFT (and a direct DFT for a size that is not a power of two). PyTorch keeps
        `torch.stft`, in either `fft_dtype` (the bases are kept in both, the float64 ones with the suffix
        `_float64`). With `rows_per_step`, `forward` also computes the rows in groups of that many.
        """
        self.rows_per_step = rows_per_step
        n = self.n_fft
        n1 = max(factor for factor in range(1, math.isqrt(n) + 1) if n % factor == 0)
        n2, k2 = n // n1, n // 2 // n1 + 1  # output k = k1 + n1 * k2 for k1 < n1, k2 < k2: enough for k <= n // 2

        def angle(rows: int, columns: int, size: int) -> torch.Tensor:
            product = torch.arange(rows, dtype=torch.float64)[:, None] * torch.arange(columns, dtype=torch.float64)
            return 2 * math.pi * product / size

        first = angle(n1, n1, n1)  # (n1 samples, n1 outputs)
        twiddle = angle(n2, n1, n)  # (n2, n1 outputs of the first DFTs)
        second = angle(k2, n2, n2)  # (k2 outputs, n2)
        buffers = {
            "fft_first": torch.cat([first.cos(), -first.sin()], dim=1),  # (n1, 2 * n1): real | imaginary
            "fft_twiddle": torch.stack([twiddle.cos(), twiddle.sin()]),  # (2, n2, n1)
            "fft_second": torch.cat([torch.cat([second.cos(), second.sin()], dim=1),  # (2 * k2, 2 * n2)
                                     torch.cat([-second.sin(), second.cos()], dim=1)]),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float().to(self.window.device), persistent=False)
            self.register_buffer(f"{name}_float64", value.to(self.window.device), persistent=False)
        self.fft_factors = (n1, n2)

    def frames(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_samples)` → frames `(batch_size, num_frames, n_fft)` in the waveform's dtype: centred and
        zero-padded (`num_samples // hop_length + 1` frames), or without `center` frame t is samples `[t * hop,
        t * hop + n_fft)` (`(num_samples - n_fft) // hop_length + 1` frames). Cut as slices of hop-long chunks side by
        side (no gather, so no table of sample indices in an exported graph)."""
        hop, width = self.hop_length, self.n_fft
        left = width // 2 if self.center else 0
        num_frames = waveform.shape[1] // hop + 1 if self.center else (waveform.shape[1] - width) // hop + 1
        num_chunks = -(-width // hop)
        padded = F.pad(waveform, (left, left + num_chunks * hop - width))
        chunks = padded[:, : (num_frames + num_chunks - 1) * hop].unflatten(1, (-1, hop))
        return torch.cat([chunks[:, i : i + num_frames] for i in range(num_chunks)], dim=-1)[..., :width]

    def power_spectrogram(self, waveform: torch.Tensor, fft_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`(batch_size, num_samples)` → `(batch_size, n_fft // 2 + 1, num_frames)` in float32: `num_samples //
        hop_length + 1` centred frames (or `(num_samples - n_fft) // hop_length + 1` without `center`).

        The STFT is computed in `fft_dtype`. A float32 FFT's error is relative to each frame's strongest bin, so a bin
        60 dB below it holds only a few significant digits; in float64 (not on Apple's MPS, which stays float32) every
        bin is its exact power rounded to float32, whichever FFT computed it.
        """
        dtype = device_dtype(fft_dtype, waveform.device)
        if getattr(self, "fft_factors", None) is not None:
            n1, n2 = self.fft_factors
            first, twiddle, second = (getattr(self, name if dtype == torch.float32 else f"{name}_float64")
                                      for name in ("fft_first", "fft_twiddle", "fft_second"))
            frames = self.frames(waveform.to(dtype)) * self.window.to(dtype)
            columns = frames.unflatten(-1, (n1, n2)).transpose(-1, -2)  # (..., n2, n1): [j, i] is frame sample i * n2 + j
            spectrum = columns @ first  # (..., n2, 2 * n1): the n1-point DFTs, real | imaginary
            real, imaginary = spectrum.chunk(2, dim=-1)
            cos, sin = twiddle.to(dtype)  # unpacking the buffer itself gives an export's scan two aliased inputs
            twiddled = torch.cat([real * cos + imaginary * sin, imaginary * cos - real * sin], dim=-2)  # (..., 2 n2, n1)
            spectrum = second @ twiddled  # (..., 2 * k2, n1): the n2-point DFTs, real; imaginary
            real, imaginary = spectrum.chunk(2, dim=-2)
            power = torch.addcmul(real * real, imaginary, imaginary).flatten(-2)  # output k1 + n1 * k2 at k2 * n1 + k1
            return power[..., : self.n_fft // 2 + 1].transpose(1, 2).float()
        stft = torch.stft(
            waveform.to(dtype),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window.to(dtype),
            center=self.center,
            pad_mode="constant",
            return_complex=True,
        )
        # re^2 + im^2 straight from the two views: several times cheaper than abs().square() on CPU.
        return torch.addcmul(stft.real * stft.real, stft.imag, stft.imag).float()


class MSEmoBoostMFCC(MSEmoBoostPowerSpectrogram):
    """HTK-mel MFCC of each segment, as librosa computes it.

    Forward input: `waveform` of shape `(batch_size, num_samples)`, already pre-emphasised.
    Forward output: MFCC of shape `(batch_size, num_frames, num_mfcc)`, `num_frames = num_samples // hop + 1`.
    """

    def __init__(self, config):
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.n_fft = config.mfcc_n_fft
        self.hop_length = config.mfcc_hop_length
        self.window_name = config.mfcc_window
        self.num_mel_bins = config.mfcc_num_mel_bins
        self.num_mfcc = config.num_mfcc
        self.top_db = config.mfcc_top_db
        self.register_feature_buffers()

    def compute_buffers(self) -> dict[str, torch.Tensor]:
        """The STFT `window` `(n_fft,)`, `mel_filters` `(n_fft // 2 + 1, num_mel_bins)` and `dct` `(num_mel_bins,
        num_mfcc)`."""
        window = window_function(self.n_fft, self.window_name, periodic=True)
        dct = dct_matrix(self.num_mel_bins, self.num_mfcc)
        return {
            "window": torch.tensor(window, dtype=torch.float32),
            "mel_filters": torch.tensor(self.filter_bank(), dtype=torch.float32),
            "dct": torch.tensor(dct, dtype=torch.float32),
        }

    def filter_bank(self) -> np.ndarray:
        return mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=self.num_mel_bins,
            min_frequency=0.0,
            max_frequency=self.sampling_rate / 2,
            sampling_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="htk",
            dtype=np.float32,
        )

    def features(self, waveform: torch.Tensor, fft_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        power = self.power_spectrogram(waveform, fft_dtype).transpose(1, 2)  # (batch, num_frames, num_frequency_bins)
        log_mel = power_to_db(self.mel_power(power), amin=1e-10, top_db=self.top_db)
        return log_mel @ self.dct.float()


class MSEmoBoostSpectrogram(MSEmoBoostPowerSpectrogram):
    """Log-amplitude spectrogram image of each segment, as the reference recipe computes it.

    Forward input: `waveform` of shape `(batch_size, num_samples)`, already pre-emphasised.
    Forward output: image of shape `(batch_size, num_bins, num_frames)` in `[0, 1]`, highest frequency in row 0.
    """

    def __init__(self, config):
        super().__init__()
        self.n_fft = config.spectrogram_n_fft
        self.win_length = config.spectrogram_win_length
        self.hop_length = config.spectrogram_hop_length
        self.window_name = config.spectrogram_window
        self.num_bins = config.spectrogram_num_bins
        self.top_db = config.spectrogram_top_db
        self.register_feature_buffers()

    def compute_buffers(self) -> dict[str, torch.Tensor]:
        """The analysis `window`, zero-padded to `n_fft` around its centre as librosa pads it: `(n_fft,)`."""
        window = window_function(self.win_length, self.window_name, periodic=True, frame_length=self.n_fft)
        return {"window": torch.tensor(window, dtype=torch.float32)}

    def features(self, waveform: torch.Tensor, fft_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        power = self.power_spectrogram(waveform, fft_dtype)  # (batch_size, num_frequency_bins, num_frames)
        # amplitude_to_db(ref=np.max) is power_to_db of the squared amplitude with amin 1e-5 ** 2. Its reference only
        # shifts each image by a constant (the floor is top_db below the image's own peak), which the min-max scaling
        # below removes: the image is the same with any reference, so none is computed.
        log_spec = power_to_db(power, amin=1e-10, top_db=self.top_db)[:, : self.num_bins]
        low = log_spec.amin(dim=(-2, -1), keepdim=True)
        span = log_spec.amax(dim=(-2, -1), keepdim=True) - low
        # A segment with no dynamic range (digital silence) becomes an all-zero image rather than 0 / 0.
        image = torch.where(span > 0, (log_spec - low) / span.clamp(min=torch.finfo(span.dtype).tiny), 0.0)
        return image.flip(1)


class MSEmoBoostProsody(MSEmoBoostPowerSpectrogram):
    """Frame pitch, voicing strength and energy, by the autocorrelation method (Boersma 1993) computed from the power
    spectrum, so that it is matrix products and a maximum (and exports as such).

    Each centred frame (`prosody_win_length` Hann window in `prosody_n_fft` points, hop `mfcc_hop_length`) gives its
    autocorrelation `r(τ)` from its power spectrum up to `prosody_max_frequency` (a product with a cosine basis), at
    lags `τ` spaced `pitch_step_semitones` apart over the pitch range, fractional lags included (the band-limited
    autocorrelation is exact between samples too); then the normalised autocorrelation `(r(τ) / r(0)) / (r_w(τ) /
    r_w(0))` (`r_w`: the window's own autocorrelation, which would otherwise favour short lags). Its peak gives the
    pitch (the sampling rate over the peak's lag) and the voicing strength (the peak's height, about 1 for a periodic
    frame, low for noise). As in Praat, the peak is chosen after subtracting `pitch_octave_cost` per octave below
    `pitch_max_hz`, so that of a periodic frame's equal peaks at its period and its multiples the period wins.

    Forward input: `waveform` of shape `(batch_size, num_samples)`.
    Forward output: `(batch_size, num_frames, 3)`: the pitch in semitones above 1 Hz (`12 * log2(f0)`), the voicing
    strength, and the frame energy in dB (`10 * log10(max(power, 1e-10))`, the power summed over all bins);
    `num_frames = num_samples // hop + 1`. Whether a frame is voiced is for the caller to decide (see
    `MSEmoBoostMFCCEncoder.prosody_statistics`).
    """

    def __init__(self, config):
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.n_fft = config.prosody_n_fft
        self.win_length = config.prosody_win_length
        self.hop_length = config.mfcc_hop_length
        self.num_bins = int(config.prosody_max_frequency / config.sampling_rate * self.n_fft) + 1
        self.pitch_range = (config.pitch_min_hz, config.pitch_max_hz)
        self.step = config.pitch_step_semitones
        self.octave_cost = config.pitch_octave_cost
        self.register_feature_buffers()

    def compute_buffers(self) -> dict[str, torch.Tensor]:
        """The `window` `(n_fft,)`; the `pitch_semitones` searched `(num_lags,)`, from `pitch_max_hz` down; the
        `autocorrelation` basis `(num_bins, 1 + num_lags)`, whose column 0 gives `r(0)` and the others `r(τ)` at
        those pitches' lags (each the inverse real DFT of the power at lag τ, up to a constant factor); the window's
        normalised autocorrelation `window_autocorrelation` `(num_lags,)` at those lags; and the `octave_penalty`
        `(num_lags,)` subtracted before the peak is chosen."""
        window = window_function(self.win_length, "hann", periodic=True, frame_length=self.n_fft)
        low, high = (12 * np.log2(frequency) for frequency in self.pitch_range)
        semitones = high - self.step * np.arange(int(np.floor((high - low) / self.step)) + 1)
        lags = self.sampling_rate / 2 ** (semitones / 12)

        def cosine_basis(num_bins: int, lags: np.ndarray) -> np.ndarray:
            bins = np.arange(num_bins)
            weight = np.where((bins == 0) | (bins == self.n_fft // 2), 1.0, 2.0)  # the spectrum's other half
            return weight[:, None] * np.cos(2 * np.pi * bins[:, None] * lags[None] / self.n_fft)

        window_power = np.abs(np.fft.rfft(window, n=self.n_fft)) ** 2
        window_autocorrelation = window_power @ cosine_basis(self.n_fft // 2 + 1, np.concatenate([[0.0], lags]))
        return {
            "window": torch.tensor(window, dtype=torch.float32),
            "pitch_semitones": torch.tensor(semitones, dtype=torch.float32),
            "autocorrelation": torch.tensor(cosine_basis(self.num_bins, np.concatenate([[0.0], lags])),
                                            dtype=torch.float32),
            "window_autocorrelation": torch.tensor(window_autocorrelation[1:] / window_autocorrelation[0],
                                                   dtype=torch.float32),
            "octave_penalty": torch.tensor(self.octave_cost * (high - semitones) / 12, dtype=torch.float32),
        }

    def features(self, waveform: torch.Tensor, fft_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        power = self.power_spectrogram(waveform, fft_dtype).transpose(1, 2)  # (batch, num_frames, num_frequency_bins)
        autocorrelation = power[..., : self.num_bins] @ self.autocorrelation.float()  # (..., 1 + num_lags)
        zero_lag = autocorrelation[..., :1].clamp(min=torch.finfo(power.dtype).tiny)
        normalised = autocorrelation[..., 1:] / zero_lag / self.window_autocorrelation.float()
        peak = (normalised - self.octave_penalty.float()).argmax(dim=-1, keepdim=True)
        strength = normalised.gather(-1, peak)[..., 0]
        pitch = self.pitch_semitones.float()[peak[..., 0]]
        energy = 10 * torch.log10(power.sum(-1).clamp(min=1e-10))  # digital silence: -100 dB (not -inf in ONNX)
        return torch.stack([pitch, strength, energy], dim=-1)


class MSEmoBoostLogMel(MSEmoBoostPowerSpectrogram):
    """`log(mel power + 1e-6)` with a periodic Hann window of `n_fft` samples and Slaney mel filters, for the
    emotion-intensity model (centred 10 ms frames) and the pretraining target (`center=False`: the backbone's
    frames).

    Forward input: `waveform` of shape `(batch_size, num_samples)`.
    Forward output: `(batch_size, num_frames, num_mel_bins)`.
    """

    def __init__(self, n_fft: int, hop_length: int, sampling_rate: int, num_mel_bins: int, center: bool = True):
        super().__init__()
        self.n_fft, self.hop_length, self.center = n_fft, hop_length, center
        self.sampling_rate, self.num_mel_bins = sampling_rate, num_mel_bins
        self.register_feature_buffers()

    def compute_buffers(self) -> dict[str, torch.Tensor]:
        """The `window` `(n_fft,)` and `mel_filters` `(n_fft // 2 + 1, num_mel_bins)`."""
        return {"window": torch.tensor(window_function(self.n_fft, "hann", periodic=True), dtype=torch.float32),
                "mel_filters": torch.tensor(self.filter_bank(), dtype=torch.float32)}

    def filter_bank(self) -> np.ndarray:
        return slaney_mel_filters(self.n_fft, self.num_mel_bins, self.sampling_rate)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        power = self.power_spectrogram(waveform).transpose(1, 2)  # (batch_size, num_frames, num_frequency_bins)
        return torch.log(self.mel_power(power) + 1e-6)


class MSEmoBoostUtteranceLogMel(MSEmoBoostPowerSpectrogram):
    """`log10` mel power of whole utterances for `config.utterance_log_mel_statistics`, as
    `transformers.audio_utils.spectrogram(waveform, window_function(win_length, "hann"), frame_length=win_length,
    hop_length=hop, fft_length=n_fft, center=False, mel_filters=..., log_mel="log10", mel_floor=1e-10)` computes it,
    with `log_mel_num_bands` Slaney mel filters over 0 Hz to half the sampling rate: frame t is samples `[t * hop,
    t * hop + win_length)`, windowed, zero-padded to `n_fft` points.

    Forward input: `waveform` of shape `(batch_size, num_samples)`, not pre-emphasised.
    Forward output: `(batch_size, num_samples // hop + 1, log_mel_num_bands)`; the waveform is padded with `n_fft`
    zeros, so that frame 0 always exists: frame t lies within a recording of `length` samples while
    `t * hop + win_length <= length`, and only those frames are the reference's.
    """

    center = False

    def __init__(self, config):
        super().__init__()
        self.sampling_rate = config.sampling_rate
        self.n_fft = config.log_mel_n_fft
        self.win_length = config.log_mel_win_length
        self.hop_length = config.mfcc_hop_length
        self.num_mel_bins = config.log_mel_num_bands
        self.register_feature_buffers()

    def compute_buffers(self) -> dict[str, torch.Tensor]:
        """The periodic Hann `window` of `win_length` samples followed by zeros, `(n_fft,)`, and `mel_filters`
        `(n_fft // 2 + 1, num_mel_bins)`."""
        window = window_function(self.win_length, "hann", periodic=True, frame_length=self.n_fft, center=False)
        return {"window": torch.tensor(window, dtype=torch.float32),
                "mel_filters": torch.tensor(self.filter_bank(), dtype=torch.float32)}

    def filter_bank(self) -> np.ndarray:
        return slaney_mel_filters(self.n_fft, self.num_mel_bins, self.sampling_rate)

    def features(self, waveform: torch.Tensor, fft_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        power = self.power_spectrogram(F.pad(waveform, (0, self.n_fft)), fft_dtype).transpose(1, 2)
        return torch.log10(self.mel_power(power).clamp(min=1e-10))


class MSEmoBoostFrameSTFT(MSEmoBoostPowerSpectrogram):
    """STFT whose frames are the backbone's frames, for the speech-enhancement head.

    Frame `t` spans samples `[t * hop, t * hop + n_fft)` with `n_fft` the backbone's receptive field (400 samples
    for wav2vec2) and `hop` its stride (320): no centring, so frame `t` holds the audio that SSL frame `t` saw.
    Periodic Hann window.
    """

    def __init__(self, config):
        super().__init__()
        self.n_fft = config.min_input_samples
        self.hop_length = config.backbone_frame_stride
        self.register_feature_buffers()

    def compute_buffers(self) -> dict[str, torch.Tensor]:
        """The analysis and synthesis `window` `(n_fft,)`."""
        return {"window": torch.tensor(window_function(self.n_fft, "hann", periodic=True), dtype=torch.float32)}

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_samples)` → complex `(batch_size, num_frames, n_fft // 2 + 1)`, in float32;
        `num_frames = (num_samples - n_fft) // hop + 1`."""
        stft = torch.stft(
            waveform.float(), n_fft=self.n_fft, hop_length=self.hop_length, window=self.window.float(),
            center=False, return_complex=True,
        )
        return stft.transpose(1, 2)

    def inverse(self, spectrogram: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """Weighted overlap-add of `spectrogram` `(batch_size, num_frames, n_fft // 2 + 1)` back to `fallback`'s
        shape `(batch_size, num_samples)`.

        Samples no frame covers with weight (the first sample, where the Hann window is 0, and the tail after the
        last whole frame) keep `fallback`'s value: the input signal, so the output has no holes.
        """
        frames = torch.fft.irfft(spectrogram, n=self.n_fft, dim=-1) * self.window.float()  # (batch, frames, n_fft)
        num_frames = frames.shape[1]
        length = (num_frames - 1) * self.hop_length + self.n_fft
        fold = dict(output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        signal = F.fold(frames.transpose(1, 2), **fold).flatten(1)
        weight = self.window.float().square()[None, :, None].expand(1, self.n_fft, num_frames)
        weight = F.fold(weight, **fold).flatten(1)
        covered = weight > 1e-3
        signal = torch.where(covered, signal / weight.clamp(min=1e-3), fallback[:, :length].float())
        return torch.cat([signal, fallback[:, length:].float()], dim=1)


__all__ = [
    "MSEmoBoostFrameSTFT",
    "MSEmoBoostLogMel",
    "MSEmoBoostProsody",
    "MSEmoBoostMFCC",
    "MSEmoBoostPowerSpectrogram",
    "MSEmoBoostSpectrogram",
    "MSEmoBoostUtteranceLogMel",
    "pre_emphasis",
]
