"""The vectorised statistics core against a per-cell NumPy loop, and its behaviour."""

import copy
import math

import numpy as np
import pytest

from streamembed.acquisition import BANDS_L2A
from streamembed.config import StatsConfig
from streamembed.detection.seasonal import index_scores
from streamembed.detection.stats import LABELS, TileState, label_cells, update
from streamembed.harness.synthetic import SPECTRA
from streamembed.indices import INDEX_NAMES
from streamembed.runtime.radiometry import cell_summaries


def naive_update(state, emb, clear, indices, day, p):
    """Per-cell loop of the documented algorithm (reference for the vectorised core)."""
    cy, cx = state.shape
    c = cy * cx
    e = emb.reshape(c, -1)
    dim = e.shape[1]
    idx = indices.reshape(c, -1)
    pad = np.pad(clear, 1, mode="edge")
    ctx = np.array(
        [[pad[y : y + 3, x : x + 3].mean() for x in range(cx)] for y in range(cy)]
    ).reshape(c)
    f = clear.reshape(c)
    valid = [(f[i] >= p.min_clear) and (ctx[i] >= p.min_context_clear) for i in range(c)]
    warm = [state.n[i] >= p.min_obs for i in range(c)]
    scorable = [valid[i] and warm[i] for i in range(c)]
    resid = [e[i] - state.mean[i] for i in range(c)]
    k = sum(scorable)
    shift = (
        np.median(np.array([resid[i] for i in range(c) if scorable[i]]), axis=0)
        if k >= 8
        else np.zeros(dim)
    )
    dist = [float(np.sqrt(((resid[i] - shift) ** 2).sum() / dim)) for i in range(c)]
    sd = [math.sqrt(state.dist_var[i]) + 0.1 * state.dist_mean[i] + 1e-6 for i in range(c)]
    gap = [day - state.last_day[i] if state.n[i] > 0 else 0.0 for i in range(c)]
    z = [
        (dist[i] - state.dist_mean[i]) / (sd[i] * math.sqrt(1 + gap[i] / p.half_life_days))
        for i in range(c)
    ]
    if k >= 8:
        med = float(np.median([z[i] for i in range(c) if scorable[i]]))
        z = [zi - med for zi in z]
    # The index model is folded in as the runtime does (tested in test_seasonal.py); the gate
    # is the embedding detector's (every cell): the index evidence is tested in test_change.py.
    model = copy.deepcopy(state.index_model)
    usable = np.array(valid) & np.isfinite(idx).all(axis=1)
    index_scores(model, idx, usable, day, p.half_life_days, p.min_obs)
    anomaly = [scorable[i] and z[i] >= p.threshold for i in range(c)]
    new = TileState.empty(cy, cx, dim)
    for name in ("n", "mean", "dist_mean", "dist_var", "last_day"):
        getattr(new, name)[...] = getattr(state, name)
    new.index_model = model
    for i in range(c):
        if not valid[i]:
            continue
        n = state.n[i]
        if n == 0:
            new.mean[i] = e[i]
        else:
            decay = 1 - 0.5 ** ((day - state.last_day[i]) / p.half_life_days)
            alpha = max(1 / (n + 1), decay)
            cap = state.dist_mean[i] + 3 * sd[i]
            scale = min(1.0, cap / dist[i]) if anomaly[i] else 1.0
            new.mean[i] = state.mean[i] + alpha * scale * resid[i]
            d_eff = min(dist[i], cap) if warm[i] else dist[i]
            if n == 1:
                new.dist_mean[i], new.dist_var[i] = d_eff, 0.0
            elif not anomaly[i]:
                beta = max(1 / n, decay)
                dd = d_eff - state.dist_mean[i]
                new.dist_mean[i] = state.dist_mean[i] + beta * dd
                new.dist_var[i] = (1 - beta) * (state.dist_var[i] + beta * dd * dd)
        new.n[i] = n + 1
        new.last_day[i] = day
    return new, np.array(anomaly), np.array(z)


