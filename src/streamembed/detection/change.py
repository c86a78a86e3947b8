"""What kind of change a cell shows: a sudden step, a gradual decline, or a state it has had before.

Per cell, beside the seasonal expectation of its indices (seasonal.py), five memories:

- its **last clear look**: a sudden change (a flood, a burn, a clear-cut, a building) is a step
  between two clear looks; a decline that built up over many looks never is, however far it
  has gone from the expectation;
- its **envelope**: per scored index, the most changed value (lowest NDVI and NBR, highest
  MNDWI) the cell has shown on two normal looks in a row (one look at a thin cloud edge does
  not count), drifting back by ``ENVELOPE_DRIFT`` a year. A
  crop's harvest or a meadow's mowing goes back to a state the cell had in its own bare season;
  a change of interest goes beyond anything it has shown;
- its **envelope by month** (``SEASON_BINS``), from every pair of clear looks in a row, alerted
  or not: once the cell has been seen around this time of year in an earlier year, a state it
  showed only in another season (a deciduous forest's leafless winter, against a clear-cut in
  June) excuses a look by no more than ``SEASON_MARGIN``, and one it showed within a month of
  this date (last July's stubble, though that first harvest was alerted on) excuses it fully;
- its **year**, NDVI by time of year in bins of ~10 days (``PROFILE_BINS``): the baseline of
  the gradual test, the same time last year (as DIST-ALERT's same-season baseline; a
  first-order harmonic fits a crop's sharp green-up and harvest, or a forest's leaf fall, too
  loosely to measure a slow decline against);
- its **trend**, the gradual test, once the cell has a year of clear looks: a CUSUM of the
  look-to-look growth of its loss (last year's NDVI at this time of year minus this look's,
  the tile-wide shift removed), each growth clipped to ``TREND_STEP`` so a step counts as no
  more than a slow look, decaying with ``TREND_HALF_LIFE_DAYS``: a MOSUM of the loss's slope
  in effect, as BFAST Monitor's on its residuals. A decline of a few hundredths a look for
  months raises it; a harvest or a mowing (one step, then flat or regrowing) does not. A
  cell's decline is *gradual* when, on ``GRADUAL_LOOKS`` clear looks in a row, its trend
  passes ``gradual_threshold``, its loss passes ``gradual_min_loss`` and ``SPREAD_SIGMAS`` of
  the cell's own spread of it (on its quiet looks: a crop varies from year to year more than a
  forest), and ``GRADUAL_SHARE`` of the loss was built look by look (a season that came late
  stands out by a jump). The gradual alert is dated from the last look its trend was still at
  noise level (``TREND_FLOOR``) and ends when the loss is back under half of
  ``gradual_min_loss``.

A look opens a sudden alert (``onset``) when, on one index, it departs ``min_index_change``
from the expectation, stepped ``min_step`` since the last clear look (the tile's median step
removed) and goes ``min_novelty`` beyond the envelope (by month, where the cell has a
season); on a surface with little vegetation left, ``BARE_MNDWI_SCALE`` of the departure and
step suffices on MNDWI (a building site on a bare field). Pure NumPy over the cells of one
tile; the state is part of ``stats.TileState`` and checkpointed with it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..indices import INDEX_NAMES

# The indices a change is judged on, and the direction that is a change of interest on each:
# vegetation and burn-ratio loss, water or built-surface gain (MNDWI rises on both).
CHANGE_INDICES: tuple[str, ...] = ("ndvi", "nbr", "mndwi")
COLS = np.array([INDEX_NAMES.index(n) for n in CHANGE_INDICES])
SIGN = np.array([-1.0, -1.0, 1.0], np.float32)
MNDWI = CHANGE_INDICES.index("mndwi")
# The change indices of green vegetation (the ones a ripening crop loses before its harvest).
GREEN = np.array([CHANGE_INDICES.index(n) for n in ("ndvi", "nbr")])
# On a surface with little vegetation left (NDVI at most BARE_NDVI, the bare_gain label's
# bound) a rise of MNDWI is water or a built surface, and a smaller one counts: a building site
# on a field already bare moves MNDWI by ~0.15-0.2 and NDVI hardly at all. Over vegetation an
# MNDWI rise without the NDVI loss is haze (the green band brightens), so the full one is
# needed there.
BARE_NDVI = 0.35
BARE_MNDWI_SCALE = 0.7
NDVI = INDEX_NAMES.index("ndvi")
ENVELOPE_DRIFT = 0.1  # index units a year: a state not seen again fades over a few years
TREND_STEP = 0.03  # the most one look adds to the trend
TREND_HALF_LIFE_DAYS = 365.0
TREND_FLOOR = 0.02  # a trend this small is noise: a decline begins where the trend leaves it
SPREAD_HALF_LIFE_DAYS = 365.0  # the loss residual's spread: a year of the cell's seasons
SPREAD_FLOOR = 0.02
SPREAD_SIGMAS = 2.0  # a gradual loss stands out this many of the cell's own spreads
MIN_SEASONAL_LOOKS = 6  # quiet seasonal looks before the spread is trusted
GRADUAL_SHARE = 0.7  # ... of it built up look by look (a late season stands out by a jump)
GRADUAL_LOOKS = 4  # clear looks in a row a decline stands out before it is reported (a
# season a week or two early stands out for a look or two, then is back)
CHANGE_ARRAYS = (
    "last", "last_day", "envelope", "envelope_day", "previous", "trend", "trend_start", "prev_loss",
    "loss_var", "seasonal_looks", "streak", "gradual", "gradual_onset", "gradual_day",
    "profile", "profile_year", "season_envelope", "season_year",
)  # fmt: skip
PROFILE_BINS = 36  # the cell's NDVI through the year, in bins of ~10 days
SEASON_BINS = 12  # the envelope by time of year, in bins of a month
SEASON_MARGIN = 0.1  # how far a state seen only in another season excuses a look
YEAR_DAYS = 365.25
YEAR_CODES = 100


class Gradual:
    """A cell's gradual alert (``ChangeState.gradual``)."""

    NONE = 0
    ACTIVE = 1
    RECOVERED = 2


