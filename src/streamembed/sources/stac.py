"""STAC API source: search any STAC API (CDSE, Earth Search, Planetary Computer…) with pystac-client.

Discovery filters by collection, area of interest (bbox, GeoJSON/GeoParquet geometry or MGRS
tiles), sensing time window and ``eo:cloud_cover``; pages are followed by pystac-client. Every
request retries throttling (429) and server errors (5xx) with back-off and honours
``Retry-After``; a request that does not answer within ``source.timeout_seconds`` is retried too.

The daemon polls incrementally: the ledger keeps a watermark per source (sensing time up to
which every discovered product reached a final state), and each poll searches from the watermark
minus ``source.overlap_days``, because products are published hours or days after sensing. The
ledger makes re-found products a no-op, so the overlap costs one search, never a second embedding.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..acquisition import Acquisition, SourceError, parse_datetime
from ..config import SourceConfig
from ..credentials import Credentials
from .items import Discovery, SourceFailure
from .reach import Reach

log = logging.getLogger(__name__)

RETRY_STATUS = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class SearchWindow:
    """The sensing-time interval searched; None ends are open."""

    start: dt.datetime | None
    end: dt.datetime | None

    def as_stac(self) -> str:
        def iso(t: dt.datetime | None) -> str:
            return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else ".."

        return f"{iso(self.start)}/{iso(self.end)}"


def _parse_day(text: str | None, end_of_day: bool = False) -> dt.datetime | None:
    if not text:
        return None
    value = parse_datetime(text)
    if end_of_day and len(text) <= 10:
        value += dt.timedelta(days=1) - dt.timedelta(seconds=1)
    return value


def search_window(cfg: SourceConfig, watermark: dt.datetime | None = None) -> SearchWindow:
    """The configured window; with a watermark, only what may still be new behind it."""
    start = _parse_day(cfg.start)
    end = _parse_day(cfg.end, end_of_day=True)
    if watermark is not None:
        since = watermark - dt.timedelta(days=cfg.overlap_days)
        start = since if start is None else max(start, since)
    return SearchWindow(start, end)


def aoi_geometry(cfg: SourceConfig) -> Any:
    """The area of interest as a shapely geometry in EPSG:4326, or None (everywhere)."""
    from shapely.geometry import box

    if cfg.aoi_file:
        import geopandas as gpd

        path = Path(cfg.aoi_file)
        if not path.exists():
            raise SourceError(f"source.aoi_file {path} not found; give a GeoJSON or GeoParquet")
        try:
            frame = (
                gpd.read_parquet(path)
                if path.suffix.lower() in (".parquet", ".geoparquet")
                else gpd.read_file(path)
            )
        except Exception as err:  # any reader error: name the file and the formats we take
            raise SourceError(
                f"source.aoi_file {path}: not a readable GeoJSON/GeoParquet ({err})"
            ) from err
        if frame.crs is not None:
            frame = frame.to_crs(4326)
        geom = frame.geometry.union_all()
        return geom if cfg.bbox is None else geom.intersection(box(*cfg.bbox))
    return box(*cfg.bbox) if cfg.bbox else None


def open_client(cfg: SourceConfig, credentials: Credentials | None = None) -> Any:
    """A pystac-client Client with retries, back-off and a request timeout."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    creds = credentials or Credentials.from_env()
    retry = Retry(
        total=cfg.max_retries,
        connect=cfg.max_retries,
        read=cfg.max_retries,
        status=cfg.max_retries,
        backoff_factor=0.5,
        backoff_max=30,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,  # searches are POSTs and idempotent: retry them too
        respect_retry_after_header=True,
    )
    headers = creds.http_headers(cfg.path)
    io = StacApiIO(headers=headers, timeout=cfg.timeout_seconds, max_retries=retry)
    try:
        # Client.open re-applies its own headers/timeout to the StacApiIO: pass them again.
        return Client.open(cfg.path, headers=headers, stac_io=io, timeout=cfg.timeout_seconds)
    except Exception as err:
        raise SourceError(_explain(cfg, err)) from err


