"""Per-cell rolling statistics and anomaly scoring: NumPy arrays in and out, one compiled pass.

For each embedding cell the state holds the observation count, an exponentially weighted mean
embedding (Welford weights 1/n while warming up, then a half-life in days, so the expected state
follows the seasons), the cell's own distribution of distances to that mean (EW mean and
variance), the seasonal model of its own spectral indices (``seasonal.IndexModel``: the index
gate, the index detector and the labels) and its alert lifecycle (``alerts.AlertState``).

Scoring one acquisition:
1. cells under cloud, shadow, snow or nodata (clear fraction below ``min_clear``, or a 3x3
   neighbourhood below ``min_context_clear``, since the encoder sees context) neither update
   nor score;
2. residual = embedding - expected; the tile-wide median residual is removed (a whole-tile
   shift such as haze, low sun or a tile-wide green-up is not an anomaly); on tiles with more
   than SPATIAL_SAMPLE scorable cells the tile-wide medians come from an evenly spaced sample;
3. the distance is a z-score against the cell's own distance history, again centred by the
   tile median; with the default detector (embedding+index) a look is a sudden change's
   onset when its own indices stepped past the cell's seasons (change.py: departed from the
   expectation, stepped since the last clear look, new to the cell), or did so by half the
   departure while the z-score passes ``threshold``, after ``min_obs`` observations;
4. updates are robust: an anomalous cell moves its mean only by a clipped step and leaves its
   distance history alone, so a permanent change is learnt gradually (and stays anomalous
   while it is), and a passing one barely moves the state at all;
5. the alert lifecycle advances: provisional, confirmed, retracted, recovered (alerts.py),
   each later look measured against the onset; the gradual test (change.py) raises or ends
   gradual alerts, and the change memories take the look in (``advance_cells``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import StatsConfig
from .alerts import STATUS_NAMES, AlertState, AlertStatus, advance
from .change import (
    COLS,
    MNDWI,
    SIGN,
    ChangeState,
    Evidence,
    evidence,
    fold,
    gradual_step,
)
from .kernels import (
    SPATIAL_SAMPLE,
    _context_mean,
    _sample_residuals,
    _update_cells,
)
from .labels import LABELS, UNKNOWN, WATER_GAIN, label_cells, label_index
from .seasonal import (
    index_anomalies,
    index_scores,
)
from .state import TileState

__all__ = ["LABELS", "ScoreResult", "TileState", "label_cells", "update", "usable_cells"]

MIN_CELLS_FOR_SPATIAL = 8
# A look labelled water_gain whose MNDWI departed this many times min_index_change is sure.
SURE_WATER_CHANGES = 2.0
# An embedding z-score this far past the cell's own distance history stands in for novelty
# where the indices alone cannot tell a change from a state the cell has had (see update).
SURE_EMBEDDING_Z = 9.0


@dataclass(frozen=True)
class ScoreResult:
    """What one acquisition did to a tile, per flattened cell."""

    score: np.ndarray  # (C,) float32, NaN where not scored
    distance: np.ndarray  # (C,) float32
    anomaly: np.ndarray  # (C,) bool
    valid: np.ndarray  # (C,) bool: clear enough to update
    n_obs: np.ndarray  # (C,) int32 observations before this one
    scored: np.ndarray  # (C,) bool: valid and past min_obs (what the alert lifecycle saw)
    rows: np.ndarray  # (R,) cells with an output row: anomalous, or their alert just ended
    labels: np.ndarray  # (R,) object: label of each row's cell
    status: np.ndarray  # (R,) object: alert status of each row's cell after this look
    snow_cells: int
    masked_cells: int
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, object))  # (R,) object:
    # sudden or gradual (empty: all sudden)
    onsets: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (R,) float64 day each
    # row's alert began (empty: unknown)


def _median_rows(x: np.ndarray) -> np.ndarray:
    """Median of each row (``x`` is reordered); one partition when the row length is odd."""
    n = x.shape[1]
    if n % 2:
        x.partition(n // 2, axis=1)
        return x[:, n // 2].copy()
    return np.median(x, axis=1, overwrite_input=True)


def _mean_rows(mean: np.ndarray) -> np.ndarray:
    """The state's mean as the compiled pass reads and writes it (float16 as uint16 codes)."""
    return mean.view(np.uint16) if mean.dtype == np.float16 else mean


