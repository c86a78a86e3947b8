"""Per-cell seasonal expectation of spectral indices, and the index detector built on it.

The baseline users compare embeddings with (BFAST Monitor, CCDC/COLD): each cell's NDVI, NBR
and MNDWI against its own seasonal history. The expectation is a first-order harmonic
(mean, annual cosine and sine, as CCDC's lowest order) fitted by exponentially weighted least
squares once the cell has a year of clear looks; before that, the rolling mean of the
embedding detector (same half-life). Scoring one acquisition:

1. cells under cloud, shadow, snow or nodata (the same masks as the embedding detector) are
   skipped: no update, no score;
2. residual = index - expectation; the tile-wide median residual is removed (haze, a sensor
   offset, a tile-wide green-up);
3. z = residual / the cell's own residual spread; a cell is anomalous when NDVI or NBR fell,
   or MNDWI rose, past ``threshold`` after ``min_obs`` looks (the changes of interest: loss
   of vegetation, burns, water and built surfaces; a faster green-up is not an alert);
4. an anomalous cell's update is clipped to 3 spreads, as in the embedding detector; the
   tile-wide shift is removed from the score only, not from what the cell learns.

Pure NumPy over the cells of one tile: some 40 bytes per cell and index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..indices import INDEX_NAMES

SEASONAL_INDICES: tuple[str, ...] = ("ndvi", "nbr", "mndwi")  # the ones scored
_COLS = [INDEX_NAMES.index(n) for n in SEASONAL_INDICES]
# The direction that is a change of interest: vegetation and burn-ratio loss, water (or built
# surface) gain. A cell greening up faster than last year is not an alert (as DIST-ALERT).
_SIGN = np.array([-1.0, -1.0, 1.0])
OMEGA = 2.0 * np.pi / 365.25
YEAR_DAYS = 365.0
HARMONIC_HALF_LIFE_DAYS = 730.0  # how fast the harmonic fit forgets: two years
SPREAD_FLOOR = 0.02  # index units: calm cells are not scored on noise alone
RIDGE = 1e-3
INDEX_MODEL_ARRAYS = ("n", "first_day", "last_day", "level", "gram", "moment", "var")


def _design(day: float) -> np.ndarray:
    return np.array([1.0, np.cos(OMEGA * day), np.sin(OMEGA * day)])


@dataclass
class IndexModel:
    """Per-cell seasonal model of every index in ``INDEX_NAMES`` (flattened cells); all are
    expected (the labels need them), the ``SEASONAL_INDICES`` are scored."""

    n: np.ndarray  # (C,) int32 clear looks applied
    first_day: np.ndarray  # (C,) float64 first clear look (NaN: none)
    last_day: np.ndarray  # (C,) float64 last clear look
    level: np.ndarray  # (C, K) float64 rolling mean (the expectation before a year of looks)
    gram: np.ndarray  # (C, 3, 3) float64 weighted sum of x x^T, x = (1, cos, sin)
    moment: np.ndarray  # (C, 3, K) float64 weighted sum of x y
    var: np.ndarray  # (C, K) float64 EW variance of the residuals

    @classmethod
    def empty(cls, cells: int) -> IndexModel:
        k = len(INDEX_NAMES)
        return cls(
            n=np.zeros(cells, np.int32),
            first_day=np.full(cells, np.nan),
            last_day=np.full(cells, np.nan),
            level=np.zeros((cells, k)),
            gram=np.zeros((cells, 3, 3)),
            moment=np.zeros((cells, 3, k)),
            var=np.zeros((cells, k)),
        )

    @classmethod
    def from_rolling_mean(
        cls, level: np.ndarray, n: np.ndarray, last_day: np.ndarray
    ) -> IndexModel:
        """A model that knows only a rolling mean (a checkpoint of an older version): the
        harmonic fit starts empty and takes over after a year of looks from now."""
        model = cls.empty(int(n.size))
        model.level[:] = np.nan_to_num(level)
        model.n[:] = n
        model.first_day[:] = last_day
        model.last_day[:] = last_day
        return model

    @property
    def nbytes(self) -> int:
        return int(sum(getattr(self, name).nbytes for name in INDEX_MODEL_ARRAYS))

    def seasonal(self) -> np.ndarray:
        """(C,) cells whose expectation is the harmonic fit: a year of clear looks and more."""
        return seasonal_cells(self.n, self.first_day, self.last_day)

    def expected(self, day: float) -> np.ndarray:
        """(C, K) expectation on ``day``: harmonic where seasonal, else the rolling mean."""
        out = self.level.copy()
        s = np.flatnonzero(self.seasonal())
        if s.size:
            out[s] = harmonic_predict(self.gram[s], self.moment[s], day)
        return out


def seasonal_cells(n: np.ndarray, first_day: np.ndarray, last_day: np.ndarray) -> np.ndarray:
    """(C,) cells with a year of clear looks (and 12 of them): the harmonic is their
    expectation. Takes the model's counts alone, so a checkpoint's can be read without the rest."""
    with np.errstate(invalid="ignore"):
        return (last_day - first_day >= YEAR_DAYS) & (n >= 12)


def harmonic_predict(gram: np.ndarray, moment: np.ndarray, day: float) -> np.ndarray:
    """(S, K) the weighted least-squares harmonic fits of (S, 3, 3) ``gram`` and (S, 3, K)
    ``moment`` evaluated on ``day`` (a small ridge keeps a short series well posed)."""
    g = gram + RIDGE * np.eye(3) * gram[:, :1, :1]
    theta = np.linalg.solve(g, moment)  # (S, 3, K)
    return np.einsum("j,sjk->sk", _design(day), theta)


def harmonic_fold(
    gram: np.ndarray, moment: np.ndarray, gap: np.ndarray, day: float, target: np.ndarray
) -> None:
    """Fold one look (``target`` (S, K) on ``day``, ``gap`` (S,) days since each series'
    previous look) into ``gram`` and ``moment`` in place, forgetting the past by
    ``HARMONIC_HALF_LIFE_DAYS``."""
    forget = 0.5 ** (gap / HARMONIC_HALF_LIFE_DAYS)
    x = _design(day)
    gram *= forget[:, None, None]
    gram += np.outer(x, x)
    moment *= forget[:, None, None]
    moment += x[None, :, None] * target[:, None, :]


def index_scores(
    model: IndexModel,
    indices: np.ndarray,
    ok: np.ndarray,
    day: float,
    half_life: float,
    min_obs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Score one acquisition, then fold it in (``model`` in place).

    ``indices`` (C, K = len(INDEX_NAMES)) of this look; ``ok`` (C,) cells clear enough to
    use. Returns (z (C, K), NaN where not scored; expected (C, K) before this look).
    """
    y = indices.astype(np.float64)
    ok = ok & np.isfinite(y).all(axis=1)
    expected = model.expected(day)
    raw = y - expected
    warm = ok & (model.n >= min_obs)
    # A tile-wide shift is not a cell's anomaly: it is removed from the score, not from what
    # the cell learns (the cell's own series still follows its season).
    shift = np.median(raw[warm], axis=0) if warm.sum() >= 8 else np.zeros(raw.shape[1])
    resid = raw - shift
    spread = np.sqrt(model.var) + SPREAD_FLOOR
    z = np.where(warm[:, None], resid / spread, np.nan)

    # Fold in: an anomalous cell moves by a clipped step (3 spreads of its corrected residual),
    # so a passing change barely moves the expectation and a lasting one is learnt gradually.
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(warm[:, None], np.minimum(1.0, 3.0 * spread / np.abs(resid)), 1.0)
    step = np.nan_to_num(step, nan=1.0)
    clip = np.where(warm[:, None], resid * step, raw)
    target = expected + raw * step
    i = np.flatnonzero(ok)
    seen = model.n[i] > 0
    gap = np.where(seen, day - model.last_day[i], 0.0)
    alpha = np.maximum(1.0 / (model.n[i] + 1.0), 1.0 - 0.5 ** (gap / half_life))
    model.level[i] += alpha[:, None] * (target[i] - model.level[i])
    beta = np.where(seen, alpha, 0.0)[:, None]  # the first look has no residual yet
    model.var[i] = (1.0 - beta) * (model.var[i] + beta * clip[i] ** 2)
    gram, moment = model.gram[i], model.moment[i]  # copies (fancy indexing): written back
    harmonic_fold(gram, moment, gap, day, target[i])
    model.gram[i], model.moment[i] = gram, moment
    model.first_day[i] = np.where(seen, model.first_day[i], day)
    model.last_day[i] = day
    model.n[i] += 1
    return z, expected


def index_anomalies(z: np.ndarray, threshold: float) -> np.ndarray:
    """(C,) cells where NDVI or NBR fell, or MNDWI rose, ``threshold`` spreads past their
    expectation (NaN, not scored, is never anomalous)."""
    return np.nan_to_num(z[:, _COLS] * _SIGN, nan=0.0).max(axis=1) >= threshold
