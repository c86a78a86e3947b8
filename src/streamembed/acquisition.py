"""The Acquisition record (one Sentinel-2 product for one MGRS tile at one time) and STAC parsing.

Three STAC dialects are understood: the CDSE STAC v1 naming (``B02_10m``, ``SCL_20m``, per-asset
``raster:scale``/``raster:offset`` and ``proj:code``), Earth Search (``blue``/``nir``/``scl`` in v1,
``B02``… in v0) and Planetary Computer (``B02``…, ``s2:mgrs_tile``).
"""

from __future__ import annotations

import datetime as dt
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

BANDS_L1C: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07",
    "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
BANDS_L2A: tuple[str, ...] = tuple(b for b in BANDS_L1C if b != "B10")
NATIVE_RESOLUTION: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20, "SCL": 20,
}  # fmt: skip
EARTH_SEARCH_NAMES: dict[str, str] = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B11": "swir16", "B12": "swir22", "SCL": "scl",
}  # fmt: skip
PRESETS = ("cdse", "earth-search", "planetary-computer")


class SourceError(Exception):
    """An item that cannot be turned into an Acquisition; permanent for that item."""


def candidate_keys(band: str, mapping: str | Mapping[str, str]) -> list[str]:
    """Asset keys to try for ``band`` under a preset name or an explicit {band: asset key} map."""
    if not isinstance(mapping, str):
        return [mapping[band]] if band in mapping else []
    by_preset = {
        "cdse": [f"{band}_{NATIVE_RESOLUTION[band]}m"]
        + [f"{band}_{r}m" for r in (10, 20, 60) if r != NATIVE_RESOLUTION[band]],
        "planetary-computer": [band],
        "earth-search": [EARTH_SEARCH_NAMES.get(band, band), band],
    }
    if mapping == "auto":
        keys: list[str] = []
        for preset in PRESETS:
            keys += [k for k in by_preset[preset] if k not in keys]
        return keys
    if mapping not in by_preset:
        raise SourceError(f"unknown band mapping preset {mapping!r}; use one of {PRESETS} or auto")
    return by_preset[mapping]


@dataclass(frozen=True)
class BandAsset:
    """One band's raster as the item describes it (projection fields are None where absent)."""

    band: str
    key: str
    href: str
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    epsg: int | None = None
    transform: tuple[float, ...] | None = None
    shape: tuple[int, int] | None = None
    index: int = 1  # the band in a multi-band file (1-based, GDAL order)
    file_bands: int | None = None  # bands the item says the file holds (None: not checked)


@dataclass(frozen=True)
class Acquisition:
    """One Sentinel-2 product for one MGRS tile at one time: the unit of work and of the ledger."""

    id: str
    tile: str
    datetime: dt.datetime
    epsg: int | None
    assets: Mapping[str, BandAsset] = field(hash=False, compare=False)
    item_href: str = ""
    cloud_cover: float | None = None
    processing_baseline: str | None = None
    level: str = "L2A"
    searched_keys: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, hash=False, compare=False
    )
    # The sun's mean azimuth and zenith over the tile (degrees): where cloud shadows fall.
    sun_azimuth: float | None = field(default=None, compare=False)
    sun_zenith: float | None = field(default=None, compare=False)

    def grid_asset(self) -> BandAsset | None:
        """The 10 m band asset whose grid is the tile's (None: the item has no 10 m band)."""
        return next(
            (self.assets[b] for b in ("B02", "B03", "B04", "B08") if b in self.assets), None
        )

    def missing_bands(self, bands: Sequence[str]) -> list[str]:
        return [b for b in bands if b not in self.assets]

    def missing_reason(self, bands: Sequence[str]) -> str | None:
        """One line naming the first missing band asset and the fix, or None if all are there."""
        missing = self.missing_bands(bands)
        if not missing:
            return None
        band = missing[0]
        tried = ", ".join(self.searched_keys.get(band, ())) or "no keys"
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return (
            f"acquisition {self.id} ({self.item_href}): asset for band {band} missing{more}; "
            f"looked for {tried}; check source.band_mapping"
        )

    def scale_offset(self, band: str) -> tuple[float, float]:
        """DN -> reflectance: the item's raster:scale/offset, else the baseline's convention.

        Processing baseline >= 04.00 adds +1000 DN to L2A BOA (and L1C TOA) values, so those
        products need offset -0.1 where the item does not say so; older ones need none.
        """
        asset = self.assets[band]
        scale = asset.scale if asset.scale is not None else 1e-4
        if asset.offset is not None:
            return scale, asset.offset
        return scale, (-0.1 if baseline_has_offset(self.processing_baseline) else 0.0)

    @property
    def sensing_key(self) -> str:
        """Same tile and sensing second: the same acquisition, whatever its processing baseline."""
        return f"{self.tile}_{self.datetime:%Y%m%dT%H%M%S}"

    def baseline_number(self) -> float:
        try:
            return float(self.processing_baseline or 0)
        except ValueError:
            return 0.0


