"""Where a run's outputs live: the one place their names are spelled."""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .storage import is_remote, join, normalise


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
    """The outputs under ``root`` (a folder or an object-store URL): ``embeddings.zarr/``,
    ``anomalies/``, ``alerts/``, ``state/``; and the ledger, which is SQLite and so always on
    local disk: ``ledger_path``, by default ``ledger.sqlite`` inside a local ``root``."""

    root: str
    ledger_path: str | None = None

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    @property
    def store(self) -> str:
        """The Zarr embedding store (one group per tile)."""
        return join(self.root, "embeddings.zarr")

    @property
    def anomalies(self) -> str:
        """Partitioned GeoParquet: ``tile=<tile>/date=<YYYY-MM-DD>/<acquisition>.parquet``."""
        return join(self.root, "anomalies")

    @property
    def alerts(self) -> str:
        """Each tile's current alert status per cell: ``tile=<tile>/alerts.parquet``."""
        return join(self.root, "alerts")

    def alert_table(self, tile: str) -> str:
        return join(self.alerts, f"tile={tile}", "alerts.parquet")

    @property
    def state_dir(self) -> str:
        return join(self.root, "state")

    @property
    def ledger(self) -> Path:
        if self.ledger_path:
            return Path(normalise(self.ledger_path))
        if self.remote:
            raise LedgerLocationError(
                f"output {self.root} is on an object store, and the ledger (SQLite) must be on "
                "local disk: give it a path with --ledger (or ledger: in config.yaml)"
            )
        return Path(normalise(self.root)) / "ledger.sqlite"

    @property
    def local_root(self) -> Path | None:
        """The output folder when it is local (the full-disk checks look at its volume)."""
        return None if self.remote else Path(normalise(self.root))

    def state(self, tile: str) -> str:
        """A tile's statistics checkpoint."""
        return join(self.state_dir, f"{tile}.npz")

    def anomaly_file(self, tile: str, date: str, acquisition_id: str) -> str:
        return partition_path(self.anomalies, tile, date, acquisition_id)


class LedgerLocationError(ValueError):
    """The output is remote and no local ledger path was given."""


def partition_path(root: str | Path, tile: str, date: str, acquisition_id: str) -> str:
    """The hive-partitioned file of one acquisition's anomalies under ``root``."""
    return join(root, f"tile={tile}", f"date={date}", f"{acquisition_id}.parquet")
