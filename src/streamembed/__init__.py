"""streamembed: Sentinel-2 L2A -> SSL4EO embeddings (Zarr) -> per-cell rolling statistics -> anomalies (GeoParquet)."""

from .acquisition import Acquisition, BandAsset, parse_item
from .config import Config, ConfigError, load_config
from .grid import TileGrid
from .store import EmbeddingBatch, EmbeddingStore

__all__ = [
    "Acquisition",
    "BandAsset",
    "Config",
    "ConfigError",
    "EmbeddingBatch",
    "EmbeddingStore",
    "TileGrid",
    "load_config",
    "parse_item",
]
__version__ = "0.1.0"
