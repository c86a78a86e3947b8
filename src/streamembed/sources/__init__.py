"""Where acquisitions come from: a STAC API (``stac``), a local folder of STAC items, GeoTIFFs
or SAFE products (``local``, ``items``, ``safe``), and which hrefs an item may reach (``reach``).

``discover_for`` is the one entry point the pipeline calls; it picks the source from
``source.kind`` / ``source.path`` and returns the acquisitions plus the entries that failed.

May import: the foundation only (``streamembed.acquisition``, ``config``, ``credentials``,
``grid``, …). The writers of synthetic archives are the harness's, not a source.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ..acquisition import Acquisition
from ..config import Config
from ..grid import utm_footprint
from .items import SourceFailure
from .local import discover
from .stac import SearchWindow, search_window


def source_key(cfg: Config) -> str:
    """Names the source in the ledger's watermark table (URL + collection, or the folder)."""
    src = cfg.source
    return f"{src.path.rstrip('/')}#{src.collection}" if src.is_stac_api else src.path


def discover_for(
    cfg: Config, watermark: dt.datetime | None = None
) -> tuple[list[Acquisition], list[SourceFailure]]:
    """Acquisitions of the configured source; a STAC source with a watermark searches only
    from the watermark minus ``source.overlap_days``."""
    mask = _mask_asset(cfg)
    if cfg.source.is_stac_api:
        from .stac import discover_stac

        return discover_stac(
            cfg.source, cfg.model.bands, search_window(cfg.source, watermark), mask
        )
    acqs, failures = discover(cfg.source.path, cfg.source.band_mapping, cfg.model.bands, mask)
    # The same filters as a STAC search, so a folder and an API holding the same items agree.
    window = search_window(cfg.source)
    return [a for a in acqs if not _removed_by(a, cfg, window)], failures


def _mask_asset(cfg: Config) -> str | None:
    """The item asset of a cloud mask, where ``ingest.cloud_mask`` asks for one."""
    return cfg.ingest.cloud_mask_asset if cfg.ingest.cloud_mask == "asset" else None


def _removed_by(acq: Acquisition, cfg: Config, window: SearchWindow) -> str | None:
    """The first filter of ``source`` that drops ``acq`` (a STAC search's filters, then the
    bbox against the product's grid footprint), or None."""
    from .stac import filtered_by

    why = filtered_by(acq, cfg.source, window)
    if why is None and cfg.source.bbox is not None:
        box = footprint_lonlat(acq)
        w, s, e, n = cfg.source.bbox
        if box is not None and (box[0] > e or box[2] < w or box[1] > n or box[3] < s):
            return "bbox"
    return why


def footprint_lonlat(acq: Acquisition) -> list[float] | None:
    """[west, south, east, north] of the acquisition's 10 m raster, from its asset's grid, or
    None where the item gives no grid."""
    ref = acq.grid_asset()
    if ref is None or ref.transform is None or ref.shape is None or ref.epsg is None:
        return None
    a, _, c, _, e, f = ref.transform
    return utm_footprint(ref.epsg, c, f, a * ref.shape[1], -e * ref.shape[0])[0]


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
    acqs, failures = discover(src.path, src.band_mapping, cfg.model.bands, _mask_asset(cfg))
    window = search_window(src)
    counts: dict[str, int] = {}
    for a in acqs:
        why = _removed_by(a, cfg, window)
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
