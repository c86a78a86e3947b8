"""A real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) and a real
`streamembed serve` process, for the web map's tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def why_no_browser() -> str | None:
    missing = [str(p) for p in (CHROMIUM, DRIVER) if not p.exists()]
    if missing:
        return (
            f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)"
        )
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    # Headless, and no background calls out: this machine's network is closed.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def serve_process(
    out: Path,
    port: int,
    refresh_seconds: float = 1,
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    log: list[str] | None = None,
) -> Iterator[str]:
    """`streamembed serve --output OUT` on HOST:PORT until the block ends; its URL (on
    127.0.0.1). ``env``: more environment; ``log``: gets the server's output when it ends."""
    env = {**os.environ, "STREAMEMBED__SERVE__REFRESH_SECONDS": str(refresh_seconds), **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamembed.cli", "serve", "--output", str(out), "--port",
         str(port), "--host", host], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                time.sleep(0.5)
        yield url
    finally:
        proc.kill()
        output = proc.communicate()[0]
        if log is not None:
            log.append(output)


def wait_for(driver: Any, script: str, timeout: float = 30) -> Any:
    end = time.time() + timeout
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for: {script}")


def move_slider(driver: Any, index: int) -> None:
    """The date slider to position ``index``, with the keyboard as a user would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    slider = driver.find_element(By.ID, "date")
    slider.send_keys(Keys.HOME)
    for _ in range(index):
        slider.send_keys(Keys.ARROW_RIGHT)
