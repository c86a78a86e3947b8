"""The built-in backbones against timm itself (run in .venv-timm: `make test-timm`).

Each checkpoint is written by the test in the layout users bring (torchgeo's timm file, the
original SSL4EO-S12 MoCo/DINO/MAE/MoCo v3 files, with their real key names and containers); it
loads through the project's Encoder, and the cell embeddings equal timm's forward on the same
weights and pixels (relative error <= 1e-5): per window, and through a whole backfill.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch.nn import functional as F

from streamembed.acquisition import BANDS_L1C, BANDS_L2A
from streamembed.config import Config, ModelConfig
from streamembed.runtime.encoder import Encoder

ARCHS = ["resnet18", "resnet50", "vit_small_patch16_224"]
RTOL = 1e-5


def _timm_model(arch: str, in_chans: int, seed: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    extra = {"dynamic_img_size": True} if arch.startswith("vit") else {}
    model = timm.create_model(arch, pretrained=False, in_chans=in_chans, **extra)
    # Normalisation weights and statistics away from their defaults: a weight that failed to
    # load (left at its initial value) changes the output.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@torch.inference_mode()
def timm_cells(model: torch.nn.Module, arch: str, x: np.ndarray) -> np.ndarray:
    """Cell features (n, dim, h/32, w/32) straight from timm: a ResNet's ``forward_features``,
    or a ViT's patch tokens from ``forward_features`` averaged over each cell's 2 x 2."""
    t = torch.from_numpy(x)
    out = model.forward_features(t)  # type: ignore[operator]
    if arch.startswith("vit"):
        n, _, h, w = t.shape
        patches = out[:, model.num_prefix_tokens :]  # type: ignore[union-attr]
        grid = patches.reshape(n, h // 16, w // 16, -1).permute(0, 3, 1, 2)
        out = F.avg_pool2d(grid, 2)
    return out.numpy()


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "head."))}


def write_checkpoint(layout: str, arch: str, model: torch.nn.Module, path: Path) -> Path:
    """``model``'s weights in ``layout``, as the published files hold them."""
    state = model.state_dict()
    noise = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    args = argparse.Namespace(arch=arch, lr=0.03)  # the original trainers pickle their args
    if layout == "torchgeo":
        obj: object = state  # plain timm keys, head included
    elif layout == "moco":  # SSL4EO-S12 MoCo v2 ResNets
        sd = {f"module.encoder_q.{k}": v for k, v in _backbone(state).items()}
        sd["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 2048)
        sd["module.encoder_q.fc.2.weight"] = torch.zeros(128, 2048)
        sd.update({f"module.encoder_k.{k}": v for k, v in noise.items()})
        obj = {"epoch": 100, "arch": arch, "state_dict": sd, "optimizer": {}}
    elif layout == "dino":  # teacher weights as DINO saves them, the student beside them
        teacher = {f"backbone.{k}": v for k, v in _backbone(state).items()}
        teacher["head.mlp.0.weight"] = torch.zeros(2048, 384)
        teacher["head.last_layer.weight_g"] = torch.ones(65536, 1)
        student = {f"module.backbone.{k}": v for k, v in noise.items()}
        obj = {"student": student, "teacher": teacher, "epoch": 100, "args": args}
    elif layout == "mae":
        sd = dict(_backbone(state))
        sd["mask_token"] = torch.zeros(1, 1, 512)
        sd["decoder_embed.weight"] = torch.zeros(512, 384)
        sd["decoder_blocks.0.attn.qkv.weight"] = torch.zeros(1536, 512)
        sd["decoder_pred.weight"] = torch.zeros(16 * 16 * 13, 512)
        obj = {"model": sd, "epoch": 99, "args": args}
    elif layout == "moco-v3":
        sd = {f"module.base_encoder.{k}": v for k, v in _backbone(state).items()}
        sd["module.base_encoder.head.0.weight"] = torch.zeros(4096, 384)
        sd.update({f"module.momentum_encoder.{k}": v for k, v in noise.items()})
        obj = {"epoch": 100, "arch": arch, "state_dict": sd, "optimizer": {}}
    else:
        raise ValueError(layout)
    torch.save(obj, path)
    return path


def _layouts() -> list[tuple[str, str]]:
    cases = []
    for arch in ARCHS:
        originals = ["moco"] if arch.startswith("resnet") else ["dino", "mae", "moco-v3"]
        cases += [(arch, layout) for layout in ["torchgeo", *originals]]
    return cases


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("bands", [BANDS_L1C, BANDS_L2A], ids=["13-band", "12-band"])
@pytest.mark.parametrize(("arch", "layout"), _layouts())
def test_checkpoint_loads_and_cells_equal_timm(arch, layout, bands, tmp_path):
    model = _timm_model(arch, len(bands))
    path = write_checkpoint(layout, arch, model, tmp_path / f"{arch}-{layout}.pth")
    enc = Encoder(ModelConfig(arch=arch, bands=bands, checkpoint=str(path)))
    assert not enc.seeded and enc.identity.checkpoint_sha256
    x = np.random.default_rng(1).uniform(-0.2, 1.0, (2, len(bands), 320, 320)).astype(np.float32)
    got, want = enc.feature_maps(x, 2), timm_cells(model, arch, x)
    assert got.shape == want.shape == (2, enc.dim, 10, 10)
    assert _relative_error(got, want) <= RTOL
    # The comparison can fail: another model's weights are far off.
    other = timm_cells(_timm_model(arch, len(bands), seed=4), arch, x)
    assert _relative_error(got, other) > 0.01


def test_a_vit_pretrained_at_another_size_runs_on_its_own_grid(tmp_path):
    """A ViT pre-trained at 128 px (8 x 8 positions) loads with its own position grid and is
    resampled to the window as timm does."""
    torch.manual_seed(5)
    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, in_chans=12, img_size=128,
        dynamic_img_size=True,
    ).eval()  # fmt: skip
    path = write_checkpoint("torchgeo", "vit_small_patch16_224", model, tmp_path / "v.pth")
    enc = Encoder(ModelConfig(arch="vit_small_patch16_224", checkpoint=str(path)))
    x = np.random.default_rng(2).uniform(0, 0.5, (1, 12, 320, 320)).astype(np.float32)
    got = enc.feature_maps(x, 1)
    assert _relative_error(got, timm_cells(model, "vit_small_patch16_224", x)) <= RTOL


