"""The demo page (`app.py`) in a real browser: Debian's Chromium, headless, driven by selenium.

Set MSEMOBOOST_SCREENSHOTS=docs to write the page's screenshots (light and dark) into docs/.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tiny import save_tiny_classifier, speech_like

from msemoboost.cli import main as cli_main
from msemoboost.handler import float_wav

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
LABELS = ["anger", "happiness", "neutral", "sadness"]

pytest.importorskip("gradio", reason="the demo page needs the demo extra: pip install 'msemoboost[demo]'")
selenium = pytest.importorskip("selenium", reason="the browser test needs selenium (the test extra)")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="Debian's chromium and chromium-driver are not installed (scripts/setup installs them)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("model"), LABELS)


@pytest.fixture(scope="module")
def page(model_dir, tmp_path_factory):
    """The URL of `python app.py --model DIR --port N`, served until the module's tests end."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", str(model_dir), "--port", str(port)],
                                  cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"app.py did not serve {url}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # the system driver: nothing downloaded
    yield driver
    driver.quit()


def analyse(browser, url: str, path: Path) -> str:
    """Opens the page, uploads `path`, presses Analyse and returns the status text once the page has answered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, 120)
    upload = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#audio input[type=file]")))
    upload.send_keys(str(path))
    time.sleep(2)  # the upload reaches the server
    wait.until(expected_conditions.element_to_be_clickable((By.ID, "analyse"))).click()
    wait.until(lambda driver: driver.find_element(By.ID, "status").text.strip())
    return browser.find_element(By.ID, "status").text


def test_the_page_shows_what_msemoboost_predict_gives(page, browser, model_dir, tmp_path):
    from selenium.webdriver.common.by import By

    wav = tmp_path / "speech.wav"
    wav.write_bytes(float_wav(speech_like(72000, seed=5), 16000))
    status = analyse(browser, page, wav)
    output = tmp_path / "predicted.json"
    assert cli_main(["predict", str(wav), "--model", str(model_dir), "--device", "cpu", "--output", str(output)]) == 0
    expected = json.loads(output.read_text())["files"][0]
    assert status.startswith(f"{expected['prediction']}: speech.wav")
    rows = browser.find_elements(By.CSS_SELECTOR, "#probabilities table tbody tr")
    shown = {row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[1].text for row in rows}
    assert shown == {label: f"{expected[label]:.4f}" for label in LABELS}
    assert np.isclose(sum(float(value) for value in shown.values()), 1.0, atol=1e-3)


def test_speech_between_silences_gets_a_speech_only_timeline(page, browser, model_dir, emodb, tmp_path):
    from msemoboost.demo import write_wav
    from msemoboost.inference import read_audio

    speech = read_audio(sorted((emodb / "audio").glob("*.flac"))[5], 16000)
    silence = np.zeros(24000, np.float32)
    talk = tmp_path / "talk.wav"
    write_wav(talk, np.concatenate([silence, speech, silence, speech, silence]), 16000)
    status = analyse(browser, page, talk)
    output = tmp_path / "timeline.json"
    assert cli_main(["predict", str(talk), "--model", str(model_dir), "--timeline", "--vad", "--output", str(output)]) == 0
    rows = json.loads(output.read_text())["segments"]
    assert [row["prediction"] == "non-speech" for row in rows] == [True, False, True, False, True]
    assert f"{len(rows)} timeline row(s) of speech window (3 s at most)" in status
    assert "Probabilities as trained (this model was not calibrated: train.py --calibrate)." in status
    screenshots(browser, page, talk, tmp_path)


def test_a_corrupt_file_gets_a_message_in_the_page(page, browser, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all" * 50)
    status = analyse(browser, page, corrupt)
    assert "Cannot analyse this recording." in status and "corrupt.wav: cannot be decoded" in status
    assert "Traceback" not in browser.page_source


def screenshots(browser, url: str, recording: Path, folder: Path) -> None:
    """The page with its answer, light and dark; into docs/ when MSEMOBOOST_SCREENSHOTS=docs."""
    time.sleep(2)  # the figures render
    browser.save_screenshot(str(folder / "app_light.png"))
    analyse(browser, url + "?__theme=dark", recording)
    time.sleep(2)
    browser.save_screenshot(str(folder / "app_dark.png"))
    if os.environ.get("MSEMOBOOST_SCREENSHOTS") == "docs":
        (REPO / "docs").mkdir(exist_ok=True)
        for name in ("app_light.png", "app_dark.png"):
            shutil.copyfile(folder / name, REPO / "docs" / name)


def test_a_recording_longer_than_the_page_takes_gets_a_message(model_dir, tmp_path):
    from msemoboost.demo import write_wav
    from msemoboost.gradio_app import DemoModel

    write_wav(tmp_path / "long.wav", speech_like(48000), 16000)
    status, *rest = DemoModel(str(model_dir), max_seconds=2.0).analyse(str(tmp_path / "long.wav"))
    assert status == ("**Cannot analyse this recording.** long.wav is 3 s long; this page takes up to 2 s. For longer "
                      "files: `msemoboost predict FILE --timeline --vad`.")
    assert rest == [None, "", None, None]
