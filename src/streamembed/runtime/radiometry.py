"""Pixels to encoder input, pure NumPy: the SCL and quality masks, DN to reflectance, the
SSL4EO normalisations, the fill of masked pixels and the per-cell summaries (clear and snow
fractions, spectral indices). No I/O: the tests call them directly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import IngestConfig
from ..indices import INDEX_BANDS

# Scene classification (SCL) of Sentinel-2 L2A (ESA L2A product specification).
SCL_CLASSES: dict[int, str] = {
    0: "no_data", 1: "saturated_defective", 2: "dark_area", 3: "cloud_shadow",
    4: "vegetation", 5: "not_vegetated", 6: "water", 7: "unclassified",
    8: "cloud_medium_probability", 9: "cloud_high_probability", 10: "thin_cirrus", 11: "snow",
}  # fmt: skip
SNOW_CLASS = 11

# SSL4EO-S12 L1C band statistics (DN) used by its MoCo/DINO pretraining: each band is scaled
# from [mean - 2 std, mean + 2 std] to [0, 1] through uint8, exactly as the original loader.
SSL4EO_S2C_MEAN: dict[str, float] = {
    "B01": 1612.9, "B02": 1397.6, "B03": 1322.3, "B04": 1373.1, "B05": 1561.0, "B06": 2108.4,
    "B07": 2390.7, "B08": 2318.7, "B8A": 2581.0, "B09": 837.7, "B10": 22.0, "B11": 2195.2,
    "B12": 1537.4,
}  # fmt: skip
SSL4EO_S2C_STD: dict[str, float] = {
    "B01": 791.0, "B02": 854.3, "B03": 878.7, "B04": 1144.9, "B05": 1127.5, "B06": 1164.2,
    "B07": 1276.0, "B08": 1249.5, "B8A": 1345.9, "B09": 577.5, "B10": 51.15, "B11": 1336.6,
    "B12": 1136.5,
}  # fmt: skip


def scl_masks(scl: np.ndarray, mask_classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(masked, snow) boolean arrays from an SCL array and the classes to mask."""
    masked = np.isin(scl, np.asarray(mask_classes, dtype=scl.dtype))
    return masked, scl == SNOW_CLASS


def quality_masks(
    layer: np.ndarray, nodata: np.ndarray, ingest: IngestConfig, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """(masked, snow) from the quality layer of ``mode`` (``mask_mode``), plus band nodata.

    ``scl``: the L2A scene classification; ``asset``: a cloud mask raster (non-zero = cloud,
    e.g. s2cloudless output for L1C); ``none``: only nodata is masked. (``computed`` has no
    layer: ``read_masked`` computes it from the bands.)
    """
    if mode == "scl":
        layer = np.where(nodata, 0, layer)
        return scl_masks(layer, ingest.scl_mask_classes)
    snow = np.zeros(layer.shape, bool)
    if mode == "asset":
        return nodata | (layer != 0), snow
    return nodata.copy(), snow


def to_reflectance(dn: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """DN -> surface reflectance in one convention for every processing baseline."""
    return dn.astype(np.float32) * np.float32(scale) + np.float32(offset)


def normalise(reflectance: np.ndarray, bands: Sequence[str], mode: str) -> np.ndarray:
    """Encoder input from (band, y, x) reflectance, as the chosen SSL4EO checkpoint expects.

    ``divide_10000``: torchgeo's SSL4EO-S12 transform, DN / 10000 on offset-free DN, i.e. the
    harmonised reflectance itself. ``ssl4eo_minmax``: the original SSL4EO-S12 loader.
    """
    if mode == "divide_10000":
        return reflectance.astype(np.float32, copy=False)
    if mode == "ssl4eo_minmax":
        mean = np.array([SSL4EO_S2C_MEAN[b] for b in bands], np.float32)[:, None, None]
        std = np.array([SSL4EO_S2C_STD[b] for b in bands], np.float32)[:, None, None]
        lo, hi = mean - 2 * std, mean + 2 * std
        scaled = np.clip((reflectance * 10000.0 - lo) / (hi - lo) * 255.0, 0, 255)
        return (np.floor(scaled) / 255.0).astype(np.float32)
    raise ValueError(f"unknown normalisation {mode!r}")


def fill_masked(x: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Replace masked pixels with each band's median over clear pixels.

    Clouds and nodata are bright or zero; left in, the encoder's receptive field would carry
    them into neighbouring clear cells. A window with no clear pixel is filled with zeros.
    """
    out = x.copy()
    if not masked.any():
        return out
    clear = ~masked
    for b in range(x.shape[0]):
        fill = np.median(x[b][clear]) if clear.any() else 0.0
        out[b][masked] = fill
    return out


def cell_summaries(
    reflectance: np.ndarray,
    masked: np.ndarray,
    snow: np.ndarray,
    bands: Sequence[str],
    cell: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell clear fraction, snow fraction and spectral indices over clear pixels.

    ``reflectance`` is (band, y, x) with y, x multiples of ``cell``. Returns clear (ny, nx),
    snow (ny, nx) and indices (ny, nx, len(INDEX_NAMES)), NaN where a cell has no clear pixel.
    """
    nb, h, w = reflectance.shape
    ny, nx = h // cell, w // cell

    def blocks(a: np.ndarray) -> np.ndarray:
        return a[..., : ny * cell, : nx * cell].reshape(*a.shape[:-2], ny, cell, nx, cell)

    clear = ~masked
    clear_frac = blocks(clear).mean(axis=(-3, -1)).astype(np.float32)
    snow_frac = blocks(snow).mean(axis=(-3, -1)).astype(np.float32)
    idx = [list(bands).index(b) for b in INDEX_BANDS]
    sel = blocks(reflectance[idx] * clear)
    n = blocks(clear).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sel.sum(axis=(-3, -1)) / n
        blue, green, red, nir, swir1, swir2 = mean

        def nd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return (a - b) / (a + b)

        indices = np.stack(
            [
                nd(nir, red),
                nd(green, nir),
                nd(nir, swir2),
                nd(swir1, nir),
                nd(green, swir1),
                (blue + green + red) / 3.0,
            ],
            axis=-1,
        ).astype(np.float32)
    return clear_frac, snow_frac, indices