def _random_series(rng, steps, cy, cx, dim):
    for t in range(steps):
        emb = rng.normal(0, 1, (cy, cx, dim)).astype(np.float32) + (t % 3)
        clear = np.where(rng.random((cy, cx)) < 0.25, 0.0, 1.0).astype(np.float32)
        idx = rng.uniform(-0.5, 0.5, (cy, cx, len(INDEX_NAMES))).astype(np.float32)
        yield emb, clear, idx, 100.0 + 5 * t


def test_vectorised_matches_naive_loop():
    rng = np.random.default_rng(3)
    p = StatsConfig(min_obs=3, threshold=0.5, detector="embedding")
    cy, cx, dim = 4, 5, 16
    fast = TileState.empty(cy, cx, dim)
    slow = TileState.empty(cy, cx, dim)
    flagged = 0
    for emb, clear, idx, day in _random_series(rng, 12, cy, cx, dim):
        res = update(fast, emb, clear, np.zeros_like(clear), idx, day, p)
        slow, anomaly, z = naive_update(slow, emb, clear, idx, day, p)
        assert np.array_equal(res.anomaly, anomaly)
        scored = ~np.isnan(res.score)
        assert np.allclose(res.score[scored], z[scored], rtol=1e-4, atol=1e-4)
        for name in ("n", "mean", "dist_mean", "dist_var"):
            assert np.allclose(
                getattr(fast, name), getattr(slow, name), rtol=1e-4, atol=1e-5, equal_nan=True
            ), name
        flagged += int(anomaly.sum())
    assert flagged > 0  # the comparison exercised the anomaly path too


def _steady(rng, state, p, steps=10, dim=32, shape=(6, 6), start_day=0.0):
    base = rng.normal(0, 1, (*shape, dim)).astype(np.float32)
    clear = np.ones(shape, np.float32)
    idx = np.full((*shape, len(INDEX_NAMES)), 0.1, np.float32)
    for t in range(steps):
        emb = base + rng.normal(0, 0.05, base.shape).astype(np.float32)
        update(state, emb, clear, np.zeros(shape, np.float32), idx, start_day + 5 * t, p)
    return base, clear, idx


def test_planted_change_is_anomalous_and_tile_shift_is_not():
    rng = np.random.default_rng(5)
    p = StatsConfig()
    state = TileState.empty(6, 6, 32)
    base, clear, idx = _steady(rng, state, p)
    # A whole-tile shift (haze, low sun) is not an anomaly.
    shifted = base + 2.0
    res = update(state, shifted, clear, np.zeros((6, 6), np.float32), idx, 50, p)
    assert not res.anomaly.any()
    # One cell changes in embedding and in its own indices (flood: NDWI up): an anomaly.
    changed = base + 2.0 + rng.normal(0, 0.05, base.shape).astype(np.float32)
    changed[2, 3] += rng.normal(0, 3.0, 32).astype(np.float32)
    idx2 = idx.copy()
    idx2[2, 3] = surface_indices(SPECTRA["floodwater"])
    res = update(state, changed, clear, np.zeros((6, 6), np.float32), idx2, 55, p)
    assert np.flatnonzero(res.anomaly).tolist() == [2 * 6 + 3]
    assert res.labels.tolist() == ["water_gain"]


def test_embedding_change_without_own_pixel_change_is_suppressed():
    rng = np.random.default_rng(6)
    p = StatsConfig()
    state = TileState.empty(6, 6, 32)
    base, clear, idx = _steady(rng, state, p)
    changed = base.copy()
    changed[2, 3] += rng.normal(0, 3.0, 32).astype(np.float32)  # context leak only
    res = update(state, changed, clear, np.zeros((6, 6), np.float32), idx, 50, p)
    assert not res.anomaly.any() and res.score[2 * 6 + 3] > p.threshold


