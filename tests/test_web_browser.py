"""`dualfashion-jax serve` in a real browser: the real server (a tiny stage-2 model) on a free port, Debian's
headless Chromium driven by selenium through one multi-round session (create a profile, start PFITB, feedback
twice, a malformed feedback shown as an error, then a GOR round (a whole outfit), open the history), with a
screenshot saved under the test's tmp dir.
"""
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from generation_support import REPO, make_workdir, make_world

from dualfashion_jax.data.synthetic.make import make_dataset

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,2000")
SERVER_START_S = 240  # JAX import + model load on a shared 2-core CPU
ROUND_S = 180         # the first round compiles the samplers

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium + chromium-driver are not installed (scripts/install.sh test installs them as root)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: pathlib.Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"serve did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real `dualfashion-jax serve` in a subprocess; yields its base URL."""
    root = make_world(tmp_path_factory.mktemp("web"), num_users=2)
    make_dataset(root / "data", seed=0, image_size=32, num_users=2, appearance=True, verbose=False)
    wd = make_workdir(root, root / "wd")
    port, log = _free_port(), root / "serve.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "dualfashion_jax.cli", "serve", "--checkpoint", str(wd), "--data",
           str(root / "data"), "--db", str(root / "sessions.sqlite"), "--port", str(port), "--max-candidates", "4",
           "--steps", "2", "--caption-steps", "2"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/health", proc, log, SERVER_START_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture()
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={tmp_path / 'chromium-profile'}",):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _rounds(driver) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, "#rounds .round"))


def _wait_round(driver, count: int) -> None:
    """Wait until the page shows `count` rounds and is idle again; fail early on an error message."""
    def done(d):
        error = d.find_element(By.ID, "error")
        assert not error.is_displayed(), f"the page shows an error: {error.text}"
        return _rounds(d) == count and d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
    WebDriverWait(driver, ROUND_S, poll_frequency=0.2).until(done)


def _idle(driver, timeout: float = 30) -> None:
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")


def test_a_multi_round_session_in_headless_chromium(server, browser, tmp_path):
    d = browser
    d.get(server + "/")
    _idle(d)
    assert d.title == "DualFashion sessions"
    dataset_users = len(Select(d.find_element(By.ID, "user-select")).options)

    # a new profile: preference + appearance
    d.find_element(By.CSS_SELECTOR, "#create-profile summary").click()
    form = d.find_element(By.ID, "create-form")
    form.find_element(By.NAME, "name").clear()
    form.find_element(By.NAME, "name").send_keys("browser test")
    form.find_element(By.NAME, "Color").send_keys("green")
    form.find_element(By.NAME, "Material").send_keys("denim")
    Select(form.find_element(By.NAME, "skin_tone")).select_by_visible_text("deep")
    d.find_element(By.ID, "create-user").click()
    WebDriverWait(d, 30).until(lambda d: len(Select(d.find_element(By.ID, "user-select")).options) > dataset_users)
    _idle(d)
    user_id = Select(d.find_element(By.ID, "user-select")).first_selected_option.get_attribute("value")
    assert "browser test" in Select(d.find_element(By.ID, "user-select")).first_selected_option.text

    # PFITB: pick an outfit, start; the progress indicator is recorded as it changes
    WebDriverWait(d, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#outfits .outfit"))
    d.find_elements(By.CSS_SELECTOR, "#outfits .outfit")[-1].click()
    d.execute_script("""
        window.progressSeen = [];
        new MutationObserver(() => window.progressSeen.push(document.getElementById('progress-text').textContent))
          .observe(document.getElementById('progress-text'), {childList: true, characterData: true, subtree: true});""")
    n = d.find_element(By.ID, "n")
    n.clear()
    n.send_keys("2")
    d.find_element(By.ID, "start").click()
    _wait_round(d, 1)
    seen = d.execute_script("return window.progressSeen")
    assert seen and seen[0] == "waiting for the sampler...", seen
    first = d.find_elements(By.CSS_SELECTOR, "#rounds .round .candidate")
    assert len(first) == 2 and all(c.find_element(By.CSS_SELECTOR, ".caption").text for c in first)
    assert d.find_elements(By.CSS_SELECTOR, "#rounds .round .shop img")  # shop the look
    assert len(d.find_elements(By.CSS_SELECTOR, "#session-outfit img")) >= 1  # the outfit being completed

    # two rounds of feedback, then one the engine cannot read
    for i, feedback in enumerate(("Color: red", "more like #2"), start=2):
        box = d.find_element(By.ID, "feedback")
        box.send_keys(feedback)
        d.find_element(By.ID, "send-feedback").click()
        _wait_round(d, i)
        newest = d.find_element(By.CSS_SELECTOR, "#rounds .round")  # newest first
        assert newest.get_attribute("data-round") == str(i) and feedback in newest.text
    d.find_element(By.ID, "feedback").send_keys("@@@ ###")
    d.find_element(By.ID, "send-feedback").click()
    WebDriverWait(d, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert d.find_element(By.ID, "error").text.startswith("400: feedback:")
    _idle(d)
    assert _rounds(d) == 3

    # GOR: a whole outfit for the same profile, one round of 2 candidates (4 items side by side each)
    d.find_element(By.CSS_SELECTOR, "input[name=task][value=gor]").click()
    _idle(d)
    d.find_element(By.ID, "start").click()
    _wait_round(d, 1)
    outfits = d.find_elements(By.CSS_SELECTOR, "#rounds .round .candidate")
    assert len(outfits) == 2 and "gor" in d.find_element(By.ID, "session-id").text
    for c in outfits:
        w, h = d.execute_script("const i = arguments[0]; return [i.naturalWidth, i.naturalHeight];",
                                c.find_element(By.TAG_NAME, "img"))
        assert (w, h) == (4 * 32, 32) and c.find_element(By.CSS_SELECTOR, ".caption").text.count(" | ") == 3
        assert len(c.find_elements(By.CSS_SELECTOR, ".shop img")) == 4  # one catalogue item per slot

    # the history lists both sessions; opening the PFITB one shows its rounds
    d.get(server + "/")
    _idle(d)
    Select(d.find_element(By.ID, "user-select")).select_by_value(user_id)
    _idle(d)
    d.find_element(By.ID, "history-refresh").click()
    WebDriverWait(d, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li[data-session]")) == 2)
    entries = d.find_elements(By.CSS_SELECTOR, "#history li[data-session]")
    assert sorted(e.text.split(" · ")[1] for e in entries) == ["gor", "pfitb"]
    entry = next(e for e in entries if " · pfitb · " in e.text)
    assert "3 round(s)" in entry.text
    entry.click()
    WebDriverWait(d, 30).until(lambda d: _rounds(d) == 3)
    shot = tmp_path / "session.png"
    assert d.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, f"{shot}: {len(data)} bytes"
    print(f"screenshot: {shot}")
