"""Hypothesis strategies for untrusted inputs: STAC items and band rasters as a hostile or broken
catalogue serves them (tests/test_fuzz_inputs.py).

Items are one good synthetic item with one to three mutations: a field deleted, or replaced by a
value of the wrong type, a huge or negative number, NaN or infinity, unicode, deep nesting, a
wrong projection or a date out of range. Rasters are GeoTIFFs of any data type (NaN and infinity
in the floats), tiny to huge (a header for 200 000 x 200 000 pixels), with absurd transforms,
no CRS or another one, one to three bands, or cut short.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

# make test runs a bounded, repeatable number of cases; make test-faults (FUZZ_SCALE) more,
# drawn afresh each run.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))


def fuzz_settings(examples: int, deadline_ms: int | None = 2000) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=deadline_ms,
        derandomize=SCALE <= 1,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


def collect_settings(examples: int) -> settings:
    """Drawing cases for one batch run: no shrinking (the drawing never fails)."""
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=SCALE <= 1,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )


_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e308, -1e308, 2**63, 1e-320]),
)
_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\n",
            "\x00",
            "EPSG:0",
            "EPSG:-32633",
            "EPSG:999999",
            "EPSG:4326",
            "MGRS-",
            "MGRS-99ZZZ",
            "MGRS-33UWP\n",
            "0000-00-00T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "-0001-01-01T00:00:00Z",
            "10000-01-01T00:00:00Z",
            "2024-02-30T10:00:00Z",
            "2024-13-01",
            "1e400",
            "NaN",
            "null",
            "../../../../etc/passwd",
            "ﬁ𝔘ℕ𝕀𝕔ø𝕕𝕖 ✓",
            "A" * 5000,
        ]
    ),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _texts)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


_odd_values = st.one_of(
    _values,
    st.integers(min_value=50, max_value=3000).map(_deep),  # nesting beyond any sane item
    st.lists(_numbers, min_size=0, max_size=9),  # a transform, a shape, a bbox of numbers
)

# Where a mutation lands: the item's fields the parser reads, and some it does not.
_ITEM_FIELDS = [
    ("type",), ("id",), ("properties",), ("properties", "datetime"),
    ("properties", "grid:code"), ("properties", "eo:cloud_cover"), ("properties", "proj:code"),
    ("properties", "processing:version"), ("properties", "product:type"), ("assets",), ("bbox",),
    ("geometry",), ("links",), ("stac_extensions",),
]  # fmt: skip
_ASSET_FIELDS = ["href", "proj:code", "proj:shape", "proj:transform", "raster:bands",
                 "raster:scale", "raster:offset", "nodata", "type", "bands"]  # fmt: skip


@dataclass(frozen=True)
class ItemCase:
    """One fuzzed item: the document and what was done to it (for the failure message)."""

    doc: dict[str, Any]
    mutations: tuple[str, ...]


@st.composite
def fuzzed_items(draw: st.DrawFn, template: dict[str, Any], new_id: str) -> ItemCase:
    """``template`` with a fresh id and one to three mutations."""
    doc = copy.deepcopy(template)
    doc["id"] = new_id
    assets = sorted(doc["assets"])
    done = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            path: tuple[str, ...] = draw(st.sampled_from(_ITEM_FIELDS))
        else:
            path = ("assets", draw(st.sampled_from(assets)), draw(st.sampled_from(_ASSET_FIELDS)))
        delete = draw(st.integers(0, 3)) == 0
        value = None if delete else draw(_odd_values)
        parent: Any = doc
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue  # an earlier mutation replaced the parent
        if delete:
            parent.pop(path[-1], None)
            done.append("del " + ".".join(path))
        else:
            parent[path[-1]] = value
            done.append(f"{'.'.join(path)} = {_brief(value)}")
    return ItemCase(doc, tuple(done))


def _brief(value: Any) -> str:
    try:
        return json.dumps(value, default=str)[:80]
    except (RecursionError, ValueError):
        return f"<{type(value).__name__} nested too deep to print>"


def dumps(doc: dict[str, Any]) -> str:
    """The item as a catalogue would send it (NaN and infinity as JSON's non-standard tokens;
    nesting beyond the encoder's recursion limit written by hand)."""
    try:
        return json.dumps(doc, allow_nan=True)
    except RecursionError:
        return _dumps_deep(doc)


def _dumps_deep(value: Any) -> str:
    # iterative, for nesting deeper than json's recursion allows
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str) and v.startswith("\x01"):
            out.append(v[1:])
        elif isinstance(v, dict):
            parts: list[Any] = ["\x01{"]
            for i, (k, item) in enumerate(v.items()):
                parts += [("\x01," if i else "\x01") + json.dumps(str(k)) + ":", item]
            parts.append("\x01}")
            stack.extend(reversed(parts))
        elif isinstance(v, list):
            parts = ["\x01["]
            for i, item in enumerate(v):
                parts += (["\x01,"] if i else []) + [item]
            parts.append("\x01]")
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(v, allow_nan=True))
    return "".join(out)


