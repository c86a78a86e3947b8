"""Local source: a folder (searched recursively) of STAC Item JSON files or ItemCollections,
and of SAFE products (``.SAFE`` folders or ``.zip`` downloads, read by ``safe.py``).

Asset hrefs may be relative to the item file or absolute (GeoTIFF, COG, JP2). Files that are
not STAC Items are skipped; items and products that cannot be read are reported as failures
naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..acquisition import BANDS_L2A, Acquisition, SourceError
from .items import Discovery, SourceFailure, features
from .safe import find_products, is_product, read_product


def discover(
    root: str | Path,
    mapping: str | Mapping[str, str] = "auto",
    bands: tuple[str, ...] = BANDS_L2A,
    mask_asset: str | None = None,
) -> tuple[list[Acquisition], list[SourceFailure]]:
    """Every acquisition under ``root``, sorted by (tile, time); and the entries that failed."""
    base = Path(root)
    if not base.exists():
        raise SourceError(f"source folder {base} does not exist; pass --source PATH")
    found = Discovery(mapping, bands, mask_asset)
    for product in find_products(base):
        try:
            found.keep(read_product(product))
        except SourceError as err:
            found.fail(str(product), str(err))
    if base.is_file():
        json_files = [] if is_product(base) else [base]
    else:
        json_files = sorted(base.rglob("*.json"))
    for path in json_files:
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            found.fail(str(path), f"{path}: not readable JSON: {err}")
            continue
        for feature in features(doc):
            acq = found.parse(feature, str(path.resolve()))
            if acq is not None:
                found.keep(acq)
    return found.result()
