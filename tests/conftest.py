import os
from pathlib import Path

import numpy as np
import pytest

from msemoboost.demo import make_demo_corpus

# `../shared` beside the repository; mutation testing runs these tests from `mutants/tests`, one level deeper.
EMODB = next((parent / "shared" / "data" / "emodb" for parent in Path(__file__).resolve().parents[2:4]
              if (parent / "shared" / "data" / "emodb" / "metadata.csv").is_file()),
             Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb")


@pytest.fixture(scope="session")
def emodb() -> Path:
    """The real EMO-DB speech beside the repository. Absent only on a user's fresh checkout; CI must have it."""
    if not (EMODB / "metadata.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the EMO-DB copy at {EMODB}")
        pytest.skip(f"EMO-DB not found at {EMODB}")
    return EMODB


@pytest.fixture(scope="session")
def emodb_utterances(emodb) -> list[np.ndarray]:
    """Six real EMO-DB utterances decoded and resampled to 16 kHz by `datasets`, as the training code reads them."""
    from datasets import Audio

    audio = Audio(sampling_rate=16000)
    paths = sorted((emodb / "audio").glob("*.flac"))[::70]
    decoders = [audio.decode_example(audio.encode_example(str(path))) for path in paths]
    return [decoder.get_all_samples().data[0].numpy() for decoder in decoders]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """6 speakers x (4 angry, 3 happy, 3 neutral, 2 sad) = 72 utterances of 1.5-4 s at 22.05 kHz."""
    return make_demo_corpus(tmp_path_factory.mktemp("corpus") / "demo", utterances_per_class=3)