@dataclass(frozen=True)
class RasterCase:
    """One fuzzed band raster."""

    dtype: str
    height: int
    width: int
    count: int
    pixel: float  # pixel size (negative: flipped)
    origin: tuple[float, float]
    epsg: int | None
    special: str  # "", "nan", "inf" (float data)
    truncate: float | None  # keep this share of the file's bytes
    huge: bool  # a header for a huge raster, no pixels written

    def describe(self) -> str:
        return (f"{self.count}x{self.height}x{self.width} {self.dtype} pixel {self.pixel:g} "
                f"origin {self.origin} epsg {self.epsg} {self.special or ''} "
                f"{'huge ' if self.huge else ''}"
                f"{'' if self.truncate is None else f'cut to {self.truncate:.2f}'}").strip()  # fmt: skip


@st.composite
def fuzzed_rasters(draw: st.DrawFn) -> RasterCase:
    # Mostly what the reader accepts (one uint16 or uint8 band), so the cases reach the
    # transforms, sizes and truncations behind the type check.
    dtype = draw(st.sampled_from(["uint16"] * 4 + ["uint8"] * 2 + ["int16", "int32", "float32",
                                                                   "float64"]))  # fmt: skip
    huge = draw(st.integers(0, 9)) == 0
    size = st.one_of(st.integers(1, 4), st.integers(5, 300))
    height, width = (200_000, 200_000) if huge else (draw(size), draw(size))
    pixel = draw(st.sampled_from([10.0, 20.0, 60.0] * 3 + [0.001, 1e-9, 1e9, 1e30, -10.0, 7.3]))
    origin = draw(st.sampled_from([(499980.0, 5400000.0)] * 3 + [(0.0, 0.0), (-1e12, 1e12),
                                   (499990.0, 5399990.0), (1e300, -1e300)]))  # fmt: skip
    epsg = draw(st.sampled_from([32633, 32633, 32633, 32632, 4326, None]))
    special = draw(st.sampled_from(["", "nan", "inf"])) if dtype.startswith("float") else ""
    truncate = None if huge or draw(st.booleans()) else draw(st.floats(0.0, 0.98))
    count = draw(st.sampled_from([1, 1, 1, 1, 2, 3]))
    return RasterCase(dtype, height, width, count, pixel, origin, epsg,
                      special, truncate, huge)  # fmt: skip


def write_raster(case: RasterCase, path: Path, seed: int) -> None:
    """The case as a GeoTIFF at ``path`` (replacing a band file)."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    transform = from_origin(case.origin[0], case.origin[1], case.pixel, abs(case.pixel))
    if case.pixel < 0:
        transform = rasterio.Affine(case.pixel, 0, case.origin[0], 0, case.pixel, case.origin[1])
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": case.height, "width": case.width, "count": case.count,
        "dtype": case.dtype, "transform": transform,
        "crs": CRS.from_epsg(case.epsg) if case.epsg else None,
    }  # fmt: skip
    if case.huge:
        profile.update(tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                       SPARSE_OK=True)  # fmt: skip
    path.unlink(missing_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        if not case.huge:
            rng = np.random.default_rng(seed)
            info = np.finfo(case.dtype) if case.dtype.startswith("float") else np.iinfo(case.dtype)
            data = rng.uniform(max(info.min, -1e6), min(info.max, 1e6),
                               (case.count, case.height, case.width)).astype(case.dtype)  # fmt: skip
            if case.special == "nan":
                data[:, ::2] = np.nan
            elif case.special == "inf":
                data[:, ::3] = np.inf
                data[:, 1::3] = -np.inf
            dst.write(data)
    if case.truncate is not None:
        body = path.read_bytes()
        path.write_bytes(body[: int(len(body) * case.truncate)])
