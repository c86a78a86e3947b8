"""Which reader puts a scene onto the tile's 10 m grid faster: odc-stac or rasterio windows?

Reads the same acquisitions (12 L2A bands + SCL, 20/60 m resampled to 10 m, nearest) both ways,
checks that both give the same values, and prints the median seconds per scene. Needs the
optional ``odc-stac`` package (``pip install odc-stac``) and the demo archive
(``streamembed synth demo-data`` or ``make demo``).

    python benchmarks/read_paths.py [demo-data/items/33UWP] [n_scenes]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import odc.stac
    import pystac
    from odc.geo.geobox import GeoBox

    from streamembed.acquisition import BANDS_L2A, parse_item
    from streamembed.ingest import grid_for, open_bands, read_block

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-data/items/33UWP")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    paths = sorted(folder.rglob("*.json"))[:n]
    if not paths:
        raise SystemExit(f"no items under {folder}; run `streamembed synth demo-data` first")
    ours, theirs = [], []
    for path in paths:
        doc = json.loads(path.read_text())
        acq = parse_item(doc, str(path.resolve()))
        grid = grid_for(acq, 32)
        bands = list(BANDS_L2A)

        t0 = time.perf_counter()
        with open_bands(acq, bands) as opened:
            refl, scl, _ = read_block(
                acq, opened, grid, (0, grid.height), (0, grid.width), bands, "nearest"
            )
        ours.append(time.perf_counter() - t0)

        item = pystac.Item.from_dict(doc)
        item.set_self_href(str(path.resolve()))
        item.make_asset_hrefs_absolute()
        geobox = GeoBox.from_bbox(
            (grid.x0, grid.y0 - grid.height * 10.0, grid.x0 + grid.width * 10.0, grid.y0),
            crs=f"EPSG:{grid.epsg}",
            resolution=10.0,
        )
        keys = [acq.assets[b].key for b in [*bands, "SCL"]]
        t0 = time.perf_counter()
        ds = odc.stac.load([item], bands=keys, geobox=geobox, resampling="nearest").load()
        theirs.append(time.perf_counter() - t0)

        for i, b in enumerate(bands):
            scale, offset = acq.scale_offset(b)
            dn = ds[acq.assets[b].key].values[0].astype(np.float32)
            np.testing.assert_allclose(refl[i], dn * scale + offset, atol=1e-6)
        assert (ds[acq.assets["SCL"].key].values[0] == scl).all()
    px = grid.height * grid.width
    print(f"{len(paths)} scenes of {grid.height}x{grid.width} px, 13 rasters each, same values")
    print(f"rasterio windows: {statistics.median(ours):.3f} s/scene (median)")
    print(f"odc-stac load:    {statistics.median(theirs):.3f} s/scene (median)")
    print(f"({px * 13 / statistics.median(ours) / 1e6:.1f} vs "
          f"{px * 13 / statistics.median(theirs) / 1e6:.1f} Mpx/s)")


if __name__ == "__main__":
    main()
