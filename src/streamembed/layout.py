"""Where a run's outputs live: the one place their names are spelled."""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path


class OutputFullError(RuntimeError):
    """The output volume is full: the run stops (nothing is marked failed) and a restart after
    space is freed completes it."""


def _nearly_full(where: Path | None) -> bool:
    """Under 1 MiB left for unprivileged writes on the volume holding ``where``."""
    if where is None:
        return False
    path = where
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize < 1 << 20


def is_disk_full(err: BaseException, where: Path | None = None) -> bool:
    """Whether ``err`` (or what it was raised from) is a full disk or an exhausted quota.

    SQLite reports a full volume as "disk is full", or, when it cannot even create its WAL
    index, as a generic "disk I/O error": that one counts when the volume of ``where`` is full.
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, sqlite3.OperationalError) and (
            "full" in str(e) or ("disk I/O error" in str(e) and _nearly_full(where))
        ):
            return True
        if "No space left on device" in str(e):  # an error re-raised by a worker as text
            return True
        e = e.__cause__ or e.__context__
    return False


@dataclass(frozen=True)
class OutputLayout:
    """The output folder: ``embeddings.zarr/``, ``anomalies/``, ``alerts/``, ``state/``,
    ``ledger.sqlite``."""

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
    def alerts(self) -> Path:
        """Each tile's current alert status per cell: ``tile=<tile>/alerts.parquet``."""
        return self.root / "alerts"

    def alert_table(self, tile: str) -> Path:
        return self.alerts / f"tile={tile}" / "alerts.parquet"

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
