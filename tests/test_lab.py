"""`make lab`: the real JupyterLab server with the project's config, used as a person uses it."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from bloodcells.report import pct
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def lab_server(root: Path, home: Path) -> Iterator[tuple[str, str]]:
    """``make lab``'s server (the project's config, localhost, token on) on ``root``;
    yields (base URL, token) once it answers."""
    token, port = secrets.token_hex(16), free_port()
    jupyter = Path(sys.executable).parent / "jupyter"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "cfg"), "HOME": str(home)}
    server = subprocess.Popen(
        [
            str(jupyter),
            "lab",
            f"--config={ROOT / 'jupyter_server_config.py'}",
            "--no-browser",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, up = time.monotonic() + 60, False
        while time.monotonic() < deadline and not up:
            try:
                request = urllib.request.Request(
                    f"{base}/api/status", headers={"Authorization": f"token {token}"}
                )
                with urllib.request.urlopen(request, timeout=5):
                    up = True
            except OSError:
                assert server.poll() is None, "jupyter lab exited"
                time.sleep(0.5)
        assert up, "jupyter lab did not answer within 60 s"
        yield base, token
    finally:
        server.terminate()
        server.wait(timeout=30)


def get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_lab_starts_without_the_news_prompt(tmp_path):
    with lab_server(ROOT, tmp_path) as (base, token):
        url = f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification"
        body = get_json(url, token)
        # what the page uses: the schema's defaults overridden by the project's settings
        defaults = body["schema"]["properties"]
        assert defaults["fetchNews"]["default"] == "false"
        assert defaults["checkForUpdates"]["default"] is False
        # and without a token the server refuses (the token stays on)
        try:
            urllib.request.urlopen(url, timeout=5)
            raise AssertionError("the server answered without a token")
        except urllib.error.HTTPError as refused:
            assert refused.code == 403


RUN_MENU = "//li[contains(@class,'lm-MenuBar-item')][.='Run']"
RUN_ALL = "li.lm-Menu-item[data-command='runmenu:run-all']"
PROMPTS = (
    "return [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]"
    ".map(e => e.textContent.trim())"
)


@pytest.mark.e2e
def test_a_family_notebook_runs_in_jupyterlab_in_a_real_browser(smoke_dag, tmp_path):
    """Open notebooks/03_unet.ipynb in headless Chromium on `make lab`'s server, run all
    cells (the Run menu), see the test accuracy the unet's DVC stage reported, save, and
    find the file byte for byte as it was (outputs stripped by the save hook)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from tests import browser

    assert browser.available(), "`make browser` installs Debian's chromium and its driver."
    notebook = smoke_dag / "notebooks/03_unet.ipynb"
    before = notebook.read_bytes()
    preds = np.load(smoke_dag / "models/unet/unet/predictions.npz")
    accuracy = pct(float((preds["test_probs"].argmax(axis=1) == preds["test_y"]).mean()))
    assert accuracy in (smoke_dag / "reports/03_unet.html").read_text()  # the stage's

    shots = ROOT / "reports" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with lab_server(smoke_dag, tmp_path) as (base, token), browser.chromium() as driver:
        driver.get(f"{base}/lab/tree/notebooks/03_unet.ipynb?token={token}")
        wait = WebDriverWait(driver, 180, poll_frequency=1)

        def kernel_idle(_) -> bool:  # the notebook's kernel started and waits for work
            kernels = get_json(f"{base}/api/kernels", token)
            return len(kernels) == 1 and kernels[0]["execution_state"] == "idle"

        def run_all() -> None:
            driver.find_element(By.XPATH, RUN_MENU).click()
            wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, RUN_ALL))).click()

        def finished(d) -> bool:  # nothing queued or running, and the first cell ran
            prompts = d.execute_script(PROMPTS)
            return "[*]:" not in prompts and prompts[0] not in ("[ ]:", "")

        try:
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".jp-CodeCell")))
            wait.until(kernel_idle)
            wait.until(lambda d: "Idle" in d.find_element(By.ID, "jp-main-statusbar").text)
            run_all()
            started = lambda d: any(p != "[ ]:" for p in d.execute_script(PROMPTS))  # noqa: E731
            try:
                WebDriverWait(driver, 60, poll_frequency=1).until(started)
            except TimeoutException:  # the click came before the notebook took commands
                run_all()
            WebDriverWait(driver, 600, poll_frequency=1).until(finished)
        except Exception:
            driver.save_screenshot(str(shots / "lab_unet_failed.png"))
            raise
        prompts = driver.execute_script(PROMPTS)
        text = driver.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
        assert "Traceback" not in text, text[-3000:]
        assert all(p[1:-2].isdigit() for p in prompts), prompts  # every cell ran
        assert accuracy in text  # the same number the DVC stage's report shows
        driver.save_screenshot(str(shots / "lab_unet.png"))
        saved_before = notebook.stat().st_mtime_ns
        driver.find_element(By.XPATH, "//li[contains(@class,'lm-MenuBar-item')][.='File']").click()
        wait.until(
            ec.element_to_be_clickable(
                (By.CSS_SELECTOR, "li.lm-Menu-item[data-command='docmanager:save']")
            )
        ).click()
        wait.until(lambda _: notebook.stat().st_mtime_ns != saved_before)
    assert notebook.read_bytes() == before
