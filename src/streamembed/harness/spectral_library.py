"""Surface spectra for the second scenario generator (``fieldsim``): real pixels and a library.

Vegetation and built-up spectra are real: pixels of the eo-learn Slovenia patch
(``shared/data/s2/eolearn_slovenia_2015_2017``, three clear L1C scenes of July-September 2015,
"Contains modified Copernicus Sentinel data"), picked by the patch's land-cover map and brought
towards surface reflectance by dark-object subtraction: the blue band's darkest percentile,
less 2 %, is its path radiance, the other bands' are scaled by wavelength to the power -2
(between Rayleigh's -4 and haze's -1), and no band of the darkest pixels goes below 1 %. The
surfaces the patch does not show (soils, water, char, sealed surfaces, dry vegetation, snow)
are typical values of their kind (USGS-library-like shapes resampled to the MSI bands), each
with a few variants so parcels differ.

``build(folder)`` extracts the real part; the result is kept in ``spectral_library.json`` beside
this file, so the generator runs without ``shared/`` (tests check the file against a rebuild).
Bands are ``acquisition.BANDS_L2A`` (B01 … B12 without B10).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

LIBRARY_JSON = Path(__file__).with_name("spectral_library.json")
CLEAR_SCENES = (2, 3, 4)  # the three scenes of the five without cloud or haze (NDVI > 0.6)
# eo-learn's land-cover codes in the patch, and the library class each becomes.
LULC_CLASSES = {2: "forest", 3: "grass", 4: "shrub", 8: "built"}
PIXELS_PER_CLASS = 24
L1C_B10 = 10  # the cirrus band, absent from L2A
# Central wavelengths (um) of B01 … B12 without B10.
WAVELENGTH_UM = np.array(
    [0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.610, 2.190]
)

# Typical surfaces the patch does not show, B01 … B12 (no B10), reflectance 0-1.
TYPICAL: dict[str, list[list[float]]] = {
    "soil": [  # bright dry loam, darker moist soil, reddish clay
        [0.09, 0.11, 0.15, 0.19, 0.22, 0.24, 0.25, 0.27, 0.28, 0.29, 0.35, 0.30],
        [0.05, 0.06, 0.08, 0.10, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.22, 0.19],
        [0.07, 0.08, 0.10, 0.16, 0.20, 0.22, 0.23, 0.24, 0.25, 0.26, 0.33, 0.29],
    ],
    "dry_vegetation": [  # stubble, straw and senescent grass: red up, NIR down, SWIR high
        [0.07, 0.08, 0.11, 0.14, 0.18, 0.22, 0.25, 0.27, 0.29, 0.30, 0.36, 0.27],
        [0.06, 0.07, 0.10, 0.12, 0.16, 0.21, 0.24, 0.26, 0.28, 0.28, 0.33, 0.24],
    ],
    "litter": [  # leafless deciduous canopy over litter (winter forest)
        [0.04, 0.05, 0.07, 0.08, 0.11, 0.15, 0.17, 0.19, 0.20, 0.20, 0.24, 0.17],
    ],
    "water": [  # clear lake, turbid river
        [0.05, 0.05, 0.045, 0.03, 0.02, 0.012, 0.01, 0.008, 0.006, 0.005, 0.003, 0.002],
        [0.07, 0.08, 0.09, 0.08, 0.07, 0.04, 0.03, 0.025, 0.02, 0.015, 0.008, 0.006],
    ],
    "floodwater": [  # sediment-laden water over fields
        [0.09, 0.10, 0.12, 0.12, 0.10, 0.07, 0.06, 0.05, 0.045, 0.03, 0.015, 0.01],
        [0.08, 0.09, 0.11, 0.10, 0.09, 0.06, 0.05, 0.045, 0.04, 0.03, 0.012, 0.008],
    ],
    "char": [  # ash and charred stems
        [0.03, 0.035, 0.04, 0.05, 0.06, 0.07, 0.075, 0.08, 0.085, 0.09, 0.15, 0.15],
        [0.04, 0.045, 0.05, 0.055, 0.065, 0.07, 0.075, 0.078, 0.08, 0.085, 0.13, 0.12],
    ],
    "sealed": [  # new concrete, asphalt, metal and tile roofs
        [0.22, 0.24, 0.27, 0.29, 0.30, 0.31, 0.32, 0.32, 0.33, 0.33, 0.36, 0.33],
        [0.07, 0.075, 0.08, 0.085, 0.09, 0.095, 0.10, 0.10, 0.105, 0.11, 0.12, 0.11],
        [0.12, 0.12, 0.14, 0.22, 0.25, 0.26, 0.27, 0.27, 0.28, 0.28, 0.33, 0.30],
    ],
    "snow": [
        [0.80, 0.82, 0.80, 0.78, 0.76, 0.73, 0.70, 0.68, 0.66, 0.62, 0.12, 0.09],
    ],
}


def build(folder: str | Path, seed: int = 7) -> dict[str, list[list[float]]]:
    """The real part of the library: per land-cover class, ``PIXELS_PER_CLASS`` pixel spectra
    of the clear scenes after dark-object subtraction (rounded to 1e-4, the L2A DN step)."""
    folder = Path(folder)
    cube = np.load(folder / "REFERENCE_SCENES_L1C_13band.npy")  # (5, y, x, 13) TOA
    lulc = np.load(folder / "LULC.npy")[..., 0]
    rng = np.random.default_rng(seed)
    out: dict[str, list[list[float]]] = {name: [] for name in LULC_CLASSES.values()}
    for s in CLEAR_SCENES:
        scene = np.delete(cube[s], L1C_B10, axis=-1).astype(np.float64)
        darkest = np.percentile(scene.reshape(-1, scene.shape[-1]), 0.5, axis=0)
        dark_blue = darkest[1] - 0.02  # a dark canopy keeps ~2 % in the blue
        # ... and no band of the darkest pixels goes below 1 %
        path = np.minimum(dark_blue * (WAVELENGTH_UM / WAVELENGTH_UM[1]) ** -2.0, darkest - 0.01)
        surface = np.clip(scene - path, 0.001, 1.0)
        for code, name in LULC_CLASSES.items():
            pixels = surface[lulc == code]
            take = rng.choice(len(pixels), PIXELS_PER_CLASS // len(CLEAR_SCENES), replace=False)
            out[name] += np.round(pixels[take], 4).tolist()
    return out


@functools.lru_cache(maxsize=1)
def library() -> dict[str, np.ndarray]:
    """Every class of the library as (variants, 12) float32: the real classes from the JSON
    kept beside this module, then the typical ones."""
    real = json.loads(LIBRARY_JSON.read_text())
    return {name: np.asarray(v, np.float32) for name, v in {**real, **TYPICAL}.items()}


def write_library(folder: str | Path, path: Path = LIBRARY_JSON) -> Path:
    """Rebuild the kept JSON from the eo-learn patch (``folder``)."""
    path.write_text(json.dumps(build(folder), indent=0) + "\n")
    library.cache_clear()
    return path
