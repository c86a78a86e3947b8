"""The README's picture of `streamembed serve` (docs/web-map.png), taken in headless Chromium.

    python docs/web_map.py [output] [docs/web-map.png]

Serves the outputs of `make demo` (default ./output), shows one tile's alerts up to its
clearest date with anomalies over that date's RGB, opens the history of a cell and saves the
page. Needs Debian's
chromium and chromium-driver (as the browser test does).
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main() -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    output = sys.argv[1] if len(sys.argv) > 1 else "output"
    png = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/web-map.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streamembed.cli", "serve", "--output", output, "--port", str(port)]
    )
    url = f"http://127.0.0.1:{port}/"
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--window-size=1400,1000"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        driver.get(url)
        while not driver.execute_script("return window.streamembed && window.streamembed.ready"):
            time.sleep(0.25)
        summary = driver.execute_script("return window.streamembed.summary")
        tile = min(summary["tiles"])
        driver.find_element(By.ID, "tile").send_keys(tile)
        driver.find_element(By.ID, "rgb").send_keys("the acquisition of the shown date")
        time.sleep(2)
        # The clearest date with anomalies (fewest masked cells in the ledger), every alert up
        # to it shown: the picture needs the ground, not a cloud.
        dates = driver.execute_script("return window.streamembed.dates")
        with sqlite3.connect(Path(output) / "ledger.sqlite") as db:
            masked = dict(db.execute(
                "SELECT substr(datetime, 1, 10), masked_cells FROM acquisitions WHERE tile=?",
                (tile,),
            ).fetchall())  # fmt: skip
        shown = min(
            (i for i, d in enumerate(dates) if d in masked),
            key=lambda i: (masked[dates[i]], -i),
        )
        driver.find_element(By.ID, "until").click()
        slider = driver.find_element(By.ID, "date")
        slider.send_keys(Keys.HOME)
        for _ in range(shown):
            slider.send_keys(Keys.ARROW_RIGHT)
        time.sleep(2)
        driver.find_elements(By.CSS_SELECTOR, "path.anomaly-cell")[0].click()
        time.sleep(2)
        png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
        print(f"wrote {png} ({tile}, {driver.find_element(By.ID, 'date-label').text})")
    finally:
        driver.quit()
        server.kill()


if __name__ == "__main__":
    main()