def _embedding_rows(embedding: np.ndarray, cells: int) -> np.ndarray:
    """(cells, dim) float32, or the uint16 codes of float16 as stored (decoded in the pass)."""
    e = embedding.reshape(cells, -1)
    if e.dtype == np.float16:
        return np.ascontiguousarray(e).view(np.uint16)
    return np.ascontiguousarray(e, np.float32)


def _spatial_reference(
    state: TileState,
    e: np.ndarray,
    candidates: np.ndarray,
    day: float,
    params: StatsConfig,
) -> tuple[np.ndarray, float]:
    """(median residual, median z-score) over (a sample of) the scorable cells."""
    dim = state.mean.shape[1]
    if candidates.size > SPATIAL_SAMPLE:
        pick = np.arange(SPATIAL_SAMPLE) * (candidates.size - 1) // (SPATIAL_SAMPLE - 1)
        candidates = candidates[pick]
    m = candidates.size
    resid = np.empty((m, dim), np.float32)
    sq = np.empty(m, np.float32)
    z_scale = np.empty(m, np.float64)
    _sample_residuals(
        e, _mean_rows(state.mean), candidates.astype(np.intp), state.n, state.dist_var, state.dist_mean,
        state.last_day, day, params.half_life_days, resid, sq, z_scale,
    )  # fmt: skip
    ok = np.isfinite(sq)
    if not ok.all():
        resid, sq, candidates, z_scale = resid[ok], sq[ok], candidates[ok], z_scale[ok]
    if len(candidates) < MIN_CELLS_FOR_SPATIAL:
        return np.zeros(dim, np.float32), 0.0
    # dimension-major: the per-dimension median is then a partition along contiguous rows
    shift = _median_rows(resid.T.copy()).astype(np.float32)
    # |r - shift|^2 from |r|^2 and r . shift, without another pass over the sample
    sq_shifted = np.maximum(sq - 2.0 * (resid @ shift) + float(shift @ shift), 0.0)
    dist = np.sqrt(sq_shifted) / np.float32(np.sqrt(dim))
    z = (dist - state.dist_mean[candidates]) / z_scale
    return shift, float(_median_rows(z[None, :])[0])


