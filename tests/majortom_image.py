"""A product's bands at 10 m as Major TOM's embedder reads them (for the fragment tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio


def major_tom_image(item: Path, bands: tuple[str, ...]) -> np.ndarray:
    """The product's bands at 10 m as Major TOM's embedder reads them: each band file read whole
    and upsampled by repetition (nearest) to the 10 m size."""
    doc = json.loads(item.read_text())
    layers = []
    for band in bands:
        href = next(
            a["href"] for k, a in doc["assets"].items() if k == band or k.startswith(f"{band}_")
        )
        with rasterio.open(item.parent / href) as src:
            k = round(src.res[0] / 10)
            layers.append(np.repeat(np.repeat(src.read(1), k, 0), k, 1))
    side = min(x.shape[0] for x in layers)  # the 10 m bands' size; 60 m edges overshoot it
    return np.stack([x[:side, :side] for x in layers])
