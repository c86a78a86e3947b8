"""Where a run's outputs live: the one place their names are spelled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutputLayout:
    """The output folder: ``embeddings.zarr/``, ``anomalies/``, ``state/``, ``ledger.sqlite``."""

    root: Path

    @property
    def store(self) -> Path:
        """The Zarr embedding store (one group per tile)."""
        return self.root / "embeddings.zarr"

    @property
    def anomalies(self) -> Path:
        """Partitioned GeoParquet: ``tile=<tile>/date=<YYYY-MM-DD>/<acquisition>.parquet``."""
        return self.root / "anomalies"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    def state(self, tile: str) -> Path:
        """A tile's statistics checkpoint."""
        return self.state_dir / f"{tile}.npz"

    def anomaly_file(self, tile: str, date: str, acquisition_id: str) -> Path:
        return partition_path(self.anomalies, tile, date, acquisition_id)


def partition_path(root: str | Path, tile: str, date: str, acquisition_id: str) -> Path:
    """The hive-partitioned file of one acquisition's anomalies under ``root``."""
    return Path(root) / f"tile={tile}" / f"date={date}" / f"{acquisition_id}.parquet"
