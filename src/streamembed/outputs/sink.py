"""Anomalies -> partitioned GeoParquet 1.1: ``anomalies/tile=<tile>/date=<YYYY-MM-DD>/<id>.parquet``.

Each file is published whole (``storage.atomic_writer``: a temporary name renamed, or an
object-store upload completed last), so readers never see half a file and a
rewrite after a crash replaces the same file instead of adding a second one. Readable by
geopandas, dask-geopandas, DuckDB and anything that reads hive-partitioned Parquet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from .. import storage
from ..detection.alerts import STATUS_NAMES, AlertState, AlertStatus
from ..detection.change import GRADUAL_NAMES, ChangeState, Gradual
from ..detection.labels import LABELS
from ..detection.stats import ScoreResult
from ..grid import TileGrid
from ..layout import partition_path

# Partition keys live in the path; the files keep them too under other names, so a hive reader
# does not see the same column twice.
COLUMNS = (
    "acquisition_id", "mgrs_tile", "datetime", "cell_y", "cell_x", "score", "distance",
    "n_obs", "clear_fraction", "label", "status", "kind", "onset", "model_id", "utm_epsg",
    "geometry",
)  # fmt: skip


@dataclass(frozen=True)
class AnomalyRecord:
    """One anomalous embedding cell at one acquisition."""

    acquisition_id: str
    tile: str
    datetime: dt.datetime
    cell_y: int
    cell_x: int
    score: float
    distance: float
    n_obs: int
    clear_fraction: float
    label: str
    status: str  # the cell's alert status after this look (alerts.AlertStatus)
    model_id: str
    utm_epsg: int
    kind: str = "sudden"  # sudden (a step between two looks) or gradual (change.py)
    onset: dt.datetime | None = None  # the day the row's alert began


def records_from_result(
    result: ScoreResult,
    grid: TileGrid,
    acquisition_id: str,
    when: dt.datetime,
    clear: np.ndarray,
    model_id: str,
) -> list[AnomalyRecord]:
    nx = grid.n_cells_x
    flat_clear = clear.reshape(-1)
    kinds = result.kinds if result.kinds.size else np.full(result.rows.size, "sudden", object)
    onsets = result.onsets if result.onsets.size else np.full(result.rows.size, np.nan)
    return [
        AnomalyRecord(
            acquisition_id=acquisition_id,
            tile=grid.tile,
            datetime=when,
            cell_y=int(i // nx),
            cell_x=int(i % nx),
            score=float(result.score[i]),
            distance=float(result.distance[i]),
            n_obs=int(result.n_obs[i]),
            clear_fraction=float(flat_clear[i]),
            label=str(label),
            status=str(status),
            model_id=model_id,
            utm_epsg=grid.epsg,
            kind=str(kind),
            onset=_day_datetime(onset),
        )
        for i, label, status, kind, onset in zip(
            result.rows, result.labels, result.status, kinds, onsets, strict=True
        )
    ]


def _day_datetime(day: float) -> dt.datetime | None:
    """A day number (days since 1970-01-01, as the statistics count) as a UTC datetime."""
    if not np.isfinite(day):
        return None
    return dt.datetime.fromtimestamp(round(day * 86400.0), dt.timezone.utc)


def to_geodataframe(records: list[AnomalyRecord], grid: TileGrid) -> gpd.GeoDataFrame:
    frame = pd.DataFrame(
        {
            "acquisition_id": [r.acquisition_id for r in records],
            "mgrs_tile": [r.tile for r in records],
            "datetime": pd.to_datetime([r.datetime for r in records], utc=True),
            "cell_y": np.array([r.cell_y for r in records], np.int32),
            "cell_x": np.array([r.cell_x for r in records], np.int32),
            "score": np.array([r.score for r in records], np.float32),
            "distance": np.array([r.distance for r in records], np.float32),
            "n_obs": np.array([r.n_obs for r in records], np.int32),
            "clear_fraction": np.array([r.clear_fraction for r in records], np.float32),
            "label": [r.label for r in records],
            "status": [r.status for r in records],
            "kind": [r.kind for r in records],
            "onset": pd.to_datetime([r.onset for r in records], utc=True),
            "model_id": [r.model_id for r in records],
            "utm_epsg": np.array([r.utm_epsg for r in records], np.int32),
        }
    )
    geometry = grid.cell_polygons_wgs84(frame["cell_y"].to_numpy(), frame["cell_x"].to_numpy())
    return gpd.GeoDataFrame(frame, geometry=geometry, crs="EPSG:4326")


def write_anomalies(
    root: str | Path, records: list[AnomalyRecord], grid: TileGrid, date: str, acquisition_id: str
) -> str | None:
    """Write one acquisition's anomalies atomically; None (and no file) when there are none."""
    if not records:
        return None
    path = partition_path(root, grid.tile, date, acquisition_id)
    return _publish(to_geodataframe(records, grid), path, crash="sink.written")


