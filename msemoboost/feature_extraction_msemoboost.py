"""Feature extractor for MS-EmoBoost: raw mono waveforms → padded `input_values` and `attention_mask`.

The MFCC and spectrogram guidance features are computed inside the model, so this class only checks, normalises and
pads waveforms. Segmenting into 3 s pieces also happens inside the model.
"""

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.utils import PaddingStrategy, TensorType, logging

logger = logging.get_logger(__name__)


class MSEmoBoostFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Prepares raw speech for [`MSEmoBoostForSequenceClassification`].

    Args:
        feature_size (`int`, *optional*, defaults to 1):
            Samples per time step: 1 for mono waveforms.
        sampling_rate (`int`, *optional*, defaults to 16000):
            The rate the model expects. Audio at another rate is refused with an error naming both rates; resample
            it first (e.g. `datasets.Audio(sampling_rate=16000)`).
        padding_value (`float`, *optional*, defaults to 0.0):
            Value written into padding.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Normalise each utterance to zero mean and unit variance over its own samples, as wav2vec 2.0, HuBERT,
            WavLM and data2vec-audio expect. Set it to the `do_normalize` of the backbone's own feature extractor.
        return_attention_mask (`bool`, *optional*, defaults to `True`):
            Return the `attention_mask` that marks audio (1) and padding (0). The model needs it whenever a batch
            holds utterances of different lengths.

    Input is one waveform or a list of them; each waveform is a 1-D float array (numpy, torch or a list of floats)
    of mono samples in [-1, 1]. Multi-channel audio, integer PCM, NaN/Inf samples and empty audio are refused with an
    error that says what to do instead.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.do_normalize = do_normalize
        self.return_attention_mask = return_attention_mask

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        padding: bool | str | PaddingStrategy = True,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            raw_speech (`np.ndarray`, `torch.Tensor`, `list[float]` or a list of those):
                One mono waveform of shape `(num_samples,)`, or a list of them.
            sampling_rate (`int`, *optional*):
                The rate of `raw_speech`. Pass it: a mismatch is then an error rather than a wrong answer.
            padding (`bool`, `str` or [`~utils.PaddingStrategy`], *optional*, defaults to `True`):
                Pad to the longest utterance (`True`), to `max_length` (`"max_length"`) or not at all (`False`).
            max_length (`int`, *optional*), truncation (`bool`, *optional*), pad_to_multiple_of (`int`, *optional*):
                As in [`~SequenceFeatureExtractor.pad`].
            return_attention_mask (`bool`, *optional*):
                Overrides `self.return_attention_mask`.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` for torch tensors, `"np"` for numpy arrays.

        Returns:
            [`BatchFeature`] with `input_values` of shape `(batch_size, num_samples)` (float32) and `attention_mask`
            of the same shape (int32).
        """
        if sampling_rate is not None:
            if sampling_rate != self.sampling_rate:
                raise ValueError(
                    f"The audio is sampled at {sampling_rate} Hz but this model expects {self.sampling_rate} Hz. "
                    f"Resample it to {self.sampling_rate} Hz first, e.g. with datasets.Audio(sampling_rate="
                    f"{self.sampling_rate}) or librosa.resample."
                )
        else:
            logger.warning(
                f"It is strongly recommended to pass the `sampling_rate` argument to `{self.__class__.__name__}()`. "
                "Failing to do so can result in silent errors that might be hard to debug."
            )

        waveforms = [self._check_waveform(waveform, index) for index, waveform in enumerate(self._as_list(raw_speech))]
        padded = self.pad(
            BatchFeature({"input_values": waveforms}),
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=True,
        )
        lengths = [int(np.sum(mask)) for mask in padded["attention_mask"]]
        input_values = [np.asarray(values, dtype=np.float32) for values in padded["input_values"]]
        if self.do_normalize:
            input_values = [self._zero_mean_unit_variance(values, length) for values, length in zip(input_values, lengths)]
        padded["input_values"] = input_values
        padded["attention_mask"] = [np.asarray(mask, dtype=np.int32) for mask in padded["attention_mask"]]
        if not (return_attention_mask if return_attention_mask is not None else self.return_attention_mask):
            del padded["attention_mask"]
        if return_tensors is not None:
            padded = padded.convert_to_tensors(return_tensors)
        return padded

    @staticmethod
    def _as_list(raw_speech) -> list:
        if hasattr(raw_speech, "detach"):  # a torch tensor, without importing torch here
            raw_speech = raw_speech.detach().cpu().numpy()
        if isinstance(raw_speech, np.ndarray):
            if raw_speech.ndim != 1:
                raise ValueError(
                    f"Expected one mono waveform of shape (num_samples,), got an array of shape {raw_speech.shape}. "
                    "Pass a batch as a list of 1-D waveforms, and downmix multi-channel audio to mono first "
                    "(e.g. audio.mean(axis=0) for channels-first audio)."
                )
            return [raw_speech]
        if isinstance(raw_speech, (list, tuple)):
            if len(raw_speech) == 0:
                raise ValueError("Got an empty list: no audio to process.")
            if all(isinstance(value, (int, float, np.number)) for value in raw_speech):
                return [np.asarray(raw_speech)]
            return list(raw_speech)
        raise TypeError(f"Expected a waveform or a list of waveforms, got {type(raw_speech).__name__}.")

    @staticmethod
    def _check_waveform(waveform, index: int) -> np.ndarray:
        if hasattr(waveform, "detach"):
            waveform = waveform.detach().cpu().numpy()
        waveform = np.asarray(waveform)
        where = f"utterance {index}"
        if waveform.ndim != 1:
            raise ValueError(
                f"{where}: expected a mono waveform of shape (num_samples,), got shape {waveform.shape}. Downmix "
                "multi-channel audio to mono first (e.g. audio.mean(axis=0) for channels-first audio)."
            )
        if not np.issubdtype(waveform.dtype, np.floating):
            raise ValueError(
                f"{where}: expected a floating-point waveform in [-1, 1], got dtype {waveform.dtype}. Convert integer "
                "PCM first, e.g. pcm.astype(np.float32) / 32768 for 16-bit audio."
            )
        if waveform.size == 0:
            raise ValueError(f"{where} is empty: it holds no audio samples.")
        if not np.isfinite(waveform).all():
            raise ValueError(f"{where} contains NaN or Inf samples.")
        return waveform.astype(np.float32, copy=False)

    def _zero_mean_unit_variance(self, values: np.ndarray, length: int) -> np.ndarray:
        audio = values[:length]
        normalised = np.full_like(values, self.padding_value)
        normalised[:length] = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        return normalised


__all__ = ["MSEmoBoostFeatureExtractor"]