def _clear_and_context(clear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C,) each cell's clear fraction and its 3x3 neighbourhood's."""
    clear32 = np.ascontiguousarray(clear, np.float32)
    return clear32.reshape(-1), _context_mean(clear32).reshape(-1)


def usable_cells(clear: np.ndarray, params: StatsConfig) -> np.ndarray:
    """(C,) cells clear enough to score and update (the only ones whose state is read)."""
    f, ctx = _clear_and_context(clear)
    return (f >= params.min_clear) & (ctx >= params.min_context_clear)


def update(
    state: TileState,
    embedding: np.ndarray,
    clear: np.ndarray,
    snow: np.ndarray,
    indices: np.ndarray,
    day: float,
    params: StatsConfig,
) -> ScoreResult:
    """Score one acquisition against the state, then fold it in (state is updated in place).

    ``embedding`` is (cells_y, cells_x, dim) float32 or float16 (as stored); the cells under
    cloud, shadow, snow or nodata neither update nor score (see the module docstring). The
    state's mean blocks holding the clear cells (``usable_cells``) must be in memory.
    """
    cy, cx = state.shape
    c = cy * cx
    e = _embedding_rows(embedding, c)
    f, ctx = _clear_and_context(clear)
    idx = np.ascontiguousarray(indices, np.float32).reshape(c, -1)
    n_before = state.n.copy()
    usable = (f >= params.min_clear) & (ctx >= params.min_context_clear)

    # The cell's own spectral indices against their seasonal expectation (seasonal.py), folded
    # in here for every detector: the index gate, the index detector and the labels use it.
    z_idx, expected_idx = index_scores(
        state.index_model, idx, usable, day, params.half_life_days, params.min_obs
    )
    change = evidence(state.change, idx, expected_idx, usable, day)
    strong = np.zeros(c, bool)
    cell_threshold = np.full(c, params.threshold, np.float32)
    if params.detector == "index":
        gate = index_anomalies(z_idx, params.index_threshold)
    elif params.detector == "embedding":
        gate = np.ones(c, bool)
    else:
        # A sudden change is a step past the cell's own seasons (change.py). Clear evidence
        # on the indices opens an alert alone; half the departure needs the embedding to agree
        # (the encoder sees what the indices miss, such as texture). Either way the look must
        # have stepped and be new to the cell: a harvest looks sudden to both.
        strong = change.onset(params.min_index_change, params.min_step, params.min_novelty)
        gate = change.onset(params.min_index_change / 2, params.min_step, params.min_novelty)
        # In its first year a cell's indices cannot tell a clear-cut in spring from its own
        # leafless winter (no novelty); its embedding can (soil and slash are not bare
        # branches): the full departure and step, as changed as the cell has ever been, open
        # an alert when the embedding is SURE_EMBEDDING_Z out of its history. Not on a cell
        # that was already browning on its last look: a crop ripens before its harvest, a
        # forest does not brown before it is felled.
        wide = change.onset(params.min_index_change, params.min_step, 0.0) & ~gate
        wide &= ~change.browning()
        gate |= wide
        cell_threshold[wide] = SURE_EMBEDDING_Z

    shift, z_median = np.zeros(state.mean.shape[1], np.float32), 0.0
    if params.spatial_correction:
        scorable = usable & (state.n >= params.min_obs)
        shift, z_median = _spatial_reference(state, e, np.flatnonzero(scorable), day, params)

    dist = np.empty(c, np.float32)
    score = np.empty(c, np.float32)
    valid = np.empty(c, bool)
    anomaly = np.empty(c, bool)
    _update_cells(
        e, _mean_rows(state.mean), state.n, state.dist_mean, state.dist_var, state.last_day, f, ctx,
        np.ascontiguousarray(gate), params.detector != "index", float(day), shift,
        float(z_median), int(params.min_obs), float(params.min_clear),
        float(params.min_context_clear), cell_threshold, float(params.half_life_days),
        dist, score, valid, anomaly,
    )  # fmt: skip
    state.last_time_day = day
    state.mark_changed(valid)
    scored = valid & (n_before >= params.min_obs)
    alerts = state.alerts
    onset = anomaly | (strong & scored)

    look = advance_cells(
        alerts, state.change, state.index_model.seasonal(), idx, expected_idx, change, onset,
        scored, usable, day, params, params.detector == "embedding+index",
    )  # fmt: skip
    emit, look_label, raised, ended_gradual = look.emit, look.label, look.raised, look.ended
    status = alerts.status

    rows = np.flatnonzero(emit)
    # An anomalous look is labelled by itself; an alert that just ended by the alert's label.
    ended = (status[rows] == AlertStatus.RECOVERED) | (status[rows] == AlertStatus.RETRACTED)
    row_label = np.where(ended, alerts.label[rows], look_label[rows])
    labels = [LABELS[i] for i in row_label]
    statuses = [STATUS_NAMES[i] for i in status[rows]]
    kinds = ["sudden"] * rows.size
    onsets = list(alerts.onset_day[rows])
    grows = np.flatnonzero(raised | ended_gradual)
    if grows.size:  # the gradual alerts raised or ended on this look
        rows = np.concatenate([rows, grows])
        labels += ["vegetation_loss"] * grows.size
        statuses += [
            STATUS_NAMES[AlertStatus.CONFIRMED if r else AlertStatus.RECOVERED]
            for r in raised[grows]
        ]
        kinds += ["gradual"] * grows.size
        onsets += list(state.change.gradual_onset[grows])
    return ScoreResult(
        score=score,
        distance=dist,
        anomaly=look.anomalous if look.tracked else anomaly,
        valid=valid,
        n_obs=n_before,
        scored=scored,
        rows=rows,
        labels=np.array(labels, dtype=object),
        status=np.array(statuses, dtype=object),
        snow_cells=int(np.count_nonzero(snow.reshape(c) > 0.5)),
        masked_cells=c - int(np.count_nonzero(valid)),
        kinds=np.array(kinds, dtype=object),
        onsets=np.array(onsets, np.float64),
    )


@dataclass(frozen=True)
class CellLook:
    """What one look did to each cell's alerts (``advance_cells``)."""

    emit: np.ndarray  # (C,) bool: a sudden row (anomalous, persisting, or its alert ended)
    anomalous: np.ndarray  # (C,) bool: an onset or a look that persists and still departs
    label: np.ndarray  # (C,) int8 each look's label (labels.LABELS)
    raised: np.ndarray  # (C,) bool: a gradual alert raised
    ended: np.ndarray  # (C,) bool: a gradual alert ended
    tracked: bool  # later looks measured against the onset (else by their own anomaly)


