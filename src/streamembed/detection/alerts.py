"""The alert lifecycle of each embedding cell: provisional, confirmed, recovered (or retracted).

An anomaly on one look is a *provisional* alert; it is *confirmed* once ``confirm_looks``
clear looks agree (the first included), or on its own look when the caller marks the onset
sure (``advance``'s ``sure``: open water, stats.py). Looks under cloud, shadow, snow or nodata
are not looks of the cell at all: they neither confirm nor reset it. Each later look is measured
against the onset (``progress``: the share of the onset's change still there): a persisting
look agrees, a look where the change is gone *retracts* a provisional alert (one look of noise,
haze or a missed cloud), and an ambiguous one neither confirms nor retracts: the next decides
(two ambiguous looks in a row retract). A
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

from ..indices import INDEX_NAMES
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
ALERT_ARRAYS = (
    "status", "looks", "onset_day", "confirmed_day", "last_day", "label", "reference", "axis",
    "magnitude", "pending",
)  # fmt: skip
# A later look of an alert is measured against its onset: the share of the onset's change on
# the index it was raised on (``axis``) that is still there. PERSIST or more: the change
# persists (it confirms); RETURN or less: it is gone (a provisional alert is retracted);
# between: ambiguous, the look neither confirms nor retracts, and the next one decides (two
# ambiguous looks in a row retract).
PERSIST = 0.6
RETURN = 0.25
MAX_PENDING = 2


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
    axis: np.ndarray  # (C,) int8 the change index (change.CHANGE_INDICES) it began on (-1: none)
    magnitude: np.ndarray  # (C,) float32 the signed change on that index at the onset
    pending: np.ndarray  # (C,) int8 ambiguous looks in a row since the last clear answer

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
            axis=np.full(cells, -1, np.int8),
            magnitude=np.full(cells, np.nan, np.float32),
            pending=np.zeros(cells, np.int8),
        )

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AlertState:
        """An alert state from a checkpoint's arrays; those it predates start empty."""
        cells = int(arrays["status"].size)
        empty = cls.empty(cells)
        return cls(**{n: arrays[n] if n in arrays else getattr(empty, n) for n in ALERT_ARRAYS})

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
    progress: np.ndarray | None = None,
    sure: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Move every scored cell's alert on by one look (in place).

    ``scored`` (C,) cells with a clear look after warm-up; ``anomaly`` (C,) anomalous looks
    (for a cell with no alert: an onset); ``labels`` (C,) int8 label index of each cell's look;
    ``current`` and ``expected`` (C, K) indices of this look and the expectation before it.
    ``progress`` (C,): for cells with an alert, the share of its onset's change still there
    (``PERSIST``/``RETURN`` decide); None: the look's own ``anomaly`` decides (persists when
    anomalous, else returned). ``sure`` (C,): onsets confirmed on their own look. Returns
    (rows, going): the cells with an output row this look (anomalous, persisting, or just
    recovered or retracted; ``alerts.status`` has each cell's status after it) and those whose
    alert the look kept going.
    """
    status = alerts.status
    active = (status == AlertStatus.PROVISIONAL) | (status == AlertStatus.CONFIRMED)
    if progress is None:
        persists, gone = anomaly, ~anomaly
    else:
        with np.errstate(invalid="ignore"):
            persists, gone = progress >= PERSIST, ~(progress > RETURN)  # NaN: gone
    ambiguous = ~persists & ~gone
    with np.errstate(invalid="ignore"):
        back = np.abs(current - alerts.reference)[:, RECOVERY_INDICES]
        returned = np.all(back < recover_index_change, axis=1)  # NaN: not returned
    provisional = status == AlertStatus.PROVISIONAL
    waiting = scored & provisional & ambiguous
    alerts.pending[waiting] += 1
    retract = scored & provisional & (gone | (waiting & (alerts.pending >= MAX_PENDING)))
    # A confirmed alert ends only when the cell is back where it was expected before it.
    recover = scored & (status == AlertStatus.CONFIRMED) & returned
    status[retract] = AlertStatus.RETRACTED
    status[recover] = AlertStatus.RECOVERED
    ended = retract | recover

    fresh = scored & anomaly & ~active
    going = scored & active & ~ended & persists
    alerts.pending[going] = 0
    status[fresh] = AlertStatus.PROVISIONAL
    alerts.looks[fresh] = 1
    alerts.pending[fresh] = 0
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
    enough = alerts.looks >= confirm_looks
    if sure is not None:
        enough |= fresh & sure
    confirm = touched & (status == AlertStatus.PROVISIONAL) & enough
    status[confirm] = AlertStatus.CONFIRMED
    alerts.confirmed_day[confirm] = day
    return touched | ended, going
