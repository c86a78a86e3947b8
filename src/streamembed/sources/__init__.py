"""Where acquisitions come from: a STAC API, a local folder of STAC items, the synthetic archive.

``discover_for`` is the one entry point the pipeline calls; it picks the source from
``source.kind`` / ``source.path`` and returns the acquisitions plus the entries that failed.
"""

from __future__ import annotations

import datetime as dt

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
    from .stac import matches, search_window

    acqs, failures = discover(cfg.source.path, cfg.source.band_mapping, cfg.model.bands, mask)
    # The same filters as a STAC search, so a folder and an API holding the same items agree.
    window = search_window(cfg.source)
    return [a for a in acqs if matches(a, cfg.source, window)], failures


__all__ = ["SourceFailure", "discover", "discover_for", "source_key"]
