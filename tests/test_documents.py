"""The tracked text files say what is: no words about the order in which the work was done.

Flagged: an ordinal or a demonstrative before the word for a work period (also inside results keys), references to
issue numbers, and remarks on who else used the machine; the parametrised cases below are the examples. Allowed: API
names that contain the word (ONNX Runtime's `InferenceSession`, pytest's `scope="session"`) and recordings' sessions
(IEMOCAP's recording sessions, a speaker's or a group's).
"""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".json", ".toml", ".cfg", ".txt", ".csv", ".sh", ""}

ORDINALS = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
            "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth").split()
ORDINAL = rf"(?:(?:twenty|thirty)[-_ ])?(?:{'|'.join(ORDINALS)})|\d+(?:st|nd|rd|th)"
LATE_ORDINAL = rf"(?:(?:twenty|thirty)[-_ ])?(?:{'|'.join(ORDINALS[3:])})|(?:[4-9]|\d\d+)th"  # "the first run" is plain
PROCESS_WORDS = re.compile(
    rf"(?<![A-Za-z])(?:{ORDINAL})[-_ ]sessions?(?![A-Za-z])|(?<![A-Za-z])(?:{LATE_ORDINAL})[-_ ]runs?(?![A-Za-z])"
    r"|\b(?:this|that|last|next|previous|earlier|later|each|every|a|one|the) session(?:'s)?\b"
    r"|\bsessions? \d+\b|(?<![A-Za-z])session_?\d+\b"
    r"|\bissues? #?\d+\b|(?<![\w&])#\d+\b"
    r"|\bmachine to itself\b",
    re.IGNORECASE)
# What may carry the word "session" in these files: API names, and recording sessions of a corpus or a speaker.
ALLOWED = re.compile(
    r"InferenceSession|scope=\"session\"|recording sessions?|IEMOCAP[^.\n]*sessions?|\(speaker, session\)"
    r"|a session's|Session\d", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files = [REPO / name for name in names if Path(name).suffix in TEXT_SUFFIXES]
    return [path for path in files if path.is_file() and b"\0" not in path.read_bytes()[:4096]]


def process_words(text: str) -> list[str]:
    """The flagged phrases in a text, after the allowed names are taken out."""
    return [match.group(0) for match in PROCESS_WORDS.finditer(ALLOWED.sub("", text))]


@pytest.mark.parametrize("text, expected", [
    ("the sixth session's preset", ["sixth session"]),
    ('"levers_2026_12_03_seventeenth_session"', ["seventeenth_session"]),
    ('"compiled_guidance_eleventh_session_amd_epyc"', ["eleventh_session"]),
    ("the twenty-first session", ["twenty-first session"]),
    ("as issue #11 asks; see #42", ["issue #11", "#42"]),
    ("issue 14's target", ["issue 14"]),
    ("measured this session, the machine to itself", ["this session", "machine to itself"]),
    ("session = onnxruntime.InferenceSession(path)", []),
    ('@pytest.fixture(scope="session")', []),
    ("IEMOCAP: scripted and improvised sessions, 5 recording sessions", []),
    ("each recording's group (speaker, session)", []),
    ("the fourth run of the day", ["fourth run"]),
    ("the first run pretrains the backbone; the second run reuses it; the fourth fold; # 4 threads", []),
])
def test_the_check_flags_process_words_and_allows_api_names(text, expected):
    assert process_words(text) == expected


def test_no_tracked_text_file_speaks_of_the_order_of_work():
    files = [path for path in tracked_text_files() if path != Path(__file__)]  # its own examples above are flagged
    assert REPO / "BENCHMARKS.md" in files and REPO / "benchmarks/results/accuracy_cpu.json" in files
    found = {}
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if words := process_words(line):
                found[f"{path.relative_to(REPO)}:{number}"] = words
    assert not found, f"words about the order of work in {len(found)} lines: {dict(list(found.items())[:20])}"
