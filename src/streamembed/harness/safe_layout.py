"""Where the synthetic writer puts a SAFE product's files, and the metadata XML it writes.

The layout and the element names follow ESA's product specification (PSD 14, compact naming)
as far as ``safe.py`` and the tools users point at SAFE products (GDAL's SENTINEL2 driver,
sen2cor readers) read them: ``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml`` at the root, one granule
with its ``MTD_TL.xml``, L1C bands in ``IMG_DATA/`` and L2A bands in ``IMG_DATA/R{10,20,60}m/``.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..acquisition import BANDS_L1C, BANDS_L2A, NATIVE_RESOLUTION


@dataclass(frozen=True)
class SafeNames:
    """The names of one synthetic product."""

    level: str  # "L1C" or "L2A"
    tile: str
    when: dt.datetime
    unit: str = "B"
    baseline: str = "05.11"

    @property
    def stamp(self) -> str:
        return self.when.strftime("%Y%m%dT%H%M%S")

    @property
    def product_id(self) -> str:
        n = self.baseline.replace(".", "")
        level = "MSIL1C" if self.level == "L1C" else "MSIL2A"
        return f"S2{self.unit}_{level}_{self.stamp}_N{n}_R122_T{self.tile}_{self.stamp[:8]}T140000"

    @property
    def granule(self) -> str:
        return f"GRANULE/{self.level}_T{self.tile}_A000000_{self.stamp}"

    @property
    def bands(self) -> tuple[str, ...]:
        return BANDS_L1C if self.level == "L1C" else (*BANDS_L2A, "SCL")

    def image_file(self, band: str) -> str:
        """A band's file, relative to the product root, without ``.jp2`` (as the MTD lists it)."""
        base = f"T{self.tile}_{self.stamp}_{band}"
        if self.level == "L1C":
            return f"{self.granule}/IMG_DATA/{base}"
        res = NATIVE_RESOLUTION[band]
        return f"{self.granule}/IMG_DATA/R{res}m/{base}_{res}m"


def _offsets(level: str, baseline: str) -> str:
    if float(baseline) < 4.0:
        return ""
    tag = "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET"
    rows = "\n".join(f'        <{tag} band_id="{i}">-1000</{tag}>' for i in range(len(BANDS_L1C)))
    wrap = "Radiometric_Offset_List" if level == "L1C" else "BOA_ADD_OFFSET_VALUES_LIST"
    return f"      <{wrap}>\n{rows}\n      </{wrap}>"


def product_xml(names: SafeNames, cloud_cover: float) -> str:
    """MTD_MSIL1C.xml / MTD_MSIL2A.xml: what a reader of the product needs first."""
    level_name = "Level-1C" if names.level == "L1C" else "Level-2A"
    ptype = "S2MSI1C" if names.level == "L1C" else "S2MSI2A"
    root = "Level-1C_User_Product" if names.level == "L1C" else "Level-2A_User_Product"
    files = "\n".join(
        f"            <IMAGE_FILE>{names.image_file(b)}</IMAGE_FILE>" for b in names.bands
    )
    quant = (
        '      <QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        if names.level == "L1C"
        else "      <QUANTIFICATION_VALUES_LIST>\n"
        '        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>\n'
        "      </QUANTIFICATION_VALUES_LIST>"
    )
    start = names.when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{root} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_{level_name}.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{start}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{names.product_id}.SAFE</PRODUCT_URI>
      <PROCESSING_LEVEL>{level_name}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>{ptype}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{names.baseline}</PROCESSING_BASELINE>
      <Datatake datatakeIdentifier="GS2{names.unit}_{names.stamp}_000000_N{names.baseline}">
        <SPACECRAFT_NAME>Sentinel-2{names.unit}</SPACECRAFT_NAME>
        <DATATAKE_SENSING_START>{start}</DATATAKE_SENSING_START>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
{quant}
{_offsets(names.level, names.baseline)}
    </Product_Image_Characteristics>
  </n1:General_Info>
  <n1:Quality_Indicators_Info>
    <Cloud_Coverage_Assessment>{cloud_cover:.4f}</Cloud_Coverage_Assessment>
  </n1:Quality_Indicators_Info>
