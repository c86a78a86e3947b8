"""Where acquisitions come from: a STAC API, a local folder of STAC items, the synthetic archive.

``discover_for`` is the one entry point the pipeline calls; it picks the source from
``source.kind`` / ``source.path`` and returns the acquisitions plus the entries that failed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ..acquisition import Acquisition
from ..config import Config
from .items import SourceFailure
from .local import discover


def source_key(cfg: Config) -> str:
    """Names the source in the ledger's watermark table (URL + collection, or the folder)."""
    src = cfg.source
    return f"{src.path.rstrip('/')}#{src.collection}" if src.is_stac_api else src.path


def discover_for(
    cfg: Config, watermark: dt.datetime | None = None
) -> tuple[list[Acquisition], list[SourceFailure]]:
    """Acquisitions of the configured source; a STAC source with a watermark searches only
    from the watermark minus ``source.overlap_days``."""
    mask = cfg.ingest.cloud_mask_asset if cfg.ingest.cloud_mask == "asset" else None
    if cfg.source.is_stac_api:
        from .stac import discover_stac, search_window

        return discover_stac(
            cfg.source, cfg.model.bands, search_window(cfg.source, watermark), mask
        )
    acqs, failures = discover(cfg.source.path, cfg.source.band_mapping, cfg.model.bands, mask)
    # The same filters as a STAC search, so a folder and an API holding the same items agree.
    return [a for a in acqs if not _removed_by(a, cfg)], failures


def _removed_by(acq: Acquisition, cfg: Config) -> str | None:
    """The first filter of ``source`` that drops ``acq`` (tiles, dates, cloud, bbox), or None."""
    from .stac import search_window

    src = cfg.source
    window = search_window(src)
    if src.tiles and acq.tile not in src.tiles:
        return "tiles"
    if (window.start is not None and acq.datetime < window.start) or (
        window.end is not None and acq.datetime > window.end
    ):
        return "start/end"
    if acq.cloud_cover is not None and acq.cloud_cover > src.max_cloud_cover:
        return "max_cloud_cover"
    if src.bbox is not None:
        box = footprint_lonlat(acq)
        w, s, e, n = src.bbox
        if box is not None and (box[0] > e or box[2] < w or box[1] > n or box[3] < s):
            return "bbox"
    return None


def footprint_lonlat(acq: Acquisition) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) of the acquisition's 10 m raster, from its asset's grid, or
    None where the item gives no grid."""
    ref = next((acq.assets[b] for b in ("B02", "B04", "B08") if b in acq.assets), None)
    if ref is None or ref.transform is None or ref.shape is None or ref.epsg is None:
        return None
    from pyproj import Transformer

    a, _, c, _, e, f = ref.transform
    xs = (c, c + a * ref.shape[1])
    ys = (f, f + e * ref.shape[0])
    to_lonlat = Transformer.from_crs(ref.epsg, 4326, always_xy=True)
    corners = [to_lonlat.transform(x, y) for x in xs for y in ys]
    lons, lats = zip(*corners, strict=True)
    return min(lons), min(lats), max(lons), max(lats)


def explain_nothing(cfg: Config) -> list[str]:
    """Why the source yielded no acquisition: what was looked for, what was found instead,
    and how many each filter removed."""
    src = cfg.source
    if src.is_stac_api:
        return [
            f"the STAC API {src.path} returned no item of collection {src.collection} "
            f"for tiles {list(src.tiles) or 'any'}, dates {src.start or 'any'} to "
            f"{src.end or 'now'}, bbox {src.bbox or 'any'}, cloud <= {src.max_cloud_cover:g} %"
        ]
    from .local import scan

    root = Path(src.path)
    files = scan(root)
    lines: list[str] = []
    if not files.json_files and not files.products:
        lines.append(
            f"no STAC item (*.json) or SAFE product (*.SAFE, *.zip) under {root}; "
            f"{files.describe()}"
        )
        return lines
    mask = cfg.ingest.cloud_mask_asset if cfg.ingest.cloud_mask == "asset" else None
    acqs, failures = discover(src.path, src.band_mapping, cfg.model.bands, mask)
    counts: dict[str, int] = {}
    for a in acqs:
        why = _removed_by(a, cfg)
        if why:
            counts[why] = counts.get(why, 0) + 1
    lines.append(
        f"{len(files.json_files)} JSON file(s) and {len(files.products)} SAFE product(s) under "
        f"{root}: {len(acqs)} acquisition(s), {len(failures)} unreadable"
    )
    lines += [f"  source.{name} removed {n}" for name, n in counts.items()]
    return lines


__all__ = [
    "SourceFailure", "discover", "discover_for", "explain_nothing", "footprint_lonlat",
    "source_key",
]  # fmt: skip
