"""SAFE products as a source: ``.SAFE`` folders and ``.zip`` downloads, no STAC item needed.

What the pipeline needs of a product comes from the product's own metadata, as ESA's product
specification (PSD 14, the compact naming used since December 2016) lays it out:

- ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``: product URI (tile, sensing time, baseline), level,
  the band files (``IMAGE_FILE``, without the ``.jp2``), the quantification value and, from
  baseline 04.00 on, the per-band radiometric offset (L1C ``RADIO_ADD_OFFSET``, L2A
  ``BOA_ADD_OFFSET``), the nodata value and the cloud cover;
- the granule's ``MTD_TL.xml``: the tile's EPSG code and its 10 m geoposition and size.

A zip is read in place: the XML through Python's ``zipfile``, the bands through GDAL's
``/vsizip/`` (no extraction, so a 1 GB product costs no extra disk). A product that cannot be
read (truncated zip, missing metadata or band file, a level other than 1C/2A) is a source
failure naming the product and the fix, like a bad STAC item.
"""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

from ..acquisition import (
    BANDS_L1C,
    NATIVE_RESOLUTION,
    Acquisition,
    BandAsset,
    SourceError,
    parse_datetime,
)

LEVELS = {"Level-1C": "L1C", "Level-2A": "L2A"}
_URI_RE = re.compile(
    r"^S2[ABCD]_MSIL(1C|2A)_(\d{8}T\d{6})_N(\d{2})(\d{2})_R\d{3}_T(\d{2}[A-Z]{3})_"
)
# A band file's name ends in _B02 (L1C) or _B02_10m (L2A); SCL only exists in L2A.
_BAND_FILE_RE = re.compile(r"_(B\d[\dA]|SCL)(?:_(\d{2})m)?$")


def is_product(path: Path) -> bool:
    """A path that names a SAFE product: a ``*.SAFE`` folder or a ``*.zip`` file."""
    return (path.suffix.upper() == ".SAFE" and path.is_dir()) or (
        path.suffix.lower() == ".zip" and path.is_file()
    )


