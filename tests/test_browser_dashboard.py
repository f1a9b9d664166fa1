"""The dashboard in a real browser: ``lab serve`` + Debian's chromium driven by playwright.

Skips (with the reason) when chromium or playwright is missing, unless
``LAB_REQUIRE_BROWSER=1`` (CI), where a missing browser is a failure.
``scripts/install_browser.sh`` installs both. Set ``LAB_BROWSER_SCREENSHOTS=DIR`` to keep
screenshots of each stage.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("LAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (LAB_REQUIRE_BROWSER=1; run scripts/install_browser.sh)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "the playwright Python package is not installed")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    _require(exe is not None, "Debian's chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("panel")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ)
    env.setdefault("LAB_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lab", "serve", "--no-show", "--address",
                                 "127.0.0.1", "--port", str(port),
                                 "--checkpoint-dir", str(log.parent / "ckpt")],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"lab serve exited with {proc.returncode}:\n{log.read_text()}")
            try:  # the port answers; the page itself is built when the browser asks
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"lab serve did not answer within 90 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url, log
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- helpers reading the page ----------------------------------------------------------------
FINGERPRINT = """(name) => {
  const doc = Bokeh.documents[0];
  const src = doc.get_model_by_name(name);
  if (!src) return null;
  const img = src.data.image[0];
  let s = 0, n = 0;
  for (let i = 0; i < img.length; i++) { s += img[i] * ((i % 97) + 1); n++; }
  return n > 1 ? s : null;
}"""


def fingerprint(page, name):
    return page.evaluate(FINGERPRINT, name)


def step_of(page, prefix):
    text = page.locator(f".{prefix}-status .step-count").first.inner_text()
    return int(text)


def state_of(page, prefix):
    return page.locator(f".{prefix}-status").first.evaluate(
        "el => (el.shadowRoot ? el.shadowRoot.textContent : el.textContent)")


def wait_until(fn, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def shot(page, name):
    d = os.environ.get("LAB_BROWSER_SCREENSHOTS")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(d) / f"{name}.png"), full_page=True)


# -- the test ----------------------------------------------------------------------------------
def test_dashboard_live_in_chromium(browser, server):
    url, log = server
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    problems = []
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text} {m.location}")
            if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.goto(url, timeout=90000)
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=90000)

    # The capsule session is running and the explorer has rendered a first frame.
    wait_until(lambda: fingerprint(page, "explorer-source"), 60, "the explorer's first frame")
    wait_until(lambda: "running" in state_of(page, "capsules"), 30, "the capsule session to run")
    shot(page, "1-loaded")

    # Drag a distortion slider: the decoder re-renders and the image changes.
    before = fingerprint(page, "explorer-source")
    pixels_before = page.locator(".explorer").first.screenshot()
    handle = page.locator(".distortion-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    track = page.locator(".distortion-slider .noUi-base").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    centre = track["x"] + track["width"] / 2
    target = track["x"] + track["width"] * (0.2 if x > centre else 0.8)
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 11):  # a drag, not a click: several intermediate positions
        page.mouse.move(x + (target - x) * i / 10, y)
        time.sleep(0.03)
    page.mouse.up()
    after = wait_until(lambda: (fingerprint(page, "explorer-source") != before)
                       and fingerprint(page, "explorer-source"), 20, "the explorer image to change")
    assert after != before
    # ...and the canvas shows it (the pixels on screen, not only the data)
    wait_until(lambda: page.locator(".explorer").first.screenshot() != pixels_before, 10,
               "the explorer canvas to change")
    shot(page, "2-dragged")

    # Pause: the step count freezes. Resume: it advances.
    page.locator(".capsules-pause button").first.click()
    wait_until(lambda: "paused" in state_of(page, "capsules"), 60, "the capsule session to pause")
    frozen = step_of(page, "capsules")
    time.sleep(3.0)
    assert step_of(page, "capsules") == frozen and "paused" in state_of(page, "capsules")
    shot(page, "3-paused")
    page.locator(".capsules-resume button").first.click()
    wait_until(lambda: step_of(page, "capsules") > frozen, 30, "the capsule session to advance")
    assert "running" in state_of(page, "capsules")

    # The RBM tab: the fantasy-particle grid updates live.
    page.get_by_text("RBM (FPCD)").first.click()
    first = wait_until(lambda: fingerprint(page, "rbm-fantasy-source"), 30, "the fantasy particles")
    wait_until(lambda: fingerprint(page, "rbm-fantasy-source") not in (None, first), 30,
               "the fantasy particles to change")
    rbm_step = step_of(page, "rbm")
    wait_until(lambda: step_of(page, "rbm") > rbm_step, 20, "the RBM to advance")
    shot(page, "4-rbm")

    assert not problems, "browser console errors:\n" + "\n".join(problems)
    server_log = log.read_text()
    assert "Traceback" not in server_log, server_log[-3000:]
    page.close()
