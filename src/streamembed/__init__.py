"""streamembed: Sentinel-2 L2A -> SSL4EO embeddings (Zarr) -> per-cell rolling statistics -> anomalies (GeoParquet).

The folders are the architecture, lowest first (a part imports only from itself and the parts
before it; tests/test_architecture.py checks it):
- the foundation, these top-level modules: ``acquisition``, ``config``, ``grid``, ``indices``,
  ``storage``, ``layout``, ``faults``, ``credentials``;
- ``sources``: where acquisitions come from;
- ``detection``: the per-cell statistics, change tests, labels and alert lifecycle (pure NumPy);
- ``outputs``: the embedding store, anomaly sink, ledger, catalogue, similarity index;
- ``runtime``: the streaming runtime on Dask (plan, pipeline, ingest, encoder, actor);
- ``deployment``: clusters and manifests;
- ``products``: Major TOM export, anomaly maps;
- ``operations``: the monitor daemon, metrics, health, webhook, web map;
- ``harness``: demo, synthetic writers, evaluation, benchmarks;
- ``cli``: the ``streamembed`` command, a module per command group.
"""

from .acquisition import Acquisition, BandAsset, parse_item
from .config import Config, ConfigError, load_config
from .grid import TileGrid
from .outputs.store import EmbeddingBatch, EmbeddingStore

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