GRADUAL_NAMES = ("none", "confirmed", "recovered")  # what the alert table says of each


@dataclass
class ChangeState:
    """Per-cell memories of one tile (flattened cells, as ``TileState``)."""

    last: np.ndarray  # (C, K) float32 indices of the last clear look (NaN: none)
    last_day: np.ndarray  # (C,) float64
    envelope: np.ndarray  # (C, 3) float32 most changed signed value on normal looks (NaN: none)
    envelope_day: np.ndarray  # (C,) float64 day the envelope was last drifted
    previous: np.ndarray  # (C, 3) float32 signed values of the last normal look (NaN: none)
    trend: np.ndarray  # (C,) float32 the gradual test's CUSUM
    trend_start: np.ndarray  # (C,) float64 last look the trend was at noise level
    prev_loss: np.ndarray  # (C,) float32 loss residual at the last clear seasonal look
    loss_var: np.ndarray  # (C,) float32 mean square of the loss residual on quiet looks
    seasonal_looks: np.ndarray  # (C,) int32 quiet seasonal looks in it
    streak: np.ndarray  # (C,) int16 clear seasonal looks in a row the decline has stood out
    gradual: np.ndarray  # (C,) int8 Gradual
    gradual_onset: np.ndarray  # (C,) float64 the alert's onset (its trend's start)
    gradual_day: np.ndarray  # (C,) float64 the day it was raised
    profile: np.ndarray  # (C, PROFILE_BINS) float16 NDVI of the cell's looks by time of year
    profile_year: np.ndarray  # (C, PROFILE_BINS) int8 the year each bin was written, modulo
    # YEAR_CODES (-1: never): a bin is last year's when its code is not this year's
    season_envelope: np.ndarray  # (C, SEASON_BINS, 3) float16 the envelope by month of year
    season_year: np.ndarray  # (C, SEASON_BINS) int8 the year code of a bin's first state

    @classmethod
    def empty(cls, cells: int) -> ChangeState:
        nan = np.full(cells, np.nan)
        return cls(
            last=np.full((cells, len(INDEX_NAMES)), np.nan, np.float32),
            last_day=nan.copy(),
            envelope=np.full((cells, len(CHANGE_INDICES)), np.nan, np.float32),
            envelope_day=nan.copy(),
            previous=np.full((cells, len(CHANGE_INDICES)), np.nan, np.float32),
            trend=np.zeros(cells, np.float32),
            trend_start=nan.copy(),
            prev_loss=np.full(cells, np.nan, np.float32),
            loss_var=np.zeros(cells, np.float32),
            seasonal_looks=np.zeros(cells, np.int32),
            streak=np.zeros(cells, np.int16),
            gradual=np.zeros(cells, np.int8),
            gradual_onset=nan.copy(),
            gradual_day=nan.copy(),
            profile=np.full((cells, PROFILE_BINS), np.nan, np.float16),
            profile_year=np.full((cells, PROFILE_BINS), -1, np.int8),
            season_envelope=np.full((cells, SEASON_BINS, len(CHANGE_INDICES)), np.nan, np.float16),
            season_year=np.full((cells, SEASON_BINS), -1, np.int8),
        )

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], cells: int) -> ChangeState:
        """The state from its saved arrays; one missing (a checkpoint from before it) starts
        empty."""
        empty = cls.empty(cells)
        return cls(**{name: arrays.get(name, getattr(empty, name)) for name in CHANGE_ARRAYS})

    @property
    def nbytes(self) -> int:
        return int(sum(getattr(self, name).nbytes for name in CHANGE_ARRAYS))


