"""The spectral indices summarised per embedding cell: the one vocabulary the reader (which
computes them), the detectors and labels (which read them) and the outputs (which store them)
share, so none of those has to import another for it."""

from __future__ import annotations

# Per-cell spectral summaries over clear pixels, for anomaly labels and the index detector:
# NDVI (B08, B04), NDWI (B03, B08; McFeeters), NBR (B08, B12), NDBI (B11, B08), MNDWI (B03,
# B11; Xu) and the visible brightness (mean of B02, B03, B04 reflectance), which separates
# char (dark) from bare soil and concrete (bright) where the normalised differences agree.
INDEX_NAMES: tuple[str, ...] = ("ndvi", "ndwi", "nbr", "ndbi", "mndwi", "brightness")
INDEX_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11", "B12")
