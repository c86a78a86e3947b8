"""The alert lifecycle of each embedding cell: provisional, confirmed, recovered (or retracted).

An anomaly on one look is a *provisional* alert; it is *confirmed* once ``confirm_looks``
anomalous clear looks agree (the first included). Looks under cloud, shadow, snow or nodata
are not looks of the cell at all: they neither confirm nor reset it. A provisional alert whose
next clear look is normal is *retracted* (one look of noise, haze or a missed cloud); a
confirmed alert is *recovered* when the cell's own spectral indices are back within
``recover_index_change`` of what was expected when the alert began (a flood draining, a field
re-greening). A confirmed change that persists (a clear-cut, a building) stays confirmed: the
expected state learns it, so its anomalies stop, but the alert does not turn into a recovery.

Pure NumPy over the cells of one tile; the state is part of ``stats.TileState`` (checkpointed
with it), and ``stats.update`` advances it once per acquisition.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from .ingest import INDEX_NAMES
from .labels import UNKNOWN


class AlertStatus(IntEnum):
    """A cell's alert status; the names are what the outputs carry."""

    NONE = 0
    PROVISIONAL = 1
    CONFIRMED = 2
    RECOVERED = 3
    RETRACTED = 4

    @property
    def label(self) -> str:
        return self.name.lower()


STATUS_NAMES: tuple[str, ...] = tuple(s.label for s in AlertStatus)
# The indices that say whether a cell is back to its pre-alert state: greenness, water, burn.
RECOVERY_INDICES: tuple[int, ...] = tuple(INDEX_NAMES.index(n) for n in ("ndvi", "mndwi", "nbr"))
ALERT_ARRAYS = ("status", "looks", "onset_day", "confirmed_day", "last_day", "label", "reference")


@dataclass
class AlertState:
    """Per-cell alert arrays of one tile (flattened cells, as ``TileState``)."""

    status: np.ndarray  # (C,) int8 AlertStatus
    looks: np.ndarray  # (C,) int16 anomalous clear looks since the onset
    onset_day: np.ndarray  # (C,) float64 day of the first anomalous look (NaN: none)
    confirmed_day: np.ndarray  # (C,) float64 day the alert was confirmed (NaN: not yet)
    last_day: np.ndarray  # (C,) float64 day of the last anomalous look
    label: np.ndarray  # (C,) int8 index into labels.LABELS (unknown until an alert names it)
    reference: np.ndarray  # (C, K) float32 expected indices when the alert began

    @classmethod
    def empty(cls, cells: int) -> AlertState:
        nan = np.full(cells, np.nan)
        return cls(
            status=np.zeros(cells, np.int8),
            looks=np.zeros(cells, np.int16),
            onset_day=nan.copy(),
            confirmed_day=nan.copy(),
            last_day=nan.copy(),
            label=np.full(cells, UNKNOWN, np.int8),
            reference=np.full((cells, len(INDEX_NAMES)), np.nan, np.float32),
        )

    @property
    def nbytes(self) -> int:
        return int(sum(getattr(self, name).nbytes for name in ALERT_ARRAYS))


def advance(
    alerts: AlertState,
    scored: np.ndarray,
    anomaly: np.ndarray,
    labels: np.ndarray,
    current: np.ndarray,
    expected: np.ndarray,
    day: float,
    confirm_looks: int,
    recover_index_change: float,
) -> np.ndarray:
    """Move every scored cell's alert on by one look (in place).

    ``scored`` (C,) cells with a clear look after warm-up; ``anomaly`` (C,) anomalous looks;
    ``labels`` (C,) int8 label index of each cell's look; ``current`` and ``expected`` (C, K)
    indices of this look and the expectation before it. Returns the cells with an output row
    this look: anomalous, or just recovered or retracted (``alerts.status`` has each cell's
    status after it).
    """
    status = alerts.status
    active = (status == AlertStatus.PROVISIONAL) | (status == AlertStatus.CONFIRMED)
    with np.errstate(invalid="ignore"):
        back = np.abs(current - alerts.reference)[:, RECOVERY_INDICES]
        returned = np.all(back < recover_index_change, axis=1)  # NaN: not returned
    ended = scored & active & (returned | ~anomaly)
    # A confirmed alert ends only when the cell is back; a provisional one on any normal look.
    ended &= returned | (status == AlertStatus.PROVISIONAL)
    was_provisional = status == AlertStatus.PROVISIONAL
    status[ended & was_provisional] = AlertStatus.RETRACTED
    status[ended & ~was_provisional] = AlertStatus.RECOVERED

    fresh = scored & anomaly & ~active
    going = scored & anomaly & active & ~ended
    status[fresh] = AlertStatus.PROVISIONAL
    alerts.looks[fresh] = 1
    alerts.onset_day[fresh] = day
    alerts.confirmed_day[fresh] = np.nan
    alerts.reference[fresh] = expected[fresh]
    alerts.label[fresh] = labels[fresh]
    alerts.looks[going] += 1
    # A later look may name what the first could not (a partly clear first look): keep the
    # first named label.
    relabel = going & (alerts.label == UNKNOWN) & (labels != UNKNOWN)
    alerts.label[relabel] = labels[relabel]
    touched = fresh | going
    alerts.last_day[touched] = day
    confirm = touched & (status == AlertStatus.PROVISIONAL) & (alerts.looks >= confirm_looks)
    status[confirm] = AlertStatus.CONFIRMED
    alerts.confirmed_day[confirm] = day
    return touched | ended
