"""A cloud, shadow and snow mask computed from L1C bands, for products without an SCL layer.

Clouds: the s2cloudless pixel classifier (Sentinel Hub's LightGBM model, shipped inside the
``s2cloudless`` package, CC BY-SA 4.0; no download) on top-of-atmosphere reflectance of its ten
bands, run on the 160 m lattice of the tile (16 x 16 px of 10 m, the resolution its authors
run it at, and a divisor of the 320 m embedding cell), smoothed over the 3 x 3 neighbourhood and
thresholded at their default 0.4. Shadows: dark pixels (NIR and SWIR low, not water) that the
clouds project onto, 1-4 lattice steps (160-640 m) away from the sun. Snow: the normalised
difference snow index (NDSI > 0.4 with bright green and NIR), per 10 m pixel. The cloud and
shadow masks are grown by one lattice step, as SCL's cloud classes carry a fringe.

Every result on a pixel depends on pixels at most ``HALO_PX`` away, so a block that reads that
much more around itself gets the bits a whole-tile computation would give: the mask, like the
SCL one, does not depend on the block size. Pure NumPy (and LightGBM): no Dask here.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

# s2cloudless's model inputs, in its order (the L1C bands without B03, B06 and B07).
MODEL_BANDS: tuple[str, ...] = (
    "B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"
)  # fmt: skip
INPUT_BANDS: tuple[str, ...] = (*MODEL_BANDS, "B03")  # B03 for snow and water
LATTICE_PX = 16  # 160 m
THRESHOLD = 0.4
SHADOW_STEPS = (1, 2, 3, 4)
# Smoothing (1) + the farthest shadow step + the final growth (1), in lattice steps.
HALO_PX = (1 + max(SHADOW_STEPS) + 1) * LATTICE_PX
# Without the product's sun angles: a mid-latitude morning overpass (sun in the south-east).
DEFAULT_SUN = (150.0, 40.0)  # azimuth, zenith in degrees
_MODEL_FILE = "pixel_s2_cloud_detector_lightGBM_v0.1.txt"


class CloudMaskUnavailable(RuntimeError):
    """The classifier's package is not installed."""


@functools.lru_cache(maxsize=1)
def _classifier() -> Callable[[np.ndarray], np.ndarray]:
    """The LightGBM booster of s2cloudless, loaded once per process.

    Found through the package's location rather than imported: ``import s2cloudless`` pulls
    in sentinelhub's download client, which a worker never needs."""
    spec = importlib.util.find_spec("s2cloudless")
    if spec is None or not spec.submodule_search_locations:
        raise CloudMaskUnavailable(
            "the L1C cloud mask needs the s2cloudless package (its LightGBM model): "
            "pip install s2cloudless, or set ingest.cloud_mask: none"
        )
    from lightgbm import Booster

    path = Path(next(iter(spec.submodule_search_locations))) / "models" / _MODEL_FILE
    booster = Booster(model_file=str(path))

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(x, num_threads=1), np.float32)

    return predict


def _lattice(a: np.ndarray) -> np.ndarray:
    """(y, x) -> (lattice y, 16, lattice x, 16): each lattice cell's pixels (sides divisible
    by 16)."""
    return a.reshape(a.shape[0] // LATTICE_PX, LATTICE_PX, a.shape[1] // LATTICE_PX, LATTICE_PX)


def lattice_means(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Means of ``a`` over the valid pixels of each 16 x 16 px lattice cell."""
    v = _lattice(valid)
    n = v.sum(axis=(1, 3), dtype=np.float32)
    s = np.where(v, _lattice(a), 0).sum(axis=(1, 3), dtype=np.float32)
    return s / np.maximum(n, 1)


def _neighbourhood(a: np.ndarray, op: Callable[..., np.ndarray]) -> np.ndarray:
    """``op`` over each pixel's 3 x 3 neighbourhood (edge pixels see a replicated edge)."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return op(np.stack([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]), 0)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) lattice steps, False where nothing moved in."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def shadow_direction(sun_azimuth: float) -> tuple[float, float]:
    """Unit (row, column) step away from the sun: rows grow southwards, columns eastwards."""
    away = math.radians(sun_azimuth + 180.0)
    return -math.cos(away), math.sin(away)


def lattice_masks(
    means: Mapping[str, np.ndarray], valid: np.ndarray, sun_azimuth: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cloud probability, cloud, shadow) on the lattice from its TOA band means."""
    x = np.stack([means[b] for b in MODEL_BANDS], axis=-1)
    prob = np.zeros(valid.shape, np.float32)
    if valid.any():
        prob[valid] = _classifier()(x[valid].astype(np.float64))
    smooth = _neighbourhood(prob, np.mean)
    cloud = (smooth > THRESHOLD) & valid
    dy, dx = shadow_direction(sun_azimuth)
    cast = np.zeros_like(cloud)
    for k in SHADOW_STEPS:
        cast |= _shift(cloud, round(k * dy), round(k * dx))
    nir, swir, green = means["B8A"], means["B11"], means["B03"]
    water = green > nir
    dark = (nir < 0.16) & (swir < 0.12) & ~water
    shadow = cast & dark & ~cloud & valid
    return prob, _neighbourhood(cloud, np.any), _neighbourhood(shadow, np.any) & valid


def snow_mask(green: np.ndarray, nir: np.ndarray, swir: np.ndarray) -> np.ndarray:
    """Snow per pixel: NDSI > 0.4 on a bright green and NIR (TOA reflectance)."""
    ndsi = (green - swir) / np.maximum(green + swir, 1e-6)
    return (ndsi > 0.4) & (green > 0.1) & (nir > 0.11)


def computed_masks(
    band: Callable[[str], np.ndarray],
    nodata: np.ndarray,
    sun_azimuth: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cloud, shadow, snow) per 10 m pixel of an area on the 160 m lattice.

    ``band(name)``: that band's TOA reflectance over the area (10 m, float32), asked for one
    band at a time so no stack of eleven float bands is ever held."""
    valid = ~nodata
    means = {b: lattice_means(band(b), valid) for b in INPUT_BANDS}
    lattice_valid = np.asarray(_lattice(valid).any(axis=(1, 3)))
    _, cloud, shadow = lattice_masks(means, lattice_valid, sun_azimuth)

    def to_pixels(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, LATTICE_PX, axis=0), LATTICE_PX, axis=1)

    cloud_px, shadow_px = to_pixels(cloud), to_pixels(shadow)
    snow = snow_mask(band("B03"), band("B08"), band("B11")) & valid & ~cloud_px
    return cloud_px & valid, shadow_px & valid, snow