def advance_cells(
    alerts: AlertState,
    memory: ChangeState,
    seasonal: np.ndarray,
    idx: np.ndarray,
    expected: np.ndarray,
    change: Evidence,
    onset: np.ndarray,
    scored: np.ndarray,
    usable: np.ndarray,
    day: float,
    params: StatsConfig,
    track: bool,
) -> CellLook:
    """One look through the alert lifecycle, the gradual test and the change memories (in
    place), for any detector: ``onset`` (C,) are its anomalous looks; ``track``: later looks
    of an alert are measured against its onset (change.py), else by their own ``onset``."""
    c = idx.shape[0]
    delta = (idx - expected).astype(np.float32)
    # Each later look of an alert against its onset (alerts.advance): the share of the change
    # on the index it began on that is still there; an alert without one (the embedding or
    # index detector, an older checkpoint) goes by its look's own anomaly.
    progress = None
    if track:
        progress = np.where(onset, 1.0, 0.0)
        axis = alerts.axis.astype(np.intp)
        has = axis >= 0
        rows_ = np.flatnonzero(has)
        col = COLS[axis[rows_]]
        moved = SIGN[axis[rows_]] * (idx[rows_, col] - alerts.reference[rows_, col])
        with np.errstate(invalid="ignore", divide="ignore"):
            progress[rows_] = moved / alerts.magnitude[rows_]
    before = alerts.status.copy()
    active_before = (before == AlertStatus.PROVISIONAL) | (before == AlertStatus.CONFIRMED)
    # A later look of an alert is labelled by its change since the onset (a flood stays
    # water_gain while it lasts, though the expectation learns it).
    label_delta = np.where(active_before[:, None], idx - alerts.reference, delta)
    named = onset | active_before
    look_label = np.full(c, UNKNOWN, np.int8)
    if named.any():
        look_label[named] = label_index(label_delta[named], idx[named])
    # Open water where the cell had none, by far more than an onset needs, is confirmed on its
    # own look: a flood may be seen clear once before it drains (flood maps are made per
    # acquisition), and haze or a missed shadow does not make a dark cell this wet. Once the
    # water is gone the alert ends as recovered, not retracted.
    sure = None
    if track:
        wet = change.departure[:, MNDWI] >= SURE_WATER_CHANGES * params.min_index_change
        sure = (look_label == WATER_GAIN) & wet
    emit, going = advance(
        alerts, scored, onset, look_label, idx, expected.astype(np.float32), day,
        params.confirm_looks, params.recover_index_change, progress, sure,
    )  # fmt: skip
    fresh = scored & onset & ~active_before
    if fresh.any():
        dominant = change.dominant()[fresh]
        alerts.axis[fresh] = dominant
        col = COLS[dominant.astype(np.intp)]
        # the change on it, floored: a weak onset's index may have moved less than the
        # tile-wide shift removed from its departure
        moved = SIGN[dominant] * delta[np.flatnonzero(fresh), col]
        alerts.magnitude[fresh] = np.maximum(moved, max(0.5 * params.min_index_change, 0.01))
    # A persisting change is a row while it still departs from the expectation, which learns
    # it: a clear-cut's alert stays confirmed, its rows stop.
    if progress is not None:
        axis = np.maximum(alerts.axis.astype(np.intp), 0)
        departing = change.departure[np.arange(c), axis] >= 0.5 * params.min_index_change
        emit &= ~(going & ~departing)
        going &= departing
    anomalous = fresh | going

    status = alerts.status
    active_after = (status == AlertStatus.PROVISIONAL) | (status == AlertStatus.CONFIRMED)
    raised, ended_gradual = gradual_step(
        memory, idx, usable, seasonal, active_after, day, params.gradual_threshold,
        params.gradual_min_loss,
    )  # fmt: skip
    fold(memory, idx, usable, ~onset & ~active_after & ~active_before, day)

    return CellLook(emit, anomalous, look_label, raised, ended_gradual, progress is not None)
