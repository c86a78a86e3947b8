"""Checkpoint key mapping for the torchgeo/timm and SSL4EO MoCo layouts, and dense output."""

import numpy as np
import pytest
import torch

from streamembed.acquisition import BANDS_L1C, BANDS_L2A
from streamembed.config import ModelConfig
from streamembed.runtime.backbones import ResNet
from streamembed.runtime.checkpoints import CheckpointError, map_checkpoint_keys
from streamembed.runtime.encoder import Encoder


def _reference(arch: str, in_chans: int, seed: int = 11) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet(arch, in_chans)
    # Non-trivial BN statistics so a wrong mapping cannot pass by accident.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _assert_same_weights(encoder: Encoder, reference: ResNet) -> None:
    got = encoder.model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(got[key].cpu(), value), key


def test_timm_layout_loads(tmp_path):
    ref = _reference("resnet18", 13)
    path = tmp_path / "ssl4eo_resnet18_moco_timm.pth"
    torch.save(ref.state_dict(), path)  # torchgeo ships plain timm keys, fc included
    enc = Encoder(ModelConfig(arch="resnet18", bands=BANDS_L1C, checkpoint=str(path)))
    _assert_same_weights(enc, ref)
    assert not enc.seeded and "timm layout" in enc.weights


def test_ssl4eo_moco_layout_loads(tmp_path):
    ref = _reference("resnet50", 13)
    state = {
        f"module.encoder_q.{k}": v for k, v in ref.state_dict().items() if not k.startswith("fc.")
    }
    # The MoCo v2/v3 projection head and the momentum encoder must be ignored.
    state["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 2048)
    state["module.encoder_q.fc.2.weight"] = torch.zeros(128, 2048)
    state.update(
        {f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in ref.state_dict().items()}
    )
    path = tmp_path / "B13_rn50_moco_0099_ckpt.pth"
    torch.save({"arch": "resnet50", "epoch": 100, "state_dict": state}, path)
    enc = Encoder(ModelConfig(arch="resnet50", bands=BANDS_L1C, checkpoint=str(path)))
    _assert_same_weights(enc, ref)
    assert "ssl4eo-moco" in enc.weights


def test_key_mapping_pure():
    mapped, layout = map_checkpoint_keys(
        {
            "module.encoder_q.conv1.weight": 1,
            "module.encoder_q.fc.0.weight": 2,
            "module.encoder_k.conv1.weight": 3,
        }
    )
    assert layout == "ssl4eo-moco" and mapped == {"conv1.weight": 1}
    mapped, layout = map_checkpoint_keys({"conv1.weight": 1, "fc.weight": 2, "fc.bias": 3})
    assert layout == "timm" and mapped == {"conv1.weight": 1}
    mapped, layout = map_checkpoint_keys(
        {"backbone.layer1.0.conv1.weight": 1, "head.mlp.0.weight": 2}
    )
    assert layout == "dino" and mapped == {"layer1.0.conv1.weight": 1}


def test_in_chans_mismatch_is_explained(tmp_path):
    path = tmp_path / "l1c13.pth"
    torch.save(_reference("resnet18", 13).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"expects 13 input bands but model\.bands lists 12"):
        Encoder(ModelConfig(arch="resnet18", bands=BANDS_L2A, checkpoint=str(path)))


def test_arch_mismatch_is_explained(tmp_path):
    path = tmp_path / "rn50.pth"
    torch.save(_reference("resnet50", 12).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"resnet50 backbone but model\.arch is resnet18"):
        Encoder(ModelConfig(arch="resnet18", checkpoint=str(path)))


def test_missing_checkpoint_file_is_explained(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Encoder(ModelConfig(checkpoint=str(tmp_path / "nope.pth")))


def test_seeded_encoder_is_deterministic_and_dense():
    cfg = ModelConfig(arch="resnet18")
    a, b = Encoder(cfg), Encoder(cfg)
    assert a.seeded and a.model_id == "resnet18-12b-seed0"
    x = np.random.default_rng(0).uniform(0, 0.4, (3, 12, 128, 96)).astype(np.float32)
    fa, fb = a.feature_maps(x), b.feature_maps(x)
    assert fa.shape == (3, 512, 4, 3)  # stride 32
    assert np.array_equal(fa, fb)


def test_passes_are_padded_to_the_tile_not_beyond():
    """A tile with fewer windows than batch_size runs passes of its own window count (a
    one-window 256 px tile costs one window, not four); larger tiles keep batch_size. The
    pass size depends on the tile alone, so every block of a tile runs the same passes."""
    from streamembed.config import IngestConfig
    from streamembed.grid import TileGrid
    from streamembed.runtime.windows import plan_blocks

    enc = Encoder(ModelConfig(arch="resnet18", bands=BANDS_L2A, batch_size=4))
    small = TileGrid("31UFU", 32631, 600000.0, 5900000.0, 256, 256, 32)
    large = TileGrid("31UFU", 32631, 600000.0, 5900000.0, 1024, 1024, 32)
    [one] = plan_blocks(small, IngestConfig())
    assert one.tile_windows == 1 and enc.pass_size(one.tile_windows) == 1
    for block_px in (256, 512, 2048):
        blocks = plan_blocks(large, IngestConfig(block_px=block_px))
        assert {b.tile_windows for b in blocks} == {16}
        assert {enc.pass_size(b.tile_windows) for b in blocks} == {4}
    x = np.random.default_rng(0).random((1, 12, 320, 320), dtype=np.float32)
    alone = enc.feature_maps(x, enc.pass_size(1))
    assert alone.shape == (1, 512, 10, 10) and np.isfinite(alone).all()


def _vit_state(in_chans: int, seed: int = 7) -> dict[str, torch.Tensor]:
    from streamembed.runtime.backbones import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer("vit_small_patch16_224", in_chans).state_dict()


@pytest.mark.parametrize("layout", ["torchgeo", "dino", "mae", "moco-v3"])
def test_vit_layouts_load(layout, tmp_path):
    """ViT-S/16 files as torchgeo and the SSL4EO-S12 trainers write them (DINO and MAE pickle
    their argparse options beside the weights: read without unpickling anything else)."""
    import argparse

    ref = _vit_state(13)
    backbone = {k: v for k, v in ref.items() if not k.startswith("head.")}
    args = argparse.Namespace(arch="vit_small", patch_size=16)
    if layout == "torchgeo":
        obj: object = ref
    elif layout == "dino":
        teacher = {f"backbone.{k}": v for k, v in backbone.items()}
        teacher["head.mlp.0.weight"] = torch.zeros(8, 384)
        student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in backbone.items()}
        obj = {"student": student, "teacher": teacher, "args": args}
    elif layout == "mae":
        obj = {"model": {**backbone, "mask_token": torch.zeros(1, 1, 8),
                         "decoder_embed.weight": torch.zeros(8, 384)}, "args": args}  # fmt: skip
    else:
        sd = {f"module.base_encoder.{k}": v for k, v in backbone.items()}
        sd.update({f"module.momentum_encoder.{k}": torch.zeros_like(v) for k, v in ref.items()})
        obj = {"state_dict": sd, "epoch": 3}
    path = tmp_path / f"vit-{layout}.pth"
    torch.save(obj, path)
    enc = Encoder(ModelConfig(arch="vit_small_patch16_224", bands=BANDS_L1C, checkpoint=str(path)))
    got = enc.model.state_dict()
    for key, value in backbone.items():
        assert torch.equal(got[key], value), key
    assert (
        f"{'ssl4eo-moco' if layout == 'moco' else layout.replace('torchgeo', 'timm')} layout"
        in (enc.weights)
    )


def test_vit_files_that_do_not_fit_are_explained(tmp_path):
    path = tmp_path / "vit13.pth"
    state = _vit_state(13)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"vit_small_patch16_224 backbone but model\.arch"):
        Encoder(ModelConfig(arch="resnet50", bands=BANDS_L1C, checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=r"expects 13 input bands"):
        Encoder(ModelConfig(arch="vit_small_patch16_224", checkpoint=str(path)))
    del state["blocks.11.mlp.fc2.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing \['blocks\.11\.mlp\.fc2\.weight'\]"):
        Encoder(ModelConfig(arch="vit_small_patch16_224", bands=BANDS_L1C, checkpoint=str(path)))
    torch.save({"blocks.0.foo": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="no ResNet-18/50 or ViT-S/B backbone found"):
        Encoder(ModelConfig(arch="vit_small_patch16_224", checkpoint=str(path)))


def test_vit_cells_are_its_patch_tokens_pooled():
    """A ViT's cell is the mean of its 2 x 2 patch tokens (timm's forward_features, normed)."""
    enc = Encoder(ModelConfig(arch="vit_small_patch16_224", runtime="torch"))
    x = np.random.default_rng(3).uniform(0, 0.4, (1, 12, 320, 320)).astype(np.float32)
    cells = enc.feature_maps(x, 1)
    assert cells.shape == (1, 384, 10, 10) and enc.dim == 384
    with torch.inference_mode():
        tokens = enc.model.tokens(torch.from_numpy(x))[0, 1:].numpy()  # type: ignore[union-attr]
    grid = tokens.reshape(20, 20, 384)
    want = grid.reshape(10, 2, 10, 2, 384).mean(axis=(1, 3)).transpose(2, 0, 1)
    np.testing.assert_allclose(cells[0], want, rtol=1e-5, atol=1e-6)


def test_a_short_last_pass_runs_unpadded_once_it_is_seen_exact():
    """Nine windows in passes of four: the first short pass is computed padded (and once more
    unpadded, to compare); later ones run unpadded where the two agreed, padded where not (the
    kernels of some shapes do give other bits for one window than for four), and the bits are
    a padded pass's either way."""
    enc = Encoder(ModelConfig(arch="resnet18", batch_size=4, runtime="torch"))
    for px in (128, 320):
        x = np.random.default_rng(4).uniform(0, 0.4, (9, 12, px, px)).astype(np.float32)
        enc.windows_encoded = 0
        first = enc.feature_maps(x, 4)
        assert enc.windows_encoded == 4 + 4 + 4 + 1  # the check's extra window
        exact = enc._short_pass_exact[((12, px, px), 1, 4)]
        enc.windows_encoded = 0
        again = enc.feature_maps(x, 4)
        assert enc.windows_encoded == (9 if exact else 12)
        assert np.array_equal(first, again)
        padded = np.concatenate([x[8:], np.zeros((3, 12, px, px), np.float32)])
        assert np.array_equal(again[8], enc.feature_maps(padded, 4)[0])


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("arch", ["resnet18", "vit_small_patch16_224"])
def test_other_runtimes_compute_the_same_network(runtime, arch):
    """The backbone converted to OpenVINO / ONNX Runtime (once per pass shape; short passes
    padded) gives PyTorch's cells: every cell's cosine >= 0.999 (checked at conversion too)."""
    x = np.random.default_rng(5).uniform(0, 0.4, (5, 12, 320, 320)).astype(np.float32)
    torch_enc = Encoder(ModelConfig(arch=arch, runtime="torch"))
    enc = Encoder(ModelConfig(arch=arch, runtime=runtime))
    assert enc.converted is not None
    want, got = torch_enc.feature_maps(x, 4), enc.feature_maps(x, 4)
    a = got.transpose(0, 2, 3, 1).reshape(-1, got.shape[1]).astype(np.float64)
    b = want.transpose(0, 2, 3, 1).reshape(-1, want.shape[1]).astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    spent = enc.converted.convert_seconds
    assert spent > 0
    again = enc.feature_maps(x, 4)  # the same shape: no second conversion, the same bits
    assert enc.converted.convert_seconds == spent and np.array_equal(again, got)


def test_the_conversion_check_lets_blank_cells_agree_and_nothing_else():
    from streamembed.runtime.runtimes import _worst_cell_cosine

    a = np.random.default_rng(6).random((2, 8, 3, 3)).astype(np.float32)
    b = a.copy()
    a[0, :, 0, 0] = b[0, :, 0, 0] = 0  # a ReLU map of a blank window: zero in both
    assert _worst_cell_cosine(a, b) > 0.999999
    c = b.copy()
    c[1, :, 1, 1] *= -1
    assert _worst_cell_cosine(a, c) < 0
    d = b.copy()
    d[0, :, 0, 0] = 1.0  # zero in one runtime only
    assert _worst_cell_cosine(a, d) == 0.0
