"""Where an item may point (sources/reach.py): a remote catalogue cannot make workers read
their own files or hosts it was not trusted with; over real HTTP, the others of the run go on."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from streamembed.config import Config
from streamembed.harness.synthetic import generate
from streamembed.outputs.ledger import Ledger, State
from streamembed.runtime.pipeline import Pipeline
from streamembed.sources import discover
from streamembed.sources.reach import Reach


def test_a_remote_sources_items_reach_only_urls_on_its_host_and_the_allowed_ones():
    reach = Reach.for_source(
        "https://stac.dataspace.copernicus.eu/v1", True, ("eodata", "*.example.org")
    )
    assert reach.refusal("https://stac.dataspace.copernicus.eu/v1/files/B02.tif") is None
    assert reach.refusal("s3://eodata/Sentinel-2/MSI/L2A/x/B02_10m.jp2") is None
    assert reach.refusal("https://cdn.example.org/B02.tif") is None
    assert reach.refusal("HTTPS://CDN.EXAMPLE.ORG/B02.tif") is None  # hosts are caseless
    for href, why in [
        ("/etc/passwd", "a local path"),
        ("file:///home/user/B02.tif", "a file:// URL"),
        ("C:\\data\\B02.tif", "a local path"),
        ("/vsicurl/https://stac.dataspace.copernicus.eu/B02.tif", "a local path"),
        ("ftp://stac.dataspace.copernicus.eu/B02.tif", "a ftp:// URL"),
        ("https://example.org.evil.net/B02.tif", "on host example.org.evil.net"),
        ("https://stac.dataspace.copernicus.eu.evil.net/B02.tif", "outside those"),
        ("s3://other-bucket/B02.tif", "on host other-bucket"),
        ("http://169.254.169.254/latest/meta-data/", "on host 169.254.169.254"),
    ]:
        refusal = reach.refusal(href)
        assert refusal is not None and why in refusal, href
    host_refusal = reach.refusal("https://else.net/B02.tif")
    assert host_refusal is not None and "source.allowed_hosts" in host_refusal
    anywhere = Reach.for_source("https://stac.example.com", True, ("*",))
    assert anywhere.refusal("https://else.net/B02.tif") is None
    assert anywhere.refusal("file:///etc/passwd") is not None  # '*' is any host, not any scheme


def test_a_local_folders_items_may_name_local_files(tmp_path: Path):
    assert Reach.for_source(str(tmp_path), False, ()).refusal("/data/B02.tif") is None
    generate(tmp_path, days=20, revisit_days=10, tile_px=128, n_tiles=1, seed=3)
    acqs, failures = discover(tmp_path / "items")  # relative hrefs resolve to local paths
    assert acqs and not failures
    assert all(Path(a.assets["B02"].href).is_absolute() for a in acqs)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reach-archive")
    generate(root, days=50, revisit_days=10, tile_px=128, n_tiles=1, seed=5)
    return root


def _served(archive: Path, url_of) -> list[dict]:
    out = []
    for path in sorted((archive / "items").rglob("*.json")):
        doc = json.loads(path.read_text())
        for asset in doc["assets"].values():
            asset["href"] = url_of(path.parent / asset["href"])
        out.append(doc)
    return sorted(out, key=lambda d: d["properties"]["datetime"])


def _backfill(cfg: Config, client) -> None:
    pipe = Pipeline(cfg, client)
    try:
        pipe.run(progress=False)
    finally:
        pipe.close()


def test_over_http_items_pointing_at_local_files_or_other_hosts_are_refused(
    server, archive, cluster_client, tmp_path
):
    """Four good items and three that point elsewhere: a worker's own file by path and by
    file:// URL (both real COGs on this disk, readable if anyone tried), and the same server
    under another host name (localhost)."""
    items = _served(archive, server.file_url)
    assert len(items) >= 5
    local_path = copy.deepcopy(items[1])
    file_url = copy.deepcopy(items[2])
    other_host = copy.deepcopy(items[3])
    for doc, suffix in ((local_path, "p"), (file_url, "f"), (other_host, "h")):
        doc["id"] = doc["id"] + "-" + suffix
        doc["properties"]["datetime"] = doc["properties"]["datetime"].replace(":00Z", ":01Z")
    local_files = _served(archive, lambda p: str(Path(p).resolve()))
    for key in local_path["assets"]:
        local_path["assets"][key]["href"] = local_files[1]["assets"][key]["href"]
        file_url["assets"][key]["href"] = Path(local_files[2]["assets"][key]["href"]).as_uri()
        other_host["assets"][key]["href"] = other_host["assets"][key]["href"].replace(
            "127.0.0.1", "localhost"
        )
    assert Path(local_path["assets"]["B02_10m"]["href"]).is_file()
    server.publish([*items, local_path, file_url, other_host])
    cfg = Config().with_overrides(
        **{
            "source.path": server.url,
            "output": str(tmp_path / "out"),
            "model.arch": "resnet18",
            "stats.min_obs": 2,
            "source.allowed_hosts": [],
        }
    )
    _backfill(cfg, cluster_client)
    with Ledger(tmp_path / "out" / "ledger.sqlite") as ledger:
        states = ledger.states()
        refused = {key: reason for key, _, reason in ledger.source_failures()}
    assert {i["id"] for i in items} <= {k for k, s in states.items() if s == State.APPLIED}
    assert set(refused) == {local_path["id"], file_url["id"], other_host["id"]}
    assert not {local_path["id"], file_url["id"], other_host["id"]} & set(states)
    assert "a local path" in refused[local_path["id"]]
    assert "a file:// URL" in refused[file_url["id"]]
    assert "on host localhost" in refused[other_host["id"]]
    for key, reason in refused.items():  # each names its item, the asset and what to change
        assert f"item {key} asset " in reason and "refused" in reason, reason
    assert "source.allowed_hosts" in refused[other_host["id"]]
    assert "may name only" in refused[file_url["id"]]
    assert server.hits("/files/") > 0

    # Trusted by the operator, the other host's item is read and applied.
    trusting = cfg.with_overrides(
        **{"source.allowed_hosts": ["localhost"], "output": str(tmp_path / "out2")}
    )
    _backfill(trusting, cluster_client)
    with Ledger(tmp_path / "out2" / "ledger.sqlite") as ledger:
        assert ledger.states()[other_host["id"]] == State.APPLIED
        assert {k for k, _, _ in ledger.source_failures()} == {local_path["id"], file_url["id"]}