</n1:{root}>
"""


def tile_xml(
    names: SafeNames,
    epsg: int,
    x0: float,
    y0: float,
    tile_px: int,
    sun: tuple[float, float] = (150.0, 40.0),
) -> str:
    """The granule's MTD_TL.xml: its projection, its size and corner per resolution, and the
    sun's mean (azimuth, zenith) in degrees."""
    sizes = "\n".join(
        f'      <Size resolution="{r}">\n        <NROWS>{-(-tile_px * 10 // r)}</NROWS>\n'
        f"        <NCOLS>{-(-tile_px * 10 // r)}</NCOLS>\n      </Size>"
        for r in (10, 20, 60)
    )
    positions = "\n".join(
        f'      <Geoposition resolution="{r}">\n        <ULX>{x0:.0f}</ULX>\n'
        f"        <ULY>{y0:.0f}</ULY>\n        <XDIM>{r}</XDIM>\n        <YDIM>-{r}</YDIM>\n"
        "      </Geoposition>"
        for r in (10, 20, 60)
    )
    zone = epsg % 100
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-{names.level[1:]}_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{names.level[1:]}_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID>S2{names.unit}_OPER_MSI_{names.level}_TL_{names.stamp}_T{names.tile}</TILE_ID>
    <SENSING_TIME>{names.when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]}Z</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {zone}N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{epsg}</HORIZONTAL_CS_CODE>
{sizes}
{positions}
    </Tile_Geocoding>
    <Tile_Angles>
      <Mean_Sun_Angle>
        <ZENITH_ANGLE unit="deg">{sun[1]:.4f}</ZENITH_ANGLE>
        <AZIMUTH_ANGLE unit="deg">{sun[0]:.4f}</AZIMUTH_ANGLE>
      </Mean_Sun_Angle>
    </Tile_Angles>
  </n1:Geometric_Info>
</n1:Level-{names.level[1:]}_Tile_ID>
"""


def write_metadata(
    product: Path,
    names: SafeNames,
    epsg: int,
    x0: float,
    y0: float,
    tile_px: int,
    cloud: float,
    sun: tuple[float, float],
) -> None:
    mtd = "MTD_MSIL1C.xml" if names.level == "L1C" else "MTD_MSIL2A.xml"
    (product / mtd).write_text(product_xml(names, cloud))
    granule = product / names.granule
    granule.mkdir(parents=True, exist_ok=True)
    (granule / "MTD_TL.xml").write_text(tile_xml(names, epsg, x0, y0, tile_px, sun))


def zip_product(product: Path) -> Path:
    """The product as a download arrives: one zip holding the ``.SAFE`` folder.

    Members are stored, not deflated: JPEG 2000 does not compress further, and a stored member
    is read at any offset through /vsizip/ without inflating what lies before it."""
    import shutil

    dst = product.with_name(product.name.removesuffix(".SAFE") + ".zip")
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(product.rglob("*")):
            zf.write(path, Path(product.name) / path.relative_to(product))
    shutil.rmtree(product)
    return dst


def jp2_options(tile_px: int, band: str) -> dict[str, str]:
    """Lossless JPEG 2000 as ESA writes its bands: the reversible 5/3 wavelet, 1024 px tiles,
    and resolution levels down to about 256 px (at most 6)."""
    side = -(-tile_px * 10 // NATIVE_RESOLUTION.get(band, 10))
    levels = 1
    while side >> levels >= 256 and levels < 6:
        levels += 1
    return {
        "QUALITY": "100",
        "REVERSIBLE": "YES",
        "BLOCKXSIZE": "1024",
        "BLOCKYSIZE": "1024",
        "RESOLUTIONS": str(levels),
        "YCBCR420": "NO",
    }