def latest_baselines(
    acqs: Sequence[Acquisition],
) -> tuple[list[Acquisition], list[tuple[Acquisition, Acquisition]]]:
    """Keep the newest processing baseline of each acquisition.

    Returns the kept acquisitions and (superseded, kept instead) pairs: CDSE republishes
    products under a new baseline (reprocessing campaigns), and both may be listed at once.
    """
    best: dict[str, Acquisition] = {}
    for a in acqs:
        cur = best.get(a.sensing_key)
        if cur is None or (a.baseline_number(), a.id) > (cur.baseline_number(), cur.id):
            best[a.sensing_key] = a
    kept_ids = {a.id for a in best.values()}
    kept = [a for a in acqs if a.id in kept_ids]
    dropped = [(a, best[a.sensing_key]) for a in acqs if a.id not in kept_ids]
    return kept, dropped


def baseline_has_offset(baseline: str | None) -> bool:
    if not baseline:
        return False
    try:
        return float(baseline) >= 4.0
    except ValueError:
        return False


# An MGRS tile: UTM zone, latitude band (C-X without I and O), 100 km square (no I, O).
MGRS_TILE = r"\d{2}[C-HJ-NP-X][A-HJ-NP-Z]{2}"
_TILE_RE = re.compile(rf"(?:^|[_T])({MGRS_TILE})(?:_|$)")
_BASELINE_RE = re.compile(r"_N(\d{2})(\d{2})_")
FIRST_SENSING = dt.datetime(2015, 6, 23, tzinfo=dt.timezone.utc)  # Sentinel-2A's launch
# An acquisition id names files of the output (anomalies/tile=…/date=…/<id>.parquet) and keys
# the ledger: letters, digits and . _ - only, as every Sentinel-2 product id is.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _tile_of(item: Mapping[str, Any]) -> str | None:
    props = item.get("properties", {})
    if isinstance(props.get("grid:code"), str) and props["grid:code"].startswith("MGRS-"):
        return str(props["grid:code"][5:])
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"])
    for prefix in ("mgrs", "sentinel"):
        zone = props.get(f"{prefix}:utm_zone")
        band = props.get(f"{prefix}:latitude_band")
        square = props.get(f"{prefix}:grid_square")
        if zone and band and square:
            return f"{int(zone):02d}{band}{square}"
    for text in (str(item.get("id", "")), str(props.get("sentinel:product_id", ""))):
        m = _TILE_RE.search(text)
        if m:
            return m.group(1)
    return None


def _baseline_of(item: Mapping[str, Any]) -> str | None:
    props = item.get("properties", {})
    for key in ("processing:version", "s2:processing_baseline", "processing_baseline"):
        if props.get(key):
            return str(props[key])
    for text in (
        str(item.get("id", "")),
        str(props.get("s2:product_uri", "")),
        str(props.get("sentinel:product_id", "")),
    ):
        m = _BASELINE_RE.search(text)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def _epsg_of(obj: Mapping[str, Any]) -> int | None:
    code = obj.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":")[1])
    if obj.get("proj:epsg") is not None:
        return int(obj["proj:epsg"])
    return None


def is_product_id(value: Any) -> bool:
    """Whether ``value`` may be an acquisition id (it names files of the output)."""
    return isinstance(value, str) and bool(_ID_RE.fullmatch(value)) and ".." not in value


def one_line(value: Any, limit: int = 80) -> str:
    """``value`` as it may appear in a one-line reason: repr'd, on one line, cut to ``limit``."""
    text = value if isinstance(value, str) else reprlib.repr(value)  # bounded depth and size
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_datetime(text: str) -> dt.datetime:
    """An ISO 8601 date or time as UTC (a trailing Z, or no zone at all, means UTC)."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def resolve_href(href: str, base: str) -> str:
    """Absolute href: URLs stay, relative paths resolve against the item's own location."""
    if (
        urlparse(href).scheme in ("http", "https", "s3", "gs", "az", "file")
        or Path(href).is_absolute()
    ):
        return href
    if urlparse(base).scheme in ("http", "https"):
        return base.rsplit("/", 1)[0] + "/" + href
    return str((Path(base).parent / href).resolve())


def _first(values: Any) -> Any:
    return values[0] if isinstance(values, list) and values else None


