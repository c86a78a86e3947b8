"""`streamembed serve` in a real headless Chromium (Debian's chromium + chromium-driver, driven
by Selenium): the map shows the run's anomaly cells, the date slider moves through the dates,
a click on a cell opens its history, the view downloads, and a file the daemon publishes later
appears on the open page without a reload.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request

import pytest

from streamembed.outputs.sink import read_anomalies
from streamembed.outputs.store import EmbeddingStore
from tests.browser import move_slider, serve_process, wait_for
from tests.daemon import free_port


def _click_first(browser, selector: str, tries: int = 5) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for attempt in range(tries):
        try:
            browser.find_elements(By.CSS_SELECTOR, selector)[0].click()
            return
        except StaleElementReferenceException:
            if attempt == tries - 1:
                raise


@pytest.fixture
def served(kill_reference, tmp_path):
    """A copy of a real backfill's outputs, its newest anomaly file held back, served."""
    out = tmp_path / "out"
    shutil.copytree(kill_reference[0], out)
    files = sorted((out / "anomalies").glob("tile=*/date=*/*.parquet"))
    held = files[-1]
    aside = tmp_path / held.name
    held.rename(aside)
    with serve_process(out, free_port()) as url:
        yield url, out, held, aside


def test_the_map_shows_the_anomalies_and_follows_new_files(browser, served):
    from selenium.webdriver.common.by import By

    url, out, held, aside = served
    rows = read_anomalies(out / "anomalies")
    rows["date"] = rows["date"].astype(str)
    per_date = rows.groupby("date").size()
    browser.get(url)
    wait_for(browser, "return window.streamembed && window.streamembed.ready")

    # The slider holds every date with anomalies; the page opens on the newest.
    assert browser.execute_script("return window.streamembed.dates") == list(per_date.index)
    cells = browser.find_elements(By.CSS_SELECTOR, "path.anomaly-cell")
    assert len(cells) == per_date.iloc[-1]
    assert browser.find_element(By.ID, "date-label").text == per_date.index[-1]

    # Move the slider (keyboard, as a user would) to the date with the most cells.
    busiest = int(per_date.to_numpy().argmax())
    move_slider(browser, busiest)
    date = per_date.index[busiest]
    wait_for(browser, f"return document.getElementById('date-label').textContent == '{date}'")
    # the cells drawn are this date's (each slider step asks for its date's cells, and an
    # earlier step's answer may arrive last: the page draws only the newest)
    wait_for(browser, f"return window.streamembed.shownDate == '{date}'")
    wait_for(browser, f"return window.streamembed.features == {per_date.iloc[busiest]}")
    # The page refreshes every second and may redraw its cells between two calls: read them
    # in one script, click a freshly found one.
    classes = browser.execute_script(
        "return [...document.querySelectorAll('path.anomaly-cell')].map(e => e.getAttribute('class'))"
    )
    assert len(classes) == per_date.iloc[busiest]
    statuses = set(rows.loc[rows["date"] == date, "status"])
    shown = {
        token.removeprefix("status-")
        for c in classes
        for token in c.split()
        if token.startswith("status-")
    }
    assert shown == statuses

    # A click on a cell opens its history: every stored look, every anomalous one listed.
    _click_first(browser, "path.anomaly-cell")
    wait_for(browser, "return window.streamembed.historyOpen")
    title = browser.find_element(By.ID, "history-title").text
    cy, cx = (int(v) for v in title.split()[1].split("/"))
    tile = title.split(" of ")[1].split()[0]
    mine = rows[(rows["cell_y"] == cy) & (rows["cell_x"] == cx) & (rows["tile"] == tile)]
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.anomaly-row")) == len(mine) > 0
    n_looks = len(EmbeddingStore(out / "embeddings.zarr").acquisition_ids(tile))
    assert len(browser.find_elements(By.CSS_SELECTOR, "circle.look-clear")) == n_looks

    # The RGB quicklook is drawn under the cells.
    wait_for(browser, "const i = document.querySelector('img.quicklook');"
                      " return i && i.complete && i.naturalWidth > 0")  # fmt: skip

    # The view downloads as GeoJSON with the cells shown.
    href = browser.find_element(By.ID, "dl-geojson").get_attribute("href")
    with urllib.request.urlopen(href, timeout=10) as resp:
        assert len(json.load(resp)["features"]) == per_date.iloc[busiest]

    # The daemon publishes the held-back file (a rename, as the sink does): the open page gains
    # its date without a reload; the slider stays where the user left it unless that was the
    # newest date ("follow new dates").
    os.replace(aside, held)
    new_date = held.parent.name.removeprefix("date=")
    assert new_date > per_date.index[-1]
    wait_for(browser, f"return window.streamembed.dates.includes('{new_date}')")
    expected = new_date if busiest == len(per_date) - 1 else date
    wait_for(browser, f"return document.getElementById('date-label').textContent == '{expected}'")