@pytest.mark.parametrize(("arch", "layout"), [("vit_small_patch16_224", "dino"),
                                              ("resnet50", "torchgeo")])  # fmt: skip
def test_a_backfill_stores_timms_cells(arch, layout, tmp_path):
    """Through the whole pipeline (real LocalCluster, real COGs, float32 store): each stored cell
    equals timm's forward on the window the tile's window plan gives it."""
    import json

    from streamembed.acquisition import parse_item
    from streamembed.deployment.cluster import make_client
    from streamembed.harness.synthetic import generate
    from streamembed.outputs.store import EmbeddingStore
    from streamembed.runtime.ingest import grid_for, read_block_pixels
    from streamembed.runtime.pipeline import Pipeline
    from streamembed.runtime.windows import plan_blocks, plan_windows, window_inputs

    items, _ = generate(tmp_path / "data", days=10, revisit_days=10, tile_px=640, n_tiles=1)
    model = _timm_model(arch, 12)
    path = write_checkpoint(layout, arch, model, tmp_path / "w.pth")
    cfg = Config().with_overrides(**{
        "source.path": str(items), "output": str(tmp_path / "out"), "model.arch": arch,
        "model.checkpoint": str(path), "store.dtype": "float32", "ingest.block_px": 256,
        "store.chunk_cells": 8,
        "cluster.n_workers": 1, "cluster.dashboard_address": ":0",
    })  # fmt: skip
    with make_client(cfg.cluster) as client:
        pipe = Pipeline(cfg, client)
        try:
            report = pipe.run(progress=False)
        finally:
            pipe.close()
    assert report.applied == 1 and not report.failed
    ds = EmbeddingStore(tmp_path / "out" / "embeddings.zarr").open_dataset("33UWP")
    stored = ds.embedding.values[0]

    [item] = sorted(items.rglob("*.json"))
    acq = parse_item(json.loads(item.read_text()), str(item))
    grid = grid_for(acq, cfg.ingest.cell_size)
    [whole] = plan_blocks(grid, cfg.ingest.model_copy(update={"block_px": 1 << 15}))
    pixels = read_block_pixels(acq, grid, whole, cfg.ingest, cfg.model)
    want = np.full_like(stored, np.nan)
    cell = grid.cell_size
    for win in plan_windows(grid, cfg.ingest.window, cfg.ingest.margin):
        x = window_inputs(pixels.dn, pixels.masked, pixels.origin, [win], pixels.scale_offset,
                          pixels.bands, cfg.model.normalisation, cell)  # fmt: skip
        m, ny, nx = win.margin_cells, win.n_cells_y, win.n_cells_x
        cells = timm_cells(model, arch, x)[0][:, m : m + ny, m : m + nx].transpose(1, 2, 0)
        # Windows in plan order: where the last one is shifted back, its cells win.
        want[win.cell_y : win.cell_y + ny, win.cell_x : win.cell_x + nx] = cells
    assert not np.isnan(want).any()
    assert _relative_error(stored, want) <= RTOL


