"""What every source shares: STAC documents to features, features to acquisitions (one per id,
failures kept with their reason), and the order the pipeline processes them in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..acquisition import Acquisition, SourceError, is_product_id, one_line, parse_item
from .reach import Reach


@dataclass(frozen=True)
class SourceFailure:
    """A source entry that could not become an Acquisition."""

    key: str
    href: str
    reason: str


STAC_METADATA = ("Catalog", "Collection")  # the JSON of a STAC folder that holds no items


def features(doc: Any) -> list[Mapping[str, Any]]:
    """The STAC Items of a document: an Item, or the Items of an ItemCollection; else none."""
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        found = doc.get("features")
        return [f for f in found if isinstance(f, dict)] if isinstance(found, list) else []
    return []


def not_items(doc: Any) -> str | None:
    """Why a JSON document that yields no items is not what a folder of items holds (a STAC
    Catalog or Collection is: None)."""
    if isinstance(doc, dict) and doc.get("type") in STAC_METADATA:
        return None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return (
            None
            if isinstance(doc.get("features"), list)
            else "a FeatureCollection whose features are not a list"
        )
    kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
    return f"JSON but not a STAC Item or ItemCollection (type {one_line(kind, 40)})"


@dataclass
class Discovery:
    """Acquisitions found so far (the first of each id wins) and the entries that failed."""

    mapping: str | Mapping[str, str]
    bands: Sequence[str]
    mask_asset: str | None = None
    reach: Reach | None = None  # where its items' assets may point (None: anywhere)
    found: dict[str, Acquisition] = field(default_factory=dict)
    failures: list[SourceFailure] = field(default_factory=list)

    def parse(self, feature: Mapping[str, Any], href: str) -> Acquisition | None:
        """The feature as an Acquisition, or None with its failure recorded (an item that does
        not parse, or one whose assets point where its source may not reach)."""
        # Filed under its id where that is a product id, else under its file: a garbled id
        # (a list, a path, a megabyte of text) keys nothing, and two never collide.
        item_id = feature.get("id")
        key = str(item_id) if is_product_id(item_id) else href
        try:
            acq = parse_item(feature, href, self.mapping, self.bands, self.mask_asset)
        except SourceError as err:
            self.failures.append(SourceFailure(key, href, one_line(str(err), 500)))
            return None
        except Exception as err:
            reason = (f"{href}: item {one_line(item_id)} is not a well-formed STAC Item "
                      f"({type(err).__name__}: {one_line(str(err), 200)})")  # fmt: skip
            self.failures.append(SourceFailure(key, href, reason))
            return None
        reach = self.reach or Reach("")
        for asset in acq.assets.values():
            why = reach.refusal(asset.href)
            if why is not None:
                reason = (f"{href}: item {acq.id} asset {asset.key} ({asset.band}) is refused: "
                          f"{asset.href} is {why}")  # fmt: skip
                self.failures.append(SourceFailure(acq.id, href, reason))
                return None
        return acq

    def fail(self, href: str, reason: str) -> None:
        self.failures.append(SourceFailure(href, href, reason))

    def keep(self, acq: Acquisition) -> None:
        first = self.found.setdefault(acq.id, acq)
        if first.item_href != acq.item_href:
            # The same id in two files: the first read is the acquisition, the copy a failure
            # (filed under its own file, so the acquisition itself stays good).
            reason = f"{acq.item_href}: item id {acq.id} already read from {first.item_href}"
            self.fail(acq.item_href, reason + "; this copy is ignored")

    def result(self) -> tuple[list[Acquisition], list[SourceFailure]]:
        """Acquisitions in processing order (tile, sensing time, id), and the failures."""
        ordered = sorted(self.found.values(), key=lambda a: (a.tile, a.datetime, a.id))
        return ordered, self.failures
