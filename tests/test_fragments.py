"""Major TOM-faithful fragments: Major TOM's placement and overlap arithmetic, and `export
--fragment-embedding encoder` rows equal to the encoder's own pooled output on the fragment's
pixels read independently (whole bands upsampled nearest, then cut, as Major TOM's embedder
does), DN / 10,000."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from pyproj import Transformer

from streamembed.cli import main
from streamembed.config import Config
from streamembed.grid import TileGrid
from streamembed.harness.synthetic import generate
from streamembed.outputs.store import EmbeddingStore
from streamembed.products.fragments import FRAGMENT_PX, fragment_offsets, majortom_fragments
from streamembed.products.majortom import MajorTomGrid
from streamembed.runtime.encoder import Encoder
from tests.majortom_image import major_tom_image


def test_fragment_offsets_are_major_toms():
    # 1068 px: 4 steps of 211 px (overlap ceil(224 - 844 / 4) = 13 px), the last at the edge.
    assert fragment_offsets(1068) == [0, 211, 422, 633, 844]
    assert fragment_offsets(224) == [0]
    # One pixel more: the same stride falls short, so the last row is moved to the edge.
    assert fragment_offsets(1069) == [0, 211, 422, 633, 845]
    with pytest.raises(ValueError, match="smaller than a 224 px fragment"):
        fragment_offsets(200)


def test_fragments_sit_in_the_grid_cells_image():
    """A grid cell wholly inside a tile: 25 fragments whose image's south-west corner lies 340
    m south and west of the cell's reference point (its south-west corner), on the pixel grid."""
    grid = TileGrid("33UWP", 32633, 499980.0, 5400000.0, 10980, 10980, 32)
    mt = MajorTomGrid()
    frags = majortom_fragments(grid, mt)
    by_cell: dict[str, list] = {}
    for f in frags:
        by_cell.setdefault(f.label, []).append(f)
    whole = [v for v in by_cell.values() if len(v) == 25]
    assert len(whole) >= 64  # ~110 km: 8 x 8 or more whole grid cells
    cell = whole[len(whole) // 2]
    rows = sorted({f.row0 for f in cell})
    cols = sorted({f.col0 for f in cell})
    assert np.diff(rows).tolist() == [211] * 4 and np.diff(cols).tolist() == [211] * 4
    west, south, _, _ = mt.outline(cell[0].grid_row, cell[0].grid_col).bounds
    x, y = Transformer.from_crs(4326, grid.epsg, always_xy=True).transform(west, south)
    image_left = grid.x0 + cols[0] * 10
    image_bottom = grid.y0 - (rows[0] + 1068) * 10
    assert abs(image_left - (x - 340)) <= 5 and abs(image_bottom - (y - 340)) <= 5


@pytest.mark.parametrize("arch", ["resnet18", "vit_small_patch16_224"])
def test_encoder_fragments_are_the_models_pooled_output(arch, tmp_path):
    items, _ = generate(tmp_path / "data", days=10, revisit_days=10, tile_px=1280, n_tiles=1)
    out = tmp_path / "out"
    env = ["--source", str(items), "--output", str(out)]
    overrides = {"model.arch": arch, "cluster.n_workers": 1, "cluster.dashboard_address": ":0"}
    config = tmp_path / "config.yaml"
    config.write_text(Config().with_overrides(**overrides).model_dump_json())
    assert main(["backfill", "--config", str(config), *env, "--no-progress"]) == 0
    dest = tmp_path / "fragments"
    assert main(["export", str(dest), "--config", str(config), *env, "--mode", "fragment",
                 "--fragment-embedding", "encoder", "--min-clear", "0", "--no-progress"]) == 0  # fmt: skip
    (path,) = dest.glob("*.parquet")
    rows = gpd.read_parquet(path)
    grid = EmbeddingStore(out / "embeddings.zarr").grid(path.stem)
    assert grid is not None
    assert len(rows) == len(majortom_fragments(grid, MajorTomGrid())) > 0
    assert rows.model_id.str.endswith("-majortom").all()

    cfg = Config().with_overrides(**overrides)
    (item,) = sorted(items.rglob("*.json"))
    image = major_tom_image(item, cfg.model.bands)
    encoder = Encoder(cfg.model)
    picks = rows.iloc[[0, len(rows) // 2, len(rows) - 1]]
    x = []
    for _, r in picks.iterrows():
        c0, r0, c1, r1 = (int(v) for v in r.pixel_bbox)
        assert (c1 - c0, r1 - r0) == (FRAGMENT_PX, FRAGMENT_PX)
        x.append(image[:, r0:r1, c0:c1].astype(np.float32) / 10_000)
    want = encoder.pooled(np.stack(x))
    got = np.stack([np.asarray(e, np.float32) for e in picks.embedding])
    assert got.shape == (3, encoder.dim)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The cheap fragments (the stored cells' mean) are another thing.
    cheap = tmp_path / "cheap"
    assert main(["export", str(cheap), "--config", str(config), *env, "--mode", "fragment",
                 "--min-clear", "0", "--no-progress"]) == 0  # fmt: skip
    other = gpd.read_parquet(cheap / path.name)
    assert len(other) > 0 and not np.allclose(np.stack(other.embedding.values[:1]), got[:1])