@pytest.mark.parametrize(("arch", "layout"), [("vit_small_patch16_224", "dino"),
                                              ("resnet50", "torchgeo")])  # fmt: skip
def test_major_tom_fragments_are_timms_pooled_output(arch, layout, tmp_path):
    """`export --fragment-embedding encoder` with a checkpoint: each fragment's vector is timm's
    own pooled output (``forward_head(pre_logits=True)``: average pooling for a ResNet, the class
    token for a ViT) on Major TOM's crop of the product, DN / 10,000."""
    import geopandas as gpd

    from streamembed.cli import main
    from streamembed.harness.synthetic import generate
    from tests.majortom_image import major_tom_image

    items, _ = generate(tmp_path / "data", days=10, revisit_days=10, tile_px=1280, n_tiles=1)
    model = _timm_model(arch, 12)
    path = write_checkpoint(layout, arch, model, tmp_path / "w.pth")
    cfg = Config().with_overrides(**{
        "model.arch": arch, "model.checkpoint": str(path), "cluster.n_workers": 1,
        "cluster.dashboard_address": ":0",
    })  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(cfg.model_dump_json())
    common = ["--config", str(config), "--source", str(items), "--output", str(tmp_path / "out")]
    assert main(["backfill", *common, "--no-progress"]) == 0
    dest = tmp_path / "fragments"
    assert main(["export", str(dest), *common, "--mode", "fragment", "--fragment-embedding",
                 "encoder", "--min-clear", "0", "--no-progress"]) == 0  # fmt: skip
    (out,) = dest.glob("*.parquet")
    rows = gpd.read_parquet(out)
    assert len(rows) > 0
    (item,) = sorted(items.rglob("*.json"))
    image = major_tom_image(item, cfg.model.bands)
    x = []
    for bbox in rows.pixel_bbox:
        c0, r0, c1, r1 = (int(v) for v in bbox)
        x.append(image[:, r0:r1, c0:c1].astype(np.float32) / 10_000)
    with torch.inference_mode():
        t = torch.from_numpy(np.stack(x))
        want = model.forward_head(model.forward_features(t), pre_logits=True).numpy()  # type: ignore[operator]
    got = np.stack([np.asarray(e, np.float32) for e in rows.embedding])
    assert _relative_error(got, want) <= RTOL
