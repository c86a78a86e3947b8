"""The STAC API source over real HTTP: a STAC API on 127.0.0.1 serving item JSON and rasters."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamembed.acquisition import NATIVE_RESOLUTION, SourceError
from streamembed.config import Config, SourceConfig, load_config
from streamembed.credentials import Credentials, Secret
from streamembed.harness.synthetic import generate
from streamembed.outputs.ledger import Ledger, State
from streamembed.outputs.store import EmbeddingStore
from streamembed.runtime.pipeline import Pipeline
from streamembed.sources import discover, source_key
from streamembed.sources.stac import discover_stac, search_window
from tests.daemon import count_states, monitor_process, stop, wait_until
from tests.stac_server import StacServer

REPO = Path(__file__).resolve().parents[1]
TOKEN = "cdse-test-token-5f1d9c"


def _served(items_dir: Path, server: StacServer) -> list[dict]:
    """The synthetic CDSE-shaped items with asset hrefs rewritten to URLs on the server."""
    out = []
    for path in sorted(items_dir.rglob("*.json")):
        doc = json.loads(path.read_text())
        for asset in doc["assets"].values():
            asset["href"] = server.file_url(path.parent / asset["href"])
        out.append(doc)
    return sorted(out, key=lambda d: d["properties"]["datetime"])


def _earth_search(cdse: dict, template: dict) -> dict:
    """The same product in the Earth Search v0 shape of a recorded item (B02…, SCL, no offset)."""
    doc = copy.deepcopy(template)
    props = cdse["properties"]
    tile = props["grid:code"][5:]
    day = props["datetime"][:10].replace("-", "")
    doc["id"] = f"{cdse['id'][:3]}_{tile}_{day}_0_L2A"
    doc["bbox"], doc["geometry"] = cdse["bbox"], cdse["geometry"]
    doc["properties"] = {
        "datetime": props["datetime"],
        "platform": props["platform"],
        "eo:cloud_cover": props["eo:cloud_cover"],
        "proj:epsg": int(cdse["assets"]["B02_10m"]["proj:code"].split(":")[1]),
        "sentinel:utm_zone": int(tile[:2]),
        "sentinel:latitude_band": tile[2],
        "sentinel:grid_square": tile[3:],
        "sentinel:product_id": cdse["id"],  # carries N0511: the baseline, hence the offset
    }
    assets = {}
    for key, asset in cdse["assets"].items():
        band = key.split("_")[0]
        if band not in NATIVE_RESOLUTION or key != f"{band}_{NATIVE_RESOLUTION[band]}m":
            continue  # Earth Search keeps each band at its native resolution only
        assets[band] = {
            "href": asset["href"],
            "type": asset["type"],
            "proj:shape": asset["proj:shape"],
            "proj:transform": asset["proj:transform"],
        }
    doc["assets"] = assets
    return doc


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stac-archive")
    generate(root, days=70, revisit_days=10, tile_px=256, n_tiles=2, seed=11)
    return root


def _source(url: str, **kw) -> SourceConfig:
    return SourceConfig(kind="stac", path=url, band_mapping="auto", **kw)


def test_search_pages_and_filters(server, archive):
    items = _served(archive / "items", server)
    server.publish(items)
    acqs, failures = discover_stac(
        _source(server.url, page_size=3), Config().model.bands, search_window(_source(server.url))
    )
    assert not failures
    assert sorted(a.id for a in acqs) == sorted(i["id"] for i in items)
    pages = server.hits("/search", 200)
    assert pages == -(-len(items) // 3)  # every page followed, none twice
    assert all(a.assets["B02"].href.startswith(server.url) for a in acqs)

    cloudy = [i["id"] for i in items if i["properties"]["eo:cloud_cover"] > 30]
    assert cloudy  # the archive has cloudy scenes to filter
    acqs, _ = discover_stac(
        _source(server.url, max_cloud_cover=30, tiles=("32UPC",), start="2024-01-20"),
        Config().model.bands,
        search_window(_source(server.url, start="2024-01-20")),
    )
    assert acqs and all(a.tile == "32UPC" and a.cloud_cover <= 30 for a in acqs)
    assert all(a.datetime.isoformat() >= "2024-01-20" for a in acqs)
    assert not {a.id for a in acqs} & set(cloudy)


def test_search_retries_throttling_server_errors_and_timeouts(server, archive):
    server.publish(_served(archive / "items", server))
    server.fail("/search", 429)
    server.fail("/search", 503)
    server.delay("/search", 3.0)  # longer than the 1 s timeout: retried
    cfg = _source(server.url, timeout_seconds=1.0, page_size=100)
    acqs, _ = discover_stac(cfg, Config().model.bands, search_window(cfg))
    assert len(acqs) == len(server.items)
    statuses = [s for m, p, s in server.requests if p.startswith("/search")]
    assert statuses[:2] == [429, 503] and statuses[-1] == 200

    server.fail("/search", 503, times=10)
    cfg = _source(server.url, max_retries=2, page_size=100)
    with pytest.raises(SourceError, match=r"STAC API http://127\.0\.0\.1:\d+.*after 2 retries"):
        discover_stac(cfg, Config().model.bands, search_window(cfg))

    server.faults.clear()
    server.delay("/", 3.0, times=10)
    cfg = _source(server.url, max_retries=1, timeout_seconds=0.5)
    with pytest.raises(SourceError, match="timeout_seconds"):
        discover_stac(cfg, Config().model.bands, search_window(cfg))


def _cfg(url_or_path: str, out: Path, **extra) -> Config:
    return Config().with_overrides(
        **{
            "source.path": url_or_path,
            "output": str(out),
            "model.arch": "resnet18",
            "stats.min_obs": 3,
            **extra,
        }
    )


def test_earth_search_items_over_http_with_a_missing_asset(
    server, archive, cluster_client, shared_data, tmp_path
):
    """Earth Search-shaped items (from a recorded item) run end to end; a 404 asset fails alone."""
    template = json.loads((shared_data / "stac" / "S2A_28QCH_20200714_0_L2A.json").read_text())
    items = [_earth_search(i, template) for i in _served(archive / "items", server)]
    items[3]["assets"]["B11"]["href"] = f"{server.url}/files/no/such/B11.tif"
    server.publish(items)
    out = tmp_path / "out"
    pipe = Pipeline(
        _cfg(server.url, out, **{"source.band_mapping": "earth-search"}), cluster_client
    )
    try:
        report = pipe.run(progress=False)
    finally:
        pipe.close()
    assert [a for a, _ in report.failed] == [items[3]["id"]]
    assert "B11" in report.failed[0][1] and "/no/such/B11.tif" in report.failed[0][1]
    with Ledger(out / "ledger.sqlite") as ledger:
        states = ledger.states()
    assert states[items[3]["id"]] == State.FAILED
    done = [i["id"] for i in items if i is not items[3]]
    assert all(states[i] in (State.APPLIED, "late") for i in done)
    assert server.hits("/files/no/such/B11.tif") >= 1


def test_polling_two_batches_and_a_newer_baseline_exactly_once(
    server, archive, cluster_client, tmp_path
):
    items = _served(archive / "items", server)
    tile_b = [i for i in items if i["properties"]["grid:code"] == "MGRS-32UPC"]
    when = [i["properties"]["datetime"] for i in tile_b]
    cut = when[len(when) // 2]
    # Batch 1 holds both tiles up to the cut, except tile B's products from the one before the
    # cut on: those are published late (sensed behind the watermark), as CDSE often does.
    late_from = when[len(when) // 2 - 1]
    held_back = [i for i in tile_b if late_from <= i["properties"]["datetime"] <= cut]
    batch1 = [i for i in items if i["properties"]["datetime"] <= cut and i not in held_back]
    batch2 = [i for i in items if i not in batch1]
    out = tmp_path / "out"
    cfg = _cfg(server.url, out, **{"source.overlap_days": 30})
    pipe = Pipeline(cfg, cluster_client)
    try:
        server.publish(batch1)
        r1 = pipe.run(progress=False, incremental=True)
        with Ledger(out / "ledger.sqlite") as ledger:
            mark = ledger.watermark(source_key(cfg))
        assert mark is not None and mark.isoformat()[:19] == cut[:19]
        assert min(i["properties"]["datetime"] for i in batch2) < cut

        server.publish(batch2)
        n_search = server.hits("/search")
        r2 = pipe.run(progress=False, incremental=True)
        # The poll searched from the watermark minus the overlap, not the whole archive.
        query = [p for m, p, s in server.requests[n_search:] if p.startswith("/search")]
        assert query or server.hits("/search") > n_search

        r3 = pipe.run(progress=False, incremental=True)

        # A reprocessed product (new baseline) of an acquisition already processed.
        reproc = copy.deepcopy(items[-1])
        reproc["id"] = reproc["id"].replace("_N0511_", "_N0600_")
        reproc["properties"]["processing:version"] = "06.00"
        server.publish([reproc])
        r4 = pipe.run(progress=False, incremental=True)
    finally:
        pipe.close()
    assert r1.applied == len(batch1)
    assert r2.embedded == len(batch2) and r2.applied == len(batch2) and r2.late == 0
    assert r3.nothing_new
    assert [a for a, _ in r4.skipped] == [reproc["id"]] and r4.embedded == 0
    assert "reprocessing (baseline 06.00)" in r4.skipped[0][1]
    store = EmbeddingStore(out / "embeddings.zarr", cfg.store)
    stored = [i for tile in store.tiles() for i in store.acquisition_ids(tile)]
    assert sorted(stored) == sorted(i["id"] for i in items)  # each exactly once
    with Ledger(out / "ledger.sqlite") as ledger:
        assert ledger.state(reproc["id"]) == State.SKIPPED
        assert ledger.summary() and sum(
            v.get(State.APPLIED, 0) for v in ledger.summary().values()
        ) == (len(items))


def test_older_baseline_listed_beside_a_newer_one_is_skipped(server, archive, tmp_path):
    from streamembed.acquisition import latest_baselines

    items = _served(archive / "items", server)
    old = copy.deepcopy(items[0])
    old["id"] = old["id"].replace("_N0511_", "_N0400_")
    old["properties"]["processing:version"] = "04.00"
    server.publish([old, items[0]])
    cfg = _source(server.url)
    acqs, _ = discover_stac(cfg, Config().model.bands, search_window(cfg))
    kept, dropped = latest_baselines(acqs)
    assert [a.id for a in kept] == [items[0]["id"]]
    assert [(a.id, b.id) for a, b in dropped] == [(old["id"], items[0]["id"])]


def test_backfill_cli_over_http_equals_disk_and_keeps_the_token_secret(
    archive, cluster_client, tmp_path
):
    """`streamembed backfill --source http://… --config configs/cdse.yaml`, token from the env."""
    srv = StacServer(archive, token=TOKEN).start()
    try:
        items = [
            i
            for i in _served(archive / "items", srv)
            if i["properties"]["grid:code"] == "MGRS-33UWP"
        ]
        srv.publish(items)
        out_http = tmp_path / "http"
        env = {
            **os.environ,
            "CDSE_ACCESS_TOKEN": TOKEN,
            "STREAMEMBED_TOKEN_HOSTS": "127.0.0.1",
            "STREAMEMBED__MODEL__ARCH": "resnet18",
            "STREAMEMBED__STATS__MIN_OBS": "3",
            "STREAMEMBED__SOURCE__MAX_CLOUD_COVER": "100",
            "STREAMEMBED__CLUSTER__N_WORKERS": "1",
            "STREAMEMBED__CLUSTER__DASHBOARD_ADDRESS": ":0",
        }
        cmd = [sys.executable, "-m", "streamembed.cli", "-v", "backfill", "--no-progress"]
        cmd += ["--config", str(REPO / "configs" / "cdse.yaml")]
        cmd += ["--source", srv.url + "/", "--output", str(out_http)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{len(items)} acquisitions in the source" in proc.stdout
        assert srv.hits("/files/", 401) == 0 and srv.hits("/files/", 206) > 0
    finally:
        srv.stop()

    # The same items read from disk with the same preset: identical outputs.
    env_cfg = {k: v for k, v in env.items() if k.startswith("STREAMEMBED__") and "CLUSTER" not in k}
    cfg = load_config(REPO / "configs" / "cdse.yaml", env_cfg)
    out_disk = tmp_path / "disk"
    cfg = cfg.with_overrides(
        **{
            "source.path": str(archive / "items" / "33UWP"),
            "source.kind": "auto",  # as the CLI's --source sets it
            "output": str(out_disk),
        }
    )
    local, _ = discover(cfg.source.path)
    assert len(local) == len(items)
    pipe = Pipeline(cfg, cluster_client)
    try:
        pipe.run(progress=False)
    finally:
        pipe.close()
    a = (
        EmbeddingStore(out_http / "embeddings.zarr", cfg.store)
        .open_dataset("33UWP")
        .sortby("time")
        .load()
    )
    b = (
        EmbeddingStore(out_disk / "embeddings.zarr", cfg.store)
        .open_dataset("33UWP")
        .sortby("time")
        .load()
    )
    assert list(a["acquisition_id"].values) == list(b["acquisition_id"].values)
    assert len(a["acquisition_id"]) == len(items)
    np.testing.assert_array_equal(a["embedding"].values, b["embedding"].values)
    np.testing.assert_array_equal(a["clear"].values, b["clear"].values)
    files_a = sorted(p.relative_to(out_http) for p in (out_http / "anomalies").rglob("*.parquet"))
    files_b = sorted(p.relative_to(out_disk) for p in (out_disk / "anomalies").rglob("*.parquet"))
    assert files_a == files_b

    # The token reached the server (no 401) but nothing the run wrote or printed shows it.
    assert TOKEN not in proc.stdout + proc.stderr
    for path in out_http.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    creds = Credentials.from_env({"CDSE_ACCESS_TOKEN": TOKEN, "CDSE_S3_SECRET_KEY": TOKEN})
    assert TOKEN not in repr(creds) and TOKEN not in f"{creds.token}"
    assert TOKEN not in repr(cfg)
    with pytest.raises(TypeError):
        pickle.dumps(Secret(TOKEN))
    # Only hosts allowed to receive the token get it.
    assert creds.http_headers("https://zipper.dataspace.copernicus.eu/odata/v1/x")
    assert creds.http_headers("https://example.com/B02.tif") == {}
    assert "GDAL_HTTP_HEADERS" not in creds.gdal_options(["https://example.com/B02.tif"])


def test_aoi_from_geojson_and_geoparquet_files(server, archive, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    items = _served(archive / "items", server)
    server.publish(items)
    west = next(i for i in items if i["properties"]["grid:code"] == "MGRS-33UWP")["bbox"]
    frame = gpd.GeoDataFrame(geometry=[box(*west).buffer(-0.01)], crs=4326)
    frame.to_file(tmp_path / "aoi.geojson", driver="GeoJSON")
    frame.to_crs(32633).to_parquet(tmp_path / "aoi.parquet")  # reprojected back to 4326 on read
    for aoi in (tmp_path / "aoi.geojson", tmp_path / "aoi.parquet"):
        cfg = _source(server.url, aoi_file=str(aoi))
        acqs, _ = discover_stac(cfg, Config().model.bands, search_window(cfg))
        assert acqs and {a.tile for a in acqs} == {"33UWP"}, aoi
    with pytest.raises(SourceError, match=r"aoi_file .* not found"):
        discover_stac(
            _source(server.url, aoi_file=str(tmp_path / "nope.geojson")),
            Config().model.bands,
            search_window(cfg),
        )


def test_s3_reads_get_the_cdse_endpoint_and_keys_from_the_environment():
    env = {"CDSE_S3_ACCESS_KEY": "AKID", "CDSE_S3_SECRET_KEY": "S3CRET"}
    opts = Credentials.from_env(env).gdal_options(["s3://eodata/Sentinel-2/x/B02_10m.jp2"])
    assert opts["AWS_S3_ENDPOINT"] == "eodata.dataspace.copernicus.eu"
    assert opts["AWS_VIRTUAL_HOSTING"] == "FALSE" and opts["AWS_HTTPS"] == "YES"
    assert opts["AWS_ACCESS_KEY_ID"] == "AKID" and opts["AWS_SECRET_ACCESS_KEY"] == "S3CRET"
    anonymous = Credentials.from_env({}).gdal_options(["s3://eodata/x.jp2"])
    assert anonymous["AWS_NO_SIGN_REQUEST"] == "YES" and "AWS_ACCESS_KEY_ID" not in anonymous
    assert Credentials.from_env(env).gdal_options(["/data/B02.tif"]) == {}
    # The keys are for the S3 endpoint only: an http(s) read carries none of them.
    https = Credentials.from_env(env).gdal_options(["https://example.com/B02.tif"])
    assert not {k for k in https if k.startswith("AWS_")}


def test_monitor_daemon_over_http_two_batches_exactly_once(server, archive, tmp_path):
    """`streamembed monitor --source http://…`: a later batch with a back-dated product."""
    import time

    items = [
        i
        for i in _served(archive / "items", server)
        if i["properties"]["grid:code"] == "MGRS-33UWP"
    ]
    late = items[2]
    batch1 = items[:2] + items[3:5]
    batch2 = [late, *items[5:]]
    server.publish(batch1)
    out = tmp_path / "out"
    ledger_path = out / "ledger.sqlite"
    # The late product is sensed 20 days behind the watermark: the overlap must cover it.
    overlap = {"STREAMEMBED__SOURCE__OVERLAP_DAYS": "30"}

    def done() -> int:
        return count_states(ledger_path, "applied", "late")

    with monitor_process(server.url, out, overlap) as proc:
        wait_until(lambda: done() >= len(batch1), 180, proc)
        assert done() == len(batch1)
        server.publish(batch2)
        wait_until(lambda: done() >= len(items), 180, proc)
        assert done() == len(items)
        time.sleep(3)  # a few more polls: nothing may be processed twice
        output = stop(proc)
    assert proc.returncode == 0, output
    with Ledger(ledger_path) as ledger:
        states = ledger.states()
    # The back-dated product is older than the tile's last applied one but within
    # stats.allowed_lateness_days: folded in where it belongs (the looks after it replayed,
    # their revisions recorded), and the store's rows put in sensing order.
    assert all(states[i["id"]] == State.APPLIED for i in items)
    with Ledger(ledger_path) as ledger:
        assert {by for _, by, _, _ in ledger.revisions()} == {late["id"]}
    stored = EmbeddingStore(out / "embeddings.zarr").acquisition_ids("33UWP")
    assert sorted(stored) == sorted(i["id"] for i in items)  # each embedded exactly once
    times = EmbeddingStore(out / "embeddings.zarr").open_dataset("33UWP").time.values
    assert len(times) == len(items) and (np.diff(times) > np.timedelta64(0)).all()


def test_monitor_survives_a_long_source_outage_and_catches_up(server, archive, tmp_path):
    """The STAC API answers 503 to everything for many polls: the daemon keeps running, logs
    one line per failed poll while backing off, and catches up once the API is back."""
    items = [
        i
        for i in _served(archive / "items", server)
        if i["properties"]["grid:code"] == "MGRS-33UWP"
    ]
    batch1, batch2 = items[:3], items[3:]
    server.publish(batch1)
    out = tmp_path / "out"
    ledger_path = out / "ledger.sqlite"
    env = {
        "STREAMEMBED__SOURCE__MAX_RETRIES": "0",
        "STREAMEMBED__SOURCE__TIMEOUT_SECONDS": "2",
        "STREAMEMBED__PIPELINE__OUTAGE_MAX_WAIT_SECONDS": "2",
    }

    def done() -> int:
        return count_states(ledger_path, "applied", "late")

    with monitor_process(server.url, out, env) as proc:
        wait_until(lambda: done() >= len(batch1), 180, proc)
        server.fail("/", 503, times=10**6)  # landing page, search and rasters: all down
        down_since = len(server.requests)
        wait_until(
            lambda: sum(s == 503 for _, _, s in server.requests[down_since:]) >= 6, 120, proc
        )
        server.publish(batch2)  # published during the outage
        server.faults.clear()
        wait_until(lambda: done() >= len(items), 180, proc)
        output = stop(proc)
    assert proc.returncode == 0, output
    outage_lines = [ln for ln in output.splitlines() if "source unavailable" in ln]
    assert len(outage_lines) >= 6, output
    assert all("503" in ln for ln in outage_lines)
    assert "next poll in 2 s" in outage_lines[-1]  # backed off to the configured ceiling
    assert "source back after" in output
    with Ledger(ledger_path) as ledger:
        assert all(s == State.APPLIED for s in ledger.states().values())
    stored = EmbeddingStore(out / "embeddings.zarr").acquisition_ids("33UWP")
    assert sorted(stored) == sorted(i["id"] for i in items)