def test_the_web_api_answers_bad_requests_clearly(kill_reference):
    """The app's API in-process (Starlette's test client over the real ASGI app)."""
    import io

    import geopandas as gpd
    from starlette.testclient import TestClient

    from streamembed.layout import OutputLayout
    from streamembed.operations.web import create_app

    out = kill_reference[0]
    client = TestClient(create_app(OutputLayout(str(out))))
    rows = read_anomalies(out / "anomalies")
    assert client.get("/api/summary").json()["rows"] == len(rows)
    got = gpd.read_parquet(io.BytesIO(client.get("/api/download?format=parquet").content))
    assert len(got) == len(rows) and got.crs.to_epsg() == 4326
    assert client.get("/api/download?format=shp").status_code == 400
    bad = client.get("/api/history?tile=32UPC&y=a&x=1")
    assert bad.status_code == 400 and "tile, y and x" in bad.json()["error"]
    outside = client.get(f"/api/history?tile={rows['tile'].iloc[0]}&y=999&x=0")
    assert outside.status_code == 404 and "outside tile" in outside.json()["error"]
    assert client.get("/api/quicklook/99XXX.json").status_code == 404


def test_quicklooks_kept_are_bounded_least_recent_first(kill_reference, monkeypatch):
    """A map served for months renders many dates: only the last few viewed stay in memory."""
    from streamembed.layout import OutputLayout
    from streamembed.operations.web import view as view_module
    from streamembed.outputs.ledger import Ledger

    out = kill_reference[0]
    monkeypatch.setattr(view_module, "QUICKLOOKS_KEPT", 2)
    view = view_module.OutputView(OutputLayout(str(out)))
    with Ledger(out / "ledger.sqlite") as ledger:
        rows = ledger.rows("applied")
    tile = rows[0].tile
    d1, d2, d3 = (r.datetime[:10] for r in rows[:3])
    first = view.quicklook(tile, d1)
    assert view.quicklook(tile, d1) is first  # served from memory
    second = view.quicklook(tile, d2)
    assert view.quicklook(tile, d1) is first  # d1 is now the most recent, d2 the least
    view.quicklook(tile, d3)  # evicts d2
    assert len(view._quicklooks) == 2
    assert view.quicklook(tile, d1) is first
    again = view.quicklook(tile, d2)
    assert again is not second and again.png == second.png  # rendered again, the same image


def test_views_by_tile_date_and_bbox_read_their_partitions(kill_reference):
    """The map's views come from the partitions asked for: a tile, a date, the tiles a bbox
    touches; the summary's counts equal every row's, kept per file."""
    from starlette.testclient import TestClient

    from streamembed.layout import OutputLayout
    from streamembed.operations.web import create_app
    from streamembed.operations.web.view import OutputView

    out = kill_reference[0]
    rows = read_anomalies(out / "anomalies")
    view = OutputView(OutputLayout(str(out)))
    summary = view.summary()
    assert summary["rows"] == len(rows)
    assert summary["labels"] == {str(k): int(v) for k, v in rows["label"].value_counts().items()}
    assert summary["dates"] == sorted(set(rows["date"].astype(str)))
    tile = rows["tile"].astype(str).iloc[0]
    date = str(rows.loc[rows["tile"].astype(str) == tile, "date"].astype(str).iloc[-1])
    one = view.select(date, tile)
    expected = rows[(rows["tile"].astype(str) == tile) & (rows["date"].astype(str) == date)]
    assert len(one) == len(expected) > 0 and set(one["tile"]) == {tile}
    west, south, east, north = summary["tile_bounds"][tile]
    boxed = view.select(None, None, bbox=(west, south, east, north))
    assert set(boxed["tile"]) == {tile}  # the other tile lies in another UTM zone, far away
    assert len(boxed) == (rows["tile"].astype(str) == tile).sum()
    assert len(view.select(None, None, bbox=(-10.0, -10.0, -9.0, -9.0))) == 0
    client = TestClient(create_app(OutputLayout(str(out))))
    got = client.get(f"/api/anomalies?date={date}&bbox={west},{south},{east},{north}").json()
    assert len(got["features"]) == len(expected)
    bad = client.get("/api/anomalies?bbox=1,2,3")
    assert bad.status_code == 400 and "west,south,east,north" in bad.json()["error"]