def _explain(cfg: SourceConfig, err: BaseException) -> str:
    import requests

    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, requests.exceptions.Timeout) or "timed out" in text.lower():
        hint = f"no answer within {cfg.timeout_seconds:g} s; raise source.timeout_seconds"
    elif isinstance(err, requests.exceptions.RetryError) or "too many" in text.lower():
        hint = f"still failing after {cfg.max_retries} retries (throttled or server errors)"
    elif isinstance(err, requests.exceptions.ConnectionError):
        hint = "cannot connect; check source.path and the network"
    else:
        hint = "check source.path and source.collection"
    return f"STAC API {cfg.path}: {hint} ({type(err).__name__}: {text})"


def search_items(
    cfg: SourceConfig,
    window: SearchWindow,
    geom: Any = None,
    credentials: Credentials | None = None,
) -> Iterator[dict[str, Any]]:
    """Raw item dicts of every page of the search within ``geom``'s bounds (the area of
    interest from ``aoi_geometry``; None: everywhere). The other filters are applied here."""
    client = open_client(cfg, credentials)
    search = client.search(
        collections=[cfg.collection],
        bbox=tuple(geom.bounds) if geom is not None else None,
        datetime=window.as_stac(),
        limit=cfg.page_size,
    )
    try:
        yield from search.items_as_dicts()
    except SourceError:
        raise
    except Exception as err:
        raise SourceError(_explain(cfg, err)) from err


def _item_href(item: Mapping[str, Any], cfg: SourceConfig) -> str:
    for link in item.get("links", []):
        if link.get("rel") == "self" and str(link.get("href", "")).startswith("http"):
            return str(link["href"])
    root = cfg.path.rstrip("/")
    return f"{root}/collections/{cfg.collection}/items/{item.get('id')}"


def filtered_by(
    acq: Acquisition, cfg: SourceConfig, window: SearchWindow | None = None
) -> str | None:
    """The first of the tile, sensing-time (where a window is given) and cloud-cover filters
    every source applies that drops ``acq`` (named as config.yaml's source keys), or None."""
    if cfg.tiles and acq.tile not in cfg.tiles:
        return "tiles"
    if window is not None and (
        (window.start is not None and acq.datetime < window.start)
        or (window.end is not None and acq.datetime > window.end)
    ):
        return "start/end"
    if acq.cloud_cover is not None and acq.cloud_cover > cfg.max_cloud_cover:
        return "max_cloud_cover"
    return None


def matches(acq: Acquisition, cfg: SourceConfig, window: SearchWindow | None = None) -> bool:
    """Whether ``acq`` passes every filter of ``filtered_by``."""
    return filtered_by(acq, cfg, window) is None


def keep_item(item: Mapping[str, Any], acq: Acquisition, cfg: SourceConfig, geom: Any) -> bool:
    """Client-side filters, applied whatever the server understood of the search."""
    if not matches(acq, cfg):
        return False
    if geom is not None and item.get("geometry"):
        from shapely.geometry import shape

        return bool(shape(item["geometry"]).intersects(geom))
    return True


def discover_stac(
    cfg: SourceConfig,
    bands: Sequence[str],
    window: SearchWindow,
    mask_asset: str | None = None,
    credentials: Credentials | None = None,
) -> tuple[list[Acquisition], list[SourceFailure]]:
    """Acquisitions the API holds in ``window`` after the AOI, tile and cloud filters."""
    geom = aoi_geometry(cfg)
    reach = Reach.for_source(cfg.path, remote=True, allowed_hosts=cfg.allowed_hosts)
    found = Discovery(cfg.band_mapping, bands, mask_asset, reach)
    n_items = 0
    for item in search_items(cfg, window, geom, credentials):
        n_items += 1
        acq = found.parse(item, _item_href(item, cfg))
        if acq is not None and keep_item(item, acq, cfg, geom):
            found.keep(acq)
    log.info(
        "STAC %s %s %s: %d items, %d kept",
        cfg.path,
        cfg.collection,
        window.as_stac(),
        n_items,
        len(found.found),
    )
    return found.result()


def load_item_document(href: str) -> dict[str, Any]:
    """One item's JSON from a local path or an http(s) URL (for the anomaly map and re-reads)."""
    if href.startswith(("http://", "https://")):
        import requests

        headers = Credentials.from_env().http_headers(href)
        resp = requests.get(href, headers=headers, timeout=60)
        resp.raise_for_status()
        doc: dict[str, Any] = resp.json()
        return doc
    loaded: dict[str, Any] = json.loads(Path(href).read_text())
    return loaded