@dataclass(frozen=True)
class _Product:
    """Read access to one product's files, whether a folder or a zip."""

    path: Path
    names: tuple[str, ...]  # every member, relative to the product root, '/'-separated
    root: str  # the member prefix of the .SAFE folder inside a zip ('' for a folder)

    @classmethod
    def open(cls, path: Path) -> _Product:
        if path.is_dir():
            names = tuple(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
            return cls(path, names, "")
        try:
            with zipfile.ZipFile(path) as zf:
                members = zf.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise SourceError(
                f"{path}: not a readable zip ({err}); a truncated or interrupted download? "
                "download the product again"
            ) from err
        tops = {m.split("/", 1)[0] for m in members if m.upper().split("/", 1)[0].endswith(".SAFE")}
        if len(tops) != 1:
            raise SourceError(
                f"{path}: holds {len(tops)} .SAFE folders, not one; a SAFE zip holds one product"
            )
        top = tops.pop()
        names = tuple(
            m[len(top) + 1 :] for m in members if m.startswith(top + "/") and not m.endswith("/")
        )
        return cls(path, names, top)

    def read(self, name: str) -> bytes:
        if not self.root:
            return (self.path / name).read_bytes()
        try:
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(f"{self.root}/{name}")
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise SourceError(
                f"{self.path}: {name} cannot be read from the zip ({err}); "
                "download the product again"
            ) from err

    def href(self, name: str) -> str:
        """What GDAL opens: the file, or the member through /vsizip/ (no extraction)."""
        if not self.root:
            return str((self.path / name).resolve())
        return f"/vsizip/{self.path.resolve()}/{self.root}/{name}"

    def find(self, pattern: str) -> list[str]:
        return sorted(n for n in self.names if PurePosixPath(n).match(pattern))


def _xml(product: _Product, name: str) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(product.read(name))
    except ElementTree.ParseError as err:
        raise SourceError(
            f"{product.path}: {name} is not well-formed XML ({err}); download the product again"
        ) from err


def _iter(root: ElementTree.Element, tag: str) -> Iterator[ElementTree.Element]:
    """Elements named ``tag`` anywhere, whatever their namespace (the PSD versions differ)."""
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == tag:
            yield el


def _text(root: ElementTree.Element, tag: str) -> str | None:
    el = next(_iter(root, tag), None)
    return el.text.strip() if el is not None and el.text else None


def _band_offsets(mtd: ElementTree.Element) -> dict[str, float]:
    """Per-band additive DN offsets (baseline >= 04.00); band_id counts B01..B12 with B8A."""
    offsets: dict[str, float] = {}
    for tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET"):
        for el in _iter(mtd, tag):
            band_id = int(el.get("band_id", el.get("bandId", "-1")))
            if 0 <= band_id < len(BANDS_L1C) and el.text:
                offsets[BANDS_L1C[band_id]] = float(el.text)
    return offsets


def _band_files(product: _Product, mtd: ElementTree.Element) -> dict[str, str]:
    """Band -> file name inside the product, each band at its native resolution."""
    best: dict[str, tuple[int, str]] = {}
    for el in _iter(mtd, "IMAGE_FILE"):
        stem = (el.text or "").strip()
        m = _BAND_FILE_RE.search(stem)
        if not m:
            continue  # TCI, AOT, WVP
        band, res = m.group(1), int(m.group(2) or NATIVE_RESOLUTION[m.group(1)])
        # Native resolution first, then the finest other one.
        rank = 0 if res == NATIVE_RESOLUTION[band] else res
        if band not in best or rank < best[band][0]:
            best[band] = (rank, stem + ".jp2")
    return {band: name for band, (_, name) in best.items()}


def _geocoding(
    product: _Product,
) -> tuple[int, tuple[float, ...], tuple[int, int], tuple[float | None, float | None]]:
    """EPSG, 10 m transform and 10 m shape of the granule, and the sun's mean azimuth and
    zenith, from its MTD_TL.xml."""
    tls = product.find("GRANULE/*/MTD_TL.xml")
    if len(tls) != 1:
        raise SourceError(
            f"{product.path}: {len(tls)} granule metadata files (GRANULE/*/MTD_TL.xml), "
            "expected one; the product is incomplete: download it again"
        )
    tl = _xml(product, tls[0])
    code = _text(tl, "HORIZONTAL_CS_CODE") or ""
    if not code.upper().startswith("EPSG:"):
        raise SourceError(f"{product.path}: {tls[0]} has no HORIZONTAL_CS_CODE EPSG code")
    pos = next((g for g in _iter(tl, "Geoposition") if g.get("resolution") == "10"), None)
    size = next((s for s in _iter(tl, "Size") if s.get("resolution") == "10"), None)
    if pos is None or size is None:
        raise SourceError(f"{product.path}: {tls[0]} has no 10 m Geoposition/Size")
    ulx, uly = float(_text(pos, "ULX") or 0), float(_text(pos, "ULY") or 0)
    xdim, ydim = float(_text(pos, "XDIM") or 10), float(_text(pos, "YDIM") or -10)
    shape = (int(_text(size, "NROWS") or 0), int(_text(size, "NCOLS") or 0))
    sun = next(_iter(tl, "Mean_Sun_Angle"), None)
    angles = (None, None) if sun is None else (
        _float(_text(sun, "AZIMUTH_ANGLE")), _float(_text(sun, "ZENITH_ANGLE"))
    )  # fmt: skip
    return int(code.split(":")[1]), (xdim, 0.0, ulx, 0.0, ydim, uly), shape, angles


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def read_product(path: Path, bands: Sequence[str] = BANDS_L1C) -> Acquisition:
    """One SAFE product (folder or zip) as an Acquisition; SourceError names what is wrong."""
    product = _Product.open(path)
    mtds = [n for n in product.names if re.fullmatch(r"MTD_MSIL(1C|2A)\.xml", n)]
    if not mtds:
        other = [n for n in product.names if re.fullmatch(r"MTD_\w+\.xml", n)]
        kind = f" (it has {other[0]})" if other else ""
        raise SourceError(
            f"{path}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml at the product's root{kind}; "
            "only Sentinel-2 Level-1C and Level-2A products in the compact SAFE naming are read"
        )
    mtd = _xml(product, mtds[0])
    level = LEVELS.get(_text(mtd, "PROCESSING_LEVEL") or "")
    uri = (_text(mtd, "PRODUCT_URI") or "").removesuffix(".SAFE")
    m = _URI_RE.match(uri)
    if level is None or m is None:
        raise SourceError(
            f"{path}: product {uri or '?'} is level {_text(mtd, 'PROCESSING_LEVEL')!r}; "
            "only Sentinel-2 MSI Level-1C and Level-2A products are read"
        )
    sensed = parse_datetime(_text(mtd, "PRODUCT_START_TIME") or m.group(2))
    if sensed > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1):
        raise SourceError(f"{path}: product {uri} is sensed in the future ({sensed:%Y-%m-%d})")
    quantification = float(
        _text(mtd, "BOA_QUANTIFICATION_VALUE") or _text(mtd, "QUANTIFICATION_VALUE") or 10000
    )
    offsets = _band_offsets(mtd)
    nodata = next(
        (
            float(_text(sv, "SPECIAL_VALUE_INDEX") or 0)
            for sv in _iter(mtd, "Special_Values")
            if _text(sv, "SPECIAL_VALUE_TEXT") == "NODATA"
        ),
        0.0,
    )
    epsg, transform, shape, (azimuth, zenith) = _geocoding(product)
    files = _band_files(product, mtd)
    present = set(product.names)
    assets: dict[str, BandAsset] = {}
    for band in (*bands, "SCL"):
        name = files.get(band)
        if name is None:
            continue
        if name not in present:
            raise SourceError(
                f"{path}: band {band} file {name} is listed in {mtds[0]} but missing; "
                "the product is incomplete: download it again"
            )
        f = NATIVE_RESOLUTION[band] // 10
        is_scl = band == "SCL"
        assets[band] = BandAsset(
            band=band,
            key=PurePosixPath(name).stem,
            href=product.href(name),
            scale=None if is_scl else 1.0 / quantification,
            offset=None if is_scl else offsets.get(band, 0.0) / quantification,
            nodata=0.0 if is_scl else nodata,
            epsg=epsg,
            transform=(transform[0] * f, 0.0, transform[2], 0.0, transform[4] * f, transform[5]),
            shape=(-(-shape[0] // f), -(-shape[1] // f)),
            file_bands=1,
        )
    cloud = _text(mtd, "Cloud_Coverage_Assessment")
    return Acquisition(
        id=uri,
        tile=m.group(5),
        datetime=sensed,
        epsg=epsg,
        assets=assets,
        item_href=str(path.resolve()),
        cloud_cover=float(cloud) if cloud is not None else None,
        processing_baseline=f"{m.group(3)}.{m.group(4)}",
        level=level,
        searched_keys={b: (f"{b} in {mtds[0]}",) for b in (*bands, "SCL")},
        sun_azimuth=azimuth,
        sun_zenith=zenith,
    )