@dataclass(frozen=True)
class Evidence:
    """One look's evidence of a sudden change, per cell and change index (C, 3), signed so
    that positive is the direction of interest."""

    departure: np.ndarray  # from the expectation, the tile-wide shift removed
    step: np.ndarray  # since the cell's last clear look, the tile's median step removed
    novelty: np.ndarray  # beyond the cell's envelope
    scale: np.ndarray  # (C, 3) the share of min_index_change and min_step each index needs
    before: np.ndarray  # (C, 3) the last clear look against this look's expectation (NaN: none)

    def onset(self, departure: float, step: float, novelty: float) -> np.ndarray:
        """(C,) cells where one index passes all three (NaN passes nothing)."""
        with np.errstate(invalid="ignore"):
            ok = (
                (self.departure >= departure * self.scale)
                & (self.step >= step * self.scale)
                & (self.novelty >= novelty)
            )
        return np.asarray(ok.any(axis=1))

    def browning(self) -> np.ndarray:
        """(C,) cells whose last clear look was already below this look's expectation on
        NDVI or NBR (a crop ripening before its harvest)."""
        with np.errstate(invalid="ignore"):
            return np.asarray((self.before[:, GREEN] > 0).any(axis=1))

    def dominant(self) -> np.ndarray:
        """(C,) int8 the change index that departed most (the one an alert follows)."""
        return np.argmax(np.nan_to_num(self.departure, nan=-np.inf), axis=1).astype(np.int8)