def test_masked_cells_neither_update_nor_score():
    rng = np.random.default_rng(7)
    p = StatsConfig()
    state = TileState.empty(6, 6, 32)
    base, clear, idx = _steady(rng, state, p)
    before = state.mean.copy(), state.n.copy()
    cloudy = clear.copy()
    cloudy[0, 0] = 0.5
    snow = np.zeros((6, 6), np.float32)
    snow[0, 0] = 0.5
    res = update(state, base + 10, cloudy, snow, idx, 50, p)
    assert np.isnan(res.score[0]) and not res.valid[0] and res.snow_cells == 0
    assert np.array_equal(state.mean[0], before[0][0]) and state.n[0] == before[1][0]
    assert state.n[20] == before[1][20] + 1


def test_state_roundtrip(tmp_path):
    rng = np.random.default_rng(8)
    state = TileState.empty(3, 4, 8)
    _steady(rng, state, StatsConfig(), steps=3, dim=8, shape=(3, 4))
    state.applied_ids = ["a", "b"]
    state.save(tmp_path / "s.npz")
    back = TileState.load(tmp_path / "s.npz")
    assert back.applied_ids == ["a", "b"] and back.shape == (3, 4)
    assert np.array_equal(back.mean, state.mean) and np.array_equal(back.n, state.n)


def surface_indices(reflectance: np.ndarray) -> np.ndarray:
    """The per-cell indices ingest computes for a cell of one surface (12 L2A bands)."""
    cell = np.broadcast_to(reflectance[:, None, None], (len(reflectance), 2, 2))
    no = np.zeros((2, 2), bool)
    return cell_summaries(np.ascontiguousarray(cell), no, no, BANDS_L2A, 2)[2][0, 0]


def _vegetated(green: float) -> np.ndarray:
    """Vegetation cover ``green`` (0..1) over soil, as the synthetic landscape mixes them."""
    return green * SPECTRA["vegetation"] + (1 - green) * SPECTRA["soil"]


# (before, after, label): each rule on the named surfaces, across the seasons of the cover it
# replaces (the expected state is the cover before, at its green-up from winter to summer).
SEASONS = (0.05, 0.3, 0.55, 0.75, 0.9)
SURFACE_CHANGES = [
    *[("grass", g, "floodwater", "water_gain") for g in SEASONS[1:]],
    ("soil", None, "water", "water_gain"),
    *[("forest", g, "char", "burn") for g in SEASONS[2:]],
    *[("forest", g, "soil", "vegetation_loss") for g in SEASONS[2:]],
    ("crop", 0.9, "soil", "vegetation_loss"),
    *[("crop", g, "concrete", "bare_gain") for g in SEASONS],
    ("soil", None, "concrete", "bare_gain"),
    ("crop", 0.55, "crop-0.6", "unknown"),
    ("urban", None, "urban-0.9", "unknown"),
]


def _spectrum(name: str, green: float | None) -> np.ndarray:
    if name in ("grass", "forest", "crop"):
        return _vegetated(green)
    if name == "crop-0.6":
        return _vegetated(0.6)
    if name == "urban-0.9":
        return SPECTRA["urban"] * 0.9
    return SPECTRA[name]


@pytest.mark.parametrize(("before", "green", "after", "label"), SURFACE_CHANGES)
@pytest.mark.parametrize(
    "look",
    ["clear", "low sun", "bright", "haze"],
)
def test_label_rule_on_surface_spectra(before, green, after, label, look):
    expected = surface_indices(_spectrum(before, green))
    now = _spectrum(after, green).copy()
    # Whole-scene conditions the label must survive: illumination (x0.7 low winter sun,
    # x1.06) and haze on the first three bands (B01, B02, B03).
    if look == "low sun":
        now *= 0.7
    elif look == "bright":
        now *= 1.06
    elif look == "haze":
        now[:3] += 0.03
    current = surface_indices(now)
    out = label_cells((current - expected)[None], current[None])
    assert out.tolist() == [label] and label in LABELS