def _publish(gdf: gpd.GeoDataFrame, path: str, crash: str | None = None) -> str:
    """GeoParquet 1.1 published whole at ``path`` (a local path or a URL): readers see the old
    file or the new one, never half of one (hive readers skip the hidden local temporary)."""
    with storage.atomic_writer(path, crash) as f:
        gdf.to_parquet(
            f, index=False, schema_version="1.1.0", write_covering_bbox=True, compression="zstd"
        )
    return path


def _read_partitioned(root: str | Path, pattern: str, columns: tuple[str, ...]) -> gpd.GeoDataFrame:
    """Every file under ``root`` matching ``pattern``, partitions as columns; an empty frame
    with ``columns`` when there is none yet."""
    if not storage.glob(root, pattern):
        return gpd.GeoDataFrame({c: [] for c in columns if c != "geometry"}, geometry=[], crs=4326)
    if not storage.is_remote(root):
        return gpd.read_parquet(storage.normalise(root))
    fs, path = storage.filesystem(root)
    return gpd.read_parquet(path, filesystem=fs)


ALERT_COLUMNS = (
    "mgrs_tile", "cell_y", "cell_x", "status", "label", "onset", "confirmed", "last_anomalous",
    "looks", "gradual", "gradual_onset", "updated", "acquisition_id", "geometry",
)  # fmt: skip


def _days_to_datetime(days: np.ndarray) -> pd.DatetimeIndex:
    return pd.to_datetime(np.round(days * 86400.0), unit="s", utc=True)


def alert_table(
    alerts: AlertState,
    grid: TileGrid,
    day: float,
    acquisition_id: str,
    change: ChangeState | None = None,
) -> gpd.GeoDataFrame:
    """The current alert status of every cell that has had one (one row per cell): its sudden
    alert (``status`` and the rest) and its gradual one (``gradual``: none, confirmed or
    recovered, from ``gradual_onset``)."""
    gradual = np.zeros(alerts.status.size, np.int8) if change is None else change.gradual
    gradual_onset = np.full(gradual.size, np.nan) if change is None else change.gradual_onset
    cells = np.flatnonzero((alerts.status != AlertStatus.NONE) | (gradual != Gradual.NONE))
    nx = grid.n_cells_x
    cy, cx = (cells // nx).astype(np.int32), (cells % nx).astype(np.int32)
    frame = pd.DataFrame(
        {
            "mgrs_tile": grid.tile,
            "cell_y": cy,
            "cell_x": cx,
            "status": [STATUS_NAMES[s] for s in alerts.status[cells]],
            "label": [LABELS[i] for i in alerts.label[cells]],
            "onset": _days_to_datetime(alerts.onset_day[cells]),
            "confirmed": _days_to_datetime(alerts.confirmed_day[cells]),
            "last_anomalous": _days_to_datetime(alerts.last_day[cells]),
            "looks": alerts.looks[cells].astype(np.int16),
            "gradual": [GRADUAL_NAMES[g] for g in gradual[cells]],
            "gradual_onset": _days_to_datetime(gradual_onset[cells]),
            "updated": _days_to_datetime(np.full(cells.size, day)),
            "acquisition_id": acquisition_id,
        }
    )
    return gpd.GeoDataFrame(frame, geometry=grid.cell_polygons_wgs84(cy, cx), crs="EPSG:4326")


def write_alert_table(
    path: str | Path,
    alerts: AlertState,
    grid: TileGrid,
    day: float,
    acquisition_id: str,
    change: ChangeState | None = None,
) -> str:
    """Replace a tile's alert table atomically: readers see the old table or the new one."""
    return _publish(alert_table(alerts, grid, day, acquisition_id, change), str(path))


def read_alerts(root: str | Path) -> gpd.GeoDataFrame:
    """Every tile's alert table under ``root`` (empty frame if none yet), with ``tile``."""
    return _read_partitioned(root, "tile=*/alerts.parquet", ALERT_COLUMNS)


def read_anomalies(root: str | Path) -> gpd.GeoDataFrame:
    """Every anomaly under ``root`` (empty frame if none yet), with ``tile``/``date`` partitions."""
    return _read_partitioned(root, "tile=*/date=*/*.parquet", COLUMNS)
