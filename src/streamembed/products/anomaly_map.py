"""``streamembed map``: anomaly cells over an RGB quicklook of the acquisition."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..acquisition import Acquisition, parse_item
from ..grid import TileGrid
from ..layout import OutputLayout
from ..outputs.ledger import Ledger
from ..outputs.sink import read_anomalies
from ..outputs.store import EmbeddingStore
from ..runtime.ingest import open_bands, read_block
from ..sources.items import features
from ..sources.stac import load_item_document

LABEL_COLOURS = {
    "water_gain": "#1f78ff",
    "burn": "#ff3b1f",
    "vegetation_loss": "#ffd21f",
    "bare_gain": "#e61fff",
    "unknown": "#ffffff",
}


def _rgb(acq: Acquisition, grid: TileGrid, step: int) -> np.ndarray:
    """Reflectance of B04, B03, B02 at every ``step``-th pixel, read one strip of rows at a time
    (a full 10980 px tile is never in memory at 10 m)."""
    bands = ("B04", "B03", "B02")
    rows = list(range(0, grid.height, step))
    out = np.zeros((3, len(rows), len(range(0, grid.width, step))), np.float32)
    strip = max(step, (1024 // step) * step)
    with open_bands(acq, bands, None) as opened:
        for r0 in range(0, grid.height, strip):
            r1 = min(grid.height, r0 + strip)
            refl, _, _ = read_block(
                acq, opened, grid, (r0, r1), (0, grid.width), bands, "nearest", None
            )
            part = refl[:, ::step, ::step]
            out[:, r0 // step : r0 // step + part.shape[1]] = part
    return out


def acquisition_rgb(href: str, acquisition_id: str, grid: TileGrid, step: int) -> np.ndarray:
    """(3, rows, cols) reflectance of B04, B03, B02 of the acquisition in ``href``, every
    ``step``-th pixel (the map's and the web map's quicklook)."""
    return _rgb(_acquisition(href, acquisition_id), grid, step)


def render_map(
    out: OutputLayout, tile: str, date: str, png: str | Path, max_px: int = 1024
) -> Path:
    """Write a PNG of ``tile`` on ``date`` (outputs in ``out``, local or at a URL); raises
    ValueError naming what is missing."""
    store = EmbeddingStore(out.store)
    grid = store.grid(tile)
    if grid is None:
        raise ValueError(f"tile {tile} is not in {out.store}; see `streamembed status`")
    with Ledger(out.ledger) as ledger:
        rows = ledger.find(tile, date)
    if not rows:
        raise ValueError(
            f"no acquisition of tile {tile} on {date} in the ledger; see `streamembed status`"
        )
    row = rows[0]
    step = max(1, int(np.ceil(max(grid.height, grid.width) / max_px)))
    rgb = np.clip(acquisition_rgb(row.item_href, row.id, grid, step).transpose(1, 2, 0) * 3.5, 0, 1)
    anomalies = read_anomalies(out.anomalies)
    if len(anomalies):
        anomalies = anomalies[
            (anomalies["mgrs_tile"] == tile) & (anomalies["acquisition_id"] == row.id)
        ]
    cells = [(int(a.cell_y), int(a.cell_x), str(a.label)) for a in anomalies.itertuples()]
    title = f"{tile} {date}: {len(cells)} anomalous cells ({grid.cell_m:.0f} m)\n{row.id}"
    return _draw(rgb, grid, cells, title, Path(png))


def _draw(
    rgb: np.ndarray, grid: TileGrid, cells: list[tuple[int, int, str]], title: str, png: Path
) -> Path:
    """The RGB picture with each anomalous cell outlined in its label's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    fig, ax = plt.subplots(figsize=(8, 8.6), dpi=110)
    ax.imshow(rgb, extent=(0, grid.width, grid.height, 0))
    size = grid.cell_size
    for cy, cx, label in cells:
        colour = LABEL_COLOURS.get(label, "#ffffff")
        ax.add_patch(Rectangle((cx * size, cy * size), size, size, fill=False, lw=1.6, ec=colour))
    ax.set_xlim(0, grid.width)
    ax.set_ylim(grid.height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    handles = [Patch(fill=False, ec=c, label=name) for name, c in LABEL_COLOURS.items()]
    ax.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.6)
    fig.text(
        0.01, 0.01, "Contains modified Copernicus Sentinel data (or synthetic demo data)",
        fontsize=6,
    )  # fmt: skip
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, bbox_inches="tight")
    plt.close(fig)
    return png


def _acquisition(href: str, acquisition_id: str) -> Acquisition:
    """The RGB bands of one acquisition, re-read from its item (or its ItemCollection)."""
    for feature in features(load_item_document(href)):
        acq = parse_item(feature, href, "auto", ("B02", "B03", "B04"))
        if acq.id == acquisition_id:
            return acq
    raise ValueError(f"{href} no longer holds acquisition {acquisition_id}")
