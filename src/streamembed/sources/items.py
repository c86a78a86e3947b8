"""What every source shares: STAC documents to features, features to acquisitions (one per id,
failures kept with their reason), and the order the pipeline processes them in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..acquisition import Acquisition, SourceError, parse_item
from .reach import Reach


@dataclass(frozen=True)
class SourceFailure:
    """A source entry that could not become an Acquisition."""

    key: str
    href: str
    reason: str


def features(doc: Any) -> list[Mapping[str, Any]]:
    """The STAC Items of a document: an Item, or the Items of an ItemCollection; else none."""
    if isinstance(doc, dict) and doc.get("type") == "Feature" and "assets" in doc:
        return [doc]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return [f for f in doc.get("features", []) if isinstance(f, dict)]
    return []


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
        try:
            acq = parse_item(feature, href, self.mapping, self.bands, self.mask_asset)
        except SourceError as err:
            self.failures.append(SourceFailure(str(feature.get("id") or href), href, str(err)))
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