def test_the_summary_reads_a_revised_file_again(kill_reference, tmp_path):
    """A file rewritten under its own name (a late look's replay revised it) is summarised
    again; a removed one leaves the summary."""
    import shutil

    import geopandas as gpd

    from streamembed.layout import OutputLayout
    from streamembed.operations.web.view import OutputView

    out = tmp_path / "out"
    shutil.copytree(kill_reference[0] / "anomalies", out / "anomalies")
    view = OutputView(OutputLayout(str(out)))
    total = view.summary()["rows"]
    files = sorted((out / "anomalies").rglob("*.parquet"))
    first, last = gpd.read_parquet(files[0]), files[-1]
    assert len(first) > 1
    first.iloc[:1].to_parquet(files[0].with_name(".tmp.parquet"))
    files[0].with_name(".tmp.parquet").replace(files[0])  # published whole, as the sink does
    gone = len(gpd.read_parquet(last))
    last.unlink()
    assert view.summary()["rows"] == total - (len(first) - 1) - gone


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    import urllib.error

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_served_beyond_loopback_it_warns_or_asks_for_credentials(kill_reference):
    """Real `streamembed serve` processes bound to 0.0.0.0: without credentials in the
    environment it serves and warns; with them every request but /healthz needs them."""
    import base64

    out = kill_reference[0]
    log: list[str] = []
    with serve_process(out, free_port(), host="0.0.0.0", log=log) as url:
        status, body, _ = _get(f"{url}/api/config")
        assert status == 200 and str(out) not in body.decode()  # no server path in it
        assert json.loads(body)["output"] == out.name
    assert "no authentication" in log[0] and "STREAMEMBED_SERVE_USER" in log[0]

    env = {"STREAMEMBED_SERVE_USER": "analyst", "STREAMEMBED_SERVE_PASSWORD": "s3cret-pw",
           "STREAMEMBED_SERVE_TOKEN": "tok-8e1f"}  # fmt: skip
    log.clear()
    with serve_process(out, free_port(), host="0.0.0.0", env=env, log=log) as url:
        status, _, headers = _get(f"{url}/api/summary")
        assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
        for path in ("/", "/api/config", "/api/download", "/static/app.js"):
            assert _get(url + path)[0] == 401, path
        assert _get(f"{url}/healthz")[0] == 200  # probes need no credentials
        basic = base64.b64encode(b"analyst:s3cret-pw").decode()
        status, body, _ = _get(f"{url}/api/summary", {"Authorization": f"Basic {basic}"})
        assert status == 200 and json.loads(body)["rows"] > 0
        wrong = base64.b64encode(b"analyst:guess").decode()
        assert _get(f"{url}/api/summary", {"Authorization": f"Basic {wrong}"})[0] == 401
        assert _get(f"{url}/api/summary", {"Authorization": "Basic !!"})[0] == 401
        assert _get(f"{url}/api/summary", {"Authorization": "Bearer tok-8e1f"})[0] == 200
        assert _get(f"{url}/api/summary", {"Authorization": "Bearer tok-8e1"})[0] == 401
    assert "no authentication" not in log[0]
    assert "s3cret-pw" not in log[0] and "tok-8e1f" not in log[0]


def test_a_download_larger_than_the_limit_is_refused_with_the_way_round(kill_reference):
    from starlette.testclient import TestClient

    from streamembed.layout import OutputLayout
    from streamembed.operations.web import create_app

    out = kill_reference[0]
    rows = read_anomalies(out / "anomalies")
    client = TestClient(create_app(OutputLayout(str(out)), max_download_rows=len(rows) - 1))
    big = client.get("/api/download?format=geojson")
    assert big.status_code == 413 and "serve.max_download_rows" in big.json()["error"]
    date = str(rows["date"].astype(str).iloc[0])
    assert client.get(f"/api/download?format=geojson&date={date}").status_code == 200
