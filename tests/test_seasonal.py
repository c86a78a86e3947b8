"""The seasonal index model against a naive weighted least-squares reference, and the index
detector on series with and without a change."""

import numpy as np
import pytest

from streamembed.detection.seasonal import (
    HARMONIC_HALF_LIFE_DAYS,
    OMEGA,
    IndexModel,
    harmonic_fold,
    harmonic_predict,
    index_anomalies,
    index_scores,
)
from streamembed.indices import INDEX_NAMES

K = len(INDEX_NAMES)


def naive_fit(days, values, now, predict_day, ridge=1e-3):
    """Weighted least squares of (1, cos, sin) with weights 0.5^((now - t) / half-life)."""
    x = np.stack([np.ones_like(days), np.cos(OMEGA * days), np.sin(OMEGA * days)], axis=1)
    w = 0.5 ** ((now - days) / HARMONIC_HALF_LIFE_DAYS)
    g = (x * w[:, None]).T @ x
    g += ridge * np.eye(3) * g[0, 0]
    theta = np.linalg.solve(g, (x * w[:, None]).T @ values)
    xp = np.array([1.0, np.cos(OMEGA * predict_day), np.sin(OMEGA * predict_day)])
    return xp @ theta


@pytest.mark.parametrize("seed", range(5))
def test_harmonic_fold_matches_weighted_least_squares(seed):
    rng = np.random.default_rng(seed)
    series = 7
    gram, moment = np.zeros((series, 3, 3)), np.zeros((series, 3, K))
    # Irregular looks per series (cloud gaps of 5 to 60 days) over ~2.5 years.
    looks = [
        np.cumsum(rng.choice([5, 5, 10, 30, 60], size=60)).astype(float) for _ in range(series)
    ]
    values = [rng.normal(0, 1, (len(d), K)) for d in looks]
    last = np.full(series, np.nan)
    all_days = sorted({d for ds in looks for d in ds})
    for day in all_days:
        s = np.array([i for i in range(series) if day in looks[i]])
        target = np.stack([values[i][list(looks[i]).index(day)] for i in s])
        gap = np.where(np.isnan(last[s]), 0.0, day - last[s])
        g, m = gram[s], moment[s]
        harmonic_fold(g, m, gap, day, target)
        gram[s], moment[s] = g, m
        last[s] = day
    predict_day = all_days[-1] + 3.0
    got = harmonic_predict(gram, moment, predict_day)
    for i in range(series):
        ref = naive_fit(looks[i], values[i], looks[i][-1], predict_day)
        np.testing.assert_allclose(got[i], ref, rtol=1e-9, atol=1e-9)


def _seasonal_series(rng, days, amplitude=0.3, noise=0.01):
    ndvi = 0.5 + amplitude * np.sin(OMEGA * days - 1.0)
    base = np.full((len(days), K), 0.1)
    base[:, INDEX_NAMES.index("ndvi")] = ndvi
    return base + rng.normal(0, noise, base.shape)


def test_second_year_expectation_follows_the_season_and_a_change_is_flagged():
    rng = np.random.default_rng(1)
    cells = 16
    days = np.arange(0, 2 * 365, 5, dtype=float)
    model = IndexModel.empty(cells)
    series = np.stack([_seasonal_series(rng, days) for _ in range(cells)], axis=1)
    ndvi = INDEX_NAMES.index("ndvi")
    flagged_before, errors_y2 = 0, []
    for t, day in enumerate(days):
        values = series[t].copy()
        if day >= 600:
            values[3, ndvi] -= 0.5  # cell 3 loses its vegetation
            values[5, ndvi] += 0.3  # cell 5 greens up far beyond its cycle: not a loss
        z, expected = index_scores(model, values.astype(np.float32), np.ones(cells, bool),
                                   day, 45.0, 6)  # fmt: skip
        hit = index_anomalies(z, 4.0)
        if day < 600:
            flagged_before += int(hit.sum())
        elif day == 600:
            assert hit.tolist() == [i == 3 for i in range(cells)]
        if 400 <= day < 600:  # year 2: the harmonic is in use
            assert model.seasonal().all()
            errors_y2.append(np.abs(expected[:, ndvi] - values[:, ndvi]).mean())
    # The seasonal expectation is within noise of the cycle (the rolling mean lags it by 0.1+).
    assert np.mean(errors_y2) < 0.03
    assert flagged_before <= 2  # 16 cells x 120 looks of a smooth cycle
