"""Run the real Sentinel-2 L1C scenes of shared/data/s2 through the pipeline and draw the picture
in the README (docs/real-scenes.png).

    python docs/real_scenes.py [../shared/data/s2/eolearn_slovenia_2015_2017] [output-real]

Five real 13-band L1C acquisitions of one 1 km patch in Slovenia (July-September 2015), with
their s2cloudless cloud masks as the ``CLM`` asset, go through the same backfill as any source
(13-band encoder, cloud_mask: asset). Contains modified Copernicus Sentinel data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from streamembed.acquisition import BANDS_L1C
    from streamembed.deployment.cluster import make_client
    from streamembed.config import ClusterConfig, Config
    from streamembed.runtime.pipeline import Pipeline
    from streamembed.outputs.sink import read_anomalies
    # The eo-learn export's reader and item writer are the tests' (tests/scene_items.py).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.scene_items import load_eolearn_example, write_scene_items
    from streamembed.outputs.store import EmbeddingStore

    src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/s2/eolearn_slovenia_2015_2017")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "output-real")
    scenes, times, clm, _, x0, y0 = load_eolearn_example(src)
    write_scene_items(out / "items", scenes, times, BANDS_L1C, "33TVL", 32633, x0, y0, "L1C", clm,
                      id_prefix="EOLEARN_S2")
    cfg = Config().with_overrides(
        **{
            "source.path": str(out / "items"),
            "output": str(out / "run"),
            "model.bands": list(BANDS_L1C),
            "ingest.cloud_mask": "asset",
        }
    )
    with make_client(ClusterConfig(n_workers=2, dashboard_address=":0")) as client:
        pipe = Pipeline(cfg, client)
        try:
            report = pipe.run(progress=False)
        finally:
            pipe.close()
    print("\n".join(report.lines()))
    ds = EmbeddingStore(cfg.output_dir / "embeddings.zarr").open_dataset("33TVL").sortby("time")
    anomalies = read_anomalies(cfg.output_dir / "anomalies")
    order = np.argsort([t.timestamp() for t in times])
    fig, axes = plt.subplots(1, len(order), figsize=(3.0 * len(order), 3.4), dpi=110)
    cell = cfg.ingest.cell_size
    for k, (ax, t) in enumerate(zip(axes, order, strict=True)):
        rgb = np.clip(scenes[t][:, :, [3, 2, 1]] * 3.5, 0, 1)
        ax.imshow(rgb)
        clear = ds["clear"].values[k]
        for cy in range(clear.shape[0]):
            for cx in range(clear.shape[1]):
                masked = clear[cy, cx] < cfg.stats.min_clear
                ax.add_patch(
                    Rectangle(
                        (cx * cell, cy * cell), cell, cell, fill=masked, alpha=0.35 if masked else 1,
                        fc="#888888", ec="white", lw=0.8, hatch="//" if masked else None,
                    )
                )
        n = int((anomalies["acquisition_id"] == str(ds["acquisition_id"].values[k])).sum()) if len(
            anomalies
        ) else 0
        ax.set_title(f"{times[t]:%Y-%m-%d}: clear {clear.mean():.0%}, {n} anomalies", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Real Sentinel-2 L1C, tile 33TVL (Slovenia), 320 m embedding cells; hatched = cloud-masked",
        fontsize=9,
    )
    fig.text(0.01, 0.01, "Contains modified Copernicus Sentinel data (2015)", fontsize=6)
    png = Path("docs/real-scenes.png")
    fig.savefig(png, bbox_inches="tight")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
