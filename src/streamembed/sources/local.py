"""Local source: a folder (searched recursively) of STAC Item JSON files or ItemCollections,
and of SAFE products (``.SAFE`` folders or ``.zip`` downloads, read by ``safe.py``).

Asset hrefs may be relative to the item file or absolute (GeoTIFF, COG, JP2). Files that are
not STAC Items are skipped; items and products that cannot be read are reported as failures
naming the file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..acquisition import BANDS_L2A, Acquisition, SourceError, one_line
from .items import Discovery, SourceFailure, features, not_items
from .safe import is_product, read_product

MAX_ITEM_BYTES = 64 << 20  # an item collection of thousands of items is a few MiB


@dataclass
class Scan:
    """What a source folder holds: STAC JSON files, SAFE products, and everything else by
    extension (what a source that yields nothing says it found instead)."""

    json_files: list[Path] = field(default_factory=list)
    products: list[Path] = field(default_factory=list)
    others: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        if not self.others:
            return "the folder is empty"
        kinds = ", ".join(f"{n} {ext or '(no extension)'}" for ext, n in self.others.most_common(6))
        return f"found instead: {kinds} file(s)"


def scan(root: Path) -> Scan:
    """Every STAC JSON file and SAFE product under ``root``, symlinked folders followed (each
    real folder once, so a link loop ends); a ``.SAFE`` folder is a product, not searched."""
    found = Scan()
    if root.is_file():
        if is_product(root):
            found.products.append(root)
        elif root.suffix == ".json":
            found.json_files.append(root)
        else:
            found.others[root.suffix.lower()] += 1
        return found
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        here = Path(dirpath)
        for name in sorted(dirnames):
            if name.upper().endswith(".SAFE"):
                found.products.append(here / name)
        dirnames[:] = sorted(d for d in dirnames if not d.upper().endswith(".SAFE"))
        for name in sorted(filenames):
            path = here / name
            if name.endswith(".json"):
                found.json_files.append(path)
            elif is_product(path):
                found.products.append(path)
            else:
                found.others[path.suffix.lower()] += 1
    found.json_files.sort()
    found.products.sort()
    return found


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
    files = scan(base)
    for product in files.products:
        try:
            found.keep(read_product(product))
        except SourceError as err:
            found.fail(str(product), str(err))
    for path in files.json_files:
        try:
            size = path.stat().st_size
            if size > MAX_ITEM_BYTES:
                found.fail(str(path), f"{path}: {size / 2**20:.0f} MiB, not a STAC item or item "
                           f"collection (at most {MAX_ITEM_BYTES >> 20} MiB read)")  # fmt: skip
                continue
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            # ValueError: JSON's own errors; RecursionError: nesting deeper than any item's
            found.fail(str(path), f"{path}: not readable JSON: {one_line(str(err), 200)}")
            continue
        items = features(doc)
        if not items and (why := not_items(doc)) is not None:
            found.fail(str(path), f"{path}: {why}")
        for feature in items:
            acq = found.parse(feature, str(path.resolve()))
            if acq is not None:
                found.keep(acq)
    return found.result()