def _band_asset(
    band: str, key: str, a: Mapping[str, Any], item_href: str, item_epsg: int | None
) -> BandAsset:
    """One asset's href, scaling, nodata and projection (asset fields, then raster:bands)."""
    raster_band = _first(a.get("raster:bands")) or {}
    band_meta = _first(a.get("bands")) or {}
    transform = a.get("proj:transform")
    shape = a.get("proj:shape")
    href = a["href"]
    if not isinstance(href, str) or not href.strip():
        raise SourceError(f"{item_href}: asset {key} has href {one_line(href)}, not a URL or path")

    def number(name: str, value: Any) -> float | None:
        # a value of the item's that reaches the workers: a number or nothing, never a
        # structure (an untrusted item's)
        if value is None or (name == "nodata" and value in ("nan", "inf", "-inf")):
            return None  # STAC's float nodata: no integer DN band holds it
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise SourceError(
                f"{item_href}: asset {key} has {name} {one_line(value)}, not a finite number"
            )
        return float(value)

    return BandAsset(
        band=band,
        key=key,
        href=resolve_href(href, item_href),
        scale=number("raster:scale", a.get("raster:scale", raster_band.get("scale"))),
        offset=number("raster:offset", a.get("raster:offset", raster_band.get("offset"))),
        nodata=number(
            "nodata", a.get("nodata", raster_band.get("nodata", band_meta.get("nodata")))
        ),
        epsg=_epsg_of(a) or item_epsg,
        transform=tuple(float(v) for v in transform[:6]) if transform else None,
        shape=(int(shape[0]), int(shape[1])) if shape else None,
        # STAC band assets hold one band unless their raster:bands / bands list says more
        file_bands=max(1, len(a.get("raster:bands") or a.get("bands") or [None])),
    )


def parse_item(
    item: Mapping[str, Any],
    item_href: str,
    mapping: str | Mapping[str, str] = "auto",
    bands: Sequence[str] = BANDS_L2A,
    mask_asset: str | None = None,
) -> Acquisition:
    """Parse one STAC Item (as JSON) into an Acquisition; raises SourceError naming the item.

    ``mask_asset``: the key of a cloud-mask asset (L1C), kept as the acquisition's ``MASK``.
    """
    item_id = item.get("id")
    if item.get("type") != "Feature" or not item_id:
        raise SourceError(f"{item_href}: not a STAC Item (type Feature with an id)")
    if not is_product_id(item_id):
        raise SourceError(
            f"{item_href}: item id {one_line(item_id)} is not a product id (letters, digits and "
            ". _ - only, at most 200; it names the output's files)"
        )
    if not isinstance(item.get("properties") or {}, Mapping):
        raise SourceError(f"{item_href}: item {item_id} has properties that are not an object")
    props = item.get("properties") or {}
    if not props.get("datetime"):
        raise SourceError(f"{item_href}: item {item_id} has no properties.datetime")
    try:
        sensed = parse_datetime(str(props["datetime"]))
    except (ValueError, OverflowError):
        raise SourceError(
            f"{item_href}: item {item_id} has properties.datetime "
            f"{one_line(props['datetime'])}, not an ISO 8601 time"
        ) from None
    if sensed > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1):
        raise SourceError(
            f"{item_href}: item {item_id} is sensed at {sensed:%Y-%m-%dT%H:%M}Z, in the future; "
            "its properties.datetime is wrong"
        )
    if sensed < FIRST_SENSING:
        raise SourceError(
            f"{item_href}: item {item_id} is sensed at {sensed:%Y-%m-%d}, before Sentinel-2A's "
            f"launch ({FIRST_SENSING:%Y-%m-%d}); its properties.datetime is wrong"
        )
    tile = _tile_of(item)
    if tile is None:
        raise SourceError(
            f"{item_href}: item {item_id} names no MGRS tile "
            "(grid:code, s2:mgrs_tile or mgrs:* properties)"
        )
    assets_json: Mapping[str, Any] = item.get("assets") or {}
    item_epsg = _epsg_of(props)
    assets: dict[str, BandAsset] = {}
    searched: dict[str, tuple[str, ...]] = {}
    wanted = [(band, candidate_keys(band, mapping)) for band in (*bands, "SCL")]
    if mask_asset:
        wanted.append(("MASK", [mask_asset]))
    for band, keys in wanted:
        searched[band] = tuple(keys)
        key = next((k for k in keys if k in assets_json), None)
        if key is not None:
            assets[band] = _band_asset(band, key, assets_json[key], item_href, item_epsg)
    epsg = next((a.epsg for a in assets.values() if a.epsg), item_epsg)
    level = "L1C" if "L1C" in str(item_id) or "L1C" in str(props.get("product:type", "")) else "L2A"
    cloud = props.get("eo:cloud_cover")
    if cloud is not None and not (_number(cloud) is not None and 0 <= float(cloud) <= 100):
        raise SourceError(
            f"{item_href}: item {item_id} has eo:cloud_cover {one_line(cloud)}, not a percentage"
        )
    azimuth = props.get("view:sun_azimuth", props.get("s2:mean_solar_azimuth"))
    elevation = props.get("view:sun_elevation")
    zenith = props.get("s2:mean_solar_zenith", None if elevation is None else 90 - elevation)
    return Acquisition(
        id=str(item_id),
        tile=tile,
        datetime=sensed,
        epsg=epsg,
        assets=assets,
        item_href=item_href,
        cloud_cover=float(cloud) if cloud is not None else None,
        processing_baseline=_baseline_of(item),
        level=level,
        searched_keys=searched,
        sun_azimuth=_number(azimuth),
        sun_zenith=_number(zenith),
    )


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