def test_label_rules_leave_no_expectation_unknown():
    current = surface_indices(SPECTRA["floodwater"])[None]
    out = label_cells(np.full_like(current, np.nan), current)
    assert out.tolist() == ["unknown"]


def _decode_all_codes(to_float32):
    """Every float16 code through a compiled loop using ``to_float32``."""
    import numba

    @numba.njit
    def decode(codes, out):
        for j in range(codes.size):
            out[j] = to_float32(codes[j])

    codes = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(codes.size, np.float32)
    decode(codes, out)
    return codes.view(np.float16).astype(np.float32), out


@pytest.mark.parametrize("native", [True, False])
def test_float16_decode_matches_numpy_for_every_code(native):
    from streamembed.detection.kernels import _make_to_float32, _native_half

    if native and not _native_half():
        pytest.skip("this CPU has no float16 conversion instruction (the other case runs)")
    ref, out = _decode_all_codes(_make_to_float32(native))
    finite = np.isfinite(ref)
    assert np.array_equal(out.view(np.uint32)[finite], ref.view(np.uint32)[finite])
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.array_equal(out[np.isinf(ref)], ref[np.isinf(ref)])


def test_float16_embeddings_update_exactly_like_their_float32_values():
    rng = np.random.default_rng(11)
    p = StatsConfig(min_obs=3, threshold=0.5, min_index_change=0.3)
    a, b = TileState.empty(20, 20, 24), TileState.empty(20, 20, 24)
    for emb, clear, idx, day in _random_series(rng, 8, 20, 20, 24):
        half = emb.astype(np.float16)
        ra = update(a, half, clear, np.zeros_like(clear), idx, day, p)
        rb = update(b, half.astype(np.float32), clear, np.zeros_like(clear), idx, day, p)
        assert np.array_equal(ra.score, rb.score, equal_nan=True)
        assert np.array_equal(ra.anomaly, rb.anomaly)
    for name in ("n", "mean", "dist_mean", "dist_var"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


def test_large_tile_sampled_reference_keeps_shift_quiet_and_finds_change():
    """Beyond SPATIAL_SAMPLE scorable cells the tile-wide medians come from a sample."""
    from streamembed.detection.kernels import SPATIAL_SAMPLE

    rng = np.random.default_rng(12)
    p = StatsConfig()
    shape = (30, 30)
    assert shape[0] * shape[1] > 3 * SPATIAL_SAMPLE
    state = TileState.empty(*shape, 32)
    base, clear, idx = _steady(rng, state, p, shape=shape)
    res = update(state, base + 2.0, clear, np.zeros(shape, np.float32), idx, 50, p)
    assert not res.anomaly.any()
    # the whole-tile shift is removed: scores stay centred near zero
    assert abs(float(np.nanmedian(res.score))) < 0.5
    changed = base + 2.0 + rng.normal(0, 0.05, base.shape).astype(np.float32)
    changed[17, 4] += rng.normal(0, 3.0, 32).astype(np.float32)
    idx2 = idx.copy()
    idx2[17, 4] = surface_indices(SPECTRA["floodwater"])
    res = update(state, changed, clear, np.zeros(shape, np.float32), idx2, 55, p)
    assert np.flatnonzero(res.anomaly).tolist() == [17 * 30 + 4]


def test_non_finite_embedding_row_neither_updates_nor_scores():
    rng = np.random.default_rng(13)
    p = StatsConfig()
    state = TileState.empty(6, 6, 32)
    base, clear, idx = _steady(rng, state, p)
    before = state.mean[7].copy(), int(state.n[7])
    bad = base.copy()
    bad[1, 1, 5] = np.nan
    res = update(state, bad, clear, np.zeros((6, 6), np.float32), idx, 50, p)
    assert not res.valid[7] and np.isnan(res.score[7]) and not res.anomaly[7]
    assert np.array_equal(state.mean[7], before[0]) and state.n[7] == before[1]
    assert np.isfinite(state.mean).all() and res.valid.sum() == 35