def _year_bin(day: float, bins: int) -> tuple[int, int]:
    """(year code, bin of the year in ``bins``) of a day."""
    year = int(day // YEAR_DAYS) % YEAR_CODES
    return year, int((day % YEAR_DAYS) * bins / YEAR_DAYS) % bins


def evidence(
    state: ChangeState,
    indices: np.ndarray,
    expected: np.ndarray,
    usable: np.ndarray,
    day: float,
) -> Evidence:
    """The sudden-change evidence of one look (``indices`` and ``expected`` (C, K); ``usable``
    the cells clear enough to score), before it is folded in."""
    x = indices[:, COLS].astype(np.float32)
    raw = x - expected[:, COLS]
    ok = usable & np.isfinite(raw).all(axis=1)
    shift = np.median(raw[ok], axis=0) if ok.sum() >= 8 else np.zeros(len(COLS), np.float32)
    departure = SIGN * (raw - shift)
    jump = x - state.last[:, COLS]
    seen = ok & np.isfinite(jump).all(axis=1)
    step_shift = np.median(jump[seen], axis=0) if seen.sum() >= 8 else np.zeros(len(COLS))
    step = SIGN * (jump - step_shift)
    novelty = SIGN * x - state.envelope
    # Once the cell has been seen at this time of year in an earlier year, a state it showed
    # only in another season (a deciduous forest's leafless winter, against a clear-cut in
    # June) excuses a look by no more than SEASON_MARGIN; one it showed around this time of
    # year (a crop's stubble after last year's harvest) excuses it fully.
    year, b = _year_bin(day, SEASON_BINS)
    near = [(b + k) % SEASON_BINS for k in (-1, 0, 1)]
    codes = state.season_year[:, near]
    known = ((codes >= 0) & (codes != year)).any(axis=1)
    if known.any():
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no known season
            seen = np.nanmax(state.season_envelope[known][:, near].astype(np.float32), axis=1)
        by_season = SIGN * x[known] - seen
        novelty[known] = np.fmin(by_season, novelty[known] + SEASON_MARGIN)
    scale = np.ones_like(departure, np.float32)
    with np.errstate(invalid="ignore"):
        scale[indices[:, NDVI] <= BARE_NDVI, MNDWI] = BARE_MNDWI_SCALE
    before = SIGN * (state.last[:, COLS] - expected[:, COLS])
    return Evidence(departure.astype(np.float32), step.astype(np.float32),
                    novelty.astype(np.float32), scale, before.astype(np.float32))  # fmt: skip


def fold(
    state: ChangeState, indices: np.ndarray, usable: np.ndarray, normal: np.ndarray, day: float
) -> None:
    """Fold one look in: the last clear look of every usable cell, and the envelope of those
    whose look was normal (no alert on it: a change must not widen what counts as seen)."""
    ok = usable & np.isfinite(indices).all(axis=1)
    signed = SIGN * indices[:, COLS].astype(np.float32)
    # The envelope by time of year takes every pair of clear looks in a row, alerted or not: a
    # state the cell showed at this time of year (a harvest, alerted in its first year, when
    # no earlier season excused it) is its season the next year. No drift: a month is
    # written again every year.
    pair = np.fmin(SIGN * state.last[:, COLS], signed)
    rows = np.flatnonzero(ok & np.isfinite(pair).all(axis=1))
    year, b = _year_bin(day, SEASON_BINS)
    state.season_envelope[rows, b] = np.fmax(
        state.season_envelope[rows, b].astype(np.float32), pair[rows]
    ).astype(np.float16)
    first = rows[state.season_year[rows, b] < 0]
    state.season_year[first, b] = year
    state.last[ok] = indices[ok]
    state.last_day[ok] = day
    grow = ok & normal
    # A state is seen when two normal looks in a row reach it: one look at a cloud's thin
    # unflagged edge or a missed shadow does not widen the envelope.
    both = np.fmin(state.previous[grow], signed[grow])  # NaN where there is no previous
    gap = np.nan_to_num(day - state.envelope_day[grow], nan=0.0)
    drifted = state.envelope[grow] - np.float32(ENVELOPE_DRIFT / 365.0) * gap[:, None]
    both = np.where(np.isnan(state.previous[grow]), np.nan, both)
    state.envelope[grow] = np.fmax(drifted, both)  # fmax: NaN on one side takes the other
    state.envelope_day[grow] = day
    state.previous[grow] = signed[grow]
    state.previous[ok & ~normal] = np.nan  # an alerted look breaks the pair


def gradual_step(
    state: ChangeState,
    indices: np.ndarray,
    usable: np.ndarray,
    seasonal: np.ndarray,
    sudden: np.ndarray,
    day: float,
    threshold: float,
    min_loss: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance the gradual test by one look (in place). ``seasonal``: cells with a year of
    clear looks; ``sudden``: cells with a sudden alert standing (a step is not a decline).
    Returns (raised, ended): the cells whose gradual alert was raised or ended on this look."""
    ndvi = indices[:, NDVI]
    year, b = _year_bin(day, PROFILE_BINS)
    # The same time last year: the bins around this look's, written in an earlier year.
    near = [(b + k) % PROFILE_BINS for k in (-1, 0, 1)]
    values = state.profile[:, near].astype(np.float32)
    codes = state.profile_year[:, near]
    values[(codes == year) | (codes < 0)] = np.nan
    count = np.isfinite(values).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        baseline = np.nansum(values, axis=1) / count  # NaN: no look there last year
    raw = ndvi - baseline
    write = usable & np.isfinite(ndvi) & ~sudden
    fresh = write & (state.profile_year[:, b] != year)
    state.profile[fresh, b] = ndvi[fresh]
    again = write & ~fresh  # a second look in the bin this year: their mean
    state.profile[again, b] = (state.profile[again, b].astype(np.float32) + ndvi[again]) / 2
    state.profile_year[write, b] = year
    ok = usable & seasonal & np.isfinite(raw)
    shift = float(np.median(raw[ok])) if ok.sum() >= 8 else 0.0
    loss = (shift - raw).astype(np.float32)  # positive: browner than expected
    i = np.flatnonzero(ok)
    growth = np.clip(np.nan_to_num(loss[i] - state.prev_loss[i], nan=0.0), -TREND_STEP, TREND_STEP)
    gap = np.nan_to_num(day - state.last_day[i], nan=0.0)  # last_day: the previous clear look
    decay = np.float32(0.5) ** (gap / TREND_HALF_LIFE_DAYS).astype(np.float32)
    trend = np.maximum(0.0, state.trend[i] * decay + growth).astype(np.float32)
    # The decline is dated from the last look its trend was still at the level of noise.
    state.trend_start[i[trend <= TREND_FLOOR]] = day
    state.trend[i] = trend
    state.prev_loss[i] = loss[i]

    # The cell's own spread of the loss on quiet looks (no alert, no decline building): a
    # field whose harmonic fits its season poorly (a crop's sharp green-up and harvest) needs
    # a larger loss than a meadow or a forest that follows its season closely.
    quiet = ~sudden[i] & (state.gradual[i] != Gradual.ACTIVE) & (trend <= 2 * TREND_FLOOR)
    q = i[quiet]
    looks = state.seasonal_looks[q] + 1
    beta = np.maximum(1.0 / looks, 1.0 - 0.5 ** (gap[quiet] / SPREAD_HALF_LIFE_DAYS))
    state.loss_var[q] += (beta * (loss[q] ** 2 - state.loss_var[q])).astype(np.float32)
    state.seasonal_looks[q] = looks
    spread = np.sqrt(state.loss_var[i]) + SPREAD_FLOOR

    active = state.gradual[i] == Gradual.ACTIVE
    stands_out = (loss[i] >= min_loss) & (loss[i] >= SPREAD_SIGMAS * spread)
    known = state.seasonal_looks[i] >= MIN_SEASONAL_LOOKS
    # ... and most of it built look by look: a season that came late stands out by a jump
    built = trend >= GRADUAL_SHARE * loss[i]
    standing = known & (trend >= threshold) & stands_out & built & ~sudden[i]
    state.streak[i] = np.where(standing, state.streak[i] + 1, 0)
    raise_ = ~active & (state.streak[i] >= GRADUAL_LOOKS)
    end = active & (loss[i] < 0.5 * min_loss)
    raised, ended = np.zeros(indices.shape[0], bool), np.zeros(indices.shape[0], bool)
    raised[i[raise_]] = True
    ended[i[end]] = True
    state.gradual[raised] = Gradual.ACTIVE
    state.gradual_onset[raised] = state.trend_start[raised]
    state.gradual_day[raised] = day
    state.gradual[ended] = Gradual.RECOVERED
    return raised, ended
