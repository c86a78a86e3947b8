"""Local source: a folder (searched recursively) of STAC Item JSON files or ItemCollections.

Asset hrefs may be relative to the item file or absolute (GeoTIFF, COG, JP2). Files that are
not STAC Items are skipped; items that cannot be parsed are reported as failures naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..acquisition import BANDS_L2A, Acquisition, SourceError, parse_item


@dataclass(frozen=True)
class SourceFailure:
    """A source entry that could not become an Acquisition."""

    key: str
    href: str
    reason: str


def _features(doc: Any) -> list[Mapping[str, Any]]:
    if isinstance(doc, dict) and doc.get("type") == "Feature" and "assets" in doc:
        return [doc]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return [f for f in doc.get("features", []) if isinstance(f, dict)]
    return []


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
    acqs: dict[str, Acquisition] = {}
    failures: list[SourceFailure] = []
    paths = [base] if base.is_file() else sorted(base.rglob("*.json"))
    for path in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            failures.append(
                SourceFailure(str(path), str(path), f"{path}: not readable JSON: {err}")
            )
            continue
        for feature in _features(doc):
            try:
                acq = parse_item(feature, str(path.resolve()), mapping, bands, mask_asset)
            except SourceError as err:
                key = str(feature.get("id") or path)
                failures.append(SourceFailure(key, str(path), str(err)))
                continue
            acqs.setdefault(acq.id, acq)
    ordered = sorted(acqs.values(), key=lambda a: (a.tile, a.datetime, a.id))
    return ordered, failures
